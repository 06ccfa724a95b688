"""The pickle reading from byte 0, judged as CPython runs it (fixtures/families/pickle_readings.py).

pickle.load, numpy.load(allow_pickle=True) and torch.load read any file as a pickle from
its first byte; torch.load goes on through its legacy stream (magic number, protocol,
sys_info, the main pickle, the storage keys) while each program returns what it checks.
Two ways a valid safetensors file got SAFE while one of them ran its payload:
- opcodes CPython accepts and the audit's VM refused, before the global: the VM stopped,
  named nothing, and the reading was taken for dead;
- a payload in a later pickle of torch's legacy stream.
Every generated variant must be valid safetensors, reach its payload under CPython's own
unpickler (the probe stops at the first global) and be UNSAFE with CKG011. The stack walk
that proves a global unreachable is pinned to CPython's unpickler (hypothesis) and its
tables to pickletools'. A subset runs for real under pickle.load and torch.load.
"""

from __future__ import annotations

import itertools
import pickletools
from pathlib import Path
from typing import Any

import pytest
from ckg_families import family, load_for_real, reached
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptguard
from ckptguard.analysis import opcodes as O
from ckptguard.analysis.readings import pickle_walk
from ckptguard.context import AuditContext, Source
from ckptguard.model import Effect, Format, Severity, Verdict
from ckptguard.policy import DEFAULT_LIMITS, DEFAULT_POLICY

FAM = family("pickle_readings")
reading_polyglot = FAM["reading_polyglot"]
legacy_stream_polyglot = FAM["legacy_stream_polyglot"]
PAYLOADS: dict[str, Any] = FAM["PAYLOADS"]
PAYLOAD_ORDER = sorted(PAYLOADS)
STOPPERS: dict[str, bytes] = FAM["STOPPERS"]
MARKER: str = FAM["MARKER"]
MAGIC = FAM["TORCH_LEGACY_MAGIC_VALUE"]
op = FAM["op"]
P = FAM["P"]

VARIANTS = list(itertools.product(FAM["SKIPS"], STOPPERS))
NAMES = ("model.safetensors", "pytorch_model.bin", "weights")
GLOBALS = {"global_reduce": "posix.system", "exec": "builtins.exec",
           "stack_global": "builtins.exec", "inst": "posix.system", "obj": "posix.system"}


def _safetensors_reads_it(data: bytes, program: bytes) -> None:
    from safetensors.numpy import load

    (t,) = load(data).values()
    assert t.dtype.name == "uint8" and t.tobytes() == program


def _scan(tmp_path: Path, name: str, data: bytes) -> ckptguard.Report:
    p = tmp_path / name
    p.write_bytes(data)
    return ckptguard.scan(p)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{ord(v[0]):02x}-{v[1]}")
def test_reading_polyglot_variants(variant: tuple[str, str], tmp_path: Path) -> None:
    skip, stopper = variant
    i = VARIANTS.index(variant)
    pname = PAYLOAD_ORDER[i % len(PAYLOAD_ORDER)]
    program = STOPPERS[stopper] + PAYLOADS[pname]()
    data = reading_polyglot(program, skip=skip)
    _safetensors_reads_it(data, program)
    assert reached(data) == GLOBALS[pname], (skip, stopper, pname)  # CPython gets there
    name = NAMES[i % len(NAMES)]
    r = _scan(tmp_path, name, data)
    assert r.verdict is Verdict.UNSAFE, (name, pname, sorted(r.rule_ids()))
    assert "CKG011" in r.rule_ids(), (name, pname, sorted(r.rule_ids()))
    assert r.format is Format.SAFETENSORS
    reading = [f for f in r.findings if f.rule_id == "CKG011"]
    assert all(f.effect is Effect.BLOCKS for f in reading)
    if pname in ("global_reduce", "inst", "obj", "exec") and stopper != "none":
        # the VM stops before the global, which the walk names: a denied one is CRITICAL
        assert max(f.severity for f in reading) is Severity.CRITICAL, reading


