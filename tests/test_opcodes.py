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
