"""Text output of ``ckptguard scan``: one entry per file and a summary line, in two layouts.

* ``TextLayout.LINES`` (stdout is not a terminal: a pipe, a file, a CI log): one line per
  file, never wrapped, with the whole path, so ``ckptguard scan DIR | grep UNSAFE`` sees
  every path whole; with ``verbose`` one more line per finding, again with the whole
  ``path:member@offset``. Columns are padded to fixed widths, so no pass over all reports is
  needed before the first line is written.
* ``TextLayout.TERMINAL``: the verdict, the format and the file on one line; the top
  finding (with ``verbose``: every finding, its evidence and advice) on the lines below it,
  word-wrapped to the terminal width under the file column, with the location inside the
  file (``archive/data.pkl@91``) so the path is never printed twice. Shards of an index
  are listed under it by their name in the index's folder.

Both are rendered in one linear pass (no table layout): rendering 20,000 files costs a
small fraction of scanning them. Every untrusted string goes through
:func:`escape_untrusted`; colours (ANSI, ``FormatOptions.color``) only in the terminal
layout. ``make_console`` and the ``rich`` helpers serve ``inspect`` and ``explain``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..model import Effect, Finding, Format, Location, Report, Severity, Verdict
from ..primitives import escape_untrusted
from .options import FormatOptions, TextLayout
from .result import ScanResult, summary_line

if TYPE_CHECKING:  # rich is imported by the functions that use it (inspect, explain):
    # rendering a scan never imports it
    from rich.console import Console
    from rich.text import Text

VERDICT_STYLE = {
    Verdict.SAFE: "bold green",
    Verdict.UNSAFE: "bold red",
    Verdict.INCOMPLETE: "bold yellow",
}
SEVERITY_STYLE = {
    Severity.CRITICAL: "bold red",
    Severity.HIGH: "red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
    Severity.INFO: "dim",
}


def make_console(buf: io.StringIO, options: FormatOptions) -> Console:
    from rich.console import Console

    return Console(
        file=buf,
        force_terminal=options.color,
        no_color=not options.color,
        color_system="standard" if options.color else None,
        width=options.width,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=False,
        legacy_windows=False,
    )


def finding_text(f: Finding) -> Text:
    from rich.text import Text

    t = Text()
    t.append(f.rule_id, style="bold")
    t.append(" ")
    t.append(str(f.severity), style=SEVERITY_STYLE[f.severity])
    t.append(": " + escape_untrusted(f.message))
    return t


_ANSI = {"bold": "1", "dim": "2", "italic": "3", "red": "31", "green": "32",
         "yellow": "33", "cyan": "36", "bold red": "1;31", "bold green": "1;32",
         "bold yellow": "1;33"}
_EFFECT_ORDER = {Effect.BLOCKS: 0, Effect.UNDECIDED: 1, Effect.NOTE: 2}
VERDICT_WIDTH = max(len(v.value) for v in Verdict) + 2
#: wide enough for all but the rarest format names (those get one space after them)
FORMAT_WIDTH = 14
#: the first column of the file name and of the finding lines below it (terminal layout)
FILE_COLUMN = VERDICT_WIDTH + FORMAT_WIDTH


def _format_cell(fmt: Format) -> str:
    return f"{fmt.value:<{FORMAT_WIDTH - 1}} "


def _paint(text: str, style: str | None, color: bool) -> str:
    if not color or not style:
        return text
    return f"\x1b[{_ANSI[style]}m{text}\x1b[0m"


def _where(loc: Location, path: str) -> str:
    """A finding's place inside the file (``archive/data.pkl@91``, ``byte 42``); the full
    location when it is in another file (a shard of an index)."""
    if loc.path != path:
        return str(loc)
    if loc.member is None:
        return "" if loc.offset is None else f"byte {loc.offset}"
    return loc.member + ("" if loc.offset is None else f"@{loc.offset}")


def _finding_head(f: Finding, path: str) -> str:
    """``CKG101 critical at archive/data.pkl@91: message`` (escaped)."""
    where = escape_untrusted(_where(f.location, path))
    return (f"{f.rule_id} {f.severity}" + (f" at {where}" if where else "") + ": "
            + escape_untrusted(f.message))


def _ranked(report: Report) -> list[Finding]:
    return sorted(report.findings, key=lambda f: (_EFFECT_ORDER[f.effect], -f.severity))


def _top(report: Report) -> tuple[Finding | None, str]:
    top = report.top_findings(1)
    if not top:
        return None, ""
    extra = len(report.all_findings()) - 1
    return top[0], _finding_head(top[0], report.path) + (f" (+{extra} more)" if extra > 0
                                                         else "")


def _walk(reports: tuple[Report, ...], depth: int = 0) -> Iterator[tuple[Report, int]]:
    for r in reports:
        yield r, depth
        yield from _walk(r.children, depth + 1)


# --- lines (not a terminal) ---------------------------------------------------------------

def _file_line(report: Report) -> str:
    line = (f"{report.verdict.value:<{VERDICT_WIDTH}}{_format_cell(report.format)}"
            f"{escape_untrusted(report.path, None)}")
    _, top = _top(report)
    return line + ("  " + top if top else "")


def _finding_line(f: Finding) -> str:
    parts = [f"  {escape_untrusted(str(f.location), None)}: {f.rule_id} {f.severity} "
             f"({f.effect}): {escape_untrusted(f.message)}"]
    parts.extend(f"{escape_untrusted(k, 40)}={escape_untrusted(v)}" for k, v in f.evidence)
    if f.advice:
        parts.append("advice: " + escape_untrusted(f.advice, 400))
    return "; ".join(parts)


def _lines_layout(result: ScanResult, options: FormatOptions) -> Iterator[str]:
    for report, _ in _walk(result.reports):
        yield _file_line(report)
        if options.verbose:
            for f in _ranked(report):
                yield _finding_line(f)
            for p in report.problems:
                yield (f"  {escape_untrusted(str(p.location), None)}: problem: "
                       f"{escape_untrusted(p.message)}")


# --- terminal -----------------------------------------------------------------------------

def _wrap(text: str, width: int, indent: int) -> list[str]:
    """``text`` (no colour codes) wrapped at word boundaries into ``width`` columns, every
    line starting at column ``indent``."""
    room = max(width - indent, 20)
    pad = " " * indent
    if len(text) <= room:
        return [pad + text]
    import textwrap  # the terminal layout only

    return [pad + ln for ln in textwrap.wrap(text, room, break_on_hyphens=False)]


def _cut(text: str, room: int) -> list[str]:
    """A path cut into pieces of at most ``room`` characters, after a ``/`` where one sits
    in the second half of the piece, else exactly at ``room``."""
    pieces: list[str] = []
    while len(text) > room:
        slash = text.rfind("/", room // 2, room)
        end = slash + 1 if slash >= 0 else room
        pieces.append(text[:end])
        text = text[end:]
    pieces.append(text)
    return pieces


def _colour_finding(line: str, f: Finding, color: bool) -> str:
    """Colour the rule ID and severity at the start of an already wrapped line."""
    if not color:
        return line
    body = line.lstrip(" ")
    pad = line[:len(line) - len(body)]
    rule, _, rest = body.partition(" ")
    sev = str(f.severity)
    if not rest.startswith(sev):
        return line
    return (pad + _paint(rule, "bold", True) + " "
            + _paint(sev, SEVERITY_STYLE[f.severity], True) + rest[len(sev):])


def _shown_name(report: Report, depth: int, parent: Report | None) -> str:
    name = report.path
    if parent is None:
        return escape_untrusted(name)
    for folder in (parent.path + "/", parent.path.rpartition("/")[0] + "/"):
        if folder != "/" and name.startswith(folder):  # a folder's file, an index's shard
            name = name[len(folder):]
            break
    return "  " * (depth - 1) + "└ " + escape_untrusted(name)


def _terminal_entry(report: Report, depth: int, parent: Report | None,
                    options: FormatOptions) -> Iterator[str]:
    color, width = options.color, max(options.width, 40)
    head = (_paint(f"{report.verdict.value:<{VERDICT_WIDTH}}", VERDICT_STYLE[report.verdict],
                   color) + _format_cell(report.format))
    pieces = _cut(_shown_name(report, depth, parent), max(width - FILE_COLUMN, 20))
    yield head + pieces[0]
    for piece in pieces[1:]:
        yield " " * FILE_COLUMN + piece
    indent = FILE_COLUMN + 2 * depth
    if not options.verbose:
        top, text = _top(report)
        if top is not None:
            lines = _wrap(text, width, indent)
            yield _colour_finding(lines[0], top, color)
            yield from lines[1:]
        return
    for f in _ranked(report):
        lines = _wrap(_finding_head(f, report.path) + f" [{f.effect}]", width, indent)
        yield _colour_finding(lines[0], f, color)
        yield from lines[1:]
        for k, v in f.evidence:
            for ln in _wrap(f"{escape_untrusted(k, 40)}: {escape_untrusted(v)}", width,
                            indent + 2):
                yield _paint(ln, "dim", color)
        if f.advice:
            for ln in _wrap("advice: " + escape_untrusted(f.advice, 400), width, indent + 2):
                yield _paint(ln, "italic", color)
    for p in report.problems:
        for ln in _wrap(f"problem: {escape_untrusted(p.message)} "
                        f"({escape_untrusted(_where(p.location, report.path))})", width, indent):
            yield _paint(ln, "yellow", color)


def _terminal_layout(result: ScanResult, options: FormatOptions) -> Iterator[str]:
    parents: list[Report] = []
    for report, depth in _walk(result.reports):
        del parents[depth:]
        yield from _terminal_entry(report, depth, parents[-1] if parents else None, options)
        parents.append(report)


# --- the whole document -------------------------------------------------------------------

def _notes_and_policy(result: ScanResult, color: bool) -> Iterator[str]:
    for note in result.notes:
        yield _paint("note: " + escape_untrusted(note, 400), "dim", color)
    yield _paint(_policy_line(result), "dim", color)
    if result.policy:
        n = len(result.policy)
        yield _paint(f"policy: {n} extra allowed global{'s' if n != 1 else ''}", "dim", color)
        for e in result.policy:
            yield _paint(f"  {escape_untrusted(e.full_path)}: {escape_untrusted(e.reason)} "
                         f"({escape_untrusted(e.source)})", "dim", color)


def _summary(result: ScanResult, color: bool) -> str:
    counts = result.verdict_counts()
    style = ("bold red" if counts["unsafe"] else
             "bold yellow" if counts["incomplete"] or result.interrupted or not result.reports
             else "bold green")
    return _paint(summary_line(result), style, color)


def _policy_line(result: ScanResult) -> str:
    """Which policy and profiles applied, and where they came from."""
    text = f"policy: {escape_untrusted(str(result.policy_origin))}"
    if result.profiles:
        text += "; profiles: " + ", ".join(
            f"{c.name.value} ({escape_untrusted(str(c.origin))})" for c in result.profiles)
    return text



def iter_text(result: ScanResult, options: FormatOptions) -> Iterator[str]:
    """The text report, one line at a time (no newline characters)."""
    terminal = options.layout is TextLayout.TERMINAL
    color = options.color and terminal
    yield from (_terminal_layout if terminal else _lines_layout)(result, options)
    yield from _notes_and_policy(result, color)
    yield _summary(result, color)


def format_text(result: ScanResult, options: FormatOptions) -> str:
    return "".join(line.rstrip() + "\n" for line in iter_text(result, options))


__all__ = ["FILE_COLUMN", "format_text", "iter_text", "make_console"]
