"""The small text records of torch's zip layouts (``byteorder``, ``version``,
``archive_format``...), read the one way both the torch-zip and the torch.export auditors
need: bounded, and a record past a few bytes is a finding under the caller's rule."""

from __future__ import annotations

from ..context import AuditContext
from ..readers.zipfile import ZipArchive, ZipEntry

SMALL_RECORD = 4096


def read_small_record(ctx: AuditContext, archive: ZipArchive, e: ZipEntry,
                      rule_id: str) -> bytes | None:
    """The record's bytes, or None (with a ``rule_id`` finding) when it is too long."""
    if e.size > SMALL_RECORD:
        ctx.add(rule_id, f"record {e.name} is {e.size} bytes, expected a few", member=e.name)
        return None
    return archive.read(e, max_bytes=SMALL_RECORD)


def check_byteorder(ctx: AuditContext, archive: ZipArchive, records: dict[str, ZipEntry],
                    rule_id: str) -> None:
    """torch reads the ``byteorder`` record as 'little' or 'big'; anything else is a
    ``rule_id`` finding, a valid one goes to the report's metadata."""
    bo = records.get("byteorder")
    if bo is None:
        return
    raw = read_small_record(ctx, archive, bo, rule_id)
    if raw is not None and raw not in (b"little", b"big"):
        ctx.add(rule_id, "byteorder record is neither 'little' nor 'big'", member=bo.name)
    elif raw is not None:
        ctx.metadata["torch.byteorder"] = raw.decode()
