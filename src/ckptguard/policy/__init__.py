"""Policy (what is allowed) and Limits (how much work an audit may do)."""

from .limits import DEFAULT_LIMITS, Limits
from .policy import AllowEntry, Policy, classify_global, denied_by

__all__ = ["DEFAULT_LIMITS", "AllowEntry", "Limits", "Policy", "classify_global", "denied_by"]
