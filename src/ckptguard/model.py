"""Frozen value types shared by every layer of ckptguard.

This module imports nothing else from the package. Every type here is pure data and
round-trips through JSON (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, TypeVar

_C = TypeVar("_C", bound=type)


def _slot_init(cls: _C) -> _C:
    """Give a frozen slotted dataclass an ``__init__`` that stores each field through its
    slot's descriptor: the same signature and defaults as the generated one, about twice
    as fast (the generated one calls ``object.__setattr__`` by name per field, because the
    class is frozen). A 50,000-tensor checkpoint builds 50,000 ``TensorInfo``; start-up
    pays about 0.1 ms per class. Fields with a ``default_factory`` are not supported."""
    ns: dict[str, Any] = {}
    params: list[str] = []
    body: list[str] = []
    for i, f in enumerate(fields(cls)):
        if f.default_factory is not MISSING or not f.init or f.kw_only:
            raise TypeError(f"{cls.__name__}.{f.name}: only plain fields")
        ns[f"_set{i}"] = cls.__dict__[f.name].__set__
        if f.default is MISSING:
            params.append(f.name)
        else:
            ns[f"_default{i}"] = f.default
            params.append(f"{f.name}=_default{i}")
        body.append(f"    _set{i}(self, {f.name})\n")
    exec(f"def __init__(self, {', '.join(params)}):\n{''.join(body)}", ns)  # noqa: S102
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = {**{f.name: f.type for f in fields(cls)}, "return": None}
    cls.__init__ = init  # type: ignore[misc]
    return cls


class Format(str, enum.Enum):
    """What a file *is*, decided from its bytes (never from its name)."""

    TORCH_ZIP = "torch-zip"
    TORCHSCRIPT = "torchscript"
    TORCH_LEGACY = "torch-legacy"
    TORCH_LEGACY_TAR = "torch-legacy-tar"
    PICKLE = "pickle"
    SAFETENSORS = "safetensors"
    NUMPY_NPY = "numpy-npy"
    NUMPY_NPZ = "numpy-npz"
    ZIP = "zip"
    WRAPPED = "wrapped"  # gzip, bz2, xz, zstd, 7z, lz4, plain tar: not audited
    JSON = "json"  # JSON text: configs, sharded-checkpoint index files
    MODEL_FOLDER = "model-folder"
    DCP_CHECKPOINT = "dcp-checkpoint"  # a torch.distributed.checkpoint folder (.metadata)
    DCP_SHARD = "dcp-shard"  # one of its .distcp files: torch.save archives at byte ranges
    TORCH_EXPORT = "torch-export"  # a torch.export.save archive (.pt2)
    EMPTY = "empty"
    UNKNOWN = "unknown"


class Severity(enum.IntEnum):
    """Ordered: INFO < LOW < MEDIUM < HIGH < CRITICAL."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown severity {text!r}; expected one of "
                             f"{', '.join(s.name.lower() for s in cls)}") from None


class Verdict(str, enum.Enum):
    """SAFE: proven weights-only. UNSAFE: a finding blocks it. INCOMPLETE: could not decide."""

    SAFE = "SAFE"
    UNSAFE = "UNSAFE"
    INCOMPLETE = "INCOMPLETE"

    def __str__(self) -> str:
        return self.value


class Engine(str, enum.Enum):
    """What builds the objects of a SAFE torch file at load time."""

    TORCH = "torch"          # the audit, then torch.load(weights_only=True, mmap=True)
    CKPTGUARD = "ckptguard"  # the audit's own graph, materialised without a second parse

    def __str__(self) -> str:
        return self.value


class Effect(str, enum.Enum):
    """What a finding of a rule does to the verdict."""

    BLOCKS = "blocks"          # the file is not SAFE (UNSAFE)
    UNDECIDED = "undecided"    # the audit could not finish (INCOMPLETE unless something blocks)
    NOTE = "note"              # informational: SAFE is still possible

    def __str__(self) -> str:
        return self.value


@_slot_init
@dataclass(frozen=True, slots=True)
class Location:
    """Where a finding sits: ``path:member@offset``."""

    path: str
    member: str | None = None
    offset: int | None = None

    def __str__(self) -> str:
        text = self.path
        if self.member is not None:
            text += f":{self.member}"
        if self.offset is not None:
            text += f"@{self.offset}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "member": self.member, "offset": self.offset}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Location:
        return cls(path=d["path"], member=d.get("member"), offset=d.get("offset"))


