"""Report formatters: text, JSON (versioned schema) and SARIF 2.1.0, behind one registry.

    from ckptguard.report import FORMATTERS, ScanResult, render
    text = render("sarif", ScanResult(reports=(ckptguard.scan("model.pt"),)))

Formatters return strings; they never print (the CLI writes them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping

from .escape import escape_untrusted
from .jsonreport import SCHEMA_VERSION, load_schema
from .options import FormatOptions
from .result import ScanResult, summary_line

Formatter = Callable[[ScanResult, FormatOptions], str]


class _Registry(Mapping[str, Formatter]):
    """name -> formatter, imported on first use (a JSON scan never imports rich)."""

    def __init__(self, table: dict[str, tuple[str, str]]) -> None:
        self._table = table

    def __getitem__(self, name: str) -> Formatter:
        module, attr = self._table[name]
        fn: Formatter = getattr(importlib.import_module(module, __name__), attr)
        return fn

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


#: format name -> formatter. The CLI's ``--format`` choices come from this table.
FORMATTERS: Mapping[str, Formatter] = _Registry({
    "text": (".text", "format_text"),
    "json": (".jsonreport", "format_json"),
    "sarif": (".sarif", "format_sarif"),
})


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
