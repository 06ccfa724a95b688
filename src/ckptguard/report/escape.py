"""Escaping of untrusted strings (file names, member names, pickle strings) before display.

Anything a hostile file controls can reach a terminal through a report: a file name with an
escape sequence, a member name with a newline, a global name thousands of characters long.
``escape_untrusted`` makes such a string safe to print on one line: control characters
(C0, DEL, C1), bidirectional and zero-width format characters, line/paragraph separators and
lone surrogates (undecodable bytes in file names) become ``\\xNN`` / ``\\uNNNN`` escapes, and
the result is cut to ``limit`` characters keeping the head and the tail.
"""

from __future__ import annotations

import re

#: C0 + DEL + C1 controls, zero-width and bidi format characters, separators, BOM, surrogates.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2069"
    "\ufeff\ufff9-\ufffb\ud800-\udfff]"
)

DEFAULT_LIMIT = 200
ELLIPSIS = "..."


def _escape_char(m: re.Match[str]) -> str:
    c = ord(m.group(0))
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape_untrusted(text: object, limit: int | None = DEFAULT_LIMIT) -> str:
    """Return ``text`` as a single printable line of at most ``limit`` characters.

    ``limit=None`` escapes without truncating. The cut keeps two thirds of the budget from
    the head and the rest from the tail (a path's file name is at its end).
    """
    s = _UNSAFE.sub(_escape_char, str(text))
    if limit is not None and len(s) > limit:
        room = max(limit - len(ELLIPSIS), 2)
        head = (room * 2) // 3
        tail = room - head
        s = s[:head] + ELLIPSIS + (s[-tail:] if tail else "")
    return s


def has_unsafe_chars(text: str) -> bool:
    """True when ``text`` holds a character ``escape_untrusted`` would escape."""
    return _UNSAFE.search(text) is not None


__all__ = ["DEFAULT_LIMIT", "escape_untrusted", "has_unsafe_chars"]
