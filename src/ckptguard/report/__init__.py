"""Report formatters: text, JSON (versioned schema) and SARIF 2.1.0, behind one registry.

    from ckptguard.report import FORMATTERS, ScanResult, render
    text = render("sarif", ScanResult(reports=(ckptguard.scan("model.pt"),)))

Formatters return strings; they never print (the CLI writes them).
"""

from __future__ import annotations

from collections.abc import Callable

from .escape import escape_untrusted
from .jsonreport import SCHEMA_VERSION, format_json, load_schema
from .options import FormatOptions
from .result import ScanResult, summary_line
from .sarif import format_sarif
from .text import format_text

Formatter = Callable[[ScanResult, FormatOptions], str]

#: format name -> formatter. The CLI's ``--format`` choices come from this table.
FORMATTERS: dict[str, Formatter] = {
    "text": format_text,
    "json": format_json,
    "sarif": format_sarif,
}


def render(name: str, result: ScanResult, options: FormatOptions | None = None) -> str:
    """Render ``result`` with the formatter registered as ``name``."""
    try:
        formatter = FORMATTERS[name]
    except KeyError:
        raise ValueError(f"unknown report format {name!r}; expected one of "
                         f"{', '.join(FORMATTERS)}") from None
    return formatter(result, options or FormatOptions())


__all__ = [
    "FORMATTERS",
    "SCHEMA_VERSION",
    "FormatOptions",
    "Formatter",
    "ScanResult",
    "escape_untrusted",
    "load_schema",
    "render",
    "summary_line",
]
