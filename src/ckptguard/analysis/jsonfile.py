"""JSON files found beside weights: configs and sharded-checkpoint index files (parsed by
``readers/jsonfile.parse_json``). An index that is not valid JSON or repeats a key is
CKG701; an ``auto_map`` anywhere names remote code (CKG705)."""

from __future__ import annotations

import json
from typing import Any

from ..context import AuditContext, LimitExceeded
from ..primitives import escape
from ..readers.jsonfile import JsonError, ParsedJson, parse_json


def looks_like_index(path: str, head: bytes) -> bool:
    return path.lower().endswith(".index.json") or b'"weight_map"' in head


def read_json(ctx: AuditContext) -> ParsedJson | None:
    """Read and parse the whole file (bounded by ``max_header_bytes``), recording findings;
    None when it is not acceptable JSON."""
    size = ctx.source.size
    if size > ctx.limits.max_header_bytes:
        ctx.limit_hit(LimitExceeded("max_header_bytes", ctx.limits.max_header_bytes,
                                    f"JSON file of {size} bytes"))
        return None
    data = ctx.source.read(0, size, record=True)
    index = looks_like_index(ctx.path, data[:4096])
    try:
        parsed = parse_json(data, max_depth=ctx.limits.max_json_depth)
    except JsonError as e:
        if e.kind == "depth":
            ctx.limit_hit(LimitExceeded("max_json_depth", ctx.limits.max_json_depth,
                                        "JSON nesting"))
        elif index:
            ctx.add("CKG701", f"index file is not valid JSON ({e.kind}: {escape(e.detail)})",
                    evidence={"error": e.kind})
        else:
            ctx.add("CKG001", f"the file starts like JSON but is not valid JSON "
                    f"({e.kind}: {escape(e.detail)})", evidence={"error": e.kind})
        return None
    if index and parsed.duplicates:
        ctx.add("CKG701", "index file repeats a key: JSON parsers keep different copies "
                f"({escape(', '.join(sorted(set(parsed.duplicates))))})",
                evidence={"keys": escape(", ".join(sorted(set(parsed.duplicates))), 400)})
    return parsed


def auto_map_entries(value: Any, *, limit: int = 10_000) -> list[tuple[str, str]]:
    """Every ``auto_map`` (class -> module.Class reference) anywhere in a JSON value."""
    found: list[tuple[str, str]] = []
    stack: list[Any] = [value]
    steps = 0
    while stack and steps < limit:
        steps += 1
        v = stack.pop()
        if isinstance(v, dict):
            for k in sorted(v):
                item = v[k]
                if k == "auto_map":
                    found.extend(_auto_map_pairs(item))
                else:
                    stack.append(item)
        elif isinstance(v, list):
            stack.extend(v)
    return found


def _auto_map_pairs(item: Any) -> list[tuple[str, str]]:
    if isinstance(item, dict):
        out: list[tuple[str, str]] = []
        for k in sorted(item):
            ref = item[k]
            refs = ref if isinstance(ref, list) else [ref]
            names = [r for r in refs if isinstance(r, str)]
            out.append((str(k), ", ".join(names) if names else json.dumps(ref)[:80]))
        return out
    if isinstance(item, list):
        return [("auto_map", ", ".join(r for r in item if isinstance(r, str)))]
    return [("auto_map", json.dumps(item)[:80])]


def audit_json(ctx: AuditContext) -> None:
    """Audit a JSON file: valid UTF-8 JSON, and any ``auto_map`` (remote code) reported."""
    parsed = read_json(ctx)
    if parsed is None:
        return
    value = parsed.value
    if isinstance(value, dict):
        ctx.metadata["json.keys"] = str(len(value))
    entries = auto_map_entries(value)
    if entries:
        classes = "; ".join(f"{k}={v}" for k, v in entries)
        ctx.add("CKG705", "auto_map names classes that trust_remote_code=True would import "
                f"and run: {escape(classes, 300)}",
                evidence={"classes": escape(classes, 1000), "file": escape(ctx.path, 300)})


__all__ = ["audit_json", "auto_map_entries", "looks_like_index", "read_json"]
