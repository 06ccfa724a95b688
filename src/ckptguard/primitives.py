"""The lowest layer: one helper per primitive, shared by every layer above (imports nothing
of the package).

- ``open_readonly``: how ckptguard opens a file it reads (never blocks on a FIFO, never
  leaks into a child process, binary on Windows);
- ``clip`` / ``escape``: untrusted text in a finding's message or evidence (``escape``
  spells every non-printable character as a Python escape; both cut to a length);
- ``gc_paused``: the cyclic collector paused around an audit that allocates millions of
  acyclic objects (nests: the outermost pause restores the collector);
- ``or_default``: ``value if value is not None else default``.

Display-side escaping for terminals (head and tail kept) is ``report/escape.py``.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

#: O_RDONLY, plus what every read-only open needs: no controlling-terminal or FIFO wait
#: (O_NONBLOCK: a FIFO named like a checkpoint must not hang the scan), no inheritance by
#: child processes (O_CLOEXEC), no newline translation on Windows (O_BINARY)
READONLY_FLAGS = (os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
                  | getattr(os, "O_BINARY", 0))


def open_readonly(path: str) -> int:
    """``os.open(path, READONLY_FLAGS)``: a descriptor to read with ``os.pread``."""
    return os.open(path, READONLY_FLAGS)


def clip(text: str, n: int = 160) -> str:
    """``text`` cut to ``n`` characters, with "..." when cut."""
    return text if len(text) <= n else text[:n] + "..."


def escape(text: str, n: int = 120) -> str:
    """Untrusted text made safe to print in a finding: escaped and cut to ``n``."""
    return clip(text.encode("unicode_escape", "backslashreplace").decode("ascii"), n)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block; restore it after, whatever
    happens. Nested pauses are free: only the one that disabled it enables it again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def or_default(value: T | None, default: T) -> T:
    """``value`` unless it is None (a falsy value is kept)."""
    return value if value is not None else default


__all__ = ["READONLY_FLAGS", "clip", "escape", "gc_paused", "open_readonly", "or_default"]
