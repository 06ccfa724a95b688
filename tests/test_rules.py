"""The rule registry is the one source of truth: every rule ID used in the package is
registered, every registered rule is emitted somewhere in the package, and every registered
rule is documented in SECURITY.md."""

from __future__ import annotations

import re
from pathlib import Path

from ckptguard.rules import RULES

ROOT = Path(__file__).resolve().parents[1]


def _used_in_package() -> set[str]:
    used: set[str] = set()
    for py in (ROOT / "src" / "ckptguard").rglob("*.py"):
        if py.name == "rules.py":
            continue
        used |= set(re.findall(r'"(CKG\d{3})"', py.read_text(encoding="utf-8")))
    return used


def test_every_rule_used_in_the_package_is_registered() -> None:
    used = _used_in_package()
    assert used, "no rule IDs found"
    assert used <= set(RULES), sorted(used - set(RULES))


def test_every_registered_rule_is_emitted_somewhere() -> None:
    """A registered, documented rule that no code path emits is a promise nothing keeps
    (CKG205 'unexpected-pickle-count' was one: CKG203/CKG004/CKG201 cover its cases)."""
    missing = set(RULES) - _used_in_package()
    assert not missing, f"registered but never emitted: {sorted(missing)}"


def test_every_rule_is_documented_in_security_md() -> None:
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    for rid, rule in RULES.items():
        assert f"| {rid} | {rule.name} |" in text, rid


def test_rule_ids_are_well_formed() -> None:
    for rid, rule in RULES.items():
        assert re.fullmatch(r"CKG\d{3}", rid) and rule.id == rid
        assert rule.title.endswith(".") and rule.advice
