"""torch.distributed.checkpoint (DCP) folders, as ``dcp.save`` / ``FileSystemWriter`` write
them and ``dcp.load`` / ``FileSystemReader`` read them (torch 2.13):

- ``.metadata`` (or ``__<rank>.metadata``): a plain pickle that ``read_metadata`` loads
  with ``pickle.load``. Its root is ``Metadata``; ``storage_data`` maps each
  ``MetadataIndex(fqn, chunk offset)`` to ``_StorageInfo(relative_path, offset, length)``.
  It is audited by the pickle VM in RAW mode with the DCP-scoped benign list
  (policy/benign_formats.py, CKG801): anything else it reaches is judged as in any pickle,
  so a code-executing ``.metadata`` is CKG101.
- ``__<rank>_<n>.distcp``: torch.save archives back to back. ``read_data`` opens a view of
  ``[offset, offset + length)`` and calls ``torch.load(weights_only=True)`` on it for
  tensors, ``torch.load(weights_only=False)`` for other items (the default planner's
  ``load_bytes``). Every range is audited with the full engine as a file of its own.

The metadata is then checked against the files: every storage entry names a plain file
in the folder (CKG803), its range lies inside that file (CKG804), its payload is a torch.save
archive (CKG806) holding the tensor the metadata describes (CKG808); stream transforms are
not decoded (CKG805); bytes no entry names are noted (CKG807).
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass, field, replace

from .. import __version__ as _version
from ..context import AuditContext, LimitExceeded, Source
from ..model import Format, Report, TensorInfo
from ..policy import Limits, Policy
from ..policy.benign_formats import FormatScope, allowance_for
from ..readers.jsonfile import escape
from .nested import audit_range
from .vm import Call, Global, PickleMode, audit_pickle

METADATA_RE = re.compile(r"(?:__\d+)?\.metadata\Z")
SHARD_SUFFIX = ".distcp"
_MD = "torch.distributed.checkpoint.metadata."
_METADATA = _MD + "Metadata"
_INDEX = _MD + "MetadataIndex"
_TENSOR_MD = _MD + "TensorStorageMetadata"
_BYTES_MD = _MD + "BytesStorageMetadata"
_CHUNK = _MD + "ChunkStorageMetadata"
_PROPS = _MD + "TensorProperties"
_STORAGE_INFO = "torch.distributed.checkpoint.filesystem._StorageInfo"
_SIZE = "torch.Size"

Key = tuple[str, tuple[int, ...] | None]  # MetadataIndex's identity (fqn, offset)


@dataclass(frozen=True)
class StorageEntry:
    key: Key
    relative_path: str
    offset: int
    length: int
    transforms: tuple[str, ...]


@dataclass
class DcpMetadata:
    """What the audit learnt from one ``.metadata`` (symbolically, never unpickled)."""

    entries: dict[Key, StorageEntry] = field(default_factory=dict)
    #: fqn -> (dtype name, global size, [(chunk offsets, chunk sizes)])
    tensors: dict[str, tuple[str, tuple[int, ...], list[tuple[tuple[int, ...],
                                                             tuple[int, ...]]]]] = \
        field(default_factory=dict)
    byte_items: set[str] = field(default_factory=set)


class _Invalid(Exception):
    """The metadata is not what dcp.save writes (message: what and where)."""


def is_dcp_dir(path: str) -> bool:
    """A folder holding a ``.metadata`` file (the name ``FileSystemReader`` opens)."""
    try:
        st = os.stat(os.path.join(path, ".metadata"))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode)


def lists_metadata(entries: list[os.DirEntry[str]]) -> bool:
    """Does a folder listing hold the ``.metadata`` file (a link to one counts, as for
    torch's reader: Hugging Face cache snapshots link every file to a blob)?"""
    for e in entries:
        if e.name == ".metadata":
            try:
                return e.is_file()
            except OSError:
                return False
    return False


# --- the folder --------------------------------------------------------------------------

def audit_dcp(path: str, *, policy: Policy, limits: Limits) -> Report:
    """Audit a DCP folder: every metadata file, every file and range it names."""
    from .engine import unreadable_report
    from .folder import combine_verdicts

    top = AuditContext(path, Source.from_bytes(b""), policy, limits)
    children: dict[str, Report] = {}
    tensors: list[TensorInfo] = []
    try:
        names = _list(top, path)
    except OSError as e:
        return unreadable_report(path, e.strerror or str(e), limits)
    entries: dict[str, list[StorageEntry]] = {}
    metas: list[DcpMetadata] = []
    for name in names:
        if not METADATA_RE.match(name):
            continue
        report, md = _audit_metadata(os.path.join(path, name), policy=policy, limits=limits)
        children[name] = report
        if md is not None:
            metas.append(md)
            for se in md.entries.values():
                entries.setdefault(se.relative_path, []).append(se)
    shapes = _expected_shapes(top, metas)
    from .folder import _allowed_roots  # the folder, and a HF cache snapshot's blob store

    roots = _allowed_roots(path)
    for rel in sorted(entries):
        shown = escape(rel, 200)
        if not _plain(rel):
            top.add("CKG803", f"a storage entry names '{shown}', which is not a plain file name "
                    "in the checkpoint folder: FileSystemReader would open that path",
                    evidence={"relative_path": shown})
            continue
        full = os.path.join(path, rel)
        if os.path.islink(full) and not _inside(os.path.realpath(full), roots):
            top.add("CKG803", f"'{shown}' is a link to a file outside the checkpoint folder",
                    evidence={"relative_path": shown,
                              "target": escape(os.path.realpath(full), 300)})
            continue
        if not os.path.isfile(full):
            top.add("CKG804", f"'{shown}', named by {len(entries[rel])} storage entr"
                    f"{'y' if len(entries[rel]) == 1 else 'ies'}, is missing",
                    evidence={"relative_path": shown})
            continue
        report = _audit_shard(full, entries[rel], shapes, policy=policy, limits=limits)
        children[rel] = report
        tensors.extend(report.tensors)
    for name in names:
        if name.endswith(SHARD_SUFFIX) and name not in entries:
            top.add("CKG807", f"'{escape(name, 200)}' is named by no storage entry: torch never "
                    "reads it", member=name)
    if not any(METADATA_RE.match(n) for n in names):
        top.add("CKG802", "the folder has no .metadata file")
    findings = tuple(top.findings)
    problems = tuple(top.problems)
    kids = tuple(children[k] for k in sorted(children))
    metadata = {"dcp.metadata_files": str(sum(1 for n in names if METADATA_RE.match(n))),
                "dcp.storage_files": str(len(entries)),
                "dcp.storage_entries": str(sum(len(v) for v in entries.values()))}
    return Report(
        path=path,
        format=Format.DCP_CHECKPOINT,
        verdict=combine_verdicts(findings, problems, kids),
        findings=findings,
        problems=problems,
        tensors=tuple(tensors),
        metadata=tuple(sorted(metadata.items())),
        limits=limits.as_items(),
        tool_version=_version,
        children=kids,
    )


def _list(ctx: AuditContext, path: str) -> list[str]:
    out: list[str] = []
    with os.scandir(path) as it:
        for entry in it:
            out.append(entry.name)
            if len(out) > ctx.limits.max_files:
                ctx.limit_hit(LimitExceeded("max_files", ctx.limits.max_files,
                                            "files in the checkpoint folder"))
                break
    return sorted(out)


def _plain(name: str) -> bool:
    return (bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
            and "\x00" not in name and name.isprintable() and not os.path.isabs(name)
            and ":" not in name)


def _inside(path: str, roots: list[str]) -> bool:
    return any(path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _open_regular(path: str) -> tuple[int, os.stat_result] | str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        return e.strerror or str(e)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return "not a regular file"
    return fd, st


# --- .metadata -----------------------------------------------------------------------------

def _audit_metadata(path: str, *, policy: Policy,
                    limits: Limits) -> tuple[Report, DcpMetadata | None]:
    from .engine import finish_report, unreadable_report

    opened = _open_regular(path)
    if isinstance(opened, str):
        return unreadable_report(path, opened, limits), None
    fd, st = opened
    try:
        src = Source(fd, st.st_size, deadline=time.monotonic() + limits.max_seconds)
        ctx = AuditContext(path, src, policy, limits)
        md: DcpMetadata | None = None
        try:
            md = audit_metadata(ctx)
        except LimitExceeded as e:
            ctx.limit_hit(e)
        except Exception as e:  # noqa: BLE001 - the per-stream guard (DESIGN.md)
            ctx.problem(f"internal error while auditing ({type(e).__name__})")
        return finish_report(ctx, Format.PICKLE, fd), md
    finally:
        os.close(fd)


def audit_metadata(ctx: AuditContext) -> DcpMetadata | None:
    """Audit ``ctx.source`` as a DCP ``.metadata`` pickle (plain ``pickle.load``, with the
    DCP-scoped benign list); the Metadata it describes, or None when it is not one."""
    size = ctx.source.size
    if size > ctx.limits.max_pickle_bytes:
        raise LimitExceeded("max_pickle_bytes", ctx.limits.max_pickle_bytes,
                            f"{size}-byte .metadata")
    if size == 0:
        ctx.add("CKG802", "the .metadata file is empty")
        return None
    data = ctx.source.read(0, size, record=True)
    result = audit_pickle(ctx, data, mode=PickleMode.RAW,
                          allowance=allowance_for(FormatScope.DCP_METADATA))
    if result.complete and result.end < len(data):
        ctx.add("CKG203", f"{len(data) - result.end} bytes follow the pickle's STOP opcode",
                offset=result.end)
    if not result.complete:
        return None
    try:
        return parse_metadata(result.root)
    except _Invalid as e:
        ctx.add("CKG802", f"not the Metadata dcp.save writes: {e}")
        return None


def parse_metadata(root: object) -> DcpMetadata:
    """Read the symbolic ``Metadata`` the VM built; raises :class:`_Invalid`."""
    fields = _fields(root, _METADATA, "the root object")
    md = DcpMetadata()
    sdm = fields.get("state_dict_metadata")
    if not isinstance(sdm, dict):
        raise _Invalid("state_dict_metadata is not a dict")
    for fqn, item in sdm.items():
        if not isinstance(fqn, str):
            raise _Invalid("a state_dict_metadata key is not a string")
        cls = _class_of(item)
        if cls == _BYTES_MD:
            md.byte_items.add(fqn)
            continue
        f = _fields(item, _TENSOR_MD, f"state_dict_metadata[{fqn!r}]")
        dtype = _dtype(f.get("properties"), fqn)
        size = _size(f.get("size"), f"{fqn!r}.size")
        chunks_v = f.get("chunks")
        if not isinstance(chunks_v, list):
            raise _Invalid(f"{fqn!r}.chunks is not a list")
        chunks = []
        for c in chunks_v:
            cf = _fields(c, _CHUNK, f"a chunk of {fqn!r}")
            chunks.append((_size(cf.get("offsets"), f"{fqn!r} chunk offsets"),
                           _size(cf.get("sizes"), f"{fqn!r} chunk sizes")))
        md.tensors[fqn] = (dtype, size, chunks)
    sd = fields.get("storage_data")
    if not isinstance(sd, dict):
        raise _Invalid("storage_data is not a dict of storage entries")
    for k, v in sd.items():  # a later equal key replaces an earlier one, as in a dict
        kf = _fields(k, _INDEX, "a storage_data key")
        fqn = kf.get("fqn")
        if not isinstance(fqn, str):
            raise _Invalid("a MetadataIndex.fqn is not a string")
        off = kf.get("offset")
        key: Key = (fqn, None if off is None else _size(off, f"{fqn!r} index offset"))
        vf = _fields(v, _STORAGE_INFO, f"storage_data[{fqn!r}]")
        rel, o, n = vf.get("relative_path"), vf.get("offset"), vf.get("length")
        if not isinstance(rel, str):
            raise _Invalid(f"storage_data[{fqn!r}].relative_path is not a string")
        if type(o) is not int or type(n) is not int:
            raise _Invalid(f"storage_data[{fqn!r}] offset/length are not integers")
        tr = vf.get("transform_descriptors")
        if tr is None:
            transforms: tuple[str, ...] = ()
        elif isinstance(tr, (list, tuple)) and all(isinstance(t, str) for t in tr):
            transforms = tuple(tr)
        else:
            raise _Invalid(f"storage_data[{fqn!r}].transform_descriptors is not a list of "
                           "strings")
        md.entries[key] = StorageEntry(key, rel, o, n, transforms)
    return md


def _class_of(v: object) -> str | None:
    if isinstance(v, Call) and isinstance(v.func, Global):
        return v.func.full
    return None


def _fields(v: object, cls: str, what: str) -> dict[str, object]:
    """The fields of a dataclass instance pickled as NEWOBJ(cls, ()) + BUILD(dict)."""
    if _class_of(v) != cls:
        raise _Invalid(f"{what} is not a {cls.rsplit('.', 1)[-1]}")
    assert isinstance(v, Call)
    if v.args not in ((), None) or v.kind not in ("NEWOBJ", "NEWOBJ_EX"):
        raise _Invalid(f"{what} is built by {v.kind} with arguments")
    state = v.state
    if state is None:
        return {}
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise _Invalid(f"{what} has a state that is not a dict of fields")
    return state


def _size(v: object, what: str) -> tuple[int, ...]:
    """torch.Size((ints...)) (or a plain tuple of ints)."""
    if _class_of(v) == _SIZE:
        assert isinstance(v, Call)
        args = v.args
        if isinstance(args, tuple) and len(args) == 1 and isinstance(args[0], (tuple, list)):
            v = tuple(args[0])
        else:
            raise _Invalid(f"{what}: torch.Size with odd arguments")
    if isinstance(v, tuple) and all(type(x) is int and x >= 0 for x in v):
        return v
    raise _Invalid(f"{what} is not a tuple of non-negative integers")


def _dtype(props: object, fqn: str) -> str:
    if _class_of(props) != _PROPS:
        raise _Invalid(f"{fqn!r}.properties is not a TensorProperties")
    assert isinstance(props, Call)
    state = props.state
    dtype = state[0] if isinstance(state, tuple) and state else (
        state.get("dtype") if isinstance(state, dict) else None)
    if isinstance(dtype, Global) and dtype.module == "torch":
        return dtype.name
    raise _Invalid(f"{fqn!r}.properties has no torch dtype")


def _expected_shapes(ctx: AuditContext, metas: list[DcpMetadata]) -> dict[Key, tuple[str, str,
                                                                              tuple[int, ...]]]:
    """Key -> ("tensor", dtype, chunk sizes) or ("bytes", "", ()); CKG808 for the
    chunks and items that have no storage entry (and CKG807 for entries no item reads)."""
    out: dict[Key, tuple[str, str, tuple[int, ...]]] = {}
    for md in metas:
        for fqn, (dtype, size, chunks) in md.tensors.items():
            for offsets, sizes in chunks:
                if len(offsets) != len(size) or len(sizes) != len(size) or any(
                        o + s > g for o, s, g in zip(offsets, sizes, size, strict=True)):
                    ctx.add("CKG808", f"a chunk of '{escape(fqn, 200)}' lies outside the "
                            f"tensor's size {size}", evidence={"fqn": escape(fqn, 200)})
                key: Key = (fqn, offsets)
                out[key] = ("tensor", dtype, sizes)
                if key not in md.entries:
                    ctx.add("CKG808", f"chunk {offsets} of '{escape(fqn, 200)}' has no storage "
                            "entry (torch fails to load it)", evidence={"fqn": escape(fqn, 200)})
        for fqn in md.byte_items:
            out[(fqn, None)] = ("bytes", "", ())
            if (fqn, None) not in md.entries:
                ctx.add("CKG808", f"item '{escape(fqn, 200)}' has no storage entry",
                        evidence={"fqn": escape(fqn, 200)})
        for ekey in md.entries:
            if ekey not in out:
                ctx.add("CKG807", f"storage entry {_label(ekey)} is read by no item of the "
                        "metadata", evidence={"fqn": escape(ekey[0], 200)})
    return out


def _label(key: Key) -> str:
    fqn, off = key
    return escape(fqn, 200) if off is None else f"{escape(fqn, 200)}{list(off)}"


# --- .distcp ---------------------------------------------------------------------------------

def _audit_shard(path: str, entries: list[StorageEntry],
                 shapes: dict[Key, tuple[str, str, tuple[int, ...]]], *,
                 policy: Policy, limits: Limits) -> Report:
    from .engine import finish_report, unreadable_report

    opened = _open_regular(path)
    if isinstance(opened, str):
        return unreadable_report(path, opened, limits)
    fd, st = opened
    try:
        src = Source(fd, st.st_size, deadline=time.monotonic() + limits.max_seconds)
        ctx = AuditContext(path, src, policy, limits)
        try:
            _check_shard(ctx, entries, shapes)
        except LimitExceeded as e:
            ctx.limit_hit(e)
        except Exception as e:  # noqa: BLE001 - the per-stream guard (DESIGN.md)
            ctx.problem(f"internal error while auditing ({type(e).__name__})")
        ctx.metadata["dcp.entries"] = str(len(entries))
        return finish_report(ctx, Format.DCP_SHARD, fd)
    finally:
        os.close(fd)


def _check_shard(ctx: AuditContext, entries: list[StorageEntry],
                 shapes: dict[Key, tuple[str, str, tuple[int, ...]]]) -> None:
    size = ctx.source.size
    covered: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for e in sorted(entries, key=lambda e: (e.offset, e.length, e.key[0])):
        label = _label(e.key)
        if e.offset < 0 or e.length < 0 or e.offset + e.length > size:
            ctx.add("CKG804", f"{label}: bytes {e.offset}..{e.offset + e.length} do not lie "
                    f"inside the {size}-byte file", member=label,
                    evidence={"offset": str(e.offset), "length": str(e.length)})
            continue
        covered.append((e.offset, e.offset + e.length))
        if e.transforms:
            ctx.add("CKG805", f"{label} is stored through {', '.join(e.transforms)[:200]}; its "
                    "payload is not audited", member=label, offset=e.offset)
            continue
        if (e.offset, e.length) in seen:
            continue  # the same bytes, already audited
        seen.add((e.offset, e.length))
        result = audit_range(ctx, e.offset, e.length, label)
        if result.format is not Format.TORCH_ZIP:
            ctx.add("CKG806", f"{label} holds {result.format.value} content, not the "
                    "torch.save archive dcp.save writes", member=label, offset=e.offset)
            continue
        expect = shapes.get(e.key)
        if expect is None or expect[0] != "tensor" or not result.complete:
            continue
        _, dtype, sizes = expect
        roots = [t for t in result.tensors if t.name in ("", "<root>")] or list(result.tensors)
        if len(roots) != 1 or roots[0].dtype != dtype or tuple(roots[0].shape) != sizes:
            got = ", ".join(f"{t.dtype}{list(t.shape)}" for t in roots[:3]) or "no tensor"
            ctx.add("CKG808", f"{label} stores {got}; the metadata describes {dtype}"
                    f"{list(sizes)}", member=label, offset=e.offset)
            continue
        ctx.tensors.append(replace(roots[0], name=e.key[0] if e.key[1] is None or
                                   not any(e.key[1]) else label, file=None))
    pos = 0
    for start, end in sorted(covered):
        if start > pos:
            ctx.add("CKG807", f"bytes {pos}..{start} are named by no storage entry",
                    offset=pos)
        pos = max(pos, end)
    if pos < size:
        ctx.add("CKG807", f"bytes {pos}..{size} are named by no storage entry", offset=pos)


__all__ = ["METADATA_RE", "SHARD_SUFFIX", "DcpMetadata", "StorageEntry", "audit_dcp",
           "audit_metadata", "is_dcp_dir", "lists_metadata", "parse_metadata"]

