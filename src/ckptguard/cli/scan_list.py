"""Remote targets on the command line, and ``scan --from-file LIST`` (JSON Lines).

``--from-file`` reads one target a line (a local path, an http(s) URL or an ``hf://`` id;
blank lines and ``#`` comments skipped; ``-`` is standard input) and writes one JSON object
a line as each scan finishes::

    {"target": "...", "verdict": "SAFE", "max_severity": null, "rules": [],
     "bytes_read": 1234, "report": {...Report.to_dict()...}}

so a registry-sized list streams with bounded memory. With ``--dask ADDRESS`` the scans
run on a Dask cluster (``local`` starts one on this machine).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any

import click

from ..model import Report
from ..policy import Limits, Policy
from ..remote.http import RemoteOptions
from ..remote.targets import hub_token


def options_for(concurrency: int) -> RemoteOptions:
    return RemoteOptions(concurrency=concurrency, token=hub_token())


def scan_remote_targets(targets: list[str], *, policy: Policy, limits: Limits,
                        concurrency: int) -> list[Report]:
    """Reports for remote targets named on the command line, in their order."""
    from ..scan_api import iter_scan

    got = dict(iter_scan(targets, policy=policy, limits=limits,
                         options=options_for(concurrency)))
    return [got[t] for t in targets]


def read_targets(stream: IO[str]) -> Iterator[str]:
    for line in stream:
        t = line.strip()
        if t and not t.startswith("#"):
            yield t


def json_line(target: str, report: Report) -> str:
    sev = report.max_severity
    row: dict[str, Any] = {
        "target": target,
        "verdict": report.verdict.value,
        "max_severity": sev.name.lower() if sev is not None else None,
        "rules": sorted(report.rule_ids()),
        "bytes_read": report.bytes_read,
    }
    # the report last, its tensors column by column (no dict per tensor): the same bytes
    # as json.dumps of the row with ``"report": report.to_dict()``
    from ..report.fastjson import report_json
    from ..report.jsonreport import lone_surrogates_as_text

    return lone_surrogates_as_text(json.dumps(row, separators=(",", ":"))[:-1] + ',"report":'
                                   + report_json(report) + "}")


def run_list(targets: Iterable[str], *, policy: Policy, limits: Limits, concurrency: int,
             dask: str | None, out: IO[str]) -> list[Report]:
    """Scan every target, writing a JSON line per report as it finishes; returns the
    reports (summaries only are kept by callers that need the exit code)."""
    if dask is not None:
        from ..remote.distributed import scan_on_dask

        stream: Iterable[tuple[str, Report]] = scan_on_dask(
            targets, address=dask, policy=policy, limits=limits)
    else:
        from ..scan_api import iter_scan

        stream = iter_scan(targets, policy=policy, limits=limits,
                           options=options_for(concurrency))
    reports = []
    try:
        for target, report in stream:
            out.write(json_line(target, report) + "\n")
            out.flush()
            reports.append(_summary(report))
    except ValueError as e:
        from ..remote.distributed import DaskAddressError

        if not isinstance(e, DaskAddressError):
            raise
        raise click.BadParameter(str(e), param_hint="--dask") from None
    return reports


def _summary(report: Report) -> Report:
    """What the exit code needs of a report (verdict, findings), without its tensors."""
    import dataclasses

    return dataclasses.replace(report, tensors=(), children=tuple(
        _summary(c) for c in report.children))


def open_list(path: str) -> IO[str]:
    if path == "-":
        import io

        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
    try:  # a line that is no UTF-8 is a path as the OS spells it (undecodable bytes kept)
        return open(path, encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        raise click.BadParameter(f"cannot read {path}: {e.strerror or e}",
                                 param_hint="--from-file") from None


__all__ = ["json_line", "open_list", "read_targets", "run_list", "scan_remote_targets"]
