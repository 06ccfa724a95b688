"""The severity ladder for globals, and user policies loaded from TOML.

Every global a pickle program imports gets one :class:`GlobalStatus` (DESIGN.md
principle 1, SECURITY.md "Severity"):

==================  ==========================================  =============  ===========
status              what                                        rule/severity  allowable
==================  ==========================================  =============  ===========
ALLOW               on torch's weights-only allowlist           none           (is SAFE)
POLICY              a BENIGN global allowed by a policy/profile CKG106 INFO    -
ACKNOWLEDGED        an unreviewed global allowed with           CKG121 LOW     -
                    ``acknowledge_unreviewed = true``
BENIGN              on the reviewed BENIGN table                CKG102 MEDIUM  with a reason
UNREVIEWED          anything else                               CKG120 HIGH    only with an
                                                                               acknowledgement
DENY                a known code-execution / I/O primitive      CKG101/CKG104  never
                                                                CRITICAL
==================  ==========================================  =============  ===========

A policy file looks like::

    allow = [
      { global = "argparse.Namespace", reason = "hparams saved by our trainer" },
      { global = "my_project.Config", reason = "our own config class, reviewed",
        acknowledge_unreviewed = true },
    ]
    profiles = ["hf-trainer"]

(a ``[tool.ckptguard]`` table of a pyproject.toml has the same keys; it is read only when
named with ``--policy`` or an explicit discovery opt-in). Each entry needs a reason. An
entry naming a denied primitive is always a :class:`PolicyError`; an entry naming a global
off the BENIGN table is one unless it carries ``acknowledge_unreviewed = true``.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import PolicyError
from ..model import Finding
from ..primitives import or_default, read_regular_file
from .defaults import ALLOW, DENY, DENY_ATTRIBUTES, DenyKind
from .profile_names import ProfileName
from .provenance import API_ORIGIN, DEFAULT_ORIGIN, OriginKind, PolicyOrigin

#: a policy TOML (or a pyproject.toml) is read whole up to this size
_MAX_POLICY_BYTES = 16 << 20

if TYPE_CHECKING:  # pathlib is imported when a policy file is read
    from pathlib import Path

    from .benign import BenignRow


def _parse_toml(text: str, what: str, source: str) -> dict[str, Any]:
    """A policy file's TOML, or PolicyError: tomllib's own errors, and the recursion and
    memory errors a deeply nested or huge document raises (a policy file named by
    CKPTGUARD_POLICY is read by ``import ckptguard``: nothing may escape as another
    exception and leave the torch.load gate off)."""
    tomllib = _toml()
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{what}: {e}", source=source) from None
    except (RecursionError, MemoryError):
        raise PolicyError(f"{what}: nested too deep or too large to parse",
                          source=source) from None
    return data


def _toml() -> Any:
    """The TOML parser, imported when a policy file is read (a scan with the default
    policy never parses TOML)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
    return tomllib

_DEFAULT_ALLOW: dict[str, str] = {f"{m}.{n}": reason for m, n, reason in ALLOW}
_DENY: dict[str, tuple[DenyKind, str]] = {prefix: (kind, reason) for prefix, kind, reason in DENY}


def _profiles() -> dict[ProfileName, Any]:
    """The shipped profiles' table (:mod:`.profiles`), imported when a profile is chosen."""
    from .profiles import PROFILES

    return PROFILES


def _benign_row(full_path: str) -> BenignRow | None:
    """The BENIGN table's row of ``full_path`` (:mod:`.benign`, imported for the first
    global off the weights-only allowlist: a plain state dict never needs it)."""
    from .benign import benign_row

    return benign_row(full_path)


def parse_profile(text: str) -> ProfileName:
    """A profile name as a user writes it (any case, spaces around); PolicyError if unknown."""
    try:
        return ProfileName(text.strip().lower())
    except ValueError:
        raise PolicyError(f"unknown profile {text!r}; expected one of "
                          f"{', '.join(p.value for p in ProfileName)}") from None


