"""Audit the readings of a file that its own format's audit does not cover.

``detect.unaudited_readings`` says, from THE reader table, which code-running readings the
loaders that may open the file take besides the sniffed format's. This module audits them:

- a pickle from byte 0 (pickle.load, numpy.load's fallback, torch.load's legacy path): a
  linear opcode walk finds where CPython's unpickler must stop at the latest (an invalid
  opcode, STOP, the end of the file, an EXT code, a persistent id for readers without
  ``persistent_load``, an opcode its stack or MARKs cannot feed) and whether a
  GLOBAL/INST/STACK_GLOBAL opcode lies before it. Only then is the prefix run through the
  symbolic VM in a scratch context. When the VM reaches a global, the reading is live:
  CKG011 plus the VM's findings, under the member ``<pickle reading>``. When it stops
  before the global on an opcode it refuses (CPython may not), the reading cannot be
  ruled out: CKG011 all the same. Benign files stop within a few bytes.
- torch's legacy stream: torch.load goes on to a second, third, fourth (with its
  ``persistent_load``) and fifth pickle while the ones before return the magic number and
  the protocol version: each is walked and judged the same way.
- a zip through miniz (torch.jit.load takes any name): when an end record ends the file,
  the archive is audited too.
- the legacy tar reading (torch.load tries tarfile first): the tar audit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..context import AuditContext, LimitExceeded
from ..detect import TORCH_LEGACY_MAGIC, Loader, Reading
from ..model import Format, Severity
from . import opcodes as O

if TYPE_CHECKING:
    from .vm import PickleResult

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
    if Reading.PICKLE in todo or Reading.PICKLE_TORCH in todo:
        _pickle_reading(ctx, fmt, todo.get(Reading.PICKLE, frozenset()),
                        todo.get(Reading.PICKLE_TORCH, frozenset()), head=head)
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


#: torch's legacy stream (torch.serialization._legacy_load): the pickles it loads one after
#: the other from byte 0, each with what the one before must have returned for torch to go
#: on (None: anything), and whether it is read with torch's ``persistent_load``.
_LEGACY_STREAM: tuple[tuple[str, int | None, bool], ...] = (
    ("magic number", TORCH_LEGACY_MAGIC, False),
    ("protocol version", 1001, False),
    ("sys info", None, False),
    ("main", None, True),
    ("storage keys", None, False),
)


def _pickle_reading(ctx: AuditContext, fmt: Format, plain: frozenset[Loader],
                    torch: frozenset[Loader], *, head: bytes) -> None:
    """The file read as pickles from byte 0: one program for ``plain`` readers (pickle.load,
    numpy.load's fallback), and torch's legacy stream for ``torch`` (torch.load): the
    same first program (plain ``pickle.load``: a persistent id fails), then, while each
    returns what torch checks for, the next. The first program that can reach a global
    ends the audit of the reading (CKG011 with the VM's findings, or CKG011 as uncertain
    where the VM stops before the global on something CPython may accept)."""
    win = _Window(ctx, head)
    start = 0
    for i, (label, expect, persistent_ok) in enumerate(_LEGACY_STREAM):
        loaders = plain | torch if i == 0 else torch
        if not loaders:
            return
        walk = pickle_walk(ctx, persistent_ok=persistent_ok, start=start, win=win)
        if walk.first_naming >= 0:
            _live_or_uncertain(ctx, fmt, loaders, walk, "" if i == 0 else label)
            return
        if not torch or not walk.returns or i == len(_LEGACY_STREAM) - 1:
            return
        # no global before this program's STOP: does torch go on to the next one?
        result = _run_vm(ctx, walk)[1]
        root = result.root
        if not result.complete:  # the VM refused an opcode CPython may accept
            _uncertain(ctx, torch, walk.end - 1, None,
                       f"read as torch's legacy stream from byte 0 ({_names(torch)}), this "
                       f"{fmt.value} file holds a {label} pickle that the audit cannot run to "
                       "its end on an opcode CPython's unpickler may accept, and torch.load "
                       "reads the next pickle when it returns the expected value")
            return
        if expect is not None and not (type(root) in (int, float, bool) and root == expect):
            return  # torch raises ("Invalid magic number" / "Invalid protocol version")
        start = walk.end


def _run_vm(ctx: AuditContext, walk: Walk) -> tuple[AuditContext, PickleResult]:
    """The VM over ``walk``'s program, in a scratch context (its findings are added only
    when the reading is live)."""
    from .vm import PickleMode, audit_pickle

    data = ctx.source.read(walk.start, walk.end - walk.start, record=True)
    scratch = AuditContext(ctx.path, ctx.source, ctx.policy, ctx.limits)
    return scratch, audit_pickle(scratch, data, member=PICKLE_READING,
                                 base_offset=walk.start, mode=PickleMode.RAW)


def _live_or_uncertain(ctx: AuditContext, fmt: Format, loaders: frozenset[Loader],
                       walk: Walk, label: str) -> None:
    scratch, result = _run_vm(ctx, walk)
    where = "byte 0" if not label else f"byte {walk.start} (the {label} pickle of torch's " \
        "legacy stream)"
    if not result.globals:
        # The walk proved that every unpickler gets to the global with the stack and MARKs
        # it needs; the VM stopped before it on an opcode it refuses (a BUILD, APPEND or
        # SETITEM on a value it does not model that way, a text literal, a limit) that
        # CPython may accept: the reading cannot be ruled out.
        name = _global_at(ctx, walk)
        _uncertain(ctx, loaders, walk.first_naming, name,
                   f"read as a pickle from {where} ({_names(loaders)}), this {fmt.value} file "
                   f"reaches {name or 'a global'} at byte {walk.first_naming}, and the audit "
                   "stops before it on an opcode CPython's unpickler may accept")
        return
    names = sorted({g.full for g in result.globals})
    ctx.add("CKG011", f"read as a pickle from {where} ({_names(loaders)}), this "
            f"{fmt.value} file is a program that imports {', '.join(names[:5])}",
            member=PICKLE_READING, offset=walk.start,
            evidence={"readers": _names(loaders), "globals": ", ".join(names[:20])})
    for f in scratch.findings:
        if f.rule_id not in ("CKG201", "CKG203"):  # cut where the walk stopped
            ctx.findings.append(f)
    ctx.problems.extend(scratch.problems)


def _global_at(ctx: AuditContext, walk: Walk) -> str | None:
    """``module.name`` of the GLOBAL/INST at ``walk.first_naming`` (as far as its lines
    read), or None (a STACK_GLOBAL, or lines that do not read)."""
    raw = ctx.source.read(walk.first_naming, 600)
    if raw[:1] in (b"c", b"i"):
        parts = raw[1:].split(b"\n", 2)
        if len(parts) == 3:
            return (parts[0] + b"." + parts[1]).decode("utf-8", "replace")[:120]
    return None


def _uncertain(ctx: AuditContext, loaders: frozenset[Loader], at: int, name: str | None,
               message: str) -> None:
    """CKG011 for a reading the audit cannot rule out: CRITICAL when the global it reaches
    is on the deny list."""
    from ..policy import GlobalStatus, classify_global

    severity = None
    if name is not None and classify_global(name, ctx.policy).status is GlobalStatus.DENY:
        severity = Severity.CRITICAL
    ctx.add("CKG011", message, member=PICKLE_READING, offset=at,
            evidence={"readers": _names(loaders), "globals": name or "unknown"},
            severity=severity)


@dataclass(frozen=True)
class Walk:
    start: int
    end: int            # where every unpickler has stopped at the latest
    first_naming: int   # the first GLOBAL/INST/STACK_GLOBAL every unpickler reaches with
    #                     the stack and MARK it needs, -1 if none
    returns: bool       # the program ends at a STOP with a value to return


#: MARK frames the walk follows; deeper, it stops proving underflows (and says so by
#: assuming every later opcode runs)
_MAX_FRAMES = 1 << 20


def _name_line(line: bytes) -> bool:
    """Can a GLOBAL/INST line name a module or attribute? CPython's unpickler refuses an
    empty line (``bad_readline``) and decodes the line as strict UTF-8 (INST: ASCII, which
    is stricter) before it looks anything up."""
    if not line:
        return False
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def pickle_walk(ctx: AuditContext, *, persistent_ok: bool, head: bytes = b"", start: int = 0,
                win: _Window | None = None) -> Walk:
    """Decode opcodes from ``start`` without semantics: where any unpickler must have
    stopped at the latest (just past STOP, or at an invalid opcode, the end of the file,
    an EXT code, a persistent id when ``persistent_ok`` is False, or an opcode the stack
    or the MARKs cannot feed -- CPython's underflow checks, followed exactly
    (opcodes.STACK_EFFECT / MARK_EFFECT)) and where the first opcode that names a callable
    lies before that. Raises LimitExceeded when the walk is still going at
    ``max_pickle_bytes`` and the file goes on."""
    src = ctx.source
    size = src.size
    limit = min(size, start + ctx.limits.max_pickle_bytes)
    fixed, counted, lines = O.FIXED_ARG, O.COUNTED_ARG, O.LINE_ARG
    effect, mark_effect = O.STACK_EFFECT, O.MARK_EFFECT
    if win is None:
        win = _Window(ctx, head if start == 0 else b"")
    pos = start
    first = -1
    frames = [0]  # values in each open MARK frame, the innermost last
    exact = True  # False past _MAX_FRAMES: underflows no longer proven

    def done(end: int, returns: bool = False) -> Walk:
        return Walk(start, end, first, returns)
    while True:
        if pos >= limit:
            if pos < size:
                raise LimitExceeded("max_pickle_bytes", ctx.limits.max_pickle_bytes,
                                    "the file read as a pickle from byte 0 runs past the limit")
            return done(size)
        op = win.byte(pos)
        if op not in O.ALL_OPCODES or op in _EXT or (op in _PERSISTENT and not persistent_ok):
            return done(pos)
        if exact:
            top = frames[-1]
            if op == O.MARK:
                if len(frames) >= _MAX_FRAMES:
                    exact = False
                frames.append(0)
            elif op == O.POP:
                if top:
                    frames[-1] = top - 1
                elif len(frames) > 1:
                    frames.pop()
                else:
                    return done(pos)
            elif op in mark_effect:
                need, outer, push, even = mark_effect[op]
                if len(frames) == 1 or top < need or (even and top % 2) or \
                        frames[-2] < outer:
                    return done(pos)
                frames.pop()
                frames[-1] += push
            else:
                need, delta = effect[op]
                if top < need:
                    return done(pos)
                frames[-1] = top + delta
        if op == O.STOP:
            return done(pos + 1, returns=True)
        op_pos = pos
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
                if op in _NAMING and not _name_line(win.get(pos, nl - pos)):
                    return done(op_pos)  # the unpickler refuses the line: nothing imported
                pos = nl + 1
        if op in _NAMING and first < 0:
            first = op_pos  # its arguments are all there: the unpickler looks the name up


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
