"""Differential proof against the loader: SAFE implies torch.load(weights_only=True,
mmap=True) accepts the file and returns exactly the tensors we reported; a file torch loads has every
non-allowlisted global it names reported; fickling's "overtly malicious" is never SAFE.

Pickles are generated op by op (hypothesis) with inert globals from both sides of the
allowlist, memo patterns and tensor records, wrapped in torch zips built with Python's
zipfile in torch.save's layout. torch runs in ONE long-lived worker subprocess that loads
with weights_only=True (never weights_only=False), so no generated program runs in the
test process. ``CKG_DIFF_EXAMPLES`` raises the case count (default ~1 minute).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptguard
from ckptguard.model import Report, Verdict
from ckptguard.policy import GlobalStatus, Policy, classify_global

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
N = int(os.environ.get("CKG_DIFF_EXAMPLES", "500"))
DIFF = settings(max_examples=N, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CASES = {"count": 0, "safe": 0, "torch_ok": 0}
DATE = (1980, 1, 1, 0, 0, 0)


def torch_zip(pkl: bytes, storages: dict[str, bytes] | None = None, folder: str = "archive",
              order: str = "torch") -> bytes:
    """torch.save's layout: data.pkl, .format_version, .storage_alignment, byteorder,
    data/<key>..., version, .data/serialization_id (all stored)."""
    buf = io.BytesIO()
    recs = [("data.pkl", pkl), (".format_version", b"1"), (".storage_alignment", b"64"),
            ("byteorder", b"little")]
    recs += [(f"data/{k}", v) for k, v in (storages or {}).items()]
    recs += [("version", b"3\n"), (".data/serialization_id", b"0" * 40)]
    if order == "reversed":
        recs = [recs[0], *reversed(recs[1:])]
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in recs:
            z.writestr(zipfile.ZipInfo(f"{folder}/{name}", date_time=DATE), data)
    return buf.getvalue()


# --- torch side ----------------------------------------------------------------------------

# One tensor walker, used in this process and (as source) in the torch worker process.
_WALK_SRC = r"""
def walk(obj, prefix, out, seen):
    if isinstance(obj, torch.Tensor):
        out.append({"name": prefix, "dtype": str(obj.dtype).replace("torch.", ""),
                    "shape": list(obj.shape), "stride": list(obj.stride()),
                    "storage_offset": obj.storage_offset()})
        return
    if id(obj) in seen:
        return
    if isinstance(obj, dict):
        seen.add(id(obj))
        for k, v in obj.items():
            walk(v, k if not prefix else f"{prefix}.{k}", out, seen)
    elif isinstance(obj, (list, tuple)):
        seen.add(id(obj))
        for i, v in enumerate(obj):
            walk(v, str(i) if not prefix else f"{prefix}.{i}", out, seen)
"""
_walk_ns: dict[str, Any] = {"torch": torch}
exec(_WALK_SRC, _walk_ns)
_walk = _walk_ns["walk"]

_WORKER = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
""" + _WALK_SRC + r"""
for line in sys.stdin:
    path = line.strip()
    try:
        obj = torch.load(path, weights_only=True, mmap=True, map_location="cpu")
        out = []
        walk(obj, "", out, set())
        res = {"ok": True, "tensors": out}
    except BaseException as e:  # noqa: BLE001 - report every refusal
        res = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()
"""


