"""What ``ckptguard scan`` does once its arguments are parsed, without click.

:mod:`.scan_cmd` is the click command (options, help, usage errors); it calls
:func:`run_scan` and exits with the code it returns. A plain ``ckptguard scan PATH...
[--format F]`` does not need click's parser at all (:mod:`.plain`), so :func:`run_plain`
runs the same :func:`run_scan` with the options' defaults and handles what it raises as the
click group would: click is imported only on the paths that use it (an error, a usage
error, a message on stderr).
"""

from __future__ import annotations

import os
import sys

from ..model import Report
from ..policy import Limits, Policy
from ..report import FormatOptions, ScanResult, render_chunks, summary_line
from ..report.options import TextLayout
from .common import (
    color_wanted,
    err,
    fail,
    is_tty,
    load_limits,
    load_policy,
    stderr,
    stdout,
    text_width,
    write_output,
)
from .discover import Discovery, default_hf_cache, discover
from .exitcodes import ExitCode, empty_scan_code, exit_code
from .interrupts import Interrupts
from .progress import ScanProgress
from .runner import RunOutcome, run_targets


def _usage_error(message: str) -> Exception:
    import click

    return click.UsageError(message)


def run_scan(
        paths: tuple[str, ...], hf_cache: str | None, excludes: tuple[str, ...],
        skip_non_models: bool, workers: int, policy_file: str | None,
        profiles: tuple[str, ...], discover_policy: bool, suggest_policy: bool,
        limit_items: tuple[str, ...], fail_on: str | None, fmt: str, output: str | None,
        verbose: bool, fail_on_empty: bool, show_progress: bool | None,
        from_file: str | None, concurrency: int, dask_address: str | None) -> int:
    """The scan command's body: its exit code (an error raises click's exceptions)."""
    policy = load_policy(policy_file, discover=discover_policy, profiles=profiles)
    limits = load_limits(limit_items)
    if from_file is not None:
        return _scan_list(from_file, paths, policy, limits, concurrency, dask_address, output,
                   fail_on, fail_on_empty)
    if dask_address is not None:
        raise _usage_error("--dask works with --from-file")
    if not paths and hf_cache is None:
        raise _usage_error("give at least one PATH or --hf-cache")
    from ..primitives import is_remote

    remote = [p for p in paths if is_remote(p)]
    paths = tuple(p for p in paths if not is_remote(p))
    cache_dir: str | None = None
    if hf_cache is not None:
        cache_dir = hf_cache or default_hf_cache()
        if not os.path.isdir(cache_dir):
            raise fail(f"Hugging Face cache not found: {cache_dir}")

    with Interrupts() as interrupts:
        found = _discover(paths, excludes, cache_dir, skip_non_models, interrupts,
                          policy=policy, limits=limits)
        remote_reports: list[Report] = []
        if found is not None and remote:
            got = _scan_remote(remote, policy, limits, concurrency, interrupts)
            if got is None:
                found = None
            else:
                remote_reports = got
        if found is None or (not found.targets and not remote_reports):
            interrupts.reporting()
            result = ScanResult(skipped=found.skipped if found else 0,
                                notes=tuple(found.notes) if found else (),
                                interrupted=found is None, policy=policy.extra,
                                policy_origin=policy.origin, profiles=policy.profiles,
                                source_root=os.getcwd(), hf_cache=cache_dir)
            _emit_or_abort(result, fmt, output, verbose)
            if found is None:
                raise fail("interrupted while looking for files: nothing was scanned")
            err("no files to scan: no model files found" + (
                f" ({found.skipped} files skipped: not model files)" if found.skipped else ""))
            return int(empty_scan_code(fail_on_empty))
        outcome = _run(found, policy=policy, limits=limits, workers=workers,
                       show_progress=show_progress, interrupts=interrupts)
        planned = sum(len(t.names) for t in found.targets) + len(remote_reports)
        result = ScanResult(reports=(*outcome.reports, *remote_reports), skipped=found.skipped,
                            notes=tuple(found.notes), interrupted=outcome.interrupted,
                            planned=planned, policy=policy.extra,
                            policy_origin=policy.origin, profiles=policy.profiles,
                            source_root=os.getcwd(), hf_cache=cache_dir)
        if suggest_policy:
            from ..policy.suggest import suggest_policy_toml

            write_output(suggest_policy_toml(result.reports), output)
        else:
            _emit_or_abort(result, fmt, output, verbose)
    if outcome.interrupted:
        err(f"interrupted: {summary_line(result)}")
    elif interrupts.received:
        err("interrupt received after the scan finished: the report is complete")
    return int(exit_code(result.reports, fail_on=fail_on, interrupted=outcome.interrupted))


