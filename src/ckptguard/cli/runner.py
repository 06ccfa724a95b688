"""Run the scan over discovered targets: in order or on a process pool, with a progress
callback, stopping cleanly on Ctrl-C. Results always come back in input order."""

from __future__ import annotations

import dataclasses
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass

from ..model import Finding, Location, Report
from ..policy import Limits, Policy
from .discover import CACHE_FILE, Target
from .scanfile import scan_one


def _relabel_location(loc: Location, old: str, new: str) -> Location:
    return dataclasses.replace(loc, path=new) if loc.path == old else loc


def _child_name(child_path: str, old_parent: str, new_parent: str) -> str:
    """A child's name beside its relabelled parent: a shard ``<snapshot dir>/shard`` of the
    index ``<snapshot dir>/x.index.json`` shown as ``org/name@main (abc1234)/x.index.json``
    becomes ``org/name@main (abc1234)/shard`` -- never the absolute snapshot path."""
    for old_dir, new_dir in ((old_parent, new_parent),
                             (os.path.dirname(old_parent), posixpath.dirname(new_parent))):
        prefix = old_dir.rstrip(os.sep) + os.sep if old_dir else ""
        if old_dir and child_path.startswith(prefix):
            rest = child_path[len(prefix):].replace(os.sep, "/")
            return f"{new_dir}/{rest}" if new_dir else rest
    return child_path


def relabel(report: Report, name: str, metadata: dict[str, str] | None = None) -> Report:
    """The report shown under ``name`` (e.g. ``org/model@main (abc1234)/file`` for a cache
    blob); its children (an index's shards) are shown beside it."""
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
    cache_file = dict(meta).get(CACHE_FILE)
    children = tuple(
        relabel(c, _child_name(c.path, old, name),
                {CACHE_FILE: _child_name(c.path, old, cache_file)} if cache_file else None)
        for c in report.children)
    return dataclasses.replace(report, path=name, findings=findings, problems=problems,
                               metadata=meta, children=children)


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
    in input order, and ``interrupted``.

    Deferred targets (shards of an index in the same scan) are scanned in a second pass,
    and only under the names their index's report did not cover as a child."""
    results: dict[int, Report] = {}
    later: list[Target] = []
    second: dict[int, Report] = {}
    interrupted = False
    try:
        first = [i for i, t in enumerate(targets) if not t.deferred]
        _scan_indices(targets, first, results, policy, limits, workers, on_start, on_done)
        covered = {c.path for _, r in _expand_all(targets, results) for c in r.children}
        for t in targets:
            rest = uncovered(t, covered) if t.deferred else None
            if rest is not None:
                later.append(rest)
            elif t.deferred and on_done:
                on_done(t, t.size)  # scanned as its index's child
        _scan_indices(later, list(range(len(later))), second, policy, limits, workers,
                      on_start, on_done)
    except KeyboardInterrupt:
        interrupted = True
    merged = sorted(_expand_all(targets, results) + _expand_all(later, second),
                    key=lambda item: item[0])
    return RunOutcome([r for _, r in merged], interrupted)


def uncovered(target: Target, covered: set[str]) -> Target | None:
    """``target`` restricted to the names no index report covers; None when all are."""
    keep = [k for k, n in enumerate(target.names) if n not in covered]
    if not keep:
        return None
    order = target.order or list(range(len(target.names)))
    metas = target.metadata or [{} for _ in target.names]
    return dataclasses.replace(target, names=[target.names[k] for k in keep],
                               order=[order[k] for k in keep],
                               metadata=[metas[k] for k in keep], deferred=False)


def _scan_indices(targets: list[Target], indices: list[int], results: dict[int, Report],
                  policy: Policy, limits: Limits, workers: int,
                  on_start: Callable[[Target], None] | None, on_done: Progress | None) -> None:
    if workers <= 1 or len(indices) <= 1:
        for i in indices:
            t = targets[i]
            if on_start:
                on_start(t)
            results[i] = scan_one(t.path, policy, limits, t.unreadable)
            if on_done:
                on_done(t, t.size)
        return
    from .pool import scan_parallel  # a sequential scan does not pay for the pool

    def collect(k: int, report: Report) -> None:
        i = indices[k]
        results[i] = report
        if on_done:
            on_done(targets[i], targets[i].size)

    scan_parallel([(targets[i].path, targets[i].unreadable) for i in indices], policy=policy,
                  limits=limits, workers=workers, on_result=collect)


def _expand_all(targets: list[Target], results: dict[int, Report]) -> list[tuple[int, Report]]:
    return [item for i in sorted(results) for item in _expand(targets[i], results[i])]


def ordered_reports(targets: list[Target], results: dict[int, Report]) -> list[Report]:
    """The finished reports under every name of their target, in discovery order."""
    return [r for _, r in sorted(_expand_all(targets, results), key=lambda item: item[0])]


__all__ = ["RunOutcome", "ordered_reports", "relabel", "run_targets", "uncovered"]
