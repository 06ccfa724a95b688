"""Shared harness for the atheris targets: audit bytes in memory, fail on any exception or
internal error (a Problem / CKG902 is a crash the engine guard swallowed)."""

from __future__ import annotations

from ckptguard.analysis.engine import audit_bytes
from ckptguard.policy import DEFAULT_LIMITS, Policy

POLICY = Policy()
LIMITS = DEFAULT_LIMITS.replace(max_seconds=5.0)


def check(data: bytes, name: str) -> None:
    r = audit_bytes(data, name, policy=POLICY, limits=LIMITS)
    if r.problems:
        raise AssertionError(f"internal error on {name}: {r.problems[0].message}")
    r.to_dict()
