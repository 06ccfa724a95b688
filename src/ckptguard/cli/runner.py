"""Run the scan over discovered targets: in order or on a process pool, with a progress
callback, stopping cleanly on Ctrl-C. Results always come back in input order."""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ScanInputError
from ..model import Finding, Format, Location, Problem, Report, decide
from ..policy import Limits, Policy
from ..rules import make_finding
from ..scan_api import scan
from .discover import Target

if TYPE_CHECKING:
    from concurrent.futures import Future


def scan_one(path: str, policy: Policy, limits: Limits, unreadable: str | None = None) -> Report:
    """Scan one file. Never raises for a file: a path that cannot be opened becomes an
    unreadable report (CKG010), an unexpected error an audit-error report (CKG902)."""
    from ..analysis.engine import unreadable_report

    if unreadable is not None:
        return unreadable_report(path, unreadable, limits)
    try:
        return scan(path, policy=policy, limits=limits)
    except ScanInputError as e:
        return unreadable_report(path, e.reason, limits)
    except OSError as e:
        return unreadable_report(path, e.strerror or str(e), limits)
    except Exception as e:  # noqa: BLE001 - the CLI boundary: a crash is "could not decide"
        return error_report(path, e)


def error_report(path: str, exc: BaseException) -> Report:
    message = f"internal error while scanning ({type(exc).__name__}: {str(exc)[:200]})"
    loc = Location(path)
    findings = (make_finding("CKG902", message, loc),)
    problems = (Problem(message, loc),)
    from .._version import __version__

    return Report(path=path, format=Format.UNKNOWN, verdict=decide(findings, problems),
                  findings=findings, problems=problems, tool_version=__version__)


def _relabel_location(loc: Location, old: str, new: str) -> Location:
    return dataclasses.replace(loc, path=new) if loc.path == old else loc


def relabel(report: Report, name: str, metadata: dict[str, str] | None = None) -> Report:
    """The report shown under ``name`` (e.g. ``org/model@rev/file`` for a cache blob)."""
    old = report.path
    meta = report.metadata
    if metadata:
        merged = dict(meta)
        merged.update(metadata)
        meta = tuple(sorted(merged.items()))
    if old == name and meta == report.metadata:
        return report
    findings: tuple[Finding, ...] = tuple(
        dataclasses.replace(f, location=_relabel_location(f.location, old, name))
        for f in report.findings)
    problems = tuple(dataclasses.replace(p, location=_relabel_location(p.location, old, name))
                     for p in report.problems)
    return dataclasses.replace(report, path=name, findings=findings, problems=problems,
                               metadata=meta)


@dataclass
class RunOutcome:
    reports: list[Report]
    interrupted: bool


Progress = Callable[[Target, int], None]  # (target just finished, bytes of it)


def _expand(target: Target, report: Report) -> list[tuple[int, Report]]:
    order = target.order or list(range(len(target.names)))
    metas = target.metadata or [{} for _ in target.names]
    return [(seq, relabel(report, name, meta))
            for seq, name, meta in zip(order, target.names, metas, strict=True)]


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_targets(targets: list[Target], *, policy: Policy, limits: Limits, workers: int = 1,
                on_start: Callable[[Target], None] | None = None,
                on_done: Progress | None = None) -> RunOutcome:
    """Scan ``targets``; on Ctrl-C return what finished (in input order) and ``interrupted``."""
    results: dict[int, Report] = {}
    interrupted = False
    if workers <= 1:
        try:
            for i, t in enumerate(targets):
                if on_start:
                    on_start(t)
                results[i] = scan_one(t.path, policy, limits, t.unreadable)
                if on_done:
                    on_done(t, t.size)
        except KeyboardInterrupt:
            interrupted = True
    else:
        # imported here: a sequential scan should not pay for the process-pool machinery
        import threading
        from concurrent.futures import FIRST_COMPLETED, InvalidStateError, ProcessPoolExecutor, wait

        # Ctrl-C in a terminal signals the whole process group. Workers are started with
        # SIGINT ignored (inherited at fork, so there is no start-up window in which one
        # dies of it and breaks the pool); only this process handles the interrupt.
        old_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            pool = ProcessPoolExecutor(max_workers=workers, initializer=_ignore_sigint)
            pending: dict[Future[Report], int] = {}
            it = iter(enumerate(targets))
            for i, t in it:  # the first submit starts the workers
                pending[pool.submit(scan_one, t.path, policy, limits, t.unreadable)] = i
                break
        finally:
            signal.signal(signal.SIGINT, old_handler)
        try:
            for i, t in it:
                pending[pool.submit(scan_one, t.path, policy, limits, t.unreadable)] = i
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: pending[f]):
                    i = pending.pop(fut)
                    try:
                        results[i] = fut.result()
                    except Exception as e:  # noqa: BLE001 - a worker died: not a pass
                        results[i] = error_report(targets[i].path, e)
                    if on_done:
                        on_done(targets[i], targets[i].size)
            pool.shutdown(wait=True)
        except KeyboardInterrupt:
            interrupted = True
            # Files not started are cancelled; the few in flight finish (each is bounded by
            # the audit limits). CPython 3.11's executor can still report a cancelled
            # future from its manager thread while shutting down: that is not our error.
            previous_hook = threading.excepthook

            def _quiet(args: threading.ExceptHookArgs) -> None:
                if not isinstance(args.exc_value, InvalidStateError):
                    previous_hook(args)

            threading.excepthook = _quiet
            try:
                pool.shutdown(wait=True, cancel_futures=True)
            finally:
                threading.excepthook = previous_hook
    ordered: list[tuple[int, Report]] = []
    for i in sorted(results):
        ordered.extend(_expand(targets[i], results[i]))
    ordered.sort(key=lambda item: item[0])
    return RunOutcome([r for _, r in ordered], interrupted)


__all__ = ["RunOutcome", "error_report", "relabel", "run_targets", "scan_one"]
