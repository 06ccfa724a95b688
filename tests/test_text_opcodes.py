"""Text opcodes are read the way CPython's C unpickler reads them (issue 10 point 5).

Differential: for every text opcode, hypothesis generates lines of NUL bytes, whitespace,
signs, underscores, radix prefixes, non-ASCII digits, quotes and overlong digit runs; the
VM's value must be ``_pickle``'s (the C module, what pickle.load and torch.load use), a
disagreement with pickle.py must be CKG204, a line both refuse must not be SAFE, and the
opcode-prefix check must call the file a pickle whenever an unpickler runs it.
``fixtures/families/text_opcode_parity.py`` generates programs that open with such a line
and then call posix.system: each must name the payload (CKG101).
"""

from __future__ import annotations

import _pickle
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
from ckg_families import family
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import ckptguard
from ckptguard.analysis import opcodes as O
from ckptguard.analysis.vm import PickleMode, audit_pickle
from ckptguard.context import AuditContext, Source
from ckptguard.policy import Policy

ROOT = Path(__file__).resolve().parents[1]

_PIECES = [b"0", b"1", b"7", b"9", b"12", b"\x00", b" ", b"\t", b"\r", b"\x0b", b"+", b"-",
           b"_", b"x", b"X", b"0x", b"0o", b"0b", b"L", b"e", b"E", b".", b"inf", b"nan",
           "\u0661".encode(), "\uff11".encode(), b"\xff", b"'", b'"', b"\\", b"\\x41",
           b"a", b"f", b"9" * 40]
_CORE = [b"0", b"1", b"\x00", b" ", b"+", b"-", b"_", b"x", b"."]
LINES = st.lists(st.sampled_from(_CORE), max_size=4).map(b"".join) | \
    st.lists(st.sampled_from(_PIECES), max_size=8).map(b"".join) | \
    st.binary(max_size=12).map(lambda b: b.replace(b"\n", b""))

TEXT_OPS = {"INT": O.INT, "LONG": O.LONG, "FLOAT": O.FLOAT, "STRING": O.STRING,
            "UNICODE": O.UNICODE, "GET": O.GET, "PUT": O.PUT, "PERSID": O.PERSID}


def _program(op: int, line: bytes) -> bytes:
    if op == O.GET:
        return b"I5\np0\n0g" + line + b"\n."
    if op == O.PUT:
        return b"I5\np" + line + b"\n0g0\n."
    return bytes([op]) + line + b"\n."


class _CPers(_pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        return ("pid", pid)


class _PyPers(pickle._Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        return ("pid", pid)


def _load(prog: bytes, c: bool) -> tuple[bool, Any]:
    import io

    try:
        cls: Any = (_CPers if c else _PyPers)
        return True, cls(io.BytesIO(prog), encoding="latin1").load()
    except Exception as e:  # the refusal is the reference answer
        return False, type(e).__name__


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and (repr(a) == repr(b) if isinstance(a, float) else a == b)


def _vm(prog: bytes) -> tuple[Any, set[str]]:
    ctx = AuditContext("x.pkl", Source.from_bytes(prog), Policy())
    res = audit_pickle(ctx, prog, mode=PickleMode.RAW)
    return (res.root if res.complete else None), {f.rule_id for f in ctx.findings}


@pytest.mark.parametrize("name", sorted(TEXT_OPS))
@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(line=LINES)
@example(line=b'1e400')
@example(line=b'-1e400')
@example(line=b'1e-400')
@example(line=b'010')
@example(line=b' 1')
@example(line=b'+1')
@example(line=b'-0')
@example(line=b'1\x00junk')
@example(line=b'1_0')
@example(line=b' 1.5')
@example(line=b'00')
@example(line=b'999999999999999999999999999999')
@example(line=b'0x1f\x00')
@example(line=b"'a\x00b'")
def test_text_opcode_matches_the_c_unpickler(name: str, line: bytes) -> None:
    op = TEXT_OPS[name]
    prog = _program(op, line)
    c_ok, c_val = _load(prog, c=True)
    py_ok, py_val = _load(prog, c=False)
    root, rules = _vm(prog)
    if c_ok:
        if op == O.PERSID:
            assert "CKG109" in rules  # a raw pickle's persistent id, value aside
        else:
            assert _same(root, c_val), (prog, root, c_val, rules)
        if not py_ok or not _same(c_val, py_val):
            assert "CKG204" in rules, (prog, c_val, py_val, rules)
        assert O.scan_opcodes_prefix(prog), prog
    else:
        assert rules & {"CKG202", "CKG204", "CKG901", "CKG201"}, (prog, c_val, rules)
        if py_ok:
            assert "CKG204" in rules, (prog, py_val, rules)


def test_canonical_literals_take_no_differential() -> None:
    for prog in (b"I123\n.", b"I-7\n.", b"L12345678901234567890L\n.", b"F1.5\n.",
                 b"F-2.5e-07\n.", b"I5\np3\n0g3\n."):
        root, rules = _vm(prog)
        assert root == pickle.loads(prog) and not rules, (prog, rules)


def _family() -> dict[str, Any]:
    return family("text_opcode_parity")


VARIANTS: dict[str, tuple[bytes, bool]] = _family()["text_variants"]()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_payload_after_a_quirky_text_line_is_named(tmp_path: Path, name: str) -> None:
    data, _ = VARIANTS[name]
    p = tmp_path / f"{name}.pkl"
    p.write_bytes(data)
    r = ckptguard.scan(p)
    assert r.format.name == "PICKLE", (r.format, r.rule_ids())
    assert r.verdict.name == "UNSAFE"
    assert {"CKG101", "CKG204"} <= set(r.rule_ids()), r.rule_ids()


@pytest.mark.parametrize("name", [k for k, (_, c_ok) in VARIANTS.items() if c_ok][:4])
def test_payload_really_runs_under_pickle_load(tmp_path: Path, name: str) -> None:
    """The C unpickler reads through the quirky line and reaches the GLOBAL."""
    import io

    data, _ = VARIANTS[name]
    seen: list[str] = []

    class Spy(_pickle.Unpickler):
        def find_class(self, module: str, global_name: str) -> Any:
            seen.append(f"{module}.{global_name}")
            raise pickle.UnpicklingError("stopped before the payload")

    with pytest.raises(pickle.UnpicklingError):
        Spy(io.BytesIO(data)).load()
    assert seen == ["posix.system"]
    assert not os.path.exists(tmp_path / "ckptguard_marker")
