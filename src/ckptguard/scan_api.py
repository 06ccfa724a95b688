"""``scan()``: the static audit entry point and the path-kind dispatch (URL / folder /
sharded index / one file). Never imports torch. The auditors are imported when a scan
runs, so ``import ckptguard`` stays cheap."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from .errors import ScanInputError
from .model import Report
from .policy import DEFAULT_LIMITS, DEFAULT_POLICY, Limits, Policy, ProfileName, effective_policy
from .primitives import or_default

if TYPE_CHECKING:
    from .remote.http import RemoteOptions, Session


def scan(
    path: str | os.PathLike[str],
    *,
    policy: Policy | None = None,
    limits: Limits | None = None,
    profiles: Iterable[str | ProfileName] | None = None,
) -> Report:
    """Audit a file, a model folder, a torch.distributed.checkpoint folder, a sharded
    checkpoint's index json, or a remote file (``http(s)://...``,
    ``hf://ORG/NAME[@REV][/FILE]``) read with HTTP range requests.

    Never raises for hostile or broken content: that becomes findings and a verdict
    (SAFE / UNSAFE / INCOMPLETE). Raises :class:`ScanInputError` only for misuse, such as
    a path that does not exist.
    """
    from .primitives import is_remote

    p = os.fspath(path)
    if is_remote(p):
        from .remote.scan import scan_remote  # httpx: imported when a URL is scanned

        return scan_remote(p, policy=policy, limits=limits)
    if not os.path.lexists(p):
        raise ScanInputError(p, "no such file or directory")
    pol = effective_policy(policy, profiles)
    return audit_local(p, policy=pol, limits=or_default(limits, DEFAULT_LIMITS))


def audit_local(path: str, *, policy: Policy, limits: Limits) -> Report:
    """The path-kind dispatch: a folder (a DCP checkpoint folder is recognised inside
    ``audit_folder``), a sharded checkpoint's index json, or one file for the engine."""
    from .detect import INDEX_SUFFIX

    if os.path.isdir(path):
        from .analysis.folder import audit_folder

        return audit_folder(path, policy=policy, limits=limits)
    if path.lower().endswith(INDEX_SUFFIX) and os.path.isfile(path):
        from .analysis.folder import audit_index

        return audit_index(path, policy=policy, limits=limits)
    from .analysis.engine import audit_file

    return audit_file(path, policy=policy, limits=limits)


def iter_scan(targets: Iterable[str], *, policy: Policy | None = None,
              limits: Limits | None = None, options: RemoteOptions | None = None,
              scan_local: Callable[[str, Policy, Limits], Report] | None = None,
              session: Session | None = None) -> Iterator[tuple[str, Report]]:
    """Scan many targets (URLs, hub ids, local paths) with bounded concurrency, yielding
    ``(target, report)`` as each finishes. Never raises for one target: a malformed one
    becomes a CKG910 report. A given ``session`` is used and left open (its options
    apply); otherwise one is made for the call."""
    from .remote.http import RemoteOptions, Session
    from .remote.scan import bounded_map, scan_target
    from .remote.targets import hub_token, is_remote

    policy = or_default(policy, DEFAULT_POLICY)
    limits = or_default(limits, DEFAULT_LIMITS)
    with contextlib.ExitStack() as stack:
        if session is None:
            session = stack.enter_context(Session(options or RemoteOptions(token=hub_token())))
        sess = session
        pol, lim = policy, limits

        def one(t: str) -> Report:
            if is_remote(t):
                return scan_target(t, pol, lim, sess)
            return (scan_local or _scan_local)(t, pol, lim)

        for t, rep in bounded_map(one, targets, sess.options.concurrency):
            assert rep is not None
            yield t, rep


def _scan_local(path: str, policy: Policy, limits: Limits) -> Report:
    from .analysis.engine import unreadable_report

    try:
        return scan(path, policy=policy, limits=limits)
    except (ScanInputError, OSError) as e:
        reason = e.reason if isinstance(e, ScanInputError) else (e.strerror or str(e))
        return unreadable_report(path, reason, limits)


__all__ = ["audit_local", "iter_scan", "scan"]