class TorchWorker:
    def __init__(self) -> None:
        self.p = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def load(self, path: str) -> dict[str, Any]:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(path + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:  # the worker died (a crash in torch): restart, report as refusal
            self.close()
            self.__init__()  # type: ignore[misc]
            return {"ok": False, "error": "worker died"}
        return json.loads(line)

    def close(self) -> None:
        # every reply has been read: end it now, not through torch's ~0.35 s teardown
        self.p.kill()
        self.p.wait(timeout=30)
        for pipe in (self.p.stdin, self.p.stdout):
            if pipe:
                with contextlib.suppress(OSError):
                    pipe.close()


@pytest.fixture(scope="module")
def worker() -> Any:
    w = TorchWorker()
    yield w
    w.close()
    print(f"\nDIFFERENTIAL cases={CASES['count']} safe={CASES['safe']} "
          f"torch_loaded={CASES['torch_ok']}")


def ours(r: Report) -> list[dict[str, Any]]:
    return sorted(({"name": t.name, "dtype": t.dtype, "shape": list(t.shape),
                    "stride": list(t.stride or ()), "storage_offset": t.storage_offset}
                   for t in r.tensors), key=lambda d: (d["name"], d["storage_offset"]))


def compare_with_torch_inprocess(data: bytes, r: Report) -> None:
    """For files we called SAFE only (they passed the audit): load in this process."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    if _has_non_strided(obj, set()):
        # sparse (COO/CSR/...) layouts have no strides and their component records are
        # named differently; torch accepting the file is what this property can check.
        # Their structure is compared by tests/test_tensor_invariants.py's differential.
        return
    out: list[dict[str, Any]] = []
    _walk(obj, "", out, set())
    assert sorted(out, key=lambda d: (d["name"], d["storage_offset"])) == ours(r)


def _has_non_strided(obj: Any, seen: set[int]) -> bool:
    if isinstance(obj, torch.Tensor):
        return obj.layout != torch.strided
    if id(obj) in seen:
        return False
    seen.add(id(obj))
    if isinstance(obj, dict):
        return any(_has_non_strided(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_non_strided(v, seen) for v in obj)
    return False


# --- pickle programs, op by op -------------------------------------------------------------

DTYPES = [("FloatStorage", 4, "float32"), ("LongStorage", 8, "int64"),
          ("HalfStorage", 2, "float16"), ("ByteStorage", 1, "uint8"),
          ("BoolStorage", 1, "bool"), ("BFloat16Storage", 2, "bfloat16")]
# Inert globals from both sides of the allowlist (never code-execution primitives).
OUTSIDE = [("argparse", "Namespace"), ("collections", "defaultdict"), ("builtins", "dict"),
           ("collections", "Counter"), ("fractions", "Fraction"), ("decimal", "Decimal"),
           ("datetime", "timedelta"), ("builtins", "complex")]


class Prog:
    def __init__(self, proto: int) -> None:
        self.b = bytearray(b"\x80" + bytes([proto]))
        self.proto = proto
        self.memo = 0
        self.globals: list[str] = []

    def op(self, b: bytes) -> None:
        self.b += b

    def s(self, text: str) -> None:
        e = text.encode()
        self.op((b"\x8c" + bytes([len(e)]) if self.proto >= 4 and len(e) < 256 else
                 b"X" + struct.pack("<I", len(e))) + e)

    def put(self) -> int:
        i = self.memo
        self.memo += 1
        if self.proto >= 4:
            self.op(b"\x94")
        else:
            self.op(b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i))
        return i

    def get(self, i: int) -> None:
        self.op(b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i))

    def glob(self, module: str, name: str, how: str) -> None:
        self.globals.append(f"{module}.{name}")
        if how == "stack" and self.proto >= 4:
            self.s(module)
            self.s(name)
            self.op(b"\x93")
        else:
            self.op(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def int_(self, v: int) -> None:
        if 0 <= v < 256:
            self.op(b"K" + bytes([v]))
        elif 0 <= v < 65536:
            self.op(b"M" + struct.pack("<H", v))
        else:
            self.op(b"J" + struct.pack("<i", v))

    def ints(self, vs: list[int]) -> None:
        if len(vs) <= 3:
            for v in vs:
                self.int_(v)
            self.op({0: b")", 1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(vs)])
        else:
            self.op(b"(")
            for v in vs:
                self.int_(v)
            self.op(b"t")


@st.composite
def tensor_case(draw: st.DrawFn) -> tuple[bytes, dict[str, bytes], list[str], str]:
    """A state dict of tensors (views, shared storages, odd strides) plus optional extras."""
    proto = draw(st.sampled_from([2, 2, 2, 3, 4, 5]))
    p = Prog(proto)
    storages: dict[str, bytes] = {}
    sto_meta: dict[str, tuple[str, int, int]] = {}
    kind = draw(st.sampled_from(["dict", "dict", "ordered", "list"]))
    if kind == "ordered":
        p.glob("collections", "OrderedDict", draw(st.sampled_from(["global", "stack"])))
        p.op(b")R")
    else:
        p.op(b"}" if kind == "dict" else b"]")
    p.put()
    rebuild_memo: int | None = None
    n = draw(st.integers(0, 4))
    p.op(b"(")
    for t in range(n):
        if kind != "list":
            p.s(draw(st.sampled_from([f"w{t}", f"layer.{t}.weight", f"b{t}", "", "x"])))
        extra_kind = draw(st.integers(0, 9))
        if extra_kind == 0:  # a plain value, not a tensor
            p.int_(draw(st.integers(0, 70000)))
            continue
        if extra_kind == 1:  # a global outside the allowlist, called (inert)
            mod, name = draw(st.sampled_from(OUTSIDE))
            p.glob(mod, name, "global")
            p.op(b")R")
            continue
        if rebuild_memo is not None and draw(st.booleans()):
            p.get(rebuild_memo)
        else:
            p.glob("torch._utils", draw(st.sampled_from(["_rebuild_tensor_v2",
                                                         "_rebuild_tensor"])), "global")
            rebuild_memo = p.put()
        is_v2 = p.globals[-1].endswith("_v2") if rebuild_memo is not None else True
        # storage: new or shared
        if sto_meta and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(sto_meta)))
            sname, isz, numel = sto_meta[key]
        else:
            key = str(len(sto_meta))
            sname, isz, _dt = draw(st.sampled_from(DTYPES))
            numel = draw(st.integers(0, 24))
            if draw(st.integers(0, 15)) == 0:
                numel += draw(st.sampled_from([-1, 1]))  # storage size lie
                numel = max(numel, 0)
                storages[key] = bytes(max(0, numel - 1) * isz)
            else:
                storages[key] = bytes(numel * isz)
            sto_meta[key] = (sname, isz, numel)
        ndim = draw(st.integers(0, 3))
        shape = [draw(st.integers(0, 4)) for _ in range(ndim)]
        if draw(st.booleans()):  # contiguous
            stride, acc = [], 1
            for s in reversed(shape):
                stride.insert(0, acc)
                acc *= max(s, 1)
        else:
            stride = [draw(st.integers(0, 6)) for _ in range(ndim)]
        offset = draw(st.integers(0, 6))
        p.op(b"(")
        p.op(b"(")
        p.s("storage")
        p.glob("torch", sname, "global")
        p.s(key)
        p.s("cpu")
        p.int_(numel)
        p.op(b"tQ")
        p.int_(offset)
        p.ints(shape)
        p.ints(stride)
        if is_v2:
            p.op(b"\x88" if draw(st.integers(0, 5)) == 0 else b"\x89")
            p.glob("collections", "OrderedDict", "global")
            p.op(b")R")
        p.op(b"tR")
        p.put()
    p.op(b"u" if kind != "list" else b"e")
    if draw(st.integers(0, 7)) == 0:  # BUILD / trailing odd forms
        p.op(draw(st.sampled_from([b"N.", b"0.", b"\x85."])))
    else:
        p.op(b".")
    return bytes(p.b), storages, p.globals, kind


POLICY = Policy()


def _check(worker: Any, data: bytes, globals_used: list[str], tmp: Path) -> tuple[Report, dict]:
    path = tmp / "case.pt"
    path.write_bytes(data)
    r = ckptguard.scan(path)
    assert not r.problems, r.problems
    t = worker.load(str(path))
    CASES["count"] += 1
    CASES["safe"] += r.verdict is Verdict.SAFE
    CASES["torch_ok"] += bool(t["ok"])
    if r.verdict is Verdict.SAFE:
        assert t["ok"], f"SAFE but torch refuses: {t.get('error')}"
        theirs = sorted(t["tensors"], key=lambda d: (d["name"], d["storage_offset"]))
        assert theirs == ours(r), (theirs, ours(r))
    if t["ok"]:
        reported = {f.evidence_dict.get("global") for f in r.all_findings()}
        for g in globals_used:
            if classify_global(g, POLICY).status is not GlobalStatus.ALLOW:
                assert g in reported, f"torch loaded {g} and we did not report it"
    return r, t


@DIFF
@given(tensor_case(), st.sampled_from(["archive", "model", "a"]),
       st.sampled_from(["torch", "reversed"]))
@pytest.mark.slow
def test_generated_torch_zips(worker: Any, case: tuple[bytes, dict[str, bytes], list[str], str],
                              folder: str, order: str) -> None:
    pkl, storages, globals_used, _kind = case
    with tempfile.TemporaryDirectory() as d:
        _check(worker, torch_zip(pkl, storages, folder, order), globals_used, Path(d))


@pytest.mark.slow
@DIFF
@given(tensor_case(), st.data())
def test_mutated_torch_zips(worker: Any, case: tuple[bytes, dict[str, bytes], list[str], str],
                            data: st.DataObject) -> None:
    """Byte-level mutations of the pickle (and of the archive): SAFE must still mean torch
    loads the same tensors."""
    pkl, storages, globals_used, _kind = case
    b = bytearray(pkl)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, max(0, len(b) - 1)))
        op = data.draw(st.integers(0, 2))
        if op == 0 and b:
            b[i] = data.draw(st.integers(0, 255))
        elif op == 1:
            del b[i : i + data.draw(st.integers(1, 4))]
        else:
            b[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    blob = bytearray(torch_zip(bytes(b), storages))
    if data.draw(st.integers(0, 3)) == 0 and blob:
        j = data.draw(st.integers(0, len(blob) - 1))
        blob[j] ^= data.draw(st.integers(1, 255))
    with tempfile.TemporaryDirectory() as d:
        _check(worker, bytes(blob), globals_used, Path(d))


def test_torch_save_roundtrip(worker: Any, tmp_path: Path) -> None:
    """Real torch.save output of varied structures: SAFE and identical to torch's view."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    objs = [
        {"w": base, "v": base[1:, ::2], "t": base.t(), "i": torch.arange(5)},
        {"layers": [{"w": torch.zeros(2, 2, dtype=torch.float16)}, {"b": torch.ones(3)}]},
        {"shared": base, "alias": base, "s": torch.tensor(3.0), "e": torch.empty(0, 3)},
        [torch.ones(2, dtype=torch.bool), torch.ones(1, dtype=torch.bfloat16), 7, "x"],
    ]
    for i, obj in enumerate(objs):
        p = tmp_path / f"o{i}.pt"
        torch.save(obj, p)
        r, t = _check(worker, p.read_bytes(), [], tmp_path)
        assert r.verdict is Verdict.SAFE and t["ok"], (i, sorted(r.rule_ids()))


