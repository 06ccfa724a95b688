"""Property tests: for any bytes the audit returns a Report and never raises (and never
records an internal error), over the opcode decoder, the VM, the zip reader, the
safetensors header parser and the npy reader; mutations of benign fixtures are never SAFE
unless torch's weights-only loader still loads them with the tensors we reported.

Budget: about a minute in CI (``max_examples`` below); ``CKG_FUZZ_EXAMPLES`` raises it.
The atheris targets in fuzz/ get a short run here too (skipped without atheris).
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptguard.analysis.engine import audit_bytes
from ckptguard.model import Report, Verdict
from ckptguard.policy import DEFAULT_LIMITS, Limits, Policy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_differential import compare_with_torch_inprocess, torch_zip  # noqa: E402

BENIGN = ROOT / "fixtures" / "benign"
N = int(os.environ.get("CKG_FUZZ_EXAMPLES", "500"))
POLICY = Policy()
# Small limits so a random program reaches them fast; the defaults are tested elsewhere.
LIMITS = DEFAULT_LIMITS.replace(max_seconds=10.0)
FUZZ = settings(max_examples=N, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def audit(data: bytes, name: str, limits: Limits = LIMITS) -> Report:
    r = audit_bytes(data, name, policy=POLICY, limits=limits)
    assert isinstance(r, Report)
    assert not r.problems, (name, data[:200], r.problems)  # internal errors are bugs
    r.to_dict()  # the report serialises
    return r


# --- any bytes -----------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=4096), st.sampled_from(["x.pkl", "x.pt", "x.bin", "x.safetensors",
                                                  "x.npy", "x.json", "x"]))
def test_any_bytes(data: bytes, name: str) -> None:
    audit(data, name)


# Opcode-structured programs: each item is one opcode with a plausible argument.
_OPS_FIXED = {b"N": 0, b")": 0, b"]": 0, b"}": 0, b"(": 0, b"t": 0, b"l": 0, b"d": 0,
              b"0": 0, b"1": 0, b"2": 0, b"R": 0, b"b": 0, b"s": 0, b"u": 0, b"a": 0,
              b"e": 0, b"\x85": 0, b"\x86": 0, b"\x87": 0, b"\x88": 0, b"\x89": 0,
              b"\x93": 0, b"\x94": 0, b"Q": 0, b"\x81": 0, b"\x92": 0, b"o": 0, b"\x8f": 0,
              b"\x90": 0, b"\x91": 0, b".": 0, b"K": 1, b"M": 2, b"J": 4, b"h": 1, b"q": 1,
              b"j": 4, b"r": 4, b"G": 8, b"\x82": 1, b"\x83": 2, b"\x84": 4}
_NAMES = [b"torch._utils\n_rebuild_tensor_v2\n", b"collections\nOrderedDict\n",
          b"torch\nFloatStorage\n", b"argparse\nNamespace\n", b"builtins\ndict\n",
          b"collections\ndefaultdict\n", b"__builtin__\nset\n", b"torch\nSize\n"]


@st.composite
def opcode_program(draw: st.DrawFn) -> bytes:
    out = [b"\x80" + bytes([draw(st.integers(0, 5))])] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 60))):
        kind = draw(st.integers(0, 9))
        if kind < 5:
            op = draw(st.sampled_from(sorted(_OPS_FIXED)))
            out.append(op + draw(st.binary(min_size=_OPS_FIXED[op], max_size=_OPS_FIXED[op])))
        elif kind == 5:
            s = draw(st.sampled_from([b"storage", b"cpu", b"0", b"a.b", b"\xff", b""]))
            out.append(b"X" + struct.pack("<I", len(s)) + s)
        elif kind == 6:
            s = draw(st.binary(max_size=8))
            out.append(b"\x8c" + bytes([len(s)]) + s)
        elif kind == 7:
            out.append(b"c" + draw(st.sampled_from(_NAMES)))
        elif kind == 8:
            out.append(draw(st.sampled_from([b"I01\n", b"I-3\n", b"L12L\n", b"p0\n", b"g0\n",
                                             b"S'x'\n", b"V\\u0041\n", b"F1.5\n", b"I0x10\n"])))
        else:
            n = draw(st.integers(0, 2**64 - 1))
            out.append(draw(st.sampled_from([b"\x95", b"B", b"\x8e", b"\x8b"]))
                       + struct.pack("<Q", n)[: draw(st.sampled_from([4, 8]))])
    if draw(st.booleans()):
        out.append(b".")
    return b"".join(out)


@pytest.mark.slow
@FUZZ
@given(opcode_program())
def test_opcode_programs_raw(prog: bytes) -> None:
    audit(prog, "x.pkl")


@pytest.mark.slow
@FUZZ
@given(opcode_program())
def test_opcode_programs_in_torch_zip(prog: bytes) -> None:
    audit(torch_zip(prog, {"0": bytes(24)}), "x.pt")


# --- zip reader ------------------------------------------------------------------------------

def _mutate(draw: st.DrawFn, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.integers(0, 3))
        if not b:
            break
        i = draw(st.integers(0, len(b) - 1))
        if kind == 0:
            b[i] = draw(st.integers(0, 255))
        elif kind == 1:
            del b[i : i + draw(st.integers(1, 16))]
        elif kind == 2:
            b[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            w = draw(st.sampled_from([2, 4, 8]))
            b[i : i + w] = draw(st.sampled_from([b"\xff" * w, b"\x00" * w, b"\x7f" + b"\xff" *
                                                 (w - 1)]))
    return bytes(b)


_SEEDS = {p.name: p.read_bytes() for p in sorted(BENIGN.glob("*.pt"))}


@st.composite
def mutated_benign(draw: st.DrawFn) -> tuple[str, bytes, bytes]:
    name = draw(st.sampled_from(sorted(_SEEDS)))
    orig = _SEEDS[name]
    return name, orig, _mutate(draw, orig)


@pytest.mark.slow
@FUZZ
@given(mutated_benign())
def test_mutated_benign_never_falsely_safe(case: tuple[str, bytes, bytes]) -> None:
    """A mutation we call SAFE must load under torch.load(weights_only=True) with exactly the
    tensors we reported (only SAFE files are loaded in-process: they passed the audit)."""
    name, orig, data = case
    r = audit(data, name)
    if r.verdict is not Verdict.SAFE or data == orig:
        return
    compare_with_torch_inprocess(data, r)


# --- safetensors header parser ------------------------------------------------------------------

_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                       st.floats(allow_nan=False), st.text(max_size=8))
_json = st.recursive(_json_leaf, lambda c: st.one_of(st.lists(c, max_size=4),
                                                    st.dictionaries(st.text(max_size=6), c,
                                                                    max_size=4)), max_leaves=20)


@st.composite
def safetensors_file(draw: st.DrawFn) -> bytes:
    import json

    entries = {}
    off = 0
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(["F32", "F16", "I64", "BOOL", "U8", "F4", "X"]))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        n = 1
        for s in shape:
            n *= s
        size = n * {"F32": 4, "F16": 2, "I64": 8}.get(dtype, 1)
        entries[f"t{i}"] = {"dtype": dtype, "shape": shape,
                            "data_offsets": [off, off + size + draw(st.sampled_from([0, 0, 1]))]}
        off += size
    if draw(st.booleans()):
        entries["__metadata__"] = draw(st.dictionaries(st.text(max_size=4), _json, max_size=2))
    if draw(st.booleans()):
        entries[draw(st.text(max_size=4))] = draw(_json)
    header = json.dumps(entries).encode()
    if draw(st.booleans()):
        header = _mutate(draw, header)
    return struct.pack("<Q", len(header)) + header + bytes(off + draw(st.integers(0, 2)))


@FUZZ
@given(safetensors_file())
def test_safetensors_headers(data: bytes) -> None:
    r = audit(data, "x.safetensors")
    if r.verdict is Verdict.SAFE:
        import tempfile

        from safetensors import safe_open

        with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
            f.write(data)
            f.flush()
            with safe_open(f.name, "pt") as sf:
                keys = set(sf.keys())
        assert keys == {t.name for t in r.tensors}


# --- npy -------------------------------------------------------------------------------------

@FUZZ
@given(st.text(max_size=120), st.binary(max_size=64))
def test_npy_headers(header: str, body: bytes) -> None:
    h = header.encode("latin1", "replace") + b"\n"
    audit(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + body, "x.npy")


# --- atheris, a short run per target ---------------------------------------------------------

@pytest.mark.slow
def test_atheris_targets_short_run(tmp_path: Path) -> None:
    """Every target runs CKG_FUZZ_RUNS inputs (default 10,000: what 3 s gave here), seed 1,
    from a fresh corpus seeded with the fixtures, the four at once; CKG_FUZZ_SECONDS runs
    each for that long instead."""
    pytest.importorskip("atheris")
    seconds = os.environ.get("CKG_FUZZ_SECONDS")
    runs = 0 if seconds else int(os.environ.get("CKG_FUZZ_RUNS", "10000"))
    budget = ["--seconds", seconds] if seconds else ["--runs", str(runs)]
    r = subprocess.run([sys.executable, str(ROOT / "fuzz" / "run.py"), *budget, "-j", "4",
                        "--work", str(tmp_path)],
                       check=False, capture_output=True, text=True,
                       timeout=300 + 20 * int(seconds or 0), cwd=str(ROOT))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    executed = dict(re.findall(r"^(\w+): (-?\d+) inputs", r.stdout, re.MULTILINE))
    assert set(executed) == {"vm", "zip", "safetensors", "npy"}, r.stdout
    for target, n in executed.items():   # each target really ran (libFuzzer's own count)
        assert int(n) >= max(runs, 1), (target, r.stdout)
