"""The click group ``ckptguard`` (``ckptguard.cli.cli``): subcommands imported when used."""

from __future__ import annotations

import enum
from typing import Any

import click

from .._version import __version__
from .exitcodes import ExitCode


class Command(str, enum.Enum):
    """The subcommands."""

    SCAN = "scan"
    INSPECT = "inspect"
    EXPLAIN = "explain"
    CONVERT = "convert"


def load_command(cmd: Command) -> click.Command:
    """The click command of ``cmd``, imported when used: ``ckptguard scan`` pays only for
    scanning (importing every command costs about 20 ms more)."""
    match cmd:
        case Command.SCAN:
            from .scan_cmd import scan_command

            return scan_command
        case Command.INSPECT:
            from .inspect_cmd import inspect_command

            return inspect_command
        case Command.EXPLAIN:
            from .explain_cmd import explain_command

            return explain_command
        case Command.CONVERT:
            from .convert_cmd import convert_command

            return convert_command
    raise AssertionError(cmd)  # unreachable: mypy checks the match is exhaustive


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
            from ..primitives import escape_untrusted

            click.echo(escape_untrusted(f"error: internal error: {type(e).__name__}: {e}", 1000),
                       err=True)
            raise click.exceptions.Exit(int(ExitCode.UNDECIDED)) from None


class LazyGroup(GuardedGroup):
    """Subcommands are imported when used (:func:`load_command`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(c.value for c in Command)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        try:
            cmd = Command(cmd_name)
        except ValueError:
            return None
        return load_command(cmd)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckptguard")
def cli() -> None:
    """ckptguard: prove a checkpoint is only weights before loading it.

    Exit status: 0 safe, 1 unsafe findings, 2 could not decide (or usage error).
    """


__all__ = ["Command", "GuardedGroup", "LazyGroup", "cli", "load_command"]