@pytest.mark.parametrize("at", [2, 3, 4, 5])
@pytest.mark.parametrize("pname", PAYLOAD_ORDER)
def test_legacy_stream_variants(at: int, pname: str, tmp_path: Path) -> None:
    data = legacy_stream_polyglot(PAYLOADS[pname](), at=at, skip="BXTCU\x8c"[at % 6])
    # the first program names nothing: only torch's legacy stream reaches the payload
    assert reached(data) is None
    r = _scan(tmp_path, "pytorch_model.bin" if at % 2 else "model.safetensors", data)
    assert r.verdict is Verdict.UNSAFE, sorted(r.rule_ids())
    assert {"CKG011", "CKG101"} <= r.rule_ids(), sorted(r.rule_ids())
    live = [f for f in r.findings if f.rule_id == "CKG011"]
    assert "legacy stream" in live[0].message and "torch.load" in live[0].message


@pytest.mark.parametrize("first,second", [
    (P(op.BININT(5), op.STOP), b""),                           # not the magic number
    (P(op.LONG1(MAGIC + 1), op.STOP), b""),
    (P(op.LONG1(MAGIC), op.STOP), P(op.BININT(1000), op.STOP)),  # not protocol 1001
    (P(op.LONG1(MAGIC), op.STOP), P(op.EMPTY_LIST, op.STOP)),
])
def test_legacy_stream_stops_where_torch_stops(first: bytes, second: bytes,
                                               tmp_path: Path) -> None:
    """torch raises once a program returns the wrong value: what follows is never read."""
    rest = P(op.PROTO(2), op.EMPTY_DICT, op.STOP) * (2 if not second else 1)
    data = reading_polyglot(first + second + rest + PAYLOADS["exec"]())
    r = _scan(tmp_path, "m.bin", data)
    assert "CKG011" not in r.rule_ids(), [f.message for f in r.findings]
    assert r.verdict is Verdict.SAFE


def test_a_stopper_right_after_the_magic_is_not_trusted(tmp_path: Path) -> None:
    """The magic number's program itself refused by the VM: torch may read on."""
    first = P(op.LONG1(MAGIC), op.EMPTY_LIST, op.NONE, op.BUILD, op.POP, op.STOP)
    data = reading_polyglot(first + P(op.BININT(1001), op.STOP, op.EMPTY_DICT, op.STOP)
                            + PAYLOADS["global_reduce"]())
    r = _scan(tmp_path, "m.bin", data)
    assert r.verdict is Verdict.UNSAFE and "CKG011" in r.rule_ids()


# --- the walk's stack checks are CPython's ------------------------------------------------

def _walk(data: bytes, *, persistent_ok: bool = False) -> Any:
    ctx = AuditContext("<bytes>", Source.from_bytes(data), DEFAULT_POLICY, DEFAULT_LIMITS)
    return pickle_walk(ctx, persistent_ok=persistent_ok)


_DATA_OPS = [b"N", b"K\x01", b"K\x00", b"]", b"}", b")", b"\x8f", b"(", b"0", b"1", b"2",
             b"a", b"e", b"s", b"u", b"t", b"l", b"d", b"\x85", b"\x86", b"\x87", b"\x90",
             b"\x91", b"b", b"q\x00", b"q\x01", b"h\x00", b"h\x01", b"\x94", b"\x88",
             b"\x89", b"C\x01x", b"U\x00", b"R", b"\x81", b"\x92", b"I1\n",
             b"\x96\x01\x00\x00\x00\x00\x00\x00\x00A", b"\x93"]


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(_DATA_OPS), max_size=14), st.sampled_from([
    b"cbuiltins\nlen\n", b"X\x08\x00\x00\x00builtinsX\x03\x00\x00\x00len\x93",
    b"(ibuiltins\nlen\n", b"c\nlen\n", b"cbuiltins\n\n", b"cbuilt\xffins\nlen\n",
    b"cbuiltins\nl\xc3\xa9n\n", b"(i\xe9\nlen\n", b"cbuiltins\nlen"]))
def test_walk_never_rules_out_what_cpython_reaches(ops: list[bytes], naming: bytes) -> None:
    """Soundness of the stack walk: whenever CPython's unpickler gets to the global, the
    walk says a global is reachable (it may say so where CPython dies of something else:
    the VM then decides, and where it cannot, CKG011 stands)."""
    data = b"".join(ops) + naming + b"."
    if reached(data) is not None:
        assert _walk(data).first_naming >= 0, data


