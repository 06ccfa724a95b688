"""The ``ckptguard`` command line: a thin click layer over the library.

Commands: ``scan``, ``inspect``, ``explain``, ``convert``. The commands parse options, call
the library, render with :mod:`ckptguard.report` and choose the exit code
(:mod:`ckptguard.cli.exitcodes`); every decision about a file is the library's.

The click group (:mod:`.group`: ``cli``, ``Command``, ``load_command``, ...) is imported on
first use: a plain ``ckptguard scan PATH... [--format F]`` runs without click
(:mod:`.plain`), with the same output and exit code.
"""

from __future__ import annotations

from typing import Any


def main() -> None:
    """Console-script entry point. click's standalone mode turns a Ctrl-C outside a
    command (while arguments are parsed) into "Aborted!" and exit 1, which here means
    "findings"; this entry point makes every interrupt exit 2. A plain scan
    (:func:`.plain.plain_scan`) skips click's parser (and its import)."""
    import sys

    from .plain import plain_scan

    plain = plain_scan(sys.argv[1:])
    if plain is not None:
        from .scan_run import run_plain

        sys.exit(run_plain(*plain))

    import click

    from .exitcodes import ExitCode
    from .group import cli

    try:
        code = cli.main(prog_name="ckptguard", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        code = int(ExitCode.UNDECIDED)
    except click.exceptions.ClickException as e:
        e.show()
        code = e.exit_code
    sys.exit(code if isinstance(code, int) else 0)


#: the names :mod:`.group` defines (imported on first access)
_GROUP = ("Command", "GuardedGroup", "LazyGroup", "cli", "load_command")


def __getattr__(name: str) -> Any:
    """The click group and its commands (:data:`_GROUP`), imported on first use."""
    if name in _GROUP:
        from . import group

        return getattr(group, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Command", "cli", "load_command", "main"]