def _scan_list(from_file: str, paths: tuple[str, ...], policy: Policy, limits: Limits,
               concurrency: int, dask_address: str | None, output: str | None,
               fail_on: str | None, fail_on_empty: bool) -> int:
    """``--from-file``: JSON Lines, one per target, streamed as scans finish."""
    from .scan_list import open_list, read_targets, run_list

    if paths:
        raise _usage_error("give targets either as PATHs or with --from-file, not both")
    stream = open_list(from_file)
    out = stdout() if output in (None, "-") else None
    try:
        if out is None:
            assert output is not None
            try:
                fh = open(output, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
            except OSError as e:
                raise fail(f"cannot write {output}: {e.strerror or e}") from None
            with fh:
                reports = run_list(read_targets(stream), policy=policy, limits=limits,
                                   concurrency=concurrency, dask=dask_address, out=fh)
        else:
            reports = run_list(read_targets(stream), policy=policy, limits=limits,
                               concurrency=concurrency, dask=dask_address, out=out)
    finally:
        if stream is not sys.stdin:
            stream.close()
    result = ScanResult(reports=tuple(reports))
    err(summary_line(result))
    code = exit_code(result.reports, fail_on=fail_on, interrupted=False)
    if not reports:
        err("no targets in the list")
        code = empty_scan_code(fail_on_empty)
    return int(code)


def _scan_remote(targets: list[str], policy: Policy, limits: Limits, concurrency: int,
                 interrupts: Interrupts) -> list[Report] | None:
    """Reports for the URLs and hub ids on the command line; None after a Ctrl-C."""
    from .scan_list import scan_remote_targets

    try:
        return scan_remote_targets(targets, policy=policy, limits=limits,
                                   concurrency=concurrency)
    except KeyboardInterrupt:
        interrupts.reporting()
        return None


def _discover(paths: tuple[str, ...], excludes: tuple[str, ...], cache_dir: str | None,
              skip_non_models: bool, interrupts: Interrupts, *, policy: Policy,
              limits: Limits) -> Discovery | None:
    """The files to scan; None when a Ctrl-C came first (a 20,000-file walk takes a while)."""
    try:
        return discover(paths, excludes=excludes, hf_cache=cache_dir,
                        filter_files=skip_non_models, policy=policy, limits=limits)
    except KeyboardInterrupt:
        interrupts.reporting()
        return None


def _run(found: Discovery, *, policy: Policy, limits: Limits, workers: int,
         show_progress: bool | None, interrupts: Interrupts) -> RunOutcome:
    """Scan with a progress bar; a Ctrl-C anywhere in here gives an interrupted outcome
    (the runner keeps the files that finished). Leaves ``interrupts`` in its reporting
    phase, so nothing after this raises on the first signal."""
    outcome: RunOutcome | None = None
    try:
        enabled = is_tty(stderr()) if show_progress is None else show_progress
        progress = ScanProgress(enabled=enabled, total_files=len(found.targets),
                                total_bytes=found.total_bytes, stream=stderr())
        with progress:
            outcome = run_targets(found.targets, policy=policy, limits=limits,
                                  workers=workers, on_start=progress.start,
                                  on_done=progress.done)
        interrupts.reporting()
    except KeyboardInterrupt:
        interrupts.reporting()
        outcome = RunOutcome(outcome.reports if outcome else [], True)
    return outcome


def _emit_or_abort(result: ScanResult, fmt: str, output: str | None, verbose: bool) -> None:
    """Write the report; a second Ctrl-C while writing abandons it (exit 2, ``-o`` keeps
    the earlier file)."""
    try:
        _emit(result, fmt, output, verbose)
    except KeyboardInterrupt:
        raise fail("interrupted while writing the report: "
                   + ("no report written" if output not in (None, "-")
                      else "the report on stdout is incomplete")) from None


def _emit(result: ScanResult, fmt: str, output: str | None, verbose: bool) -> None:
    to_stdout = output is None or output == "-"
    stream = stdout()
    terminal = to_stdout and is_tty(stream)
    options = FormatOptions(
        color=terminal and fmt == "text" and color_wanted(stream),
        width=text_width(stream) if terminal else 160,
        verbose=verbose,
        layout=TextLayout.TERMINAL if terminal else TextLayout.LINES,
    )
    write_output(render_chunks(fmt, result, options), output)
    if not to_stdout:
        err(summary_line(result))


def run_plain(paths: tuple[str, ...], fmt: str) -> int:
    """``ckptguard scan PATHS --format FMT`` (:mod:`.plain` parsed it; every other option at
    its default): the exit code the click group would give, and the same output. What the
    group (``GuardedGroup``) and ``main`` do with an exception, this does too."""
    try:
        return run_scan(paths, hf_cache=None, excludes=(), skip_non_models=False, workers=1,
                        policy_file=None, profiles=(), discover_policy=False,
                        suggest_policy=False, limit_items=(), fail_on=None, fmt=fmt,
                        output=None, verbose=False, fail_on_empty=False, show_progress=None,
                        from_file=None, concurrency=4, dask_address=None)
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as e:  # noqa: BLE001 - the CLI boundary (DESIGN.md), as GuardedGroup
        loaded = sys.modules.get("click")  # click's exceptions come only once it is imported
        if loaded is not None:
            exc = loaded.exceptions
            if isinstance(e, exc.Exit):
                return int(e.exit_code)
            if isinstance(e, exc.Abort):
                return _interrupted()
            if isinstance(e, exc.ClickException):
                e.show()
                return int(e.exit_code)
        import click

        from ..primitives import escape_untrusted

        click.echo(escape_untrusted(f"error: internal error: {type(e).__name__}: {e}", 1000),
                   err=True)
        return int(ExitCode.UNDECIDED)


def _interrupted() -> int:
    import click

    click.echo("interrupted", err=True)
    return int(ExitCode.UNDECIDED)


__all__ = ["run_plain", "run_scan"]
