"""Audit the readings of a file that its own format's audit does not cover.

``detect.unaudited_readings`` says, from THE reader table, which code-running readings the
loaders that may open the file take besides the sniffed format's. This module audits them:

- a pickle from byte 0 (pickle.load, numpy.load's fallback, torch.load's legacy path): a
  linear opcode walk finds where CPython's unpickler must stop at the latest (an invalid
  opcode, STOP, the end of the file, an EXT code, a persistent id for readers without
  ``persistent_load``) and whether a GLOBAL/INST/STACK_GLOBAL opcode lies before it.
  Only then is the prefix run through the symbolic VM in a scratch context; when the VM
  reaches a global, the reading is live: CKG011 plus the VM's
  findings, under the member ``<pickle reading>``. Benign files stop within a few bytes.
- a zip through miniz (torch.jit.load takes any name): when an end record ends the file,
  the archive is audited too.
- the legacy tar reading (torch.load tries tarfile first): the tar audit.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..context import AuditContext, LimitExceeded
from ..detect import Loader, Reading
from ..model import Format, Severity
from . import opcodes as O

PICKLE_READING = "<pickle reading>"

#: Opcodes that name a callable (every call needs one first).
_NAMING = frozenset({O.GLOBAL, O.INST, O.STACK_GLOBAL})
_PERSISTENT = frozenset({O.PERSID, O.BINPERSID})
#: EXT codes resolve through the loading process's copyreg registry, which is empty unless
#: the process fills it: the unpickler dies there. (A byte 0x82-0x84 starts 1 in 85 real
#: safetensors headers; a file whose own audit runs pickle reports EXT as CKG105.)
_EXT = frozenset({O.EXT1, O.EXT2, O.EXT4})


def audit_readings(ctx: AuditContext, fmt: Format, todo: dict[Reading, frozenset[Loader]],
                   *, zip_audited: bool, has_eocd: bool, head: bytes = b"") -> None:
    """Audit each reading in ``todo`` (from ``detect.unaudited_readings``)."""
    if Reading.PICKLE_TORCH in todo:
        # a superset of the plain reading: persistent ids do not stop it
        _pickle_reading(ctx, fmt, todo[Reading.PICKLE_TORCH] |
                        todo.get(Reading.PICKLE, frozenset()), persistent_ok=True, head=head)
    elif Reading.PICKLE in todo:
        _pickle_reading(ctx, fmt, todo[Reading.PICKLE], persistent_ok=False, head=head)
    if (Reading.ZIP_MINIZ in todo or Reading.ZIP_PYTHON in todo) and not zip_audited and \
            has_eocd:
        loaders = todo.get(Reading.ZIP_MINIZ, frozenset()) | todo.get(Reading.ZIP_PYTHON,
                                                                      frozenset())
        ctx.add("CKG005", f"the {fmt.value} file also ends in a zip archive, which "
                f"{_names(loaders)} read instead", evidence={"readers": _names(loaders)})
        from .torchfile import audit_zip

        audit_zip(ctx)
    if Reading.TAR in todo:
        from .torchfile import audit_legacy_tar

        readers = _names(todo[Reading.TAR])
        ctx.add("CKG012", f"this {fmt.value} file also starts with a tar header that Python's "
                f"tarfile accepts: {readers} read it as a legacy tar checkpoint and unpickle "
                "its members", offset=0, evidence={"readers": readers})
        audit_legacy_tar(ctx, as_reading=True)


def _names(loaders: frozenset[Loader]) -> str:
    return ", ".join(sorted(x.value for x in loaders))


def _pickle_reading(ctx: AuditContext, fmt: Format, loaders: frozenset[Loader], *,
                    persistent_ok: bool, head: bytes) -> None:
    walk = pickle_walk(ctx, persistent_ok=persistent_ok, head=head)
    if walk.first_naming < 0:
        return
    from .vm import PickleMode, audit_pickle

    data = ctx.source.read(0, walk.end, record=True)
    scratch = AuditContext(ctx.path, ctx.source, ctx.policy, ctx.limits)
    result = audit_pickle(scratch, data, member=PICKLE_READING, mode=PickleMode.RAW)
    if not result.globals:
        if walk.text_before_naming and any(
                f.rule_id in ("CKG202", "CKG204") for f in scratch.findings):
            # The VM refused a text opcode (INT/LONG/FLOAT/... lines) before the first
            # global; CPython's C unpickler parses those lines more leniently (strtol stops
            # at a NUL): the reading cannot be ruled out.
            _uncertain(ctx, fmt, loaders, data, walk.first_naming)
        return  # otherwise the unpickler fails before it names anything
    names = sorted({g.full for g in result.globals})
    ctx.add("CKG011", f"read as a pickle from byte 0 ({_names(loaders)}), this "
            f"{fmt.value} file is a program that imports {', '.join(names[:5])}",
            member=PICKLE_READING, offset=0,
            evidence={"readers": _names(loaders), "globals": ", ".join(names[:20])})
    for f in scratch.findings:
        if f.rule_id not in ("CKG201", "CKG203"):  # cut where the walk stopped
            ctx.findings.append(f)
    ctx.problems.extend(scratch.problems)


def _uncertain(ctx: AuditContext, fmt: Format, loaders: frozenset[Loader], data: bytes,
               at: int) -> None:
    from ..policy import GlobalStatus, classify_global

    name = "a global"
    severity = None
    if data[at] in (O.GLOBAL, O.INST):
        parts = data[at + 1 :].split(b"\n", 2)
        if len(parts) == 3:
            name = (parts[0] + b"." + parts[1]).decode("utf-8", "replace")[:120]
            if classify_global(name, ctx.policy).status is GlobalStatus.DENY:
                severity = Severity.CRITICAL
    ctx.add("CKG011", f"read as a pickle from byte 0 ({_names(loaders)}), this {fmt.value} "
            f"file reaches {name} at byte {at} after text opcodes that CPython's unpickler "
            "parses more leniently than the audit", member=PICKLE_READING, offset=at,
            evidence={"readers": _names(loaders), "globals": name}, severity=severity)


@dataclass(frozen=True)
class Walk:
    end: int                   # where every unpickler has stopped at the latest
    first_naming: int          # offset of the first GLOBAL/INST/STACK_GLOBAL, -1 if none
    text_before_naming: bool   # a newline-terminated opcode comes before it


def pickle_walk(ctx: AuditContext, *, persistent_ok: bool, head: bytes = b"") -> Walk:
    """Decode opcodes from byte 0 without semantics: where any unpickler must have stopped
    at the latest (just past STOP, or at an invalid opcode, the end of the file, an EXT
    code, or a persistent id when ``persistent_ok`` is False) and where the first opcode
    that names a callable lies before that. Raises LimitExceeded when the walk is
    still going at ``max_pickle_bytes`` and the file goes on."""
    src = ctx.source
    size = src.size
    limit = min(size, ctx.limits.max_pickle_bytes)
    fixed, counted, lines = O.FIXED_ARG, O.COUNTED_ARG, O.LINE_ARG
    win = _Window(ctx, head)
    pos = 0
    first = -1
    text = False

    def done(end: int) -> Walk:
        return Walk(end, first, text and first >= 0)
    while True:
        if pos >= limit:
            if pos < size:
                raise LimitExceeded("max_pickle_bytes", ctx.limits.max_pickle_bytes,
                                    "the file read as a pickle from byte 0 runs past the limit")
            return done(size)
        op = win.byte(pos)
        if op not in O.ALL_OPCODES or op in _EXT or (op in _PERSISTENT and not persistent_ok):
            return done(pos)
        if op in _NAMING and first < 0:
            first = pos
        elif op in lines and first < 0:
            text = True
        if op == O.STOP:
            return done(pos + 1)
        pos += 1
        if op in fixed:
            pos += fixed[op]
        elif op in counted:
            w, signed = counted[op]
            raw = win.get(pos, w)
            if len(raw) < w:
                return done(size)
            ln = int.from_bytes(raw, "little", signed=signed)
            if ln < 0:
                return done(pos)
            pos += w + ln
        elif op in lines:
            for _ in range(lines[op]):
                nl = win.find_newline(pos, limit)
                if nl < 0:
                    if limit < size:
                        raise LimitExceeded("max_pickle_bytes", ctx.limits.max_pickle_bytes,
                                            "a text opcode of the pickle reading has no end")
                    return done(size)
                pos = nl + 1


class _Window:
    """Sequential reads of the source in growing chunks, keeping only recent bytes."""

    def __init__(self, ctx: AuditContext, head: bytes = b"") -> None:
        self.src = ctx.source
        self.start = 0
        # the engine's first read of the file, when it has one: no second read for the
        # common case (an unpickler that dies within a few bytes)
        self.buf = head or self.src.read(0, min(self.src.size, 4096))
        self.chunk = 1 << 16

    def _fill(self, upto: int) -> None:
        while self.start + len(self.buf) < min(upto, self.src.size):
            end = self.start + len(self.buf)
            more = self.src.read(end, min(self.chunk, self.src.size - end))
            if not more:
                return
            self.buf += more
            self.chunk = min(self.chunk * 2, 1 << 24)
            if len(self.buf) > (4 << 20):  # keep the last MiB: the walk only moves forward
                cut = len(self.buf) - (1 << 20)
                self.buf, self.start = self.buf[cut:], self.start + cut

    def get(self, pos: int, n: int) -> bytes:
        end = self.start + len(self.buf)
        if pos < self.start or pos > end + (1 << 20):  # a long skip: jump, do not read through
            self.start, self.buf = pos, self.src.read(pos, max(n, 4096))
        else:
            self._fill(pos + n)
        i = pos - self.start
        return self.buf[i : i + n]

    def byte(self, pos: int) -> int:
        b = self.get(pos, 1)
        return b[0] if b else -1

    def find_newline(self, pos: int, limit: int) -> int:
        j = pos
        while True:
            j = max(j, self.start)  # bytes before the window were searched already
            i = self.buf.find(b"\n", j - self.start)
            if i >= 0:
                return self.start + i if self.start + i < limit else -1
            end = self.start + len(self.buf)
            if end >= limit:
                return -1
            j = end
            self._fill(end + 1)
            if self.start + len(self.buf) <= end:
                return -1


__all__ = ["PICKLE_READING", "Walk", "audit_readings", "pickle_walk"]
