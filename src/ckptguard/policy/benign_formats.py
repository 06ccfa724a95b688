"""Format-scoped benign globals: reviewed data classes that one container format's own
metadata pickle needs, allowed ONLY while auditing that metadata.

These rows never reach :func:`~ckptguard.policy.classify_global`: a plain ``torch.load``,
a raw pickle or any other stream is judged exactly as before (``torch.distributed.*`` and
``pathlib.*`` stay denied there). The pickle VM consults an allowance only when the
format auditor passes one (``audit_pickle(..., allowance=...)``), and every global it
admits is reported under the scope's own rule (INFO), never silently.

Why each row is benign: constructing it (``NEWOBJ`` + ``BUILD`` of a dict, or a call with
plain values) only stores fields; no I/O, no import, no user code. Methods that *do*
something (``FileSystemReader``, planners, ``fs`` objects) are deliberately absent.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field


class FormatScope(enum.Enum):
    """Where a format-scoped allowance applies."""

    #: the ``.metadata`` pickle of a ``torch.distributed.checkpoint`` folder (``dcp.save``),
    #: which ``FileSystemReader.read_metadata`` unpickles with plain ``pickle.load``
    DCP_METADATA = "dcp-metadata"


_DCP_MD = "torch.distributed.checkpoint.metadata"
_DATACLASS = "dcp.save metadata dataclass: NEWOBJ + BUILD of plain fields, no behaviour"

#: (scope, module, name, reason): what ``dcp.save`` (torch 2.13, FileSystemWriter) writes.
BENIGN_FORMAT_GLOBALS: tuple[tuple[FormatScope, str, str, str], ...] = (
    (FormatScope.DCP_METADATA, _DCP_MD, "Metadata", _DATACLASS),
    (FormatScope.DCP_METADATA, _DCP_MD, "StorageMeta", _DATACLASS),
    (FormatScope.DCP_METADATA, _DCP_MD, "MetadataIndex",
     "frozen dataclass keying storage_data (fqn, chunk offset); stores fields only"),
    (FormatScope.DCP_METADATA, _DCP_MD, "TensorStorageMetadata", _DATACLASS),
    (FormatScope.DCP_METADATA, _DCP_MD, "BytesStorageMetadata",
     "empty marker dataclass for non-tensor items"),
    (FormatScope.DCP_METADATA, _DCP_MD, "ChunkStorageMetadata", _DATACLASS),
    (FormatScope.DCP_METADATA, _DCP_MD, "TensorProperties",
     "dataclass whose __setstate__ maps a _MEM_FORMAT_ENCODING member to a memory format"),
    (FormatScope.DCP_METADATA, _DCP_MD, "_MEM_FORMAT_ENCODING",
     "Enum looked up by value (0-2); an Enum lookup runs no user code"),
    (FormatScope.DCP_METADATA, "torch.distributed.checkpoint.filesystem", "_StorageInfo",
     "dataclass (relative_path, offset, length, transform_descriptors); byte ranges are "
     "checked against the folder's files by the DCP auditor"),
    (FormatScope.DCP_METADATA, "pathlib", "PosixPath",
     "StorageMeta.checkpoint_id: constructing a path object does no file I/O"),
)


@dataclass(frozen=True)
class ScopedAllowance:
    """The rows of one scope, keyed by the dotted global, and the INFO rule that reports
    each admitted global."""

    scope: FormatScope
    rule_id: str
    entries: dict[str, str] = field(default_factory=dict)

    def reason(self, candidates: Iterable[str]) -> str | None:
        """The reason when EVERY name a loader could import is on the list, else None."""
        reasons = [self.entries.get(c) for c in candidates]
        if not reasons or any(r is None for r in reasons):
            return None
        return reasons[0]


#: scope -> the rule that reports a global admitted under it
SCOPE_RULES: dict[FormatScope, str] = {FormatScope.DCP_METADATA: "CKG801"}


def allowance_for(scope: FormatScope) -> ScopedAllowance:
    return ScopedAllowance(scope, SCOPE_RULES[scope], {
        f"{m}.{n}": reason for s, m, n, reason in BENIGN_FORMAT_GLOBALS if s is scope})


__all__ = ["BENIGN_FORMAT_GLOBALS", "SCOPE_RULES", "FormatScope", "ScopedAllowance",
           "allowance_for"]