# --- fickling --------------------------------------------------------------------------------

def _fickling_overtly_malicious(data: bytes) -> bool | None:
    try:
        from fickling.analysis import Severity, check_safety
        from fickling.fickle import Pickled
    except ImportError:
        return None
    try:
        res = check_safety(Pickled.load(data))
    except Exception:
        return None
    return res.severity >= Severity.OVERTLY_MALICIOUS


def test_fickling_overtly_malicious_never_safe() -> None:
    pytest.importorskip("fickling")
    checked = flagged = 0
    hostile = sorted((ROOT / "fixtures" / "hostile").glob("*"))
    for p in hostile:
        if p.suffix not in (".pkl", ".pt", ".npy", ".json", ".safetensors") or not p.is_file():
            continue
        data = p.read_bytes()
        if data.startswith(b"PK"):
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as z:
                    pk = [n for n in z.namelist() if n.endswith(".pkl")]
                    data = z.read(pk[0]) if pk else b""
            except Exception:
                continue
        verdict = _fickling_overtly_malicious(data)
        if verdict is None:
            continue
        checked += 1
        if verdict:
            flagged += 1
            assert ckptguard.scan(p).verdict is not Verdict.SAFE, p.name
    print(f"\nFICKLING checked={checked} overtly_malicious={flagged}")
    assert checked > 0 and flagged > 0, (checked, flagged)


