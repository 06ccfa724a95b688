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
import stat
from dataclasses import dataclass, field

from ..context import AuditContext, LimitExceeded
from ..detect import DCP_METADATA_RE as METADATA_RE
from ..detect import DCP_SHARD_SUFFIX as SHARD_SUFFIX
from ..detect import lists_dcp_metadata as lists_metadata
from ..policy.benign_formats import FormatScope, allowance_for
from .values import Call, Global
from .vm import PickleMode, audit_pickle

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


__all__ = ["METADATA_RE", "SHARD_SUFFIX", "DcpMetadata", "Key", "StorageEntry",
           "audit_metadata", "is_dcp_dir", "lists_metadata", "parse_metadata"]
