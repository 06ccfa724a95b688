"""``ckptguard scan PATH...``"""

from __future__ import annotations

import os
import sys

import click

from ..model import Report
from ..policy import Limits, Policy
from ..report import FORMATTERS, FormatOptions, ScanResult, render_chunks, summary_line
from ..report.options import TextLayout
from .common import (
    color_wanted,
    err,
    fail,
    is_tty,
    limit_option,
    load_limits,
    load_policy,
    policy_option,
    profile_options,
    stderr,
    stdout,
    text_width,
    write_output,
)
from .discover import Discovery, default_hf_cache, discover
from .exitcodes import FAIL_ON, empty_scan_code, exit_code
from .interrupts import Interrupts
from .progress import ScanProgress
from .runner import RunOutcome, run_targets


@click.command("scan")
@click.argument("paths", nargs=-1, type=click.Path(readable=False, path_type=str))
@click.option("--hf-cache", "hf_cache", is_flag=False, flag_value="", default=None,
              metavar="[DIR]",
              help="Scan the Hugging Face hub cache (DIR, or HF_HUB_CACHE / HF_HOME/hub / "
                   "~/.cache/huggingface/hub). Each blob is scanned once and reported as "
                   "org/name@revision/file.")
@click.option("--exclude", "excludes", multiple=True, metavar="GLOB",
              help="Skip files and folders whose relative path or name matches GLOB "
                   "(repeatable).")
@click.option("--skip-non-models", is_flag=True,
              help="Filter the files named on the command line by content too (for "
                   "pre-commit hooks: a commit without model files passes).")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Scan files in N processes (output order stays the input order).")
@policy_option
@profile_options
@click.option("--suggest-policy", "suggest_policy", is_flag=True,
              help="Print a TOML policy for the reviewed benign (MEDIUM) findings of this scan "
                   "instead of the report; never for HIGH or CRITICAL findings.")
@limit_option
@click.option("--fail-on", "fail_on", type=click.Choice(list(FAIL_ON)), default=None,
              help="Exit 1 only for a blocking finding at or above this severity ('any': "
                   "any blocking finding). Default: any file that is not SAFE fails.")
@click.option("--format", "fmt", type=click.Choice(list(FORMATTERS)), default="text",
              show_default=True, help="Report format.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, readable=False, path_type=str),
              default=None,
              help="Write the report to FILE instead of stdout (the summary line still goes "
                   "to stderr).")
@click.option("--verbose", "-v", is_flag=True,
              help="Text format: list every finding with its evidence and advice.")
@click.option("--fail-on-empty", is_flag=True,
              help="Exit 2 when no model file is found (default: exit 0 and say so, so a "
                   "repository or commit without model files passes).")
@click.option("--progress/--no-progress", "show_progress", default=None,
              help="Progress bar on stderr (default: only when stderr is a terminal).")
@click.option("--from-file", "from_file", default=None, metavar="LIST",
              help="Scan the targets listed in LIST (one path, URL or hf:// id a line; '-' "
                   "reads standard input) and write one JSON object a line as each finishes.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Remote files (URLs, hf:// ids) fetched at once.")
@click.option("--dask", "dask_address", default=None, metavar="ADDRESS",
              help="With --from-file: run the scans on a Dask cluster (tcp://HOST:8786, or "
                   "'local' for one on this machine). Needs ckptguard[distributed].")
def scan_command(
        paths: tuple[str, ...], hf_cache: str | None, excludes: tuple[str, ...],
        skip_non_models: bool, workers: int, policy_file: str | None,
        profiles: tuple[str, ...], discover_policy: bool, suggest_policy: bool,
        limit_items: tuple[str, ...], fail_on: str | None, fmt: str, output: str | None,
        verbose: bool, fail_on_empty: bool, show_progress: bool | None,
        from_file: str | None, concurrency: int, dask_address: str | None) -> None:
    """Audit checkpoint files and folders without loading them.

    PATH may also be an http(s) URL or a hub id (hf://ORG/NAME[@REV][/FILE]): the file is
    audited through HTTP range requests, reading only what the audit needs, before anything
    is downloaded (HF_ENDPOINT and HF_TOKEN are honoured; the token is never printed).
    Folders are walked recursively; files are picked by content (the extension is a hint).
    Exit status: 0 all SAFE (or no model file found), 1 unsafe findings, 2 could not decide
    (INCOMPLETE, interrupted, usage error; with --fail-on-empty: no model file found).
    """
    policy = load_policy(policy_file, discover=discover_policy, profiles=profiles)
    limits = load_limits(limit_items)
    if from_file is not None:
        _scan_list(from_file, paths, policy, limits, concurrency, dask_address, output,
                   fail_on, fail_on_empty)
    if dask_address is not None:
        raise click.UsageError("--dask works with --from-file")
    if not paths and hf_cache is None:
        raise click.UsageError("give at least one PATH or --hf-cache")
    from ..primitives import is_remote

    remote = [p for p in paths if is_remote(p)]
    paths = tuple(p for p in paths if not is_remote(p))
    cache_dir: str | None = None
    if hf_cache is not None:
        cache_dir = hf_cache or default_hf_cache()
        if not os.path.isdir(cache_dir):
            raise fail(f"Hugging Face cache not found: {cache_dir}")

    with Interrupts() as interrupts:
        found = _discover(paths, excludes, cache_dir, skip_non_models, interrupts)
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
            raise click.exceptions.Exit(int(empty_scan_code(fail_on_empty)))
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
    code = exit_code(result.reports, fail_on=fail_on, interrupted=outcome.interrupted)
    raise click.exceptions.Exit(int(code))


def _scan_list(from_file: str, paths: tuple[str, ...], policy: Policy, limits: Limits,
               concurrency: int, dask_address: str | None, output: str | None,
               fail_on: str | None, fail_on_empty: bool) -> None:
    """``--from-file``: JSON Lines, one per target, streamed as scans finish."""
    from .scan_list import open_list, read_targets, run_list

    if paths:
        raise click.UsageError("give targets either as PATHs or with --from-file, not both")
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
    raise click.exceptions.Exit(int(code))


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
              skip_non_models: bool, interrupts: Interrupts) -> Discovery | None:
    """The files to scan; None when a Ctrl-C came first (a 20,000-file walk takes a while)."""
    try:
        return discover(paths, excludes=excludes, hf_cache=cache_dir,
                        filter_files=skip_non_models)
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


__all__ = ["scan_command"]
