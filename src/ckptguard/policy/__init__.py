"""Policy (what is allowed, on the severity ladder) and Limits (how much work an audit may
do).

The BENIGN table (:mod:`.benign`) and the profiles (:mod:`.profiles`) are imported on first
use: a scan with the default policy of a file that names only allowlisted globals never
builds them."""

from typing import TYPE_CHECKING, Any

from .limits import DEFAULT_LIMITS, Limits
from .policy import (
    DEFAULT_POLICY,
    AllowEntry,
    DenyHit,
    GlobalDecision,
    GlobalStatus,
    Policy,
    ProfileChoice,
    classify_global,
    denied_by,
    effective_policy,
    global_message,
    static_status,
    used_entries,
    with_caller_globals,
)
from .profile_names import ProfileName
from .provenance import OriginKind, PolicyOrigin

if TYPE_CHECKING:
    from .benign import BENIGN, BenignKind, BenignRow
    from .profiles import PROFILES, Profile

#: name -> the module that defines it (imported on first access)
_LAZY = {"BENIGN": "benign", "BenignKind": "benign", "BenignRow": "benign",
         "PROFILES": "profiles", "Profile": "profiles"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)

__all__ = ["BENIGN", "DEFAULT_LIMITS", "DEFAULT_POLICY", "PROFILES", "AllowEntry",
           "BenignKind", "BenignRow", "DenyHit", "GlobalDecision", "GlobalStatus", "Limits",
           "OriginKind", "Policy", "PolicyOrigin", "Profile", "ProfileChoice", "ProfileName",
           "classify_global", "denied_by", "effective_policy", "global_message",
           "static_status", "used_entries", "with_caller_globals"]
