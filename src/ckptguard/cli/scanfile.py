"""Scan one target for the CLI, never raising for the file (used in order by ``runner`` and
in the worker processes of ``pool``)."""

from __future__ import annotations

from .._version import __version__
from ..analysis.engine import unreadable_report
from ..errors import ScanInputError
from ..model import Format, Location, Problem, Report, decide
from ..policy import Limits, Policy
from ..scan_api import scan


def scan_one(path: str, policy: Policy, limits: Limits, unreadable: str | None = None) -> Report:
    """Scan one file. Never raises for a file: a path that cannot be opened becomes an
    unreadable report (CKG010), an unexpected error an audit-error report (CKG902)."""
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
    from ..rules import make_finding

    loc = Location(path)
    findings = (make_finding("CKG902", message, loc),)
    problems = (Problem(message, loc),)
    return Report(path=path, format=Format.UNKNOWN, verdict=decide(findings, problems),
                  findings=findings, problems=problems, tool_version=__version__)


__all__ = ["error_report", "scan_one"]
