"""Limits: the one value every loop over untrusted input honours."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

MiB = 1024 * 1024
#: the largest value a limit may take: the native cores hold limits as 64-bit integers,
#: and an infinite or NaN limit would switch the bound off
MAX_LIMIT = 1 << 62


@dataclass(frozen=True)
class Limits:
    """Bounds on the work an audit may do. Hitting one gives INCOMPLETE (CKG901).

    The defaults admit every real checkpoint we know of (a 50,000-tensor ``data.pkl``
    creates about 800,000 objects, 40% of ``max_objects``) while keeping a hostile file
    under ~200 MB and a few seconds. There is no opcode cap: every opcode consumes at least
    one byte, so ``max_pickle_bytes`` and ``max_seconds`` bound the decoding loop.
    """

    max_objects: int = 2_000_000           # live objects one pickle program may build
    max_memo: int = 2_000_000              # live memo entries
    max_memo_index: int = 1 << 31          # largest memo key (BINPUT/LONG_BINPUT/MEMOIZE)
    max_stack: int = 5_000_000             # values on the stack, all marks together
    max_mark_depth: int = 10_000           # nested MARKs
    max_container_items: int = 20_000_000  # items added to lists/dicts/sets/tuples in all
    max_literal_bytes: int = 256 * MiB     # one string/bytes/int literal
    max_line_bytes: int = 64 * 1024        # one text line (GLOBAL, INT, STRING, ...)
    max_pickle_bytes: int = 2048 * MiB     # one pickle stream
    max_pickles: int = 64                  # pickle programs in one stream (legacy: 5)
    max_members: int = 1_000_000           # zip members
    max_central_directory_bytes: int = 512 * MiB
    max_decompressed_bytes: int = 128 * MiB  # deflated bytes held in memory, all members
    max_compression_ratio: int = 200       # per deflated member
    max_header_bytes: int = 64 * MiB       # safetensors / npy header; tar extended headers
    max_tensors: int = 5_000_000
    max_seconds: float = 120.0             # wall time per file
    max_files: int = 1_000_000             # files in a folder scan
    max_json_depth: int = 64               # nesting in JSON headers
    max_remote_stream_bytes: int = 256 * MiB  # a file from a server without byte ranges

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                    not 0 <= v <= MAX_LIMIT:  # NaN fails every comparison: refused too
                raise ValueError(f"limit {f.name}={v!r}: a number from 0 to {MAX_LIMIT}")

    def replace(self, **changes: Any) -> Limits:
        return replace(self, **changes)

    def as_items(self) -> tuple[tuple[str, float], ...]:
        # integers stay integers (JSON ``2147483648``, not ``2147483648.0``); every report
        # carries them, so they are computed once per (immutable) value
        items: tuple[tuple[str, float], ...] | None = self.__dict__.get("_items")
        if items is None:
            items = tuple(sorted((f.name, getattr(self, f.name)) for f in fields(self)))
            object.__setattr__(self, "_items", items)
        return items

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


DEFAULT_LIMITS = Limits()

__all__ = ["DEFAULT_LIMITS", "Limits"]
