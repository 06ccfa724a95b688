"""Golden-file comparison for the report tests.

Regenerate every golden file with ``CKPTGUARD_REGEN_GOLDEN=1 python -m pytest tests/test_report*.py
tests/test_cli*.py`` and review the diff before committing.
"""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("CKPTGUARD_REGEN_GOLDEN") == "1"


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if REGEN or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8", newline="\n")
        if not REGEN:
            raise AssertionError(f"golden file {path} was missing and has been written; "
                                 "review it and re-run")
        return
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, (
        f"output differs from {path}; if the change is intended, regenerate with "
        "CKPTGUARD_REGEN_GOLDEN=1")
