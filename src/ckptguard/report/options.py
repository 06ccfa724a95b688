"""Options every formatter accepts (each uses what applies to it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FormatOptions:
    color: bool = False      # ANSI colours (the CLI sets it only when the output is a TTY)
    width: int = 160         # text width; the CLI uses the terminal's width on a TTY
    verbose: bool = False    # text: every finding with its advice, not only the top one


__all__ = ["FormatOptions"]
