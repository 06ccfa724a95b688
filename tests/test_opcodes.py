"""The opcode table matches pickletools; torch's weights-only subset matches torch."""

from __future__ import annotations

import pickletools

import pytest

from ckptguard.analysis import opcodes as O
from ckptguard.detect import PICKLE_OPCODE_BYTES


def test_opcode_table_matches_pickletools() -> None:
    ours = {name: code for code, name in O.NAMES.items()}
    theirs = {op.name: ord(op.code) for op in pickletools.opcodes}
    assert ours == theirs
    assert frozenset(theirs.values()) == PICKLE_OPCODE_BYTES


def test_weights_only_subset_matches_torch_unpickler() -> None:
    torch_wo = pytest.importorskip("torch._weights_only_unpickler")
    import inspect
    import re

    src = inspect.getsource(torch_wo.Unpickler.load)
    handled = set(re.findall(r"\b([A-Z][A-Z_0-9]+)\[0\]", src))
    assert handled, "could not read torch's opcode list"
    ours = {O.NAMES[c] for c in O.TORCH_WEIGHTS_ONLY}
    assert ours == handled, (ours - handled, handled - ours)




@pytest.mark.parametrize("line", [b"01000000000000000000", b"100000000", b" 4000000000",
                                  b"1_000_000_000", b"99999999999999999999999\0junk"])
def test_huge_memo_index_probe_allocates_nothing(line: bytes) -> None:
    """A PUT naming a huge memo index (found by the atheris vm target as a MemoryError):
    the text probe answers it without growing a real unpickler's memo, and the scan ends
    with a limit or a verdict, never an internal error."""
    import resource

    import ckptguard
    from ckptguard.analysis.engine import audit_bytes
    from ckptguard.analysis.opcodes import PUT, text_value
    from ckptguard.policy import DEFAULT_LIMITS, Policy

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ok, value = text_value(PUT, line, c=True)
    assert ok and value == int(line.split(b"\0")[0].decode(), 10)
    r = audit_bytes(b"Np" + line + b"\n.", "x.pkl", policy=Policy(), limits=DEFAULT_LIMITS)
    assert not r.problems and "CKG902" not in r.rule_ids()
    assert r.verdict is not ckptguard.Verdict.SAFE or value <= DEFAULT_LIMITS.max_memo_index
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB
