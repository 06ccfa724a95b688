"""``ckptguard scan PATH... [--format F]`` recognised without click.

click's import and parser cost about 8 ms of a ~65 ms scan of one file (it brings
``uuid``, ``platform``, ``datetime``, ``gettext`` and its own ~15 modules). An argument list
made only of paths and one ``--format`` with a valid value is parsed here; every other
argument list (any other option, ``--``, ``-``, a token starting with ``-``, no path, a
shell-completion request) goes to the click group, which stays the reference: the scan
runs :func:`.scan_run.run_scan` either way, with the defaults of the click options
(tests/test_cli_plain.py runs both lanes and compares output and exit code).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..report import ReportFormat

#: the environment variable click's shell completion sets (``_{PROG}_COMPLETE``)
COMPLETE_VAR = "_CKPTGUARD_COMPLETE"
_FORMATS = frozenset(f.value for f in ReportFormat)
_FORMAT = "--format"


def plain_scan(argv: Sequence[str]) -> tuple[tuple[str, ...], str] | None:
    """``(paths, format)`` when ``argv`` (``sys.argv[1:]``) is ``scan`` followed by paths
    and at most one ``--format F`` / ``--format=F`` (F one of the formats); else None."""
    if len(argv) < 2 or argv[0] != "scan" or COMPLETE_VAR in os.environ:
        return None
    paths: list[str] = []
    fmt: str | None = None
    tokens = iter(argv[1:])
    for tok in tokens:
        if not tok.startswith("-"):
            paths.append(tok)
            continue
        if fmt is not None:
            return None
        if tok == _FORMAT:
            fmt = next(tokens, None)
        elif tok.startswith(_FORMAT + "="):
            fmt = tok[len(_FORMAT) + 1:]
        else:
            return None
        if fmt not in _FORMATS:
            return None
    if not paths:
        return None
    return tuple(paths), fmt or ReportFormat.TEXT.value


__all__ = ["COMPLETE_VAR", "plain_scan"]
