"""Files inside files: audit a byte range of the file being audited as a file of its own,
with the full engine (format sniffing, zip reader, pickle VM, every rule).

Used for the torch.save archives ``dcp.save`` writes at byte ranges of a ``.distcp`` file
and for the nested torch.save members of a ``.pt2`` archive (sample inputs, pickled
weights and constants). The range is read through a :class:`~ckptguard.context.SliceSource`
over the outer descriptor, so the audited regions land in the outer file's identity (the
same-bytes check at load time covers them). Findings are copied into the outer context
with ``member`` = ``<label>`` or ``<label>:<inner member>`` and offsets in the outer
file's coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..context import AuditContext, LimitExceeded, SliceSource, Source
from ..model import Format, Location, Problem, TensorInfo

#: how deep files may nest (a .pt2 inside a .pt2 member inside ...): deeper is a limit hit
MAX_NESTING = 3


@dataclass(frozen=True)
class NestedResult:
    format: Format
    tensors: tuple[TensorInfo, ...]
    complete: bool  # no limit hit and no problem inside


def audit_range(ctx: AuditContext, offset: int, length: int, label: str) -> NestedResult:
    """Audit ``[offset, offset + length)`` of ``ctx.source`` as a file called ``label``."""
    return _audit_source(ctx, SliceSource(ctx.source, offset, length), offset, label)


def audit_data(ctx: AuditContext, data: bytes, offset: int, label: str) -> NestedResult:
    """Audit ``data`` (a member inflated from ``ctx``'s file at ``offset``) as a file called
    ``label``. Offsets inside it are reported from ``offset``."""
    src = Source.from_bytes(data)
    src.deadline = ctx.source.deadline
    src.depth = ctx.source.depth + 1
    return _audit_source(ctx, src, offset, label)


def _audit_source(ctx: AuditContext, src: Source, offset: int, label: str) -> NestedResult:
    if src.depth > MAX_NESTING:
        ctx.limit_hit(LimitExceeded("nesting", MAX_NESTING, "archives nested in archives"),
                      member=label, offset=offset)
        return NestedResult(Format.UNKNOWN, (), False)
    audit_file = ctx.audit_file
    if audit_file is None:  # a context the engine never ran on: an internal error
        raise RuntimeError("no file auditor for a nested file")
    sub = AuditContext(ctx.path, src, ctx.policy, ctx.limits, audit_file=audit_file)
    fmt = audit_file(sub, label)
    base = offset  # in ctx's coordinates; an outer audit_range shifts them again
    for f in sub.findings:
        inner = f.location.member
        member = label if inner is None else f"{label}:{inner}"
        off = None if f.location.offset is None else base + f.location.offset
        ctx.findings.append(replace(f, location=Location(ctx.path, member, off)))
    for p in sub.problems:
        inner = p.location.member
        ctx.problems.append(Problem(p.message, Location(
            ctx.path, label if inner is None else f"{label}:{inner}",
            None if p.location.offset is None else base + p.location.offset)))
    complete = not sub.problems and not any(f.rule_id == "CKG901" for f in sub.findings)
    tensors = tuple(t if t.data_offset is None else replace(t, data_offset=base + t.data_offset)
                    for t in sub.tensors)
    return NestedResult(fmt, tensors, complete)


__all__ = ["MAX_NESTING", "NestedResult", "audit_data", "audit_range"]
