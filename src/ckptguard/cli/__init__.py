"""The ``ckptguard`` command line: a thin click layer over the library.

Commands: ``scan``, ``inspect``, ``explain``, ``convert``. The commands parse options, call
the library, render with :mod:`ckptguard.report` and choose the exit code
(:mod:`ckptguard.cli.exitcodes`); every decision about a file is the library's.
"""

from __future__ import annotations

from typing import Any

import click

from .. import __version__
from .exitcodes import ExitCode


class GuardedGroup(click.Group):
    """Never exit 0 (or 1, which means "findings") after an exception or a Ctrl-C."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(int(ExitCode.UNDECIDED)) from None
        except Exception as e:  # noqa: BLE001 - the CLI boundary (DESIGN.md)
            from ..report.escape import escape_untrusted

            click.echo(escape_untrusted(f"error: internal error: {type(e).__name__}: {e}", 1000),
                       err=True)
            raise click.exceptions.Exit(int(ExitCode.UNDECIDED)) from None


@click.group(cls=GuardedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckptguard")
def cli() -> None:
    """ckptguard: prove a checkpoint is only weights before loading it.

    Exit status: 0 safe, 1 unsafe findings, 2 could not decide (or usage error).
    """


def _register() -> None:
    from .convert_cmd import convert_command
    from .explain_cmd import explain_command
    from .inspect_cmd import inspect_command
    from .scan_cmd import scan_command

    for cmd in (scan_command, inspect_command, explain_command, convert_command):
        cli.add_command(cmd)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="ckptguard")


__all__ = ["cli", "main"]
