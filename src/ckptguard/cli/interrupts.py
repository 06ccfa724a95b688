"""Ctrl-C and SIGTERM during ``ckptguard scan``: one handler, two phases.

* **Scanning**: the first SIGINT/SIGTERM raises KeyboardInterrupt (the runner keeps what
  finished and marks the run interrupted). The handler switches itself to the next phase
  before raising, so a second signal can never escape the runner's ``except``.
* **Reporting** (rendering and writing the report): a signal is only counted, so the
  report that is written is complete and says what it says (``interrupted`` true or
  false), and the exit code is computed from that same report. A second signal while
  reporting raises KeyboardInterrupt anyway (say, stdout is a pipe nobody reads): the
  report is then not written (``-o`` leaves the old file in place, see
  :func:`.common.write_output`) and the exit code is 2.
"""

from __future__ import annotations

import enum
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Phase(enum.Enum):
    SCANNING = "scanning"
    REPORTING = "reporting"


class Interrupts:
    """Context manager installing the handler (main thread only; elsewhere a no-op)."""

    def __init__(self) -> None:
        self.phase = Phase.SCANNING
        self.received = 0            # signals seen in any phase
        self.while_reporting = 0     # signals seen while reporting
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1
        if self.phase is Phase.SCANNING:
            self.phase = Phase.REPORTING   # before raising: one raise per run
            raise KeyboardInterrupt
        self.while_reporting += 1
        if self.while_reporting >= 2:
            raise KeyboardInterrupt

    def reporting(self) -> None:
        """Enter the reporting phase (idempotent)."""
        self.phase = Phase.REPORTING

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


__all__ = ["Interrupts", "Phase"]