# Code-execution names fickling grades (only ever scanned here, never loaded).
FICKLING_CALLS = [("builtins", "exec"), ("builtins", "eval"), ("webbrowser", "open"),
                  ("posix", "system"), ("subprocess", "Popen")]


@st.composite
def tensor_case_with_call(draw: st.DrawFn) -> tuple[bytes, dict[str, bytes]]:
    """A tensor_case program that, in about half the cases, first calls a code-execution
    global on a string and POPs the result (memo indices unchanged)."""
    pkl, storages, _g, _k = draw(tensor_case())
    if draw(st.booleans()):
        mod, name = draw(st.sampled_from(FICKLING_CALLS))
        call = b"c" + mod.encode() + b"\n" + name.encode() + b"\n(X\x01\x00\x00\x00xtR0"
        pkl = pkl[:2] + call + pkl[2:]
    return pkl, storages


def test_fickling_on_generated(tmp_path: Path) -> None:
    """Whatever fickling calls overtly malicious among generated programs is never SAFE;
    the property's condition must hold for some of them (else it tested nothing)."""
    pytest.importorskip("fickling")
    seen = {"cases": 0, "flagged": 0}

    @settings(max_examples=max(50, N // 3), deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(tensor_case_with_call())
    def prop(case: tuple[bytes, dict[str, bytes]]) -> None:
        pkl, storages = case
        seen["cases"] += 1
        if _fickling_overtly_malicious(pkl):
            seen["flagged"] += 1
            p = tmp_path / "c.pt"
            p.write_bytes(torch_zip(pkl, storages))
            assert ckptguard.scan(p).verdict is not Verdict.SAFE, pkl[:200]

    prop()
    print(f"\nFICKLING generated={seen['cases']} overtly_malicious={seen['flagged']}")
    assert seen["flagged"] > 0, seen


# --- regressions: discrepancies the differential test found --------------------------------

_V2 = b"ctorch._utils\n_rebuild_tensor_v2\n"
_STO = b"((X\x07\x00\x00\x00storagectorch\n%sStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQK\x00))"
_OD = b"ccollections\nOrderedDict\n)R"
REGRESSIONS = {
    # OrderedDict SETITEMS repeating a key: the loaded dict keeps the last value only; we
    # reported the overwritten tensor too.
    "ordereddict_repeated_key": b"\x80\x02" + _OD + b"q\x00(X\x00\x00\x00\x00" + _V2 + b"q\x01"
    + (_STO % b"Float") + b"\x88" + _OD + b"tRq\x02X\x00\x00\x00\x00K\x00u.",
    # requires_grad=True on an int64 tensor: torch raises, we said SAFE.
    "requires_grad_int_tensor": b"\x80\x02}q\x00(X\x02\x00\x00\x00w0" + _V2 + b"q\x01"
    + (_STO % b"Long") + b"\x88" + _OD + b"tRq\x02u.",
    # _rebuild_tensor_v2 with 4 arguments: torch raises TypeError, we said SAFE.
    "rebuild_v2_short_arity": b"\x80\x02}q\x00(X\x02\x00\x00\x00w1" + _V2 + b"q\x01"
    + (_STO % b"Float") + b"tRq\x03u.",
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_differential_regressions(worker: Any, tmp_path: Path, name: str) -> None:
    r, t = _check(worker, torch_zip(REGRESSIONS[name], {"0": bytes(4)}), [], tmp_path)
    if name == "ordereddict_repeated_key":
        assert t["ok"] and t["tensors"] == [] and ours(r) == []
    else:
        assert not t["ok"] and r.verdict is not Verdict.SAFE and "CKG408" in r.rule_ids()


# --- archive-level mutations: what torch's reader refuses must not be SAFE -------------------

VERSIONS = [b"3\n", b"3", b"1", b"10", b"0", b"11", b"-1", b" 3abc", b"", b"x",
            b"99999999999999999999999", b"\x003", b"\xef\xbc\x93"]


def _patch_central_size(blob: bytes, member: str, delta: int) -> bytes:
    """Change a member's uncompressed size in the central directory only."""
    b = bytearray(blob)
    i = b.rfind(b"PK\x01\x02")
    while i >= 0:
        nlen = int.from_bytes(b[i + 28 : i + 30], "little")
        if b[i + 46 : i + 46 + nlen] == member.encode():
            usize = int.from_bytes(b[i + 24 : i + 28], "little")
            b[i + 24 : i + 28] = (usize + delta).to_bytes(4, "little")
            return bytes(b)
        i = b.rfind(b"PK\x01\x02", 0, i)
    raise AssertionError(member)


@st.composite
def archive_case(draw: st.DrawFn) -> bytes:
    """A benign torch.save-layout archive bent at the archive level: version records (which
    one, order, value), long names, members outside the folder, a TorchScript marker,
    stored members whose sizes disagree."""
    pkl = (b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02"
           b"((X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05"
           b"X\x03\x00\x00\x00cpuq\x06K\x02tq\x07QK\x00K\x02\x85K\x01\x85\x89ccollections\n"
           b"OrderedDict\n)Rq\x08tq\tRq\ns.")
    folder = draw(st.sampled_from(["archive", "m", "a" * draw(st.sampled_from([8, 505, 520]))]))
    recs: list[tuple[str, bytes]] = [("data.pkl", pkl), (".format_version", b"1"),
                                     (".storage_alignment", b"64"), ("byteorder", b"little"),
                                     ("data/0", struct.pack("<2f", 1.0, 2.0))]
    version = draw(st.sampled_from(VERSIONS))
    where = draw(st.sampled_from(["version", ".data/version", "both", "both-reversed",
                                  "none"]))
    other = draw(st.sampled_from(VERSIONS))
    if where in ("version", "both"):
        recs.append(("version", version))
    if where in ("both", "both-reversed", ".data/version"):
        recs.append((".data/version", other if where != ".data/version" else version))
    if where == "both-reversed":
        recs.append(("version", version))
    extra = draw(st.sampled_from(["", "", "long", "outside", "constants"]))
    names = [f"{folder}/{n}" for n, _ in recs]
    blobs = [d for _, d in recs]
    if extra == "long":
        names.append(f"{folder}/" + "x" * draw(st.integers(490, 530)))
        blobs.append(b"hi")
    elif extra == "outside":
        names.append("other/notes.txt")
        blobs.append(b"hi")
    elif extra == "constants":
        names.append(f"{folder}/constants.pkl")
        blobs.append(b"\x80\x02).")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in zip(names, blobs, strict=True):
            z.writestr(zipfile.ZipInfo(name, date_time=DATE), data)
    blob = buf.getvalue()
    if draw(st.integers(0, 4)) == 0:
        blob = _patch_central_size(blob, draw(st.sampled_from(names)),
                                   draw(st.sampled_from([-1, 1, 7])))
    return blob


@DIFF
@given(archive_case())
def test_archive_mutations_torch_agrees(worker: Any, blob: bytes) -> None:
    """Every SAFE verdict on these archives is followed by torch.load(weights_only=True,
    mmap=True) succeeding with the audited records (``_check``)."""
    with tempfile.TemporaryDirectory() as d:
        _check(worker, blob, [], Path(d))


@pytest.mark.parametrize(("version", "data_version", "safe"), [
    (b"3\n", None, True), (b"10", None, True), (b"0", None, False), (b"11", None, False),
    (b"0", b"3", True), (b"3", b"0", False), (None, b"3", True), (None, None, False)])
def test_version_records_as_torch_reads_them(worker: Any, tmp_path: Path, version: bytes | None,
                                             data_version: bytes | None, safe: bool) -> None:
    """torch reads .data/version when present, else version, and accepts 1..10."""
    buf = io.BytesIO()
    base = zipfile.ZipFile(io.BytesIO(torch_zip(REGRESSIONS["ordereddict_repeated_key"],
                                                {"0": bytes(4)})))
    with zipfile.ZipFile(buf, "w") as z:
        for info in base.infolist():
            if info.filename.endswith("/version"):
                continue
            z.writestr(info, base.read(info))
        if version is not None:
            z.writestr(zipfile.ZipInfo("archive/version", date_time=DATE), version)
        if data_version is not None:
            z.writestr(zipfile.ZipInfo("archive/.data/version", date_time=DATE), data_version)
    r, t = _check(worker, buf.getvalue(), [], tmp_path)
    assert t["ok"] is safe, t
    assert (r.verdict is Verdict.SAFE) is safe, sorted(r.rule_ids())
    if not safe:
        assert "CKG311" in r.rule_ids()
