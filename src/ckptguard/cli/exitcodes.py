"""Exit codes: the only place the CLI turns reports into a process status.

0  every file SAFE (or nothing at or above ``--fail-on``)
1  a finding at or above the threshold (default: any UNSAFE file)
2  could not decide: INCOMPLETE, interrupted, usage or internal error (and, with
   ``--fail-on-empty``, a scan that found no model file)
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from ..model import Effect, Report, Severity, Verdict


class ExitCode(enum.IntEnum):
    OK = 0
    FINDINGS = 1
    UNDECIDED = 2


#: ``--fail-on`` choices; ``any`` is any blocking finding.
FAIL_ON: dict[str, Severity] = {
    "critical": Severity.CRITICAL,
    "high": Severity.HIGH,
    "medium": Severity.MEDIUM,
    "any": Severity.INFO,
}


def _all_reports(reports: Iterable[Report]) -> Iterable[Report]:
    for r in reports:
        yield r
        yield from _all_reports(r.children)


def exit_code(reports: Iterable[Report], *, fail_on: str | None = None,
              interrupted: bool = False) -> ExitCode:
    flat = list(_all_reports(reports))
    if not flat:
        return ExitCode.UNDECIDED
    if fail_on is None:
        failed = any(r.verdict is Verdict.UNSAFE for r in flat)
    else:
        threshold = FAIL_ON[fail_on]
        failed = any(f.effect is Effect.BLOCKS and f.severity >= threshold
                     for r in flat for f in r.findings)
    if failed:
        return ExitCode.FINDINGS
    if interrupted or any(r.verdict is Verdict.INCOMPLETE for r in flat):
        return ExitCode.UNDECIDED
    return ExitCode.OK


#: a scan that found no model file at all: by ``--fail-on-empty``. A repository, commit or
#: cache without model files passes by default (the CLI says "no model files found");
#: ``--fail-on-empty`` is for jobs that must have scanned something.
EMPTY_SCAN: dict[bool, ExitCode] = {False: ExitCode.OK, True: ExitCode.UNDECIDED}


def empty_scan_code(fail_on_empty: bool) -> ExitCode:
    return EMPTY_SCAN[fail_on_empty]


__all__ = ["EMPTY_SCAN", "FAIL_ON", "ExitCode", "empty_scan_code", "exit_code"]
