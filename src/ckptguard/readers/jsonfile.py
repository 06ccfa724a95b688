"""JSON files found beside weights: configs and sharded-checkpoint index files.

Also home of the one bounded JSON parser every reader uses (``parse_json``): UTF-8 only,
nesting depth checked *before* ``json.loads`` recurses (a cheap bracket scan on the bytes),
duplicate keys recorded (two JSON parsers keep different copies), integer literals bounded,
and every failure a ``JsonError`` with a kind, never a traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..context import AuditContext, LimitExceeded

#: The longest integer literal accepted (Python's own cap is 4300 digits; nothing in a
#: checkpoint header or config needs more than a u64).
MAX_INT_DIGITS = 40

# A JSON string, or an unterminated one running to the end: always matches where it starts,
# so the scan stays linear on hostile input (no backtracking restarts).
_STRING = re.compile(rb'"[^"\\]*(?:\\.?[^"\\]*)*(?:"|\Z)', re.DOTALL)
_ONLY_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_TO_PARENS = bytes.maketrans(b"[]{}", b"()()")


class JsonError(Exception):
    """The bytes are not acceptable JSON. ``kind``: utf8, depth, syntax."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")


@dataclass
class ParsedJson:
    value: Any
    duplicates: list[str] = field(default_factory=list)


def json_depth_exceeds(data: bytes, max_depth: int) -> bool:
    """True when the nesting of ``[``/``{`` outside strings goes deeper than ``max_depth``.

    Works on the raw bytes (brackets and quotes are ASCII and never occur inside a UTF-8
    multi-byte sequence). Each pass deletes the innermost ``()`` pairs, so at most
    ``max_depth + 1`` passes of C-speed work happen whatever the input."""
    stripped = _STRING.sub(b"", data)
    parens = stripped.translate(_TO_PARENS, _ONLY_BRACKETS)
    for _ in range(max_depth):
        if b"()" not in parens:
            return False
        parens = parens.replace(b"()", b"")
    return b"()" in parens


def _bounded_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise ValueError(f"integer literal of {len(text)} digits")
    return int(text)


def _no_constant(text: str) -> Any:
    raise ValueError(f"non-standard JSON constant {text}")


def parse_json(
    data: bytes,
    *,
    max_depth: int,
    parse_int: Callable[[str], Any] = _bounded_int,
    allow_constants: bool = True,
) -> ParsedJson:
    """Parse UTF-8 JSON bytes strictly; raise ``JsonError`` on anything unacceptable."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JsonError("utf8", f"invalid UTF-8 at byte {e.start}") from None
    if json_depth_exceeds(data, max_depth):
        raise JsonError("depth", f"nesting deeper than {max_depth} levels")
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                duplicates.append(k)
            out[k] = v
        return out

    try:
        value = json.loads(
            text,
            object_pairs_hook=pairs,
            parse_int=parse_int,
            parse_constant=None if allow_constants else _no_constant,
        )
    except (ValueError, RecursionError, MemoryError) as e:
        # json.JSONDecodeError is a ValueError; so are the hooks' refusals.
        raise JsonError("syntax", _short(str(e))) from None
    return ParsedJson(value, duplicates)


def _short(text: str, n: int = 160) -> str:
    return text if len(text) <= n else text[:n] + "..."


def escape(text: str, n: int = 120) -> str:
    """Untrusted text made safe to print: escaped and truncated."""
    out = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return out if len(out) <= n else out[:n] + "..."


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


__all__ = [
    "JsonError",
    "ParsedJson",
    "audit_json",
    "auto_map_entries",
    "escape",
    "json_depth_exceeds",
    "looks_like_index",
    "parse_json",
    "read_json",
]