@_slot_init
@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the audit found, under a stable rule ID."""

    rule_id: str
    severity: Severity
    effect: Effect
    message: str
    location: Location
    evidence: tuple[tuple[str, str], ...] = ()
    advice: str = ""

    @property
    def evidence_dict(self) -> dict[str, str]:
        return dict(self.evidence)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "severity": self.severity.name.lower(),
            "effect": self.effect.value,
            "message": self.message,
            "location": self.location.to_dict(),
            "evidence": dict(self.evidence),
            "advice": self.advice,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        return cls(
            rule_id=d["rule_id"],
            severity=Severity.parse(d["severity"]),
            effect=Effect(d["effect"]),
            message=d["message"],
            location=Location.from_dict(d["location"]),
            evidence=tuple(sorted(d.get("evidence", {}).items())),
            advice=d.get("advice", ""),
        )


@dataclass(frozen=True)
class Problem:
    """The audit of one stream broke off (an internal error, not a judgement of the file)."""

    message: str
    location: Location

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "location": self.location.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Problem:
        return cls(message=d["message"], location=Location.from_dict(d["location"]))


@_slot_init
@dataclass(frozen=True, slots=True)
class TensorInfo:
    """A tensor as the audit reconstructed it, without reading its data.

    ``storage`` names the record holding the bytes (``data/0`` in a torch zip, the tensor
    name in safetensors), ``data_offset`` is the absolute file offset of the storage's
    first byte when known, ``storage_offset`` is in elements as torch counts it.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...] | None = None
    storage: str | None = None
    storage_offset: int = 0
    nbytes: int = 0
    storage_nbytes: int | None = None
    data_offset: int | None = None
    device: str = "cpu"
    requires_grad: bool = False
    file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "stride": None if self.stride is None else list(self.stride),
            "storage": self.storage,
            "storage_offset": self.storage_offset,
            "nbytes": self.nbytes,
            "storage_nbytes": self.storage_nbytes,
            "data_offset": self.data_offset,
            "device": self.device,
            "requires_grad": self.requires_grad,
            "file": self.file,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorInfo:
        stride = d.get("stride")
        return cls(
            name=d["name"],
            dtype=d["dtype"],
            shape=tuple(d["shape"]),
            stride=None if stride is None else tuple(stride),
            storage=d.get("storage"),
            storage_offset=d.get("storage_offset", 0),
            nbytes=d.get("nbytes", 0),
            storage_nbytes=d.get("storage_nbytes"),
            data_offset=d.get("data_offset"),
            device=d.get("device", "cpu"),
            requires_grad=d.get("requires_grad", False),
            file=d.get("file"),
        )


@_slot_init
@dataclass(frozen=True, slots=True)
class Region:
    """A byte range the audit read and relied on, with its SHA-256 (for the same-bytes check)."""

    offset: int
    length: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"offset": self.offset, "length": self.length, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Region:
        return cls(offset=d["offset"], length=d["length"], sha256=d["sha256"])


@dataclass(frozen=True)
class FileIdentity:
    """What identifies the exact file that was audited: the descriptor's ``fstat`` (device,
    inode, size, mtime and ctime in ns) and the regions the audit relied on. ``ctime_ns``
    is what a writer cannot put back: ``os.utime`` resets the mtime, but every write,
    truncate or ``utime`` sets the inode's change time to now."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    regions: tuple[Region, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "inode": self.inode,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "ctime_ns": self.ctime_ns,
            "regions": [r.to_dict() for r in self.regions],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FileIdentity:
        return cls(
            device=d["device"],
            inode=d["inode"],
            size=d["size"],
            mtime_ns=d["mtime_ns"],
            ctime_ns=d["ctime_ns"],
            regions=tuple(Region.from_dict(r) for r in d.get("regions", ())),
        )


def decide(findings: tuple[Finding, ...] | list[Finding],
           problems: tuple[Problem, ...] | list[Problem] = ()) -> Verdict:
    """The one verdict rule: a blocking finding -> UNSAFE; else anything undecided ->
    INCOMPLETE; else SAFE."""
    if any(f.effect is Effect.BLOCKS for f in findings):
        return Verdict.UNSAFE
    if problems or any(f.effect is Effect.UNDECIDED for f in findings):
        return Verdict.INCOMPLETE
    return Verdict.SAFE


def combine_verdicts(findings: tuple[Finding, ...] | list[Finding],
                     problems: tuple[Problem, ...] | list[Problem],
                     children: tuple[Report, ...] | list[Report]) -> Verdict:
    """The verdict of a folder, index or DCP checkpoint: the worst of its own findings
    (``decide``) and its children's verdicts."""
    own = decide(findings, problems)
    verdicts = {own} | {c.verdict for c in children}
    if Verdict.UNSAFE in verdicts:
        return Verdict.UNSAFE
    if Verdict.INCOMPLETE in verdicts:
        return Verdict.INCOMPLETE
    return Verdict.SAFE


