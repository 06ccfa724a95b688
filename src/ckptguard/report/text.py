"""Text output: a table of files (verdict, top finding, location) and a summary line.

Every untrusted string goes through :func:`escape_untrusted` and into a ``rich.text.Text``
(never parsed as markup). Colours only when ``FormatOptions.color`` is set.
"""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..model import Effect, Finding, Report, Severity, Verdict
from .escape import escape_untrusted
from .options import FormatOptions
from .result import ScanResult, summary_line

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
    t = Text()
    t.append(f.rule_id, style="bold")
    t.append(" ")
    t.append(str(f.severity), style=SEVERITY_STYLE[f.severity])
    t.append(": " + escape_untrusted(f.message))
    return t


def _rows(report: Report, depth: int = 0) -> list[tuple[Text, Text, Text, Text, Text]]:
    top = report.top_findings(1)
    name = Text(("  " * depth) + ("└ " if depth else "") + escape_untrusted(report.path))
    fmt = Text(report.format.value)
    verdict = Text(report.verdict.value, style=VERDICT_STYLE[report.verdict])
    if top:
        finding = finding_text(top[0])
        extra = len(report.all_findings()) - 1
        if extra > 0:
            finding.append(f" (+{extra} more)", style="dim")
        where = Text(escape_untrusted(str(top[0].location)))
    else:
        finding, where = Text("-", style="dim"), Text("")
    rows = [(name, fmt, verdict, finding, where)]
    for child in report.children:
        rows.extend(_rows(child, depth + 1))
    return rows


def _details(console: Console, report: Report) -> None:
    findings = report.all_findings()
    if not findings and not report.problems:
        return
    head = Text()
    head.append(escape_untrusted(report.path), style="bold")
    head.append("  ")
    head.append(report.verdict.value, style=VERDICT_STYLE[report.verdict])
    console.print(head)
    order = {Effect.BLOCKS: 0, Effect.UNDECIDED: 1, Effect.NOTE: 2}
    for f in sorted(findings, key=lambda f: (order[f.effect], -f.severity)):
        line = Text("  ")
        line.append_text(finding_text(f))
        line.append(f" [{f.effect}]", style="dim")
        console.print(line)
        console.print(Text("    at " + escape_untrusted(str(f.location))))
        for k, v in f.evidence:
            console.print(Text(f"    {escape_untrusted(k, 40)}: {escape_untrusted(v)}",
                               style="dim"))
        if f.advice:
            console.print(Text("    advice: " + escape_untrusted(f.advice, 400), style="italic"))
    for p in report.problems:
        console.print(Text(f"  problem: {escape_untrusted(p.message)} "
                           f"({escape_untrusted(str(p.location))})", style="yellow"))


def format_text(result: ScanResult, options: FormatOptions) -> str:
    buf = io.StringIO()
    console = make_console(buf, options)
    if result.reports:
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False,
                      expand=False)
        table.add_column("File", overflow="fold")
        table.add_column("Format", no_wrap=True)
        table.add_column("Verdict", no_wrap=True)
        table.add_column("Top finding", overflow="fold")
        table.add_column("Location", overflow="fold")
        for report in result.reports:
            for row in _rows(report):
                table.add_row(*row)
        console.print(table)
    if options.verbose and any(r.all_findings() or r.problems for r in result.reports):
        console.print()
        for report in result.reports:
            _details(console, report)
    for note in result.notes:
        console.print(Text("note: " + escape_untrusted(note, 400), style="dim"))
    console.print(Text(_policy_line(result), style="dim"))
    if result.policy:
        console.print(Text(f"policy: {len(result.policy)} extra allowed global"
                           f"{'s' if len(result.policy) != 1 else ''}", style="dim"))
        for e in result.policy:
            console.print(Text(f"  {escape_untrusted(e.full_path)}: "
                               f"{escape_untrusted(e.reason)} "
                               f"({escape_untrusted(e.source)})", style="dim"))
    counts = result.verdict_counts()
    style = ("bold red" if counts["unsafe"] else
             "bold yellow" if counts["incomplete"] or result.interrupted or not result.reports
             else "bold green")
    console.print(Text(summary_line(result), style=style))
    return "".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines())


def _policy_line(result: ScanResult) -> str:
    """Which policy and profiles applied, and where they came from."""
    text = f"policy: {escape_untrusted(str(result.policy_origin))}"
    if result.profiles:
        text += "; profiles: " + ", ".join(
            f"{c.name.value} ({escape_untrusted(str(c.origin))})" for c in result.profiles)
    return text


__all__ = ["format_text", "make_console"]
