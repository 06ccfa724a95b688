"""The progress bar of ``ckptguard scan``: on stderr, and only when stderr is a TTY."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from ..primitives import escape_untrusted
from .discover import Target


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


class ScanProgress:
    """files done / total, bytes done / total, the current file. A no-op when disabled."""

    def __init__(self, *, enabled: bool, total_files: int, total_bytes: int,
                 stream: Any = None) -> None:
        self.enabled = enabled and total_files > 0
        self.total_bytes = total_bytes
        self.done_bytes = 0
        self._progress: Any = None
        self._task: Any = None
        self._name_room = 40
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
        )

        console = Console(file=stream, force_terminal=True, highlight=False, markup=False,
                          emoji=False)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("scanning", markup=False),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("files", markup=False),
            TextColumn("{task.fields[bytes]}", markup=False),
            TextColumn("{task.fields[current]}", markup=False),
            console=console,
            transient=True,
            refresh_per_second=8,
        )
        # the current file gets what is left of the line (the other columns take ~62)
        self._name_room = max(console.width - 64, 12)
        self._task = self._progress.add_task("scan", total=total_files,
                                             bytes=self._bytes_text(), current="")

    def _bytes_text(self) -> str:
        return f"{_size(self.done_bytes)}/{_size(self.total_bytes)}"

    def __enter__(self) -> ScanProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start(self, target: Target) -> None:
        if self._progress is not None:
            self._progress.update(self._task,
                                  current=escape_untrusted(target.names[0], self._name_room))

    def done(self, target: Target, nbytes: int) -> None:
        if self._progress is None:
            return
        self.done_bytes += nbytes
        self._progress.update(self._task, advance=1, bytes=self._bytes_text(),
                              current=escape_untrusted(target.names[0], self._name_room))


__all__ = ["ScanProgress"]