@pytest.mark.parametrize("data,reachable", [
    (b"\x93NUMPY\x01\x00v\x00{'descr'", False),            # every .npy: STACK_GLOBAL, no stack
    (b"X\x01\x00\x00\x00aX\x01\x00\x00\x00b\x93.", True),
    (b"(\x93.", False),                                     # a MARK is no value
    (b"ibuiltins\nlen\n.", False),                          # INST without a MARK
    (b"(ibuiltins\nlen\n.", True),
    (b"N0cbuiltins\nlen\n.", True),
    (b"00cbuiltins\nlen\n.", False),                        # POP of nothing
    (b"(0cbuiltins\nlen\n.", True),                         # POP takes the MARK
    (b"N(Ke\x00cbuiltins\nlen\n.", False),                  # APPENDS needs a list below
    (b"(N(d\x00cbuiltins\nlen\n.", False),                  # DICT of one value (odd)
    (b"(NNd}(Nu\x00cbuiltins\nlen\n.", False),             # SETITEMS of one value (odd)
    (b"q\x00cbuiltins\nlen\n.", False),                     # BINPUT peeks at nothing
    (b"N.cbuiltins\nlen\n.", False),                        # after STOP
    (b"cbuiltins\nlen", False),                             # the name's line never ends
    (b"c\nlen\n.", False),                                  # an empty module line
    (b"cbuilt\xffins\nlen\n.", False),                     # not UTF-8
    (b"cbuiltins\nl\xc3\xa9n\n.", True),                  # UTF-8: looked up
])
def test_walk_stack_table(data: bytes, reachable: bool) -> None:
    assert (_walk(data).first_naming >= 0) is reachable, data
    if not reachable:
        assert reached(data) is None  # CPython dies first too


def test_stack_tables_are_pickletools() -> None:
    """opcodes.STACK_EFFECT / MARK_EFFECT against pickletools' stack_before/after: every
    opcode once, with the differences CPython's C unpickler makes spelled out."""
    peeks = {O.PUT, O.BINPUT, O.LONG_BINPUT}  # pickletools: no stack; C: the top value
    seen = set()
    for info in pickletools.opcodes:
        code = ord(info.code)
        before = [s.name for s in info.stack_before]
        after = [s.name for s in info.stack_after]
        seen.add(code)
        if code in (O.MARK, O.POP):
            assert code not in O.STACK_EFFECT and code not in O.MARK_EFFECT
            continue
        if "mark" in before:
            need_frame, need_outer, push, even = O.MARK_EFFECT[code]
            i = before.index("mark")
            assert need_outer == i, info.name
            assert need_frame == len(before) - i - 2, info.name  # OBJ: the class
            assert push == len(after) - i, info.name
            assert even is (code in (O.DICT, O.SETITEMS)), info.name
            assert code not in O.STACK_EFFECT
            continue
        need, delta = O.STACK_EFFECT[code]
        assert delta == len(after) - len(before), info.name
        assert need == (1 if code in peeks else len(before)), info.name
        assert code not in O.MARK_EFFECT
    assert seen == set(O.ALL_OPCODES)
    assert set(O.STACK_EFFECT) | set(O.MARK_EFFECT) | {O.MARK, O.POP} == seen


# --- for real ------------------------------------------------------------------------------



@pytest.mark.slow
def test_payloads_fire(tmp_path: Path) -> None:
    """Every stopper under pickle.load, every legacy-stream position under torch.load (a
    path named .bin and an open file): the marker is created."""
    jobs = []
    for i, (skip, stopper) in enumerate(VARIANTS[::3]):
        pname = PAYLOAD_ORDER[i % len(PAYLOAD_ORDER)]
        d = tmp_path / f"p{i}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(
            reading_polyglot(STOPPERS[stopper] + PAYLOADS[pname](), skip=skip))
        jobs.append((str(d / "model.safetensors"), "pickle"))
    pytest.importorskip("torch")
    for at, how in itertools.product((2, 3, 4, 5), ("torch", "torch-file")):
        d = tmp_path / f"t{at}{how}"
        d.mkdir()
        pname = PAYLOAD_ORDER[at % len(PAYLOAD_ORDER)]
        (d / "pytorch_model.bin").write_bytes(legacy_stream_polyglot(PAYLOADS[pname](), at=at))
        jobs.append((str(d / "pytorch_model.bin"), how))
    got = load_for_real(jobs, MARKER)
    for path, how in jobs:
        fired, err = got[path]
        assert fired, (path, how, err)