@dataclass(frozen=True)
class Report:
    """The result of auditing one file (or one model folder / sharded checkpoint)."""

    path: str
    format: Format
    verdict: Verdict
    findings: tuple[Finding, ...] = ()
    problems: tuple[Problem, ...] = ()
    tensors: tuple[TensorInfo, ...] = ()
    identity: FileIdentity | None = None
    members: tuple[str, ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()
    bytes_read: int = 0
    limits: tuple[tuple[str, float], ...] = ()
    tool_version: str = ""
    children: tuple[Report, ...] = ()

    @property
    def max_severity(self) -> Severity | None:
        sev = [f.severity for f in self.findings]
        sev += [m for c in self.children if (m := c.max_severity) is not None]
        return max(sev) if sev else None

    @property
    def is_safe(self) -> bool:
        return self.verdict is Verdict.SAFE

    def top_findings(self, n: int = 3) -> list[Finding]:
        """The most severe findings first (blocking before notes), stable otherwise."""
        order = {Effect.BLOCKS: 0, Effect.UNDECIDED: 1, Effect.NOTE: 2}
        ranked = sorted(self.all_findings(), key=lambda f: (order[f.effect], -f.severity))
        return ranked[:n]

    def all_findings(self) -> list[Finding]:
        out = list(self.findings)
        for c in self.children:
            out.extend(c.all_findings())
        return out

    def rule_ids(self) -> set[str]:
        return {f.rule_id for f in self.all_findings()}

    def meta(self, key: str, default: str | None = None) -> str | None:
        """One metadata value (``metadata`` is a tuple of pairs)."""
        for k, v in self.metadata:
            if k == key:
                return v
        return default

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format.value,
            "verdict": self.verdict.value,
            "findings": [f.to_dict() for f in self.findings],
            "problems": [p.to_dict() for p in self.problems],
            "tensors": [t.to_dict() for t in self.tensors],
            "identity": None if self.identity is None else self.identity.to_dict(),
            "members": list(self.members),
            "metadata": dict(self.metadata),
            "bytes_read": self.bytes_read,
            "limits": dict(self.limits),
            "tool_version": self.tool_version,
            "children": [c.to_dict() for c in self.children],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Report:
        ident = d.get("identity")
        return cls(
            path=d["path"],
            format=Format(d["format"]),
            verdict=Verdict(d["verdict"]),
            findings=tuple(Finding.from_dict(f) for f in d.get("findings", ())),
            problems=tuple(Problem.from_dict(p) for p in d.get("problems", ())),
            tensors=tuple(TensorInfo.from_dict(t) for t in d.get("tensors", ())),
            identity=None if ident is None else FileIdentity.from_dict(ident),
            members=tuple(d.get("members", ())),
            metadata=tuple(sorted(d.get("metadata", {}).items())),
            bytes_read=d.get("bytes_read", 0),
            limits=tuple(sorted(d.get("limits", {}).items())),
            tool_version=d.get("tool_version", ""),
            children=tuple(Report.from_dict(c) for c in d.get("children", ())),
        )


__all__ = [
    "Effect",
    "Engine",
    "FileIdentity",
    "Finding",
    "Format",
    "Location",
    "Problem",
    "Region",
    "Report",
    "Severity",
    "TensorInfo",
    "Verdict",
    "combine_verdicts",
    "decide",
]
