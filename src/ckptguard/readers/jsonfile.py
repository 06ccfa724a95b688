"""The one bounded JSON parser every auditor uses (``parse_json``): UTF-8 only,
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

from ..primitives import clip

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
        raise JsonError("syntax", clip(str(e))) from None
    return ParsedJson(value, duplicates)


__all__ = ["JsonError", "ParsedJson", "json_depth_exceeds", "parse_json"]
