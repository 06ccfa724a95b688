"""Run the scan over discovered targets: in order or on a process pool, with a progress
callback, stopping cleanly on Ctrl-C. Results always come back in input order."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ScanInputError
from ..model import Finding, Format, Location, Problem, Report, decide
from ..policy import Limits, Policy
from ..rules import make_finding
from ..scan_api import scan
from .discover import Target


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
    from .. import __version__

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


def run_targets(targets: list[Target], *, policy: Policy, limits: Limits, workers: int = 1,
                on_start: Callable[[Target], None] | None = None,
                on_done: Progress | None = None) -> RunOutcome:
    """Scan ``targets``; on Ctrl-C (or SIGTERM, see :mod:`.interrupts`) return what finished,
    in input order, and ``interrupted``."""
    results: dict[int, Report] = {}
    interrupted = False
    try:
        if workers <= 1 or len(targets) <= 1:
            for i, t in enumerate(targets):
                if on_start:
                    on_start(t)
                results[i] = scan_one(t.path, policy, limits, t.unreadable)
                if on_done:
                    on_done(t, t.size)
        else:
            from .pool import scan_parallel  # a sequential scan does not pay for the pool

            def collect(i: int, report: Report) -> None:
                results[i] = report
                if on_done:
                    on_done(targets[i], targets[i].size)

            scan_parallel([(t.path, t.unreadable) for t in targets], policy=policy,
                          limits=limits, workers=workers, on_result=collect)
    except KeyboardInterrupt:
        interrupted = True
    return RunOutcome(ordered_reports(targets, results), interrupted)


def ordered_reports(targets: list[Target], results: dict[int, Report]) -> list[Report]:
    """The finished reports under every name of their target, in discovery order."""
    ordered: list[tuple[int, Report]] = []
    for i in sorted(results):
        ordered.extend(_expand(targets[i], results[i]))
    ordered.sort(key=lambda item: item[0])
    return [r for _, r in ordered]


__all__ = ["RunOutcome", "error_report", "ordered_reports", "relabel", "run_targets",
           "scan_one"]
