"""The rule registry is the one source of truth: every rule ID used in the package is
registered, and every registered rule is documented in SECURITY.md."""

from __future__ import annotations

import re
from pathlib import Path

from ckptguard.rules import RULES

ROOT = Path(__file__).resolve().parents[1]


def test_every_rule_used_in_the_package_is_registered() -> None:
    used: set[str] = set()
    for py in (ROOT / "src" / "ckptguard").rglob("*.py"):
        if py.name == "rules.py":
            continue
        used |= set(re.findall(r'"(CKG\d{3})"', py.read_text(encoding="utf-8")))
    assert used, "no rule IDs found"
    assert used <= set(RULES), sorted(used - set(RULES))


def test_every_rule_is_documented_in_security_md() -> None:
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    for rid, rule in RULES.items():
        assert f"| {rid} | {rule.name} |" in text, rid


def test_rule_ids_are_well_formed() -> None:
    for rid, rule in RULES.items():
        assert re.fullmatch(r"CKG\d{3}", rid) and rule.id == rid
        assert rule.title.endswith(".") and rule.advice