@dataclass(frozen=True, slots=True)
class DenyHit:
    """A denylist match. ``direct``: the global's own dotted path starts with the denied
    prefix (``os.system``); otherwise a later part matched (``torch.serialization.os.system``,
    an attribute such as ``__globals__``)."""

    matched: str
    kind: DenyKind
    reason: str
    direct: bool

    @property
    def rule_id(self) -> str:
        return self.kind.rule_id


def denied_by(full_path: str) -> DenyHit | None:
    """The denylist match for ``full_path``: any dotted suffix under a DENY prefix, or a
    denied attribute name after the first part; else None."""
    parts = full_path.split(".")
    for start in range(len(parts)):
        # every prefix of this suffix: a.b.c -> a, a.b, a.b.c
        acc = ""
        for part in parts[start:]:
            acc = part if not acc else f"{acc}.{part}"
            hit = _DENY.get(acc)
            if hit is not None:
                return DenyHit(acc, hit[0], hit[1], start == 0)
    for part in parts[1:]:
        if part in DENY_ATTRIBUTES:
            return DenyHit(part, DenyKind.EXEC, f"attribute {part!r} reaches code execution",
                           False)
    return None


class GlobalStatus(enum.Enum):
    """Where one global sits on the ladder after the policy is applied."""

    ALLOW = "allow"
    POLICY = "policy"
    ACKNOWLEDGED = "acknowledged"
    SCRIPT = "script"          # TorchScript's own names (the VM sets it, never classify)
    BENIGN = "benign"
    UNREVIEWED = "unreviewed"
    DENY = "deny"

    @property
    def allowed(self) -> bool:
        """Calls and BUILDs of it are fine for the verdict."""
        return self in _ALLOWED

    @property
    def rank(self) -> int:
        """Worst first: the smallest rank wins when two readers import different names."""
        return _RANK[self]


_ALLOWED = frozenset({GlobalStatus.ALLOW, GlobalStatus.POLICY, GlobalStatus.ACKNOWLEDGED,
                      GlobalStatus.SCRIPT})
_RANK = {GlobalStatus.DENY: 0, GlobalStatus.UNREVIEWED: 1, GlobalStatus.BENIGN: 2,
         GlobalStatus.ACKNOWLEDGED: 3, GlobalStatus.POLICY: 4, GlobalStatus.SCRIPT: 5,
         GlobalStatus.ALLOW: 6}

#: The rule each status reports (None: no finding). DENY takes its rule from the row.
STATUS_RULES: dict[GlobalStatus, str | None] = {
    GlobalStatus.ALLOW: None,
    GlobalStatus.SCRIPT: None,
    GlobalStatus.POLICY: "CKG106",
    GlobalStatus.ACKNOWLEDGED: "CKG121",
    GlobalStatus.BENIGN: "CKG102",
    GlobalStatus.UNREVIEWED: "CKG120",
    GlobalStatus.DENY: None,
}


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """A global allowed on purpose, with the reason reports show and where it came from.

    ``acknowledge_unreviewed`` must be True for a global off the BENIGN table (HIGH)."""

    full_path: str
    reason: str
    origin: PolicyOrigin = API_ORIGIN
    acknowledge_unreviewed: bool = False
    profile: ProfileName | None = None  # set on the rows a chosen profile contributes

    @property
    def source(self) -> str:
        return str(self.origin) if self.profile is None else \
            f"{self.origin} (profile {self.profile.value})"


@dataclass(frozen=True, slots=True)
class ProfileChoice:
    """A shipped profile the user chose, and how."""

    name: ProfileName
    origin: PolicyOrigin = API_ORIGIN


@dataclass(frozen=True, slots=True)
class GlobalDecision:
    """The ladder's answer for one global (a typed value: never parse it back)."""

    status: GlobalStatus
    reason: str = ""
    deny: DenyHit | None = None
    entry: AllowEntry | None = None
    benign: BenignRow | None = None

    @property
    def rule_id(self) -> str | None:
        if self.deny is not None:
            return self.deny.rule_id
        return STATUS_RULES[self.status]


