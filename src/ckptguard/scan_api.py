"""``scan()``: the static audit entry point. Never imports torch."""

from __future__ import annotations

import os
from collections.abc import Iterable

from .errors import ScanInputError
from .model import Report
from .policy import DEFAULT_LIMITS, Limits, Policy, ProfileName, effective_policy


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
    from .analysis.engine import audit_path

    p = os.fspath(path)
    from .remote.targets import is_remote

    if is_remote(p):
        from .remote.scan import scan_remote

        return scan_remote(p, policy=policy, limits=limits)
    if not os.path.lexists(p):
        raise ScanInputError(p, "no such file or directory")
    pol = effective_policy(policy or Policy(), profiles)
    return audit_path(p, policy=pol, limits=limits or DEFAULT_LIMITS)


__all__ = ["scan"]
