"""The ``ckptguard`` command line: a thin click layer over the library.

Commands: ``scan``, ``inspect``, ``explain``, ``convert``. The commands parse options, call
the library, render with :mod:`ckptguard.report` and choose the exit code
(:mod:`ckptguard.cli.exitcodes`); every decision about a file is the library's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import click

from .._version import __version__
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


class LazyGroup(GuardedGroup):
    """Subcommands are imported when used, so ``ckptguard scan`` pays only for scanning."""

    _commands: ClassVar[dict[str, tuple[str, str]]] = {
        "scan": (".scan_cmd", "scan_command"),
        "inspect": (".inspect_cmd", "inspect_command"),
        "explain": (".explain_cmd", "explain_command"),
        "convert": (".convert_cmd", "convert_command"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._commands)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = self._commands.get(cmd_name)
        if spec is None:
            return None
        import importlib

        command: click.Command = getattr(importlib.import_module(spec[0], __name__), spec[1])
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckptguard")
def cli() -> None:
    """ckptguard: prove a checkpoint is only weights before loading it.

    Exit status: 0 safe, 1 unsafe findings, 2 could not decide (or usage error).
    """


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="ckptguard")


__all__ = ["cli", "main"]
