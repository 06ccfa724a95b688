"""``ckptguard scan --suggest-policy``: the TOML policy for the reviewed benign findings of a
scan. Only rows of the BENIGN table are ever written (names are taken from the table, not
from the file); unreviewed (HIGH) and denied (CRITICAL) globals never are."""

from __future__ import annotations

import json
from collections.abc import Iterable

from ..model import Effect, Report, Severity
from .benign import BenignRow, benign_row
from .policy import STATUS_RULES, GlobalStatus
from .profiles import profiles_covering

_BENIGN_RULE = STATUS_RULES[GlobalStatus.BENIGN]


def benign_rows_of(reports: Iterable[Report]) -> tuple[BenignRow, ...]:
    """The BENIGN rows named by the MEDIUM findings of ``reports`` (table order)."""
    seen: dict[str, BenignRow] = {}
    for r in reports:
        for f in r.all_findings():
            if f.rule_id != _BENIGN_RULE:
                continue
            row = benign_row(f.evidence_dict.get("global", ""))
            if row is not None:
                seen.setdefault(row.full_path, row)
    return tuple(sorted(seen.values(), key=lambda r: r.full_path))


def _toml_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)  # a JSON string is a valid TOML basic string


def suggest_policy_toml(reports: Iterable[Report]) -> str:
    reports = list(reports)
    rows = benign_rows_of(reports)
    lines = ["# ckptguard policy suggested for the reviewed benign globals of this scan.",
             "# Review it; use it with: ckptguard scan --policy FILE ..."]
    blocked = sorted({r.path for r in reports for f in r.all_findings()
                      if f.effect is Effect.BLOCKS and f.severity >= Severity.HIGH})
    if blocked:
        lines.append("# Not covered (HIGH or CRITICAL findings; no policy is suggested for "
                     "them):")
        lines.extend(f"#   {json.dumps(p, ensure_ascii=True)}" for p in blocked[:50])
    if not rows:
        lines.append("# No reviewed benign globals were found: nothing to allow.")
        lines.append("allow = []")
        return "\n".join(lines) + "\n"
    covering = profiles_covering(r.full_path for r in rows)
    if covering:
        lines.append(f"# The shipped profile {covering[0].value!r} covers all of them: "
                     f"--profile {covering[0].value}, or:")
        lines.append(f"# profiles = [{_toml_str(covering[0].value)}]")
    lines.append("allow = [")
    for row in rows:
        lines.append(f"  {{ global = {_toml_str(row.full_path)}, "
                     f"reason = {_toml_str(row.reason)} }},")
    lines.append("]")
    return "\n".join(lines) + "\n"


__all__ = ["benign_rows_of", "suggest_policy_toml"]
