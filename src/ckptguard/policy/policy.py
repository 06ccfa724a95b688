"""The allow decision for globals, and user policies loaded from TOML or pyproject.toml.

A policy file looks like::

    [tool.ckptguard]            # in pyproject.toml; a standalone file may omit the header
    allow = [
      { global = "argparse.Namespace", reason = "hparams saved by our trainer" },
    ]

Each entry needs a reason (reports show it). An entry that names a denied primitive
(``os.system``, ``builtins.eval``, ``pickle.loads`` ...) is a PolicyError: a user policy can
never allow a CRITICAL primitive.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PolicyError
from .defaults import ALLOW, DENY, DENY_ATTRIBUTES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_DEFAULT_ALLOW: dict[str, str] = {f"{m}.{n}": reason for m, n, reason in ALLOW}
_DENY: dict[str, tuple[str, str]] = {prefix: (rule, reason) for prefix, rule, reason in DENY}


def denied_by(full_path: str) -> tuple[str, str, str] | None:
    """Return ``(matched_prefix, rule_id, reason)`` if any dotted suffix of ``full_path``
    falls under a DENY prefix or names a denied attribute; else None."""
    parts = full_path.split(".")
    for start in range(len(parts)):
        # every prefix of this suffix: a.b.c -> a, a.b, a.b.c
        acc = ""
        for part in parts[start:]:
            acc = part if not acc else f"{acc}.{part}"
            hit = _DENY.get(acc)
            if hit is not None:
                return acc, hit[0], hit[1]
    for part in parts[1:]:
        if part in DENY_ATTRIBUTES:
            return part, "CKG101", f"attribute {part!r} reaches code execution"
    return None


@dataclass(frozen=True)
class AllowEntry:
    """A global allowed on purpose by a user, with the reason reports show."""

    full_path: str
    reason: str
    source: str = "<api>"


@dataclass(frozen=True)
class Policy:
    """What the audit allows beyond the default weights-only allowlist.

    Immutable; build variants with :meth:`allow` or load one with :meth:`from_file` /
    :meth:`discover`.
    """

    extra: tuple[AllowEntry, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for e in self.extra:
            _validate_entry(e)

    # -- queries --------------------------------------------------------------------------
    def default_reason(self, full_path: str) -> str | None:
        return _DEFAULT_ALLOW.get(full_path)

    def user_entry(self, full_path: str) -> AllowEntry | None:
        for e in self.extra:
            if e.full_path == full_path:
                return e
        return None

    def is_allowed(self, full_path: str) -> bool:
        return full_path in _DEFAULT_ALLOW or self.user_entry(full_path) is not None

    # -- construction ---------------------------------------------------------------------
    def allow(self, module: str, name: str, *, reason: str, source: str = "<api>") -> Policy:
        entry = AllowEntry(f"{module}.{name}", reason, source)
        return Policy((*self.extra, entry))

    @classmethod
    def from_entries(cls, entries: Iterable[AllowEntry]) -> Policy:
        return cls(tuple(entries))

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str) -> Policy:
        if "tool" in data and isinstance(data["tool"], dict) and "ckptguard" in data["tool"]:
            data = data["tool"]["ckptguard"]
        if not isinstance(data, dict):
            raise PolicyError("policy must be a table", source=source)
        unknown = set(data) - {"allow"}
        if unknown:
            raise PolicyError(f"unknown policy keys: {', '.join(sorted(unknown))}", source=source)
        raw = data.get("allow", [])
        if not isinstance(raw, list):
            raise PolicyError("'allow' must be an array of tables", source=source)
        entries = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise PolicyError(f"allow[{i}] must be a table", source=source)
            g, reason = item.get("global"), item.get("reason")
            if not isinstance(g, str) or "." not in g or not g.strip():
                raise PolicyError(f"allow[{i}].global must be 'module.name'", source=source)
            if not isinstance(reason, str) or not reason.strip():
                raise PolicyError(f"allow[{i}] ({g}) needs a non-empty reason", source=source,
                                  entry=g)
            extra = set(item) - {"global", "reason"}
            if extra:
                raise PolicyError(f"allow[{i}] has unknown keys: {', '.join(sorted(extra))}",
                                  source=source, entry=g)
            entries.append(AllowEntry(g.strip(), reason.strip(), source))
        return cls(tuple(entries))

    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise PolicyError(f"cannot read policy: {e.strerror or e}", source=str(p)) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise PolicyError(f"invalid TOML: {e}", source=str(p)) from None
        return cls.from_mapping(data, source=str(p))

    @classmethod
    def discover(cls, start: str | Path = ".") -> Policy:
        """The ``[tool.ckptguard]`` table of the nearest pyproject.toml, or the default."""
        here = Path(start).resolve()
        for d in (here, *here.parents):
            pp = d / "pyproject.toml"
            if pp.is_file():
                try:
                    data = tomllib.loads(pp.read_text(encoding="utf-8"))
                except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                    raise PolicyError(f"invalid pyproject.toml: {e}", source=str(pp)) from None
                if isinstance(data.get("tool"), dict) and "ckptguard" in data["tool"]:
                    return cls.from_mapping(data, source=str(pp))
                return cls()
        return cls()


def _validate_entry(e: AllowEntry) -> None:
    hit = denied_by(e.full_path)
    if hit is not None:
        raise PolicyError(
            f"{e.full_path} is a CRITICAL primitive ({hit[2]}); a policy can never allow it",
            source=e.source, entry=e.full_path,
        )


def classify_global(full_path: str, policy: Policy) -> tuple[str, str]:
    """Classify one resolved global: ``("allow", reason)``, ``("policy", reason)``,
    ``("deny", rule_id + ':' + reason)`` or ``("unknown", "")``."""
    reason = _DEFAULT_ALLOW.get(full_path)
    if reason is not None:
        return "allow", reason
    hit = denied_by(full_path)
    if hit is not None:
        return "deny", f"{hit[1]}:{hit[2]}"
    entry = policy.user_entry(full_path)
    if entry is not None:
        return "policy", entry.reason
    return "unknown", ""


DEFAULT_POLICY = Policy()

__all__ = ["DEFAULT_POLICY", "AllowEntry", "Policy", "classify_global", "denied_by"]
