"""Where a policy, a policy entry or a profile came from (DESIGN.md principle 10:
policies are chosen, never found). Every report format prints these values."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class OriginKind(enum.Enum):
    """How a policy or profile was chosen. Nothing is ever taken from the scanned tree."""

    DEFAULT = "default"          # nothing chosen: the weights-only allowlist only
    API = "api"                  # built in Python (Policy().allow(...), profiles=...)
    FILE = "file"                # a policy file named with --policy / Policy.from_file
    ENVIRONMENT = "environment"  # a policy file named by CKPTGUARD_POLICY
    DISCOVERED = "discovered"    # pyproject.toml found by an explicit discovery opt-in
    FLAG = "flag"                # a command-line flag (--profile NAME)
    CALLER = "caller"            # the caller's torch.serialization.safe_globals (gate only)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class PolicyOrigin:
    """One origin: its kind and, where it has one, the file or variable it names."""

    kind: OriginKind
    location: str | None = None

    def __str__(self) -> str:
        return self.kind.value if self.location is None else f"{self.kind.value}:{self.location}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "location": self.location}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyOrigin:
        return cls(OriginKind(d["kind"]), d.get("location"))


DEFAULT_ORIGIN = PolicyOrigin(OriginKind.DEFAULT)
API_ORIGIN = PolicyOrigin(OriginKind.API)

__all__ = ["API_ORIGIN", "DEFAULT_ORIGIN", "OriginKind", "PolicyOrigin"]
