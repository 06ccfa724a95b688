"""Policy (what is allowed, on the severity ladder) and Limits (how much work an audit may
do)."""

from .benign import BENIGN, BenignKind, BenignRow
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
from .profiles import PROFILES, Profile, ProfileName
from .provenance import OriginKind, PolicyOrigin

__all__ = ["BENIGN", "DEFAULT_LIMITS", "DEFAULT_POLICY", "PROFILES", "AllowEntry",
           "BenignKind", "BenignRow", "DenyHit", "GlobalDecision", "GlobalStatus", "Limits",
           "OriginKind", "Policy", "PolicyOrigin", "Profile", "ProfileChoice", "ProfileName",
           "classify_global", "denied_by", "effective_policy", "global_message",
           "static_status", "used_entries", "with_caller_globals"]
