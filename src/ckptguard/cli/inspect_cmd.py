"""``ckptguard inspect FILE``"""

from __future__ import annotations

import click

from ..report import FormatOptions
from ..report.inspect import format_inspect_json, format_inspect_text
from .common import (
    color_wanted,
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


@click.command("inspect")
@click.argument("file", type=click.Path(exists=True, readable=False, path_type=str))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=str), default=None)
@policy_option
@limit_option
def inspect_command(file: str, fmt: str, output: str | None, policy_file: str | None,
                    limit_items: tuple[str, ...]) -> None:
    """Show the tensors (name, dtype, shape, bytes, storage sharing) and metadata of a
    checkpoint, from the audit alone: nothing is loaded or executed.

    Works for torch zip and legacy files, safetensors, numpy and sharded index json.
    Exit status as for scan (0 SAFE, 1 UNSAFE, 2 INCOMPLETE).
    """
    report = scan_one(file, load_policy(policy_file), load_limits(limit_items))
    to_stdout = output is None or output == "-"
    options = FormatOptions(color=to_stdout and color_wanted(stdout()),
                            width=text_width(stdout()) if to_stdout else 160)
    text = (format_inspect_json if fmt == "json" else format_inspect_text)(report, options)
    write_output(text, output)
    raise click.exceptions.Exit(int(exit_code([report])))


__all__ = ["inspect_command"]
