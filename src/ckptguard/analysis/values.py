"""The pickle VM's symbolic values: what an unpickled program builds, without importing or
calling anything. ``Global`` is an import (never imported), ``Call`` a call (never made),
``PersRef`` a persistent id (torch resolves it to a storage: ``tensors.py``), ``Blob`` a
literal too large to copy, ``Opaque`` a value only the loading process knows; and the
helpers that describe them in findings.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from ..policy import GlobalStatus
from ..policy.defaults import ALLOW_KINDS
from ..primitives import clip
from .callmodels import CALL_MODELS, TENSOR_BUILDERS, Effect

if TYPE_CHECKING:
    from .tensors import StorageRef, TensorRecord


class PickleMode(enum.Enum):
    """How a pickle will be loaded, which decides what SAFE requires."""

    TORCH_ZIP = "torch-zip"        # data.pkl of a torch zip: torch's weights-only unpickler
    TORCH_LEGACY = "torch-legacy"  # the pickles of a legacy torch stream
    TORCHSCRIPT = "torchscript"    # a TorchScript archive's pickles (torch.jit.load)
    RAW = "raw"                    # a plain pickle: pickle.load


class Global:
    __slots__ = ("full", "kind", "model", "module", "name", "offset", "ok", "ok_empty", "rebuild",
                 "status")

    def __init__(self, module: str, name: str, full: str, offset: int,
                 status: GlobalStatus) -> None:
        self.module = module
        self.name = name
        self.full = full
        self.offset = offset
        self.status = status
        # what calling it means, for allowlisted globals (policy entries count as classes)
        self.kind = ALLOW_KINDS.get(full, "class")
        # what calling it does (callmodels.py), for the weights-only allowlist
        self.model = CALL_MODELS.get(full) if status is GlobalStatus.ALLOW else None
        # plain calls of it are weights-only and need no argument checks beyond the tensor
        # rebuild (checked once here, not per call); everything else goes through call()
        # (a global a profile or policy allows is checked against its reviewed row on
        # every call: vm._profile_call)
        self.ok = status.allowed and self.kind in ("class", "function") and (
            self.model is None or self.model.effect is Effect.VIEW) and \
            status not in USER_ALLOWED
        # a call without arguments needs no checks either (OrderedDict(), set())
        self.ok_empty = self.ok or (self.model is not None and
                                    self.model.effect is Effect.DATA)
        # does calling it build a tensor record?
        self.rebuild = status.allowed and full in TENSOR_BUILDERS

    def __repr__(self) -> str:
        return f"Global({self.full})"


class Call:
    """The result of REDUCE / NEWOBJ / NEWOBJ_EX / INST / OBJ."""

    __slots__ = ("args", "func", "items", "kind", "offset", "state", "tensor")

    def __init__(self, func: object, args: object, offset: int, kind: str) -> None:
        self.func = func
        self.args = args
        self.offset = offset
        self.kind = kind
        self.items: list[tuple[object, object]] | None = None
        self.state: object = None
        self.tensor: TensorRecord | None = None

    def __repr__(self) -> str:
        return f"Call({self.func!r})"


class PersRef:
    __slots__ = ("offset", "pid", "storage")

    def __init__(self, pid: object, offset: int) -> None:
        self.pid = pid
        self.offset = offset
        self.storage: StorageRef | None = None


class Blob:
    """A literal too large to copy: only its kind, length and position are kept."""

    __slots__ = ("kind", "length", "offset")

    def __init__(self, kind: str, length: int, offset: int) -> None:
        self.kind = kind
        self.length = length
        self.offset = offset


class Opaque:
    """A value the VM cannot know statically (an EXT code, an out-of-band buffer)."""

    __slots__ = ("offset", "what")

    def __init__(self, what: str, offset: int) -> None:
        self.what = what
        self.offset = offset


#: policy statuses that a user's own choice allowed (a policy entry, an acknowledgement, a
#: TorchScript archive's own classes): treated as classes the user vouches for
USER_ALLOWED = frozenset({GlobalStatus.POLICY, GlobalStatus.ACKNOWLEDGED, GlobalStatus.SCRIPT})


def int_tuple(v: object) -> bool:
    if type(v) is not tuple:
        return False
    for x in v:  # noqa: SIM110 - a plain loop: all(genexpr) costs a generator per tensor
        if type(x) is not int:
            return False
    return True


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def encoded_bytes(v: object) -> bool:
    """Is ``v`` the protocol-2 spelling of a bytes literal, _codecs.encode(str, 'latin1')?"""
    return isinstance(v, Call) and isinstance(v.func, Global) and \
        v.func.full == "_codecs.encode" and isinstance(v.args, tuple) and len(v.args) == 2 \
        and isinstance(v.args[0], (str, Blob)) and v.args[1] in ("latin1", "latin-1")


def describe(v: object) -> str:
    if isinstance(v, Call):
        return f"result of {describe(v.func)}(...)"
    if isinstance(v, Global):
        return clip(v.full)
    if isinstance(v, PersRef):
        return "a persistent id"
    if isinstance(v, Opaque):
        return v.what
    return type(v).__name__


def describe_value(v: object) -> str:
    if isinstance(v, (Call, Global, PersRef, Opaque)):
        return describe(v)
    if isinstance(v, Blob):
        return f"a {v.length}-byte {v.kind} literal"
    return f"a {type(v).__name__} literal"


def plain(v: object, depth: int = 0) -> object:
    """A small printable stand-in for a symbolic value (bounded in depth and width: a
    memoised million-item list must not be rendered once per finding)."""
    if depth > 3:
        return "..."
    if isinstance(v, tuple):
        return tuple(plain(x, depth + 1) for x in v[:8])
    if isinstance(v, list):
        return [plain(x, depth + 1) for x in v[:8]] + (["..."] if len(v) > 8 else [])
    if isinstance(v, (dict, set, frozenset, bytearray)):
        return f"<{type(v).__name__} of {len(v)}>"
    if isinstance(v, (str, bytes)) and len(v) > 200:
        return v[:200]
    if isinstance(v, Global):
        return v.full
    if isinstance(v, (Call, PersRef, Opaque, Blob)):
        return describe(v)
    return v


__all__ = ["USER_ALLOWED", "Blob", "Call", "Global", "Opaque", "PersRef", "PickleMode",
           "describe", "describe_value", "encoded_bytes", "int_tuple", "numel", "plain"]
