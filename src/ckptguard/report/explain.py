"""``ckptguard explain``: a checkpoint's pickle programs as readable Python, with the calls
the audit flagged marked.

Decompiling uses fickling's symbolic interpreter (``fickling.fickle.Interpreter``): it builds
an AST from the opcodes and never imports or calls anything. Pickle programs are taken
from the file through ckptguard's own strict zip reader (never Python's ``zipfile``, which
reads some hostile archives differently). fickling's own warnings are captured, not printed.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import LoaderUnavailableError
from ..model import Format, Report
from ..policy import Limits, Policy
from ..primitives import escape_untrusted, open_readonly
from .options import FormatOptions
from .text import SEVERITY_STYLE, finding_text, make_console

#: Rule IDs whose evidence names a global that the program imports (and may call).
_GLOBAL_RULES_PREFIX = "CKG1"
_LEGACY_PICKLES = 5  # magic, protocol, sys_info, the data, the storage keys
MAX_LINE = 400


@dataclass(frozen=True)
class ExplainedLine:
    text: str
    marks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Program:
    label: str
    offset: int
    lines: tuple[ExplainedLine, ...] = ()
    error: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass
class Explanation:
    report: Report
    programs: list[Program] = field(default_factory=list)
    note: str | None = None


def _flagged(report: Report) -> dict[tuple[str, str], list[str]]:
    """(module, name) as written in the pickle -> marks like 'CKG101 critical'."""
    out: dict[tuple[str, str], list[str]] = {}
    for f in report.all_findings():
        if not f.rule_id.startswith(_GLOBAL_RULES_PREFIX):
            continue
        ev = f.evidence_dict
        module, name = ev.get("module"), ev.get("name")
        if module is None or name is None:
            g = ev.get("global")
            if g is None or "." not in g:
                continue
            module, _, name = g.rpartition(".")
        mark = f"{f.rule_id} {f.severity}"
        marks = out.setdefault((module, name), [])
        if mark not in marks:
            marks.append(mark)
    return out


#: a statement is written out only up to this many AST nodes. fickling's AST shares one
#: node per memo reference, so a few hundred bytes of BINPUT/BINGET (L_i = [L_i-1, L_i-1])
#: describe a tree of 2**depth nodes: ast.walk / ast.unparse would expand every copy
MAX_RENDER_NODES = 200_000


def _nodes_once(root: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``root`` once, shared ones included (ast.walk visits a shared node
    once per reference)."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        todo.extend(ast.iter_child_nodes(node))


def _expanded_size(root: ast.AST, cap: int) -> int:
    """How many nodes ``root`` has written out as a tree (shared nodes counted once per
    reference), computed over the shared graph and saturated just above ``cap``."""
    size: dict[int, int] = {}
    open_: set[int] = set()  # on the current path: a node reached again is a cycle
    stack: list[tuple[ast.AST, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in size:
            continue
        kids = list(ast.iter_child_nodes(node))
        if not done:
            if id(node) in open_:
                return cap + 1  # a cycle: no tree to write out
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in size)
            continue
        open_.discard(id(node))
        size[id(node)] = min(cap + 1, 1 + sum(size[id(k)] for k in kids))
    return size[id(root)]


def _decompile(data: bytes, limits: Limits,
               flagged: dict[tuple[str, str], list[str]]) -> tuple[list[ExplainedLine], str | None,
                                                                   str | None, int]:
    """Decompile the first pickle program in ``data``: (lines, error, warnings, bytes used)."""
    try:
        from fickling.fickle import Interpreter, InterpreterLimits, Pickled
    except ImportError as e:  # pragma: no cover - fickling is an optional extra
        raise LoaderUnavailableError(
            "ckptguard explain needs fickling: pip install 'ckptguard[explain]'") from e
    stream = io.BytesIO(data)
    warn = io.StringIO()
    try:
        with contextlib.redirect_stderr(warn), contextlib.redirect_stdout(warn):
            pickled = Pickled.load(stream, fail_on_decode_error=False)
            used = stream.tell()
            interp = Interpreter(pickled, limits=InterpreterLimits(
                # every opcode takes at least one byte of the program
                max_opcodes=max(len(data), 1), max_stack_depth=max(limits.max_stack, 1),
                max_memo_size=max(limits.max_memo, 1), max_get_ratio=1_000_000))
            module = interp.to_ast()
    except Exception as e:  # noqa: BLE001 - fickling failing on hostile input is reported
        return [], f"{type(e).__name__}: {e}", warn.getvalue() or None, stream.tell()
    lines: list[ExplainedLine] = []
    flagged_locals: dict[str, list[str]] = {}
    for stmt in module.body:
        marks: list[str] = []
        if isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                hit = flagged.get((stmt.module or "", alias.name))
                if hit:
                    marks.extend(m for m in hit if m not in marks)
                    flagged_locals[alias.asname or alias.name] = hit
        else:
            for node in _nodes_once(stmt):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    for m in flagged_locals.get(node.func.id, ()):
                        if m not in marks:
                            marks.append(m)
        size = _expanded_size(stmt, MAX_RENDER_NODES)
        if size > MAX_RENDER_NODES:
            text = (f"<statement not rendered: more than {MAX_RENDER_NODES:,} nodes once its "
                    "shared (memoized) values are written out>")
        else:
            try:
                text = ast.unparse(stmt)
            except Exception as e:  # noqa: BLE001 - an AST fickling built that cannot print
                text = f"<cannot render statement: {type(e).__name__}>"
        lines.append(ExplainedLine(escape_untrusted(text, MAX_LINE), tuple(marks)))
    if pickled.has_invalid_opcode:
        err = "decoding stopped at an invalid opcode; the rest of the program is not shown"
        return lines, err, warn.getvalue() or None, used
    return lines, None, warn.getvalue() or None, used


Stream = tuple[str, int, bytes, int]  # label, file offset, bytes, most programs to read


def _pickle_streams(path: str, report: Report, limits: Limits
                    ) -> tuple[list[Stream], str | None]:
    """(label, file offset, bytes, max programs) for each pickle stream in the file."""
    fmt = report.format
    cap = limits.max_pickle_bytes
    if fmt in (Format.PICKLE, Format.TORCH_LEGACY):
        with open(path, "rb") as fh:
            data = fh.read(min(cap, 256 << 20))
        count = _LEGACY_PICKLES if fmt is Format.TORCH_LEGACY else limits.max_pickles
        return [(os.path.basename(path), 0, data, count)], None
    if fmt in (Format.TORCH_ZIP, Format.TORCHSCRIPT, Format.ZIP, Format.NUMPY_NPZ):
        return _zip_pickles(path, report, limits)
    if fmt is Format.NUMPY_NPY and "CKG602" in report.rule_ids():
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) >= 10 and head[6] == 1:
                start = 10 + struct.unpack_from("<H", head, 8)[0]
            elif len(head) >= 12:
                start = 12 + struct.unpack_from("<I", head, 8)[0]
            else:
                return [], "the .npy header is cut off"
            fh.seek(start)
            data = fh.read(cap)
        return [("array data", start, data, 1)], None
    return [], f"a {fmt.value} file holds no pickle program"


def _zip_pickles(path: str, report: Report, limits: Limits
                 ) -> tuple[list[Stream], str | None]:
    from ..context import AuditContext, Source
    from ..readers.zipfile import read_archive

    hidden = {f.location.member for f in report.findings
              if f.rule_id == "CKG309" and f.location.member}
    fd = open_readonly(path)
    try:
        st = os.fstat(fd)
        ctx = AuditContext(path, Source(fd, st.st_size), Policy(), limits)
        archive = read_archive(ctx)
        if archive is None:
            return [], "the zip archive is unusable (see the scan report)"
        out = []
        for entry in archive.entries:
            if entry.name.endswith(".pkl") or entry.name in hidden:
                data = archive.read(entry, record=False)
                out.append((entry.name, entry.data_offset, data, 1))
        return out, None if out else "no pickle member in the archive"
    finally:
        os.close(fd)


def explain(path: str, report: Report, *, limits: Limits, max_lines: int | None = None
            ) -> Explanation:
    """Decompile every pickle program of ``path`` (already audited into ``report``)."""
    streams, note = _pickle_streams(path, report, limits)
    result = Explanation(report, note=note)
    flagged = _flagged(report)
    for label, base, data, count in streams:
        pos = 0
        n = 0
        while pos < len(data) and n < count:
            lines, error, warnings, used = _decompile(data[pos:], limits, flagged)
            if max_lines is not None and len(lines) > max_lines:
                cut = len(lines) - max_lines
                lines = [*lines[:max_lines], ExplainedLine(f"# ... {cut} more statements")]
            name = label if count == 1 else f"{label} (program {n + 1})"
            result.programs.append(Program(
                name, base + pos, tuple(lines), error,
                tuple(escape_untrusted(w) for w in (warnings or "").splitlines() if w)))
            n += 1
            if error is not None or used <= 0:
                break
            pos += used
    return result


def format_explain_text(ex: Explanation, options: FormatOptions) -> str:
    from rich.text import Text

    buf = io.StringIO()
    console = make_console(buf, options)
    report = ex.report
    head = Text(escape_untrusted(report.path), style="bold")
    head.append(f"  {report.format.value}  {report.verdict.value}")
    console.print(head)
    for f in report.top_findings(10):
        line = Text("  ")
        line.append_text(finding_text(f))
        line.append(" (" + escape_untrusted(str(f.location)) + ")")
        console.print(line)
    if ex.note:
        console.print(Text(f"# {ex.note}", style="dim"))
    for prog in ex.programs:
        console.print()
        console.print(Text(f"# --- {escape_untrusted(prog.label)} (offset {prog.offset}) ---",
                           style="bold"))
        for w in prog.warnings:
            console.print(Text(f"# fickling: {w}", style="dim"))
        for stmt in prog.lines:
            if stmt.marks:
                t = Text(">> ", style="bold red")
                t.append(stmt.text)
                sev = stmt.marks[0].split(" ")[-1]
                style = next((s for k, s in SEVERITY_STYLE.items() if str(k) == sev), "red")
                t.append("    # <-- flagged: " + ", ".join(stmt.marks), style=style)
                console.print(t)
            else:
                console.print(Text("   " + stmt.text))
        if prog.error:
            console.print(Text(f"# stopped: {escape_untrusted(prog.error)}", style="yellow"))
    return "".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines())


__all__ = ["ExplainedLine", "Explanation", "Program", "explain", "format_explain_text"]
