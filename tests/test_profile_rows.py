"""A profile allows a reviewed row as the row says it is unpickled, nothing more.

A review round found that once a global was on a profile, the VM checked neither its calls
nor its BUILDs: under the profile named, each program below was SAFE (CKG106 notes only)
while pickle.load crashed, read a file, rewrote process-wide state or blew up. Each is now
UNSAFE with the rule named; the forms pickle itself writes for these types stay SAFE.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import pytest

import ckptguard
from ckptguard.model import Verdict


def G(mod: str, name: str) -> bytes:
    return b"c" + mod.encode() + b"\n" + name.encode() + b"\n"


def S(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def I(n: int) -> bytes:  # noqa: E743 - the opcode's name
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if -(1 << 31) <= n < (1 << 31):
        return b"J" + struct.pack("<i", n)
    nb = (n.bit_length() + 8) // 8
    return b"\x8a" + bytes([nb]) + n.to_bytes(nb, "little", signed=True)


def T(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


P2, STOP, NONE, F, TR = b"\x80\x02", b".", b"N", b"\x89", b"\x88"


def _dtype(spec: str) -> bytes:
    return G("numpy", "dtype") + T(S(spec), F, TR) + b"R"


#: name -> (program, profiles, the rule it must get)
CASES: dict[str, tuple[bytes, list[str], str]] = {
    # dtype.__setstate__ with an object field and no object flags: ndarray.__setstate__
    # then copies raw bytes into PyObject* slots (pickle.load segfaulted)
    "numpy-dtype-state-object-field": (
        P2 + _dtype("V8") + T(I(3), S("|"), NONE, T(S("a")),
                              b"}" + S("a") + T(_dtype("V8"), I(0)) + b"s", I(8), I(1), I(1))
        + b"b" + STOP, ["numpy"], "CKG122"),
    "numpy-dtype-object-word": (P2 + _dtype("object") + STOP, ["numpy"], "CKG122"),
    "numpy-dtype-structured": (P2 + _dtype("f4,O") + STOP, ["numpy"], "CKG122"),
    # __post_init__ reads accelerator_config from a path
    "trainingargs-called": (
        P2 + G("transformers.training_args", "TrainingArguments") + T(S("out")) + b"R" + STOP,
        ["hf-trainer"], "CKG123"),
    # __init__ aliases the process-wide _shared_state: BUILD rewrites it
    "partialstate-called": (
        P2 + G("accelerate.state", "PartialState") + b")R}" + S("process_index") + I(3)
        + b"sb" + STOP, ["accelerate"], "CKG123"),
    # numpy calls the class it is handed: bytearray(1 << 30)
    "generator-ctor-callable": (
        P2 + G("numpy.random._pickle", "__generator_ctor") + T(I(1 << 30),
                                                               G("builtins", "bytearray"))
        + b"R" + STOP, ["numpy"], "CKG123"),
    "list-of-range": (
        P2 + G("builtins", "list") + T(G("builtins", "range") + T(I(1000)) + b"R") + b"R"
        + STOP, ["stdlib-data"], "CKG114"),
    "range-huge": (P2 + G("builtins", "range") + T(I(20_000_000)) + b"R" + STOP,
                   ["stdlib-data"], "CKG123"),
    "bytes-huge": (P2 + G("builtins", "bytes") + T(I(1 << 30)) + b"R" + STOP,
                   ["stdlib-data"], "CKG123"),
    "fraction-exponent": (P2 + G("fractions", "Fraction") + T(S("1e30000000")) + b"R" + STOP,
                          ["stdlib-data"], "CKG123"),
    "linear-called": (
        P2 + G("torch.nn.modules.linear", "Linear") + T(I(8192), I(8192)) + b"R" + STOP,
        ["torch-modules"], "CKG123"),
    "enum-given-state": (
        P2 + G("transformers.trainer_utils", "IntervalStrategy") + T(S("steps")) + b"R}"
        + S("x") + I(1) + b"sb" + STOP, ["hf-trainer"], "CKG123"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_profile_rows_outside_their_review(tmp_path: Path, name: str) -> None:
    prog, profiles, rule = CASES[name]
    p = tmp_path / f"{name}.pkl"
    p.write_bytes(prog)
    r = ckptguard.scan(p, profiles=profiles)
    assert r.verdict is Verdict.UNSAFE and rule in r.rule_ids(), (name, sorted(r.rule_ids()))


def _controls() -> dict[str, tuple[bytes, list[str]]]:
    import numpy as np

    out = {
        "numpy-array": (pickle.dumps(np.arange(6, dtype=np.float32).reshape(2, 3),
                                     protocol=2), ["numpy"]),
        "numpy-dtype": (pickle.dumps(np.dtype("<i8"), protocol=2), ["numpy"]),
        "numpy-rng": (pickle.dumps(np.random.default_rng(0), protocol=2), ["numpy"]),
        "fraction": (pickle.dumps(__import__("fractions").Fraction(3, 7), protocol=2),
                     ["stdlib-data"]),
        "range-small": (pickle.dumps(range(10), protocol=2), ["stdlib-data"]),
        "enum": (P2 + G("transformers.trainer_utils", "IntervalStrategy") + T(S("steps"))
                 + b"R" + STOP, ["hf-trainer"]),
        # the form pickle writes for a data class: NEWOBJ + BUILD (no __post_init__)
        "trainingargs-newobj": (
            P2 + G("transformers.training_args", "TrainingArguments") + b")\x81}"
            + S("output_dir") + S("out") + b"sb" + STOP, ["hf-trainer"]),
    }
    return out


@pytest.mark.parametrize("name", ["numpy-array", "numpy-dtype", "numpy-rng", "fraction",
                                  "range-small", "enum", "trainingargs-newobj"])
def test_the_forms_pickle_writes_stay_safe(tmp_path: Path, name: str) -> None:
    pytest.importorskip("numpy")
    prog, profiles = _controls()[name]
    p = tmp_path / f"{name}.pkl"
    p.write_bytes(prog)
    r = ckptguard.scan(p, profiles=profiles)
    assert r.verdict is Verdict.SAFE, (name, sorted(r.rule_ids()))
    without = ckptguard.scan(p)
    if name != "range-small":  # builtins.range is on the weights-only allowlist itself
        assert without.verdict is Verdict.UNSAFE, (name, sorted(without.rule_ids()))
