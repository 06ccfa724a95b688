"""Report formatters: text, JSON (versioned schema) and SARIF 2.1.0, behind one registry.

    from ckptguard.report import FORMATTERS, ScanResult, render
    text = render("sarif", ScanResult(reports=(ckptguard.scan("model.pt"),)))

Formatters return strings; they never print (the CLI writes them).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping

from .jsonreport import SCHEMA_VERSION, load_schema
from .options import FormatOptions
from .result import ScanResult, summary_line

Formatter = Callable[[ScanResult, FormatOptions], str]


class ReportFormat(str, enum.Enum):
    """The report formats (the CLI's ``--format`` choices)."""

    TEXT = "text"
    JSON = "json"
    SARIF = "sarif"


def formatter(fmt: ReportFormat) -> Formatter:
    """The formatter of ``fmt``, imported on first use (a JSON scan never imports rich)."""
    match fmt:
        case ReportFormat.TEXT:
            from .text import format_text

            return format_text
        case ReportFormat.JSON:
            from .jsonreport import format_json

            return format_json
        case ReportFormat.SARIF:
            from .sarif import format_sarif

            return format_sarif
    raise AssertionError(fmt)  # unreachable: mypy checks the match is exhaustive


class _Formatters(Mapping[str, Formatter]):
    """format name -> formatter, over :class:`ReportFormat`."""

    def __getitem__(self, name: str) -> Formatter:
        try:
            fmt = ReportFormat(name)
        except ValueError:
            raise KeyError(name) from None
        return formatter(fmt)

    def __iter__(self) -> Iterator[str]:
        return iter(f.value for f in ReportFormat)

    def __len__(self) -> int:
        return len(ReportFormat)


#: format name -> formatter. The CLI's ``--format`` choices come from this table.
FORMATTERS: Mapping[str, Formatter] = _Formatters()


def render(name: str | ReportFormat, result: ScanResult,
           options: FormatOptions | None = None) -> str:
    """Render ``result`` in the format ``name``."""
    try:
        formatter = FORMATTERS[name]
    except KeyError:
        raise ValueError(f"unknown report format {name!r}; expected one of "
                         f"{', '.join(FORMATTERS)}") from None
    return formatter(result, options or FormatOptions())


def render_chunks(name: str | ReportFormat, result: ScanResult,
                  options: FormatOptions | None = None) -> Iterator[str]:
    """``render`` in pieces whose concatenation is the same text: the JSON of a large scan
    is written as it is encoded (bounded memory); the other formats in one piece."""
    if name == ReportFormat.JSON:
        from .jsonreport import iter_json

        return iter_json(result)
    return iter((render(name, result, options),))


__all__ = [
    "FORMATTERS",
    "SCHEMA_VERSION",
    "FormatOptions",
    "Formatter",
    "ReportFormat",
    "ScanResult",
    "formatter",
    "load_schema",
    "render",
    "render_chunks",
    "summary_line",
]
