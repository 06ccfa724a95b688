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
from typing import Any

from .options import FormatOptions
from .result import ScanResult

SCHEMA_VERSION = "1"
SCHEMA_FILE = "report-schema.json"


def tool_info() -> dict[str, str]:
    from .._version import __version__

    return {"name": "ckptguard", "version": __version__}


def scan_document(result: ScanResult) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": tool_info(),
        "summary": result.summary(),
        "policy": [{"global": e.full_path, "reason": e.reason, "source": e.source}
                   for e in result.policy],
        "policy_source": result.policy_source(),
        "notes": list(result.notes),
        "reports": [r.to_dict() for r in result.reports],
    }


#: Above this size the document is written compact (one line): indented output goes
#: through json's pure-Python encoder, 4x slower on a 50,000-tensor report.
COMPACT_ABOVE = 1 << 20


def dumps(doc: object) -> str:
    compact = json.dumps(doc, ensure_ascii=True, separators=(",", ":"))
    if len(compact) > COMPACT_ABOVE:
        return compact + "\n"
    return json.dumps(doc, indent=2, ensure_ascii=True, sort_keys=False) + "\n"


def format_json(result: ScanResult, options: FormatOptions) -> str:
    return dumps(scan_document(result))


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the document ``format_json`` writes."""
    from importlib import resources

    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


__all__ = ["SCHEMA_VERSION", "dumps", "format_json", "load_schema", "scan_document",
           "tool_info"]
