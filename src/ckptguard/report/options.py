"""Options every formatter accepts (each uses what applies to it)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TextLayout(enum.Enum):
    """How the text format lays a scan out (see :mod:`ckptguard.report.text`)."""

    LINES = "lines"          # one unwrapped line per file (and per finding): pipes, logs
    TERMINAL = "terminal"    # wrapped to the terminal width, the path printed once


@dataclass(frozen=True)
class FormatOptions:
    color: bool = False      # ANSI colours (the CLI sets it only when the output is a TTY)
    width: int = 160         # text width; the CLI uses the terminal's width on a TTY
    verbose: bool = False    # text: every finding with its advice, not only the top one
    layout: TextLayout = TextLayout.LINES  # text: the CLI picks TERMINAL on a TTY


__all__ = ["FormatOptions", "TextLayout"]
