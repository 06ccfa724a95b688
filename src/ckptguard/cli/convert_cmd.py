"""``ckptguard convert SRC DST.safetensors``"""

from __future__ import annotations

import click

from ..errors import CkptGuardError, LoaderUnavailableError, UnsafeCheckpointError
from ..primitives import escape_untrusted
from ..report import FormatOptions, ScanResult, render
from .common import (
    err,
    fail,
    limit_option,
    load_limits,
    load_policy,
    policy_option,
    stdout,
    text_width,
)
from .exitcodes import ExitCode, exit_code


@click.command("convert")
@click.argument("src", type=click.Path(exists=True, path_type=str))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=str))
@click.option("--force", "-f", is_flag=True, help="Replace DST if it exists.")
@policy_option
@limit_option
def convert_command(src: str, dst: str, force: bool, policy_file: str | None,
                    limit_items: tuple[str, ...]) -> None:
    """Convert a SAFE checkpoint to safetensors.

    SRC is audited and loaded through safe_load (refused unless SAFE); tied weights are
    written once (the dropped names go to the 'ckptguard.aliases' metadata), and the written
    file is re-audited and compared tensor by tensor before it replaces DST.
    Needs torch and safetensors (pip install 'ckptguard[torch]').
    """
    if not dst.endswith(".safetensors"):
        raise click.BadParameter("DST must end with .safetensors", param_hint="DST")
    policy = load_policy(policy_file)
    limits = load_limits(limit_items)
    try:
        from ..loaders.convert import convert_to_safetensors

        result = convert_to_safetensors(src, dst, policy=policy, limits=limits,
                                        overwrite=force)
    except LoaderUnavailableError as e:
        raise fail(str(e)) from None
    except UnsafeCheckpointError as e:
        options = FormatOptions(width=text_width(stdout()))
        click.echo(render("text", ScanResult(reports=(e.report,)), options), nl=False)
        err(f"error: not converted: {src} is {e.report.verdict.value}")
        code = exit_code([e.report])
        raise click.exceptions.Exit(int(code if code != ExitCode.OK else ExitCode.UNDECIDED)
                                    ) from None
    except CkptGuardError as e:
        raise fail(f"not converted: {e}") from None
    click.echo(escape_untrusted(
        f"wrote {dst}: {result.tensors} tensors, verdict {result.output.verdict.value}, "
        f"verified against {src}", None))
    if result.aliases:
        click.echo(f"  {len(result.aliases)} shared tensor name(s) written once "
                   "(see metadata 'ckptguard.aliases'):")
        for alias, kept in sorted(result.aliases.items())[:20]:
            click.echo("    " + escape_untrusted(f"{alias} -> {kept}"))
    if result.copied:
        click.echo(f"  {len(result.copied)} tensor(s) written as contiguous copies "
                   "(shared memory or non-contiguous)")
    if result.skipped:
        n = len(result.skipped)
        names = ", ".join(escape_untrusted(s, 60) for s in result.skipped[:10])
        click.echo(f"  {n} non-tensor entr{'y' if n == 1 else 'ies'} not written: {names}")
    raise click.exceptions.Exit(int(ExitCode.OK))


__all__ = ["convert_command"]
