"""Helpers shared by the commands: policy and limits options, output, TTY checks.

click is imported where it is used (a plain ``scan`` runs without it: :mod:`.plain`)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any, TypeVar

from ..errors import PolicyError
from ..policy import DEFAULT_LIMITS, Limits, OriginKind, Policy, PolicyOrigin, ProfileName
from ..primitives import escape_untrusted
from .exitcodes import ExitCode

if TYPE_CHECKING:
    import click

F = TypeVar("F", bound=Callable[..., Any])
POLICY_ENV_VAR = "CKPTGUARD_POLICY"


def is_tty(stream: IO[str] | IO[bytes] | Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def color_wanted(stream: Any) -> bool:
    """Colours on a TTY only, and never with NO_COLOR set."""
    return is_tty(stream) and not os.environ.get("NO_COLOR")


def text_width(stream: Any) -> int:
    if is_tty(stream):
        import shutil  # a terminal only

        return max(shutil.get_terminal_size((160, 24)).columns, 60)
    return 160


def err(message: str) -> None:
    """One line on stderr (the message is escaped: it may hold untrusted names)."""
    import click

    click.echo(escape_untrusted(message, 1000), err=True)


def fail(message: str, code: ExitCode = ExitCode.UNDECIDED) -> click.exceptions.Exit:
    import click

    err(f"error: {message}")
    return click.exceptions.Exit(int(code))


def policy_option(f: F) -> F:
    import click

    return click.option(
        "--policy", "policy_file", type=click.Path(dir_okay=False, path_type=str),
        help="TOML policy file (extra allowed globals, each with a reason; profiles). "
             "Default: $CKPTGUARD_POLICY if set, else none. A pyproject.toml is never read "
             "unless named here or with --discover-policy.")(f)


def profile_options(f: F) -> F:
    """--profile NAME (repeatable) and --discover-policy."""
    import click

    f = click.option(
        "--discover-policy", "discover_policy", is_flag=True,
        help="Opt in to the [tool.ckptguard] table of the nearest pyproject.toml above the "
             "working directory (never read otherwise: a cloned repository could ship one "
             "that allows its own payload).")(f)
    return click.option(
        "--profile", "profiles", multiple=True, metavar="NAME",
        type=click.Choice([p.value for p in ProfileName]),
        help="Allow a shipped, reviewed profile of benign types (repeatable): "
             + ", ".join(p.value for p in ProfileName) + ".")(f)


def limit_option(f: F) -> F:
    import click

    return click.option(
        "--limit", "limit_items", multiple=True, metavar="NAME=VALUE",
        help="Change one audit limit, e.g. max_seconds=600 (repeatable; names in "
             "docs/cli.md).")(f)


def load_policy(policy_file: str | None, *, discover: bool = False,
                profiles: tuple[str, ...] = ()) -> Policy:
    """The policy the user chose: --policy FILE, else $CKPTGUARD_POLICY, else the nearest
    pyproject.toml only with --discover-policy, else none; plus --profile names. Nothing
    is ever picked up from the working directory or a scanned tree on its own."""
    try:
        env_file = os.environ.get(POLICY_ENV_VAR, "").strip()
        if policy_file is not None and discover:
            raise fail("--policy and --discover-policy exclude each other")
        if policy_file is not None:
            policy = Policy.from_file(policy_file)
        elif env_file:
            policy = Policy.from_file(env_file, origin=PolicyOrigin(
                OriginKind.ENVIRONMENT, f"{POLICY_ENV_VAR}={env_file}"))
        elif discover:
            policy = Policy.discover(os.getcwd())
        else:
            policy = Policy()
        return policy.with_profiles(*profiles, origin=PolicyOrigin(OriginKind.FLAG, "--profile"))
    except PolicyError as e:
        raise fail(f"invalid policy: {e}") from None


def _bad_limit(message: str) -> click.BadParameter:
    import click

    return click.BadParameter(message, param_hint="--limit")


def load_limits(items: tuple[str, ...]) -> Limits:
    limits = DEFAULT_LIMITS
    names = set(Limits.names())
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in names:
            raise _bad_limit(f"{item!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(sorted(names))}")
        kind = type(getattr(DEFAULT_LIMITS, name))
        try:
            parsed = kind(value.strip())
        except ValueError:
            raise _bad_limit(f"{item!r}: {value!r} is not a valid {kind.__name__}") from None
        if not parsed > 0:  # NaN too
            raise _bad_limit(f"{item!r}: must be positive")
        try:
            limits = limits.replace(**{name: parsed})
        except ValueError as e:  # inf, NaN, beyond what the cores hold
            raise _bad_limit(f"{item!r}: {e}") from None
    return limits


def write_output(text: str | Iterable[str], output: str | None) -> None:
    """Write the report (a string, or pieces of one written as they come) to stdout or,
    atomically, to ``output``."""
    if output is None or output == "-":
        write_stdout(text)
        return
    try:
        atomic_write(output, text)
    except OSError as e:
        raise fail(f"cannot write {output}: {e.strerror or e}; "
                   "an earlier file at that path is unchanged") from None


def _pieces(text: str | Iterable[str]) -> Iterable[str]:
    return (text,) if isinstance(text, str) else text


def write_stdout(text: str | Iterable[str]) -> None:
    """Write ``text`` (or its pieces, in order) to stdout whole. A signal that interrupts a
    blocked write to a pipe makes the buffered text layer drop the rest of a large write
    (seen with CPython 3.11), so the bytes go out in an explicit loop over ``os.write``. A
    reader that went away (``| head``) ends the output quietly."""
    stream = stdout()
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):  # not a real file (click's test runner)
        import click

        for piece in _pieces(text):
            click.echo(piece, nl=False)
        return
    try:
        stream.flush()
        encoding = getattr(stream, "encoding", None) or "utf-8"
        for piece in _pieces(text):
            data = memoryview(piece.encode(encoding, "backslashreplace"))
            while data:
                data = data[os.write(fd, data[:1 << 16]):]
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)  # nothing more reaches the closed pipe, not even at exit
        os.close(devnull)


def atomic_write(path: str, text: str | Iterable[str]) -> None:
    """Write ``text`` to a temporary file beside ``path``, flush it to disk and rename it
    over ``path``. On any error (a full disk, a Ctrl-C) the temporary file is removed and
    an earlier file at ``path`` is left as it was. A path that exists and is not a regular
    file (``/dev/null``, a FIFO) is written directly."""
    import stat
    import tempfile

    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        special = False
    if special:  # /dev/null, /dev/stdout, a FIFO: nothing to replace, write straight to it
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.writelines(_pieces(text))
        return
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=folder)
    try:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fd = -1
            fh.writelines(_pieces(text))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def stdout() -> Any:
    return sys.stdout


def stderr() -> Any:
    return sys.stderr


__all__ = ["atomic_write", "color_wanted", "err", "fail", "is_tty", "limit_option", "load_limits",
           "load_policy", "policy_option", "profile_options", "stderr", "stdout", "text_width",
           "write_output", "write_stdout"]

