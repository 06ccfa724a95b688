"""``ckptguard explain FILE``"""

from __future__ import annotations

import click

from ..errors import LoaderUnavailableError
from ..report import FormatOptions
from ..report.explain import explain, format_explain_text
from .common import (
    color_wanted,
    fail,
    limit_option,
    load_limits,
    load_policy,
    policy_option,
    stdout,
    text_width,
    write_output,
)
from .exitcodes import exit_code
from .scanfile import scan_one


@click.command("explain")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=False,
                                        path_type=str))
@click.option("--max-lines", type=click.IntRange(1), default=2000, show_default=True,
              help="Show at most this many statements per pickle program.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=str), default=None)
@policy_option
@limit_option
def explain_command(file: str, max_lines: int, output: str | None, policy_file: str | None,
                    limit_items: tuple[str, ...]) -> None:
    """Show the pickle program(s) of FILE as readable Python (fickling's decompiler), with the
    calls the audit flagged marked '>>'. Nothing is executed or imported.

    Exit status as for scan (0 SAFE, 1 UNSAFE, 2 INCOMPLETE).
    """
    limits = load_limits(limit_items)
    report = scan_one(file, load_policy(policy_file), limits)
    try:
        ex = explain(file, report, limits=limits, max_lines=max_lines)
    except LoaderUnavailableError as e:
        raise fail(str(e)) from None
    to_stdout = output is None or output == "-"
    options = FormatOptions(color=to_stdout and color_wanted(stdout()),
                            width=text_width(stdout()) if to_stdout else 160)
    write_output(format_explain_text(ex, options), output)
    raise click.exceptions.Exit(int(exit_code([report])))


__all__ = ["explain_command"]
