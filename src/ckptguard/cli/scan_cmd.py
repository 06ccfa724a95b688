"""``ckptguard scan PATH...``: the click command (the body is :mod:`.scan_run`)."""

from __future__ import annotations

import click

from ..report import FORMATTERS
from .common import limit_option, policy_option, profile_options
from .exitcodes import FAIL_ON
from .scan_run import run_scan


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
    raise click.exceptions.Exit(run_scan(
        paths, hf_cache, excludes, skip_non_models, workers, policy_file, profiles,
        discover_policy, suggest_policy, limit_items, fail_on, fmt, output, verbose,
        fail_on_empty, show_progress, from_file, concurrency, dask_address))


__all__ = ["scan_command"]
