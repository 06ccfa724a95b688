"""The lowest layer: one helper per primitive, shared by every layer above (imports nothing
of the package).

- ``open_readonly``: how ckptguard opens a file it reads (never blocks on a FIFO, never
  leaks into a child process, binary on Windows); ``read_regular_file``: a small file read
  whole that way, refused when it is no regular file or too large;
- ``clip`` / ``escape``: untrusted text in a finding's message or evidence (``escape``
  spells every non-printable character as a Python escape; both cut to a length);
- ``escape_untrusted``: untrusted text shown on a terminal (reports, progress, errors);
- ``gc_paused``: the cyclic collector paused around an audit that allocates millions of
  acyclic objects (nests: the outermost pause restores the collector);
- ``or_default``: ``value if value is not None else default``;
- ``take_read_lease`` / ``read_lease_held``: a kernel read lease on a descriptor (Linux), the
  proof that nobody opened the file for writing (or truncated it) while it was held;
- ``is_remote``: an ``http://``, ``https://`` or ``hf://`` scan target (here, not in
  ``remote.targets``, so that a local scan imports nothing of ``remote``).

Anything a hostile file controls can reach a terminal through a report: a file name with an
escape sequence, a member name with a newline, a global name thousands of characters long.
``escape_untrusted`` makes such a string safe to print on one line: control characters
(C0, DEL, C1), bidirectional and zero-width format characters, line/paragraph separators and
lone surrogates (undecodable bytes in file names) become ``\\xNN`` / ``\\uNNNN`` escapes, and
the result is cut to ``limit`` characters keeping the head and the tail.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

#: O_RDONLY, plus what every read-only open needs: no controlling-terminal or FIFO wait
#: (O_NONBLOCK: a FIFO named like a checkpoint must not hang the scan), no inheritance by
#: child processes (O_CLOEXEC), no newline translation on Windows (O_BINARY)
READONLY_FLAGS = (os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
                  | getattr(os, "O_BINARY", 0))


def open_readonly(path: str) -> int:
    """``os.open(path, READONLY_FLAGS)``: a descriptor to read with ``os.pread``."""
    return os.open(path, READONLY_FLAGS)


class NotARegularFile(OSError):
    """:func:`read_regular_file` refused the path: not a regular file, or too large."""


def read_regular_file(path: str, limit: int) -> bytes:
    """The whole content of the regular file ``path``, at most ``limit`` bytes: opened as
    :func:`open_readonly` opens (a FIFO never blocks) and refused with
    :class:`NotARegularFile` when it is not a regular file (a FIFO, a device, a socket,
    ``/dev/zero``) or is larger than ``limit``. For the small files the CLI and the policy
    read whole (index jsons, refs, policy TOML)."""
    import stat

    fd = open_readonly(path)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(f"{path}: not a regular file")
        if st.st_size > limit:
            raise NotARegularFile(f"{path}: larger than {limit} bytes")
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            b = os.read(fd, min(limit + 1 - got, 1 << 20))
            if not b:
                break
            chunks.append(b)
            got += len(b)
        if got > limit:
            raise NotARegularFile(f"{path}: larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def clip(text: str, n: int = 160) -> str:
    """``text`` cut to ``n`` characters, with "..." when cut."""
    return text if len(text) <= n else text[:n] + "..."


def escape(text: str, n: int = 120) -> str:
    """Untrusted text made safe to print in a finding: escaped and cut to ``n``."""
    return clip(text.encode("unicode_escape", "backslashreplace").decode("ascii"), n)


#: C0 + DEL + C1 controls; every format character (Unicode category Cf: soft hyphen,
#: Arabic number signs, zero-width and bidi controls, invisible operators, BOM,
#: interlinear annotation, Egyptian and shorthand format controls, musical symbol
#: formatting, language tags); line and paragraph separators; blank-looking letters
#: (Hangul fillers, braille blank); lone surrogates; and the backslash itself, so that the
#: escaping is one-to-one (a name spelled ``\x1b`` shows as ``\x5cx1b``).
_UNSAFE = re.compile(
    "[\x00-\x1f\\\\\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891"
    "\u08e2\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2028-\u202e"
    "\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\ud800-\udfff"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
DISPLAY_LIMIT = 200
_ELLIPSIS = "..."


def _escape_char(m: re.Match[str]) -> str:
    c = ord(m.group(0))
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" if c < 0x10000 else f"\\U{c:08x}"


def escape_untrusted(text: object, limit: int | None = DISPLAY_LIMIT) -> str:
    """Return ``text`` as a single printable line of at most ``limit`` characters.

    ``limit=None`` escapes without truncating. The cut keeps two thirds of the budget from
    the head and the rest from the tail (a path's file name is at its end).
    """
    s = _UNSAFE.sub(_escape_char, str(text))
    if limit is not None and len(s) > limit:
        room = max(limit - len(_ELLIPSIS), 2)
        head = (room * 2) // 3
        tail = room - head
        s = s[:head] + _ELLIPSIS + (s[-tail:] if tail else "")
    return s


def has_unsafe_chars(text: str) -> bool:
    """True when ``text`` holds a character ``escape_untrusted`` would escape."""
    return _UNSAFE.search(text) is not None


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block; restore it after, whatever
    happens. Nested pauses are free: only the one that disabled it enables it again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


#: the signal a lease break is announced with (``F_SETSIG``): SIGURG, whose default action is
#: to ignore it. The kernel's own default, SIGIO, would kill the process.
LEASE_SIGNAL_NAME = "SIGURG"

#: descriptors of this process that hold a read lease (:func:`take_read_lease`), so that a
#: forked child can let go of them (:func:`_forget_leases_in_child`)
_LEASED: set[int] = set()


def _forget_leases_in_child() -> None:
    """After ``fork()``, in the child: point every leased descriptor at ``/dev/null``. The
    child shares the parent's open file descriptions, and a lease lives as long as its
    description: a child that outlived a parent killed mid-load would keep the file leased
    (a writer waiting up to the lease-break time). The descriptor numbers stay valid, so a
    child that goes on through the loader gets a clean identity error, not EBADF."""
    # only descriptors that still hold the lease: a number closed without release_lease may
    # name an unrelated file by now
    held = [fd for fd in _LEASED if read_lease_held(fd)]
    _LEASED.clear()
    if not held:
        return
    try:
        null = os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        for fd in held:
            with contextlib.suppress(OSError):
                os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_leases_in_child)


def take_read_lease(fd: int) -> bool:
    """Take a read lease (``fcntl F_SETLEASE F_RDLCK``) on ``fd``, a read-only descriptor.

    True when it is held: from now on any open of the file for writing, from any process
    (this one included), and ``truncate(2)``, first *breaks* the lease and then waits until
    the lease is released (``close(fd)``) or ``/proc/sys/fs/lease-break-time`` (45 s by
    default) has passed; a non-blocking open fails with EAGAIN. :func:`read_lease_held`
    says whether that happened. (A read-only open with ``O_TRUNC`` truncates without
    breaking it: the size and the ctime tell.) False (nothing changed) when the kernel
    refuses the lease: the file is open for writing somewhere, or mapped writable and
    shared (EAGAIN); this process neither owns the file nor has CAP_LEASE (EACCES); the
    file system has no leases (NFS, FUSE: EINVAL); not Linux; or SIGURG has a handler (the
    break is announced with it, see :data:`LEASE_SIGNAL_NAME`)."""
    try:
        import fcntl
        import signal

        setlease, setsig = fcntl.F_SETLEASE, fcntl.F_SETSIG
        sig = getattr(signal, LEASE_SIGNAL_NAME)
        if signal.getsignal(sig) not in (signal.SIG_DFL, signal.SIG_IGN):
            return False  # someone listens to SIGURG: a lease break would reach them
        fcntl.fcntl(fd, setsig, sig)
        fcntl.fcntl(fd, setlease, fcntl.F_RDLCK)
    except (ImportError, AttributeError, OSError, ValueError):
        return False
    _LEASED.add(fd)
    return True


def read_lease_held(fd: int) -> bool:
    """True while the read lease :func:`take_read_lease` took on ``fd`` is unbroken (no
    open for writing and no truncate since it was taken; ``F_GETLEASE`` is F_RDLCK)."""
    try:
        import fcntl

        return bool(fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_RDLCK)
    except (ImportError, AttributeError, OSError):
        return False


def release_lease(fd: int) -> None:
    """Give the read lease on ``fd`` back (a writer waiting on it goes on); no-op without
    one."""
    _LEASED.discard(fd)
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except (ImportError, AttributeError, OSError):
        pass


def or_default(value: T | None, default: T) -> T:
    """``value`` unless it is None (a falsy value is kept)."""
    return value if value is not None else default


#: the scan targets read over HTTP (remote/), case-insensitive
REMOTE_SCHEMES = ("http://", "https://", "hf://")


def is_remote(target: str) -> bool:
    """True for ``http://``, ``https://`` and ``hf://`` targets."""
    return target[:8].lower().startswith(REMOTE_SCHEMES)


__all__ = ["DISPLAY_LIMIT", "LEASE_SIGNAL_NAME", "READONLY_FLAGS", "REMOTE_SCHEMES",
           "NotARegularFile", "clip", "escape", "escape_untrusted", "gc_paused",
           "has_unsafe_chars", "is_remote", "open_readonly", "or_default", "read_lease_held",
           "read_regular_file", "release_lease", "take_read_lease"]
