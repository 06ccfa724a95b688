"""JSON output: a documented, versioned document (``docs/report-schema.json``).

    {"schema_version": "1",
     "tool": {"name": "ckptguard", "version": "..."},
     "summary": {"files": .., "safe": .., "unsafe": .., "incomplete": .., "skipped": ..,
                 "planned": .., "interrupted": .., "findings": {"critical": .., ...}},
     "policy": [{"global": .., "reason": .., "source": ..}],
     "policy_source": {"origin": {"kind": .., "location": ..},
                       "profiles": [{"name": .., "origin": {..}}]},
     "notes": [...],
     "reports": [Report.to_dict(), ...]}

``schema_version`` changes only on incompatible changes (a field removed or retyped); new
optional fields keep it. Strings are written with ``ensure_ascii`` so control characters
and non-ASCII bytes of hostile names never reach a terminal raw.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from ..model import Report
from .options import FormatOptions
from .result import ScanResult

SCHEMA_VERSION = "1"
SCHEMA_FILE = "report-schema.json"


def tool_info() -> dict[str, str]:
    from .._version import __version__

    return {"name": "ckptguard", "version": __version__}


def _document_head(result: ScanResult) -> dict[str, Any]:
    """The document without its reports."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": tool_info(),
        "summary": result.summary(),
        "policy": [{"global": e.full_path, "reason": e.reason, "source": e.source}
                   for e in result.policy],
        "policy_source": result.policy_source(),
        "notes": list(result.notes),
    }


def scan_document(result: ScanResult) -> dict[str, Any]:
    return {**_document_head(result), "reports": [r.to_dict() for r in result.reports]}


#: Above this size the document is written compact (one line), below it indented. (The
#: choice dates from when indented output went through json's pure-Python encoder; the
#: format keeps it: :mod:`.fastjson` writes both layouts byte for byte.)
COMPACT_ABOVE = 1 << 20


#: in JSON text: an escaped backslash, a surrogate pair, or a lone surrogate escape
_SURROGATES = re.compile(r"\\\\|\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})|"
                         r"\\u(d[89a-f][0-9a-f]{2})")


def _surrogate_text(m: re.Match[str]) -> str:
    return m.group(0) if m.group(3) is None else "\\\\u" + m.group(3)


def lone_surrogates_as_text(text: str) -> str:
    """JSON text whose lone surrogate escapes (``"\\ud800"``: a Python string from a
    pickle's UTF-8 with ``surrogatepass``, a file name's undecodable byte) are spelled as
    text (``"\\\\ud800"``, six characters), as strict parsers (jq, serde_json) refuse them;
    pairs and everything else are unchanged. Applied to every JSON document written."""
    return text if "\\ud" not in text else _SURROGATES.sub(_surrogate_text, text)


def dumps(doc: object) -> str:
    compact = json.dumps(doc, ensure_ascii=True, separators=(",", ":"))
    if len(compact) > COMPACT_ABOVE:
        return lone_surrogates_as_text(compact) + "\n"
    return lone_surrogates_as_text(json.dumps(doc, indent=2, ensure_ascii=True,
                                              sort_keys=False)) + "\n"


#: a lower bound of a tensor's compact JSON (its keys alone take 150 bytes)
_MIN_ROW = 150


def _tensor_count(reports: tuple[Report, ...]) -> int:
    return sum(len(r.tensors) + _tensor_count(r.children) for r in reports)


def iter_json(result: ScanResult) -> Iterator[str]:
    """:func:`_iter_json_raw` with lone surrogates spelled as text
    (:func:`lone_surrogates_as_text`): every piece is whole JSON tokens (a string is never
    cut), so each is rewritten alone."""
    return map(lone_surrogates_as_text, _iter_json_raw(result))


def _iter_json_raw(result: ScanResult) -> Iterator[str]:
    """``dumps(scan_document(result))`` in pieces, byte for byte, without a dict per
    tensor (:mod:`.fastjson`): a large document streamed compact as it is encoded, one
    that stays under ``COMPACT_ABOVE`` indented in one piece."""
    from .fastjson import compact, report_chunks

    def compact_chunks() -> Iterator[str]:
        yield compact(_document_head(result))[:-1] + ',"reports":['
        for i, r in enumerate(result.reports):
            if i:
                yield ","
            yield from report_chunks(r)
        yield "]}"

    if _tensor_count(result.reports) * _MIN_ROW <= COMPACT_ABOVE:
        # probably small: the indented text is never shorter than the compact one, so
        # when it fits, the compact one does too (and is not needed)
        text = indented_document(result)
        if len(text) <= COMPACT_ABOVE:
            yield text
            return
    held: list[str] = []
    size = 0
    chunks = compact_chunks()
    for chunk in chunks:
        held.append(chunk)
        size += len(chunk)
        if size > COMPACT_ABOVE:
            yield "".join(held)
            held.clear()
            yield from chunks
            yield "\n"
            return
    yield indented_document(result)


def indented_document(result: ScanResult) -> str:
    """``json.dumps(scan_document(result), indent=2)`` (and a newline), the tensors column
    by column (:func:`.fastjson.indented`); through ``json.dumps`` when a value is of a
    type that does not encode exactly."""
    from .fastjson import Unencodable, indented, report_tree

    try:
        tree = {**_document_head(result),
                "reports": [report_tree(r) for r in result.reports]}
        return indented(tree) + "\n"
    except Unencodable:
        return json.dumps(scan_document(result), indent=2, ensure_ascii=True,
                          sort_keys=False) + "\n"


def format_json(result: ScanResult, options: FormatOptions) -> str:
    return "".join(iter_json(result))



def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the document ``format_json`` writes."""
    from importlib import resources

    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


__all__ = [
    "SCHEMA_VERSION",
    "dumps",
    "format_json",
    "indented_document",
    "iter_json",
    "load_schema",
    "lone_surrogates_as_text",
    "scan_document",
    "tool_info",
]