@dataclass(frozen=True)
class Policy:
    """What the audit allows beyond the default weights-only allowlist.

    Immutable; build variants with :meth:`allow` / :meth:`with_profiles`, or load one with
    :meth:`from_file` / :meth:`discover`. ``origin`` says where it came from.
    """

    extra: tuple[AllowEntry, ...] = field(default_factory=tuple)
    profiles: tuple[ProfileChoice, ...] = field(default_factory=tuple)
    origin: PolicyOrigin = DEFAULT_ORIGIN

    def __post_init__(self) -> None:
        for e in self.extra:
            _validate_entry(e)
        index: dict[str, AllowEntry] = {}
        for e in self.entries():
            index.setdefault(e.full_path, e)
        object.__setattr__(self, "_index", index)

    # -- queries --------------------------------------------------------------------------
    def default_reason(self, full_path: str) -> str | None:
        return _DEFAULT_ALLOW.get(full_path)

    def user_entry(self, full_path: str) -> AllowEntry | None:
        """The entry (own or from a chosen profile) that allows ``full_path``."""
        index: dict[str, AllowEntry] = self._index  # type: ignore[attr-defined]
        return index.get(full_path)

    def is_allowed(self, full_path: str) -> bool:
        return full_path in _DEFAULT_ALLOW or self.user_entry(full_path) is not None

    def entries(self) -> tuple[AllowEntry, ...]:
        """Every allowed global beyond the default: own entries, then the profiles' rows."""
        out = list(self.extra)
        for choice in self.profiles:
            for row in _profiles()[choice.name].rows():
                out.append(AllowEntry(row.full_path, row.reason, choice.origin,
                                      profile=choice.name))
        return tuple(out)

    @property
    def profile_names(self) -> tuple[ProfileName, ...]:
        return tuple(c.name for c in self.profiles)

    @property
    def is_default(self) -> bool:
        return not self.extra and not self.profiles

    # -- construction ---------------------------------------------------------------------
    def allow(self, module: str, name: str, *, reason: str,
              origin: PolicyOrigin = API_ORIGIN, acknowledge_unreviewed: bool = False) -> Policy:
        entry = AllowEntry(f"{module}.{name}", reason, origin, acknowledge_unreviewed)
        return Policy((*self.extra, entry), self.profiles,
                      self.origin if not self.is_default else origin)

    def with_profiles(self, *names: str | ProfileName,
                      origin: PolicyOrigin = API_ORIGIN) -> Policy:
        """This policy plus the named shipped profiles (unknown names: PolicyError)."""
        have = set(self.profile_names)
        added = list(self.profiles)
        for n in names:
            pn = n if isinstance(n, ProfileName) else parse_profile(n)
            if pn not in have:
                have.add(pn)
                added.append(ProfileChoice(pn, origin))
        return Policy(self.extra, tuple(added), self.origin)

    @classmethod
    def from_profiles(cls, *names: str | ProfileName,
                      origin: PolicyOrigin = API_ORIGIN) -> Policy:
        return cls().with_profiles(*names, origin=origin)

    @classmethod
    def from_entries(cls, entries: Iterable[AllowEntry]) -> Policy:
        es = tuple(entries)
        return cls(es, (), es[0].origin if es else DEFAULT_ORIGIN)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str,
                     origin: PolicyOrigin | None = None) -> Policy:
        where = origin or PolicyOrigin(OriginKind.FILE, source)
        if "tool" in data and isinstance(data["tool"], dict) and "ckptguard" in data["tool"]:
            data = data["tool"]["ckptguard"]
        if not isinstance(data, dict):
            raise PolicyError("policy must be a table", source=source)
        unknown = set(data) - {"allow", "profiles"}
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
            extra = set(item) - {"global", "reason", "acknowledge_unreviewed"}
            if extra:
                raise PolicyError(f"allow[{i}] has unknown keys: {', '.join(sorted(extra))}",
                                  source=source, entry=g)
            ack = item.get("acknowledge_unreviewed", False)
            if not isinstance(ack, bool):
                raise PolicyError(f"allow[{i}].acknowledge_unreviewed must be true or false",
                                  source=source, entry=g)
            entries.append(AllowEntry(g.strip(), reason.strip(), where, ack))
        names = data.get("profiles", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise PolicyError("'profiles' must be an array of profile names", source=source)
        try:
            chosen = tuple(dict.fromkeys(parse_profile(n) for n in names))
        except PolicyError as e:
            raise PolicyError(str(e), source=source) from None
        try:
            return cls(tuple(entries), tuple(ProfileChoice(n, where) for n in chosen), where)
        except PolicyError as e:
            if e.source is None:
                raise PolicyError(str(e), source=source, entry=e.entry) from None
            raise

    @classmethod
    def from_file(cls, path: str | Path, *, origin: PolicyOrigin | None = None) -> Policy:
        from pathlib import Path

        p = Path(path)
        try:
            text = read_regular_file(str(p), _MAX_POLICY_BYTES).decode("utf-8")
        except OSError as e:
            raise PolicyError(f"cannot read policy: {e.strerror or e}", source=str(p)) from None
        except UnicodeDecodeError as e:
            raise PolicyError(f"invalid TOML: {e}", source=str(p)) from None
        data = _parse_toml(text, "invalid TOML", str(p))
        return cls.from_mapping(data, source=str(p),
                                origin=origin or PolicyOrigin(OriginKind.FILE, str(p)))

    @classmethod
    def discover(cls, start: str | Path = ".") -> Policy:
        """The ``[tool.ckptguard]`` table of the nearest pyproject.toml, or the default.

        An explicit opt-in only (``ckptguard scan --discover-policy``): nothing calls this
        on its own, because a scanned repository could ship a pyproject that allows its own
        payload."""
        from pathlib import Path

        here = Path(start).resolve()
        for d in (here, *here.parents):
            pp = d / "pyproject.toml"
            if pp.is_file():
                try:
                    text = read_regular_file(str(pp), _MAX_POLICY_BYTES).decode("utf-8")
                except (OSError, UnicodeDecodeError) as e:
                    raise PolicyError(f"invalid pyproject.toml: {e}", source=str(pp)) from None
                data = _parse_toml(text, "invalid pyproject.toml", str(pp))
                if isinstance(data.get("tool"), dict) and "ckptguard" in data["tool"]:
                    return cls.from_mapping(data, source=str(pp),
                                            origin=PolicyOrigin(OriginKind.DISCOVERED, str(pp)))
                return cls()
        return cls()


def effective_policy(policy: Policy | None,
                     profiles: Iterable[str | ProfileName] | None = None,
                     *, origin: PolicyOrigin = API_ORIGIN) -> Policy:
    """``policy`` (default: the weights-only allowlist only) plus the named profiles."""
    pol = or_default(policy, DEFAULT_POLICY)
    names = tuple(profiles or ())
    return pol.with_profiles(*names, origin=origin) if names else pol


def with_caller_globals(policy: Policy, names: Iterable[str]) -> Policy:
    """``policy`` plus the globals a caller allowed for torch's weights-only unpickler
    (``torch.serialization.safe_globals``), keeping the BENIGN ones only: a caller's
    context can widen the gate to reviewed data types, never to an unreviewed (HIGH) or
    denied (CRITICAL) global."""
    origin = PolicyOrigin(OriginKind.CALLER, "torch.serialization.safe_globals")
    add = tuple(AllowEntry(n, f"allowed by the caller's safe_globals: {row.reason}", origin)
                for n in dict.fromkeys(names)
                if (row := _benign_row(n)) is not None and static_status(n) is GlobalStatus.BENIGN
                and policy.user_entry(n) is None)
    if not add:
        return policy
    return Policy((*policy.extra, *add), policy.profiles, policy.origin)


#: The rules whose findings name a global off the allowlist (evidence key "global").
LADDER_RULES = frozenset(r for r in STATUS_RULES.values() if r is not None)


def used_entries(policy: Policy, findings: Iterable[Finding]) -> tuple[AllowEntry, ...]:
    """The policy entries for globals an audited file actually imports (what a loader must
    hand to torch's weights-only unpickler; a profile's other rows are never imported)."""
    used = {g for f in findings if f.rule_id in LADDER_RULES
            and (g := f.evidence_dict.get("global")) is not None}
    if not used:  # a plain state dict: no table to look at (nor to import)
        return ()
    from .benign import COMPANIONS

    used |= {c for g in tuple(used) for c in COMPANIONS.get(g, ())}
    return tuple(e for e in policy.entries() if e.full_path in used)


def static_status(full_path: str) -> GlobalStatus:
    """The ladder with no policy: ALLOW, BENIGN, UNREVIEWED or DENY."""
    return classify_global(full_path, DEFAULT_POLICY).status


def _validate_entry(e: AllowEntry) -> None:
    status = static_status(e.full_path)
    if status is GlobalStatus.DENY:
        hit = denied_by(e.full_path)
        why = hit.reason if hit is not None else "denied"
        raise PolicyError(
            f"{e.full_path} is a CRITICAL primitive ({why}); a policy can never allow it",
            source=e.source, entry=e.full_path,
        )
    if status is GlobalStatus.UNREVIEWED and not e.acknowledge_unreviewed:
        raise PolicyError(
            f"{e.full_path} is not on ckptguard's reviewed benign table (HIGH): unpickling it "
            "may run code of its library. Allow it only if you reviewed it, with "
            "acknowledge_unreviewed = true in the entry",
            source=e.source, entry=e.full_path,
        )


def classify_global(full_path: str, policy: Policy) -> GlobalDecision:
    """Put one resolved global on the ladder (see the module docstring)."""
    reason = _DEFAULT_ALLOW.get(full_path)
    if reason is not None:
        return GlobalDecision(GlobalStatus.ALLOW, reason)
    hit = denied_by(full_path)
    row = _benign_row(full_path)
    # A reviewed BENIGN row outranks an indirect denylist match (numpy.random._pickle is
    # not the stdlib _pickle), never a direct one.
    if hit is not None and (hit.direct or row is None):
        return GlobalDecision(GlobalStatus.DENY, hit.reason, deny=hit)
    entry = policy.user_entry(full_path)
    if entry is not None:
        status = GlobalStatus.POLICY if row is not None else GlobalStatus.ACKNOWLEDGED
        return GlobalDecision(status, entry.reason, entry=entry, benign=row)
    if row is not None:
        return GlobalDecision(GlobalStatus.BENIGN, row.reason, benign=row)
    return GlobalDecision(GlobalStatus.UNREVIEWED)


def global_message(how: str, name: str, d: GlobalDecision) -> str:
    """The finding text for a global's place on the ladder (``how``: the opcode)."""
    s = d.status
    if s is GlobalStatus.DENY:
        return f"{how} imports {name}: {d.reason}"
    if s is GlobalStatus.UNREVIEWED:
        return (f"{how} imports {name}, which is neither on the weights-only allowlist nor on "
                "the reviewed benign table")
    if s is GlobalStatus.BENIGN:
        from .profiles import profiles_with

        names = profiles_with(d.benign.full_path) if d.benign is not None else ()
        hint = (f" (allowed by profile{'s' if len(names) > 1 else ''} "
                f"{', '.join(p.value for p in names)})") if names else ""
        return (f"{how} imports {name}, a reviewed benign type outside the weights-only "
                f"allowlist{hint}")
    where = d.entry.source if d.entry is not None else "policy"
    if s is GlobalStatus.POLICY:
        return f"{name} allowed by policy ({where}): {d.reason}"
    if s is GlobalStatus.ACKNOWLEDGED:
        return f"{name} (unreviewed) allowed by an acknowledged policy entry ({where}): {d.reason}"
    return f"{how} imports {name}"


DEFAULT_POLICY = Policy()

__all__ = ["DEFAULT_POLICY", "LADDER_RULES", "STATUS_RULES", "AllowEntry", "DenyHit",
           "GlobalDecision", "GlobalStatus", "Policy", "ProfileChoice", "classify_global",
           "denied_by", "effective_policy", "global_message", "parse_profile", "static_status",
           "used_entries", "with_caller_globals"]
