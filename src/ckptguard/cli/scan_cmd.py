"""``ckptguard scan PATH...``"""

from __future__ import annotations

import os

import click

from ..policy import Limits, Policy
from ..report import FORMATTERS, FormatOptions, ScanResult, render, summary_line
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
def scan_command(
        paths: tuple[str, ...], hf_cache: str | None, excludes: tuple[str, ...],
        skip_non_models: bool, workers: int, policy_file: str | None,
        limit_items: tuple[str, ...], fail_on: str | None, fmt: str, output: str | None,
        verbose: bool, fail_on_empty: bool, show_progress: bool | None) -> None:
    """Audit checkpoint files and folders without loading them.

    Folders are walked recursively; files are picked by content (the extension is a hint).
    Exit status: 0 all SAFE (or no model file found), 1 unsafe findings, 2 could not decide
    (INCOMPLETE, interrupted, usage error; with --fail-on-empty: no model file found).
    """
    if not paths and hf_cache is None:
        raise click.UsageError("give at least one PATH or --hf-cache")
    policy = load_policy(policy_file)
    limits = load_limits(limit_items)
    cache_dir: str | None = None
    if hf_cache is not None:
        cache_dir = hf_cache or default_hf_cache()
        if not os.path.isdir(cache_dir):
            raise fail(f"Hugging Face cache not found: {cache_dir}")

    with Interrupts() as interrupts:
        found = _discover(paths, excludes, cache_dir, skip_non_models, interrupts)
        if found is None or not found.targets:
            interrupts.reporting()
            result = ScanResult(skipped=found.skipped if found else 0,
                                notes=tuple(found.notes) if found else (),
                                interrupted=found is None, policy=policy.extra,
                                source_root=os.getcwd(), hf_cache=cache_dir)
            _emit_or_abort(result, fmt, output, verbose)
            if found is None:
                raise fail("interrupted while looking for files: nothing was scanned")
            err("no files to scan: no model files found" + (
                f" ({found.skipped} files skipped: not model files)" if found.skipped else ""))
            raise click.exceptions.Exit(int(empty_scan_code(fail_on_empty)))
        outcome = _run(found, policy=policy, limits=limits, workers=workers,
                       show_progress=show_progress, interrupts=interrupts)
        planned = sum(len(t.names) for t in found.targets)
        result = ScanResult(reports=tuple(outcome.reports), skipped=found.skipped,
                            notes=tuple(found.notes), interrupted=outcome.interrupted,
                            planned=planned, policy=policy.extra, source_root=os.getcwd(),
                            hf_cache=cache_dir)
        _emit_or_abort(result, fmt, output, verbose)
    if outcome.interrupted:
        err(f"interrupted: {summary_line(result)}")
    elif interrupts.received:
        err("interrupt received after the scan finished: the report is complete")
    code = exit_code(result.reports, fail_on=fail_on, interrupted=outcome.interrupted)
    raise click.exceptions.Exit(int(code))


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
    write_output(render(fmt, result, options), output)
    if not to_stdout:
        err(summary_line(result))


__all__ = ["scan_command"]
