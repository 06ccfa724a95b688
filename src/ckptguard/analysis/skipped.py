"""Files a folder walk skips as "not model files" -- unless some loader would run them.

A folder walk (``analysis/folder.py`` for ``scan()``, ``cli/discover.py`` for the CLI and
the Hugging Face cache) audits the files that are or claim to be checkpoints and skips
the rest: README.md, config and tokenizer files, images, source code. But pickle.load,
numpy.load(allow_pickle=True) and torch.load take ANY file whatever its name says
(``detect.ANY_FILE_LOADERS``), so a file is skipped only when none of the code-running
readings of the reader table (``detect.LOADER_RULES``) can take it:

- a pickle from byte 0 (pickle.load, numpy.load's fallback, torch.load's legacy path)
  needs an opcode at byte 0: the unpickler dies on the first byte otherwise;
- torch.load's legacy tar reading needs a header ``tarfile`` accepts in bytes 0-511;
- the zip readers that look from the end (torch.jit.load's miniz, zipfile) need an end
  record that ends the file.

``may_run_code`` is that cheap test (the first bytes, and a tail read only when the file
is longer than the head). A file that passes it gets the engine's normal audit
(``engine.audit_fd``), and ``worth_reporting`` decides: a reading the audit found live
(CKG011 pickle reading, CKG012 tar reading, CKG005 appended zip, with the payload's own
findings), any other finding that is more than the engine's note that the content is no
checkpoint, or an audit that could not finish (fail closed) -> the file is reported like
any audited file. Otherwise it stays skipped, as before. Most skipped files (markdown,
JSON, Python source, images) fail the cheap test and are never audited.
"""

from __future__ import annotations

from ..context import Source
from ..detect import (
    PICKLE_OPCODE_BYTES,
    ZIP_END_RECORD_MAX,
    ends_in_zip_end_record,
    is_tar_header,
)
from ..model import Effect, Report
from ..policy import Limits, Policy

#: The engine's findings that only say the content is no checkpoint (unknown format,
#: a wrapper it does not open, an empty file): a skipped file with nothing else stays
#: skipped.
NOT_A_CHECKPOINT = frozenset({"CKG001", "CKG002", "CKG006"})
#: Bytes read from the start of a file (the engine's and the walks' head).
HEAD_BYTES = 4096


def may_run_code(src: Source, head: bytes) -> bool:
    """Could a code-running reading take this file? ``head``: its first bytes (at least
    512 when the file is that long). False proves no reading of the reader table runs
    anything from it; True only means the engine must look."""
    if src.size == 0 or not head:
        return False
    if head[0] in PICKLE_OPCODE_BYTES or is_tar_header(head):
        return True
    if src.size < 22:
        return False
    n = min(src.size, ZIP_END_RECORD_MAX)
    tail = head[-n:] if len(head) >= src.size else src.read(src.size - n, n)
    return ends_in_zip_end_record(tail, src.size - n, src.read)


def may_run_code_fd(fd: int, size: int, head: bytes) -> bool:
    """``may_run_code`` for an open local file."""
    return may_run_code(Source(fd, size), head)


def worth_reporting(report: Report) -> bool:
    """Is the audit of a skipped file a reason to report it? Any problem, or any finding
    other than a note and the engine's "no checkpoint format" findings."""
    return bool(report.problems) or any(
        f.effect is not Effect.NOTE and f.rule_id not in NOT_A_CHECKPOINT
        for f in report.findings)


def runs_code_fd(path: str, fd: int, size: int, head: bytes, *, policy: Policy,
                 limits: Limits) -> Report | None:
    """The engine's audit of an open regular file a folder walk would skip as no model
    file (``head``: its first bytes), when it is worth reporting (``worth_reporting``);
    None when it stays skipped. The cheap test first (most such files fail it), then the
    audit from the same descriptor."""
    if not may_run_code_fd(fd, size, head):
        return None
    from .engine import audit_fd

    report = audit_fd(path, fd, policy=policy, limits=limits)
    return report if worth_reporting(report) else None


__all__ = ["HEAD_BYTES", "NOT_A_CHECKPOINT", "may_run_code", "may_run_code_fd",
           "runs_code_fd", "worth_reporting"]
