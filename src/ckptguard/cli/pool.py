"""The process pool behind ``ckptguard scan --workers N``.

Why not ``concurrent.futures``: one future per file and ``wait(FIRST_COMPLETED)`` over all
of them is quadratic in the number of files, and a Ctrl-C inside ``wait`` can leave a
future's lock held so shutdown blocks. This pool is small and has three properties:

* **Linear.** Files go out in chunks over one pipe per worker, at most ``WINDOW`` chunks
  in flight per worker; results come back one message per file (so progress and a partial
  report stay exact) and the parent waits on the worker pipes only.
* **Stops at once.** Workers ignore SIGINT (a terminal's Ctrl-C reaches the whole process
  group); the parent handles it and, on any exception (KeyboardInterrupt included), kills
  every worker with SIGKILL and reaps it. Files in flight are dropped, the files finished
  are kept (:func:`scan_parallel` has already passed them on).
* **No orphans.** On Linux each worker asks the kernel for SIGKILL when its parent dies
  (``PR_SET_PDEATHSIG``), so even a parent killed by SIGKILL leaves no worker behind; every
  worker also exits when its pipe closes.

A worker that dies while scanning (killed, out of memory) turns the file it was on into an
internal-error report (CKG902, INCOMPLETE) and is replaced; the rest of its chunk is
scanned by another worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from ..model import Report
from ..policy import Limits, Policy
from .scanfile import error_report, scan_one

Task = tuple[str, "str | None"]           # (path, unreadable reason)
Chunk = list[tuple[int, str, "str | None"]]  # (index, path, unreadable)

#: chunks in flight per worker: one being scanned, one queued so the worker never idles
WINDOW = 2
MAX_CHUNK = 32
#: a chunk's paths are kept small so a send never blocks on a full pipe
MAX_CHUNK_BYTES = 16 * 1024
_PR_SET_PDEATHSIG = 1
#: a worker sends what it finished at the end of a chunk, or after this long
FLUSH_SECONDS = 0.1


def chunk_size(n_tasks: int, workers: int) -> int:
    """Files per chunk: large enough that messages are cheap, small enough that every
    worker gets several chunks (load balance) and a Ctrl-C loses little work."""
    return max(1, min(MAX_CHUNK, n_tasks // (workers * 8)))


def make_chunks(tasks: Sequence[Task], size: int) -> deque[Chunk]:
    chunks: deque[Chunk] = deque()
    cur: Chunk = []
    nbytes = 0
    for i, (path, unreadable) in enumerate(tasks):
        cost = len(path) + len(unreadable or "") + 16
        if cur and (len(cur) >= size or nbytes + cost > MAX_CHUNK_BYTES):
            chunks.append(cur)
            cur, nbytes = [], 0
        cur.append((i, path, unreadable))
        nbytes += cost
    if cur:
        chunks.append(cur)
    return chunks


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _worker(conn: Connection, policy: Policy, limits: Limits, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    _die_with_parent(parent_pid)
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        batch: list[tuple[int, Report]] = []
        last = time.monotonic()
        for n, (i, path, unreadable) in enumerate(chunk, 1):
            batch.append((i, scan_one(path, policy, limits, unreadable)))
            now = time.monotonic()
            done = n == len(chunk)
            if done or now - last >= FLUSH_SECONDS:
                try:
                    conn.send((batch, done))
                except (BrokenPipeError, OSError):
                    return
                batch, last = [], now


@dataclass
class _Worker:
    process: Any
    conn: Connection
    chunks: deque[Chunk] = field(default_factory=deque)  # sent, not finished, in order
    done_in_first: int = 0                                # results seen of chunks[0]


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


class _Pool:
    def __init__(self, policy: Policy, limits: Limits, workers: int) -> None:
        self.ctx = _context()
        self.policy = policy
        self.limits = limits
        self.size = workers
        self.workers: list[_Worker] = []
        self.restarts = 0

    def start_worker(self) -> _Worker:
        parent, child = self.ctx.Pipe(duplex=True)
        for stream in (sys.stdout, sys.stderr):  # a forked child must not flush our buffers
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()
        # a signal between fork and the worker's first line would run our handler in it:
        # start with SIGINT/SIGTERM blocked (inherited), the worker unblocks them itself
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            process = self.ctx.Process(target=_worker, name="ckptguard-scan",
                                       args=(child, self.policy, self.limits, os.getpid()),
                                       daemon=True)
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            child.close()
        worker = _Worker(process, parent)
        self.workers.append(worker)
        return worker

    def kill_all(self) -> None:
        """SIGKILL every worker and reap it: nothing outlives this call."""
        for w in self.workers:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                w.process.kill()
        for w in self.workers:
            with contextlib.suppress(OSError, ValueError, AssertionError):
                w.process.join(5)
            w.conn.close()
        self.workers.clear()

    def close_all(self) -> None:
        """Normal end: ask each worker to stop, then reap it (killing a straggler)."""
        for w in self.workers:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        for w in self.workers:
            w.process.join(2)
        self.kill_all()


def scan_parallel(tasks: Sequence[Task], *, policy: Policy, limits: Limits, workers: int,
                  on_result: Callable[[int, Report], None]) -> None:
    """Scan ``tasks`` on ``workers`` processes; call ``on_result(index, report)`` in the
    parent as each file finishes (in completion order). Raises KeyboardInterrupt (after
    killing every worker) when interrupted."""
    pool = _Pool(policy, limits, max(1, min(workers, len(tasks))))
    queue = make_chunks(tasks, chunk_size(len(tasks), pool.size))
    try:
        def feed(w: _Worker) -> None:
            while queue and len(w.chunks) < WINDOW:
                chunk = queue.popleft()
                w.chunks.append(chunk)
                w.conn.send(chunk)

        for _ in range(pool.size):
            feed(pool.start_worker())
        while any(w.chunks for w in pool.workers):
            busy = {w.conn: w for w in pool.workers if w.chunks}
            for conn in wait(list(busy), timeout=0.5):
                w = busy[conn]  # type: ignore[index]
                try:
                    batch, chunk_done = w.conn.recv()
                except (EOFError, OSError):
                    _worker_died(pool, w, queue, on_result, error_report)
                    continue
                for i, report in batch:
                    on_result(i, report)
                w.done_in_first += len(batch)
                if chunk_done:
                    w.chunks.popleft()
                    w.done_in_first = 0
                    feed(w)
            for w in list(pool.workers):
                if not w.chunks and queue:
                    feed(w)
        pool.close_all()
    finally:
        pool.kill_all()


def _worker_died(pool: _Pool, w: _Worker, queue: deque[Chunk],
                 on_result: Callable[[int, Report], None],
                 error_report: Callable[[str, BaseException], Report]) -> None:
    """A worker died (killed, out of memory). Which file killed it is known only when its
    chunk held one unfinished file: that file becomes a CKG902 report. Otherwise the
    unfinished files are queued again one per chunk, so the next death names its file.
    A replacement worker is started while work remains (a bounded number of times)."""
    w.process.join(1)
    code = w.process.exitcode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
    w.conn.close()
    pool.workers.remove(w)
    first = w.chunks.popleft()[w.done_in_first:] if w.chunks else []
    for chunk in reversed(w.chunks):
        queue.appendleft(chunk)
    if len(first) == 1:
        i, path, _ = first[0]
        on_result(i, error_report(path, RuntimeError(f"scan worker died ({how})")))
    else:
        for item in reversed(first):
            queue.appendleft([item])
    if queue and pool.restarts < 4 * pool.size + len(first):
        pool.restarts += 1
        pool.start_worker()
    elif queue and not pool.workers:
        while queue:
            for i, path, _ in queue.popleft():
                on_result(i, error_report(path, RuntimeError("scan workers keep dying")))


__all__ = ["chunk_size", "make_chunks", "scan_parallel"]
