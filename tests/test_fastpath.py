"""The fast path proves SAFE or declines; when it accepts, its result is the VM's.

Differential, both ways:
- every fixture file: the engine with the fast path and the engine with the VM only give
  the same verdict, rule IDs, tensor records and metadata;
- >= 10,000 generated ``data.pkl`` programs (random benign state dicts written by
  ``torch.save``, and byte/opcode mutations of them, some splicing in a dangerous
  global): wherever the fast path accepts, the VM finds nothing, reaches STOP and names
  the same tensors with the same records; wherever it declines, nothing was changed.
"""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path
from typing import Any

import pytest
from ckg_loader_helpers import random_checkpoint

from ckptguard.analysis import engine, fastpath, torchfile
from ckptguard.analysis.vm import PickleMode, StorageCatalog, audit_pickle
from ckptguard.context import AuditContext, Source
from ckptguard.model import Verdict
from ckptguard.policy import DEFAULT_LIMITS, Policy

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = sorted(p for p in (ROOT / "fixtures").rglob("*") if p.is_file() and
                  p.suffix not in (".json", ".md", ".py"))


def _audit(path: Path, fast: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(torchfile, "try_fast", lambda *a, **k: None)
        return engine.audit_file(str(path), policy=Policy(), limits=DEFAULT_LIMITS)


def _key(r: Any) -> Any:
    return (r.verdict, r.format, sorted(f.rule_id for f in r.findings), r.tensors,
            r.metadata, r.members)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: str(p.relative_to(ROOT / "fixtures")))
def test_every_fixture_same_report(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _audit(path, True, monkeypatch)
    slow = _audit(path, False, monkeypatch)
    assert _key(fast) == _key(slow)


def test_fast_path_accepts_the_benign_fixtures() -> None:
    """The fast path is not vacuous: it proves most benign fixtures itself."""
    accepted = []
    for p in sorted((ROOT / "fixtures" / "benign").glob("*.pt")):
        if not zipfile.is_zipfile(p):
            continue
        data, cat = _data_pkl(p.read_bytes())
        if data is None:
            continue
        if fastpath.try_fast(_ctx(), data, cat) is not None:
            accepted.append(p.name)
    assert {"linear.pt", "optimizer_adam.pt", "shared_storage.pt", "views.pt",
            "parameters.pt", "training_checkpoint.pt"} <= set(accepted)


# --- generated programs -----------------------------------------------------------------------

def _ctx() -> AuditContext:
    return AuditContext("<gen>", Source.from_bytes(b""), Policy(), DEFAULT_LIMITS)


def _data_pkl(blob: bytes) -> tuple[bytes | None, StorageCatalog]:
    cat = StorageCatalog()
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        data = None
        for info in z.infolist():
            rel = info.filename.split("/", 1)[1]
            if rel == "data.pkl":
                data = z.read(info)
            elif rel.startswith("data/"):
                cat.records[rel[5:]] = (info.filename, info.header_offset + 64, info.file_size)
    return data, cat


_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
           torch.int32, torch.int8, torch.uint8, torch.bool, torch.complex64]


def _tensor(rng: random.Random) -> Any:
    dt = rng.choice(_DTYPES)
    shape = tuple(rng.randint(0, 4) for _ in range(rng.randint(0, 3)))
    t = torch.zeros(shape, dtype=dt)
    r = rng.random()
    if r < 0.15 and t.dim() >= 2:
        t = t.transpose(0, 1)  # non-contiguous stride
    elif r < 0.3 and t.numel() > 1:
        t = t.reshape(-1)[1:]  # storage offset
    if dt.is_floating_point and rng.random() < 0.3:
        t.requires_grad_(True)
        if rng.random() < 0.5:
            return torch.nn.Parameter(t.detach(), requires_grad=rng.random() < 0.5)
    return t


def _value(rng: random.Random, depth: int, pool: list[Any]) -> Any:
    return random_checkpoint(rng, depth, pool, _tensor)


def _program(rng: random.Random) -> bytes:
    pool: list[Any] = []
    obj = _value(rng, rng.randint(1, 4), pool)
    if rng.random() < 0.2 and pool:  # a view of a shared storage
        base = torch.arange(12, dtype=torch.float32)
        obj = {"a": base, "b": base[2:8].view(2, 3), "c": base[::2], "d": obj}
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


_EVIL = [b"cos\nsystem\n", b"cbuiltins\neval\n", b"ctorch._utils\n_rebuild_qtensor\n",
         b"ccollections\nCounter\n", b"c__ckptguard_fast__\nD\n", b"(", b"t", b"0", b"2",
         b"\x94", b"\x95" + b"\x00" * 8, b"\x8c\x03abc", b"}", b"]", b"e", b"u", b"s", b"b",
         b"R", b"Q", b"\x85", b"N", b"h\x00", b"r\xff\xff\xff\x7f", b"X\x05\x00\x00\x00hello"]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if len(b) < 2:
            break
        kind = rng.random()
        i = rng.randrange(len(b))
        if kind < 0.35:
            b[i] = rng.randrange(256)
        elif kind < 0.6:
            b[i:i] = rng.choice(_EVIL)
        elif kind < 0.8:
            del b[i : i + rng.randint(1, 4)]
        else:
            j = rng.randrange(len(b))
            b[i], b[j] = b[j], b[i]
    return bytes(b)


def _same_as_vm(data: bytes, cat: StorageCatalog) -> str:
    """'accept' / 'decline' (of try_fast: the native core first where it is built), after
    checking the acceptance against the VM; the Python fast path alone is checked too."""
    if fastpath._core() is not None:
        _same_as_vm_with(fastpath._try_python, data, cat)
    return _same_as_vm_with(fastpath.try_fast, data, cat)


def _same_as_vm_with(try_fast: Any, data: bytes, cat: StorageCatalog) -> str:
    ctx_f = _ctx()
    cat_f = StorageCatalog(records=dict(cat.records))
    fast = try_fast(ctx_f, data, cat_f)
    assert not ctx_f.findings
    if fast is None:
        assert not cat_f.seen
        return "decline"
    ctx_v = _ctx()
    cat_v = StorageCatalog(records=dict(cat.records))
    res = audit_pickle(ctx_v, data, member="archive/data.pkl", mode=PickleMode.TORCH_ZIP,
                       storages=cat_v)
    assert [f.rule_id for f in ctx_v.findings] == [], "accepted a program the VM flags"
    assert res.complete and res.end == len(data) == fast.result.end
    assert {g.full for g in res.globals} == {g.full for g in fast.result.globals}
    assert set(cat_v.seen) == set(cat_f.seen)
    got = [(n, r.storage and r.storage.key, r.storage_offset, r.shape, r.stride, r.dtype,
            r.requires_grad, r.kind) for n, r in fast.result.tensors]
    want = [(n, r.storage and r.storage.key, r.storage_offset, r.shape, r.stride, r.dtype,
             r.requires_grad, r.kind) for n, r in res.tensors]
    assert got == want
    return "accept"


N_PROGRAMS = 2000
N_MUTANTS = 5


@pytest.mark.slow
def test_generated_programs_fast_equals_vm() -> None:
    rng = random.Random(20261128)
    counts = {"accept": 0, "decline": 0}
    for _ in range(N_PROGRAMS):
        data, cat = _data_pkl(_program(rng))
        assert data is not None
        counts[_same_as_vm(data, cat)] += 1
        for _ in range(N_MUTANTS):
            counts[_same_as_vm(_mutate(rng, data), cat)] += 1
    total = N_PROGRAMS * (1 + N_MUTANTS)
    assert total >= 12_000
    # every unmutated benign program of these shapes is proven by the fast path itself
    assert counts["accept"] >= N_PROGRAMS
    assert counts["decline"] > 0


def test_dangerous_global_declines_and_vm_blocks(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A state dict with os.system spliced in: the fast path declines; the report is the
    VM's (UNSAFE, CKG101)."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    data, cat = _data_pkl(buf.getvalue())
    assert data is not None
    evil = data[:2] + b"cos\nsystem\nX\x04\x00\x00\x00true\x85R0" + data[2:]
    assert fastpath.try_fast(_ctx(), evil, StorageCatalog(records=dict(cat.records))) is None
    ctx = _ctx()
    audit_pickle(ctx, evil, mode=PickleMode.TORCH_ZIP,
                 storages=StorageCatalog(records=dict(cat.records)))
    assert "CKG101" in {f.rule_id for f in ctx.findings}


@pytest.mark.parametrize("tail", [b"(", b"K\x01", b"(K\x01"])
def test_leftovers_at_stop_decline(tail: bytes) -> None:
    """MARKs or values left on the stack at STOP (the VM's CKG204) are never accepted."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    data, cat = _data_pkl(buf.getvalue())
    assert data is not None
    prog = data[:2] + tail + data[2:]
    assert fastpath.try_fast(_ctx(), prog, StorageCatalog(records=dict(cat.records))) is None
    ctx = _ctx()
    audit_pickle(ctx, prog, mode=PickleMode.TORCH_ZIP,
                 storages=StorageCatalog(records=dict(cat.records)))
    assert "CKG204" in {f.rule_id for f in ctx.findings}


def test_deep_tuple_key_never_reaches_the_c_hash() -> None:
    """A dict key nested 200,000 tuples deep would overflow CPython's recursive tuple hash
    inside the C unpickler: our dicts check the key's type first, so it declines."""
    prog = b"\x80\x02}(K\x00" + b"\x85" * 200_000 + b"K\x01u."
    assert fastpath.try_fast(_ctx(), prog, StorageCatalog()) is None


def test_setitem_on_a_list_declines() -> None:
    """C's SETITEM on a list assigns an index; the VM calls it malformed: decline."""
    prog = b"\x80\x02]K\x05aK\x00K\x07s."
    assert fastpath.try_fast(_ctx(), prog, StorageCatalog()) is None
    ctx = _ctx()
    audit_pickle(ctx, prog, mode=PickleMode.TORCH_ZIP, storages=StorageCatalog())
    assert "CKG202" in {f.rule_id for f in ctx.findings}


def test_accepted_file_scans_safe_through_the_engine(tmp_path: Path) -> None:
    p = tmp_path / "m.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), p)
    r = engine.audit_file(str(p), policy=Policy(), limits=DEFAULT_LIMITS)
    assert r.verdict is Verdict.SAFE and not r.findings
    assert [t.name for t in r.tensors] == ["weight", "bias"]


def test_state_filled_after_build_is_checked_again() -> None:
    """OrderedDict state is checked at BUILD and again after the run: a state dict the
    program fills with a tensor afterwards (the VM names it) makes the fast path decline."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    data, cat = _data_pkl(buf.getvalue())
    assert data is not None
    assert fastpath.try_fast(_ctx(), data, StorageCatalog(records=dict(cat.records))) \
        is not None
    # OrderedDict() ; BUILD with a memoised empty state ; later: state["t"] = <tensor w>
    body = data[2:-1]  # {"w": tensor}; torch.save memoises the tensor as 13
    assert body.endswith(b"Rq\rs")
    prog = (data[:2] + b"(ccollections\nOrderedDict\n)R}r\x00\x00\x10\x00b" + body +
            b"j\x00\x00\x10\x00X\x01\x00\x00\x00th\rst.")
    ctx = _ctx()
    res = audit_pickle(ctx, prog, mode=PickleMode.TORCH_ZIP,
                       storages=StorageCatalog(records=dict(cat.records)))
    assert res.complete and not ctx.findings
    assert "0.t" in {name for name, _ in res.tensors}  # the VM names the late tensor
    assert fastpath.try_fast(_ctx(), prog, StorageCatalog(records=dict(cat.records))) is None


@pytest.mark.parametrize("key", [b"J\xff\xff\xff\xff",  # -1: hash(-1) == hash(-2)
                                 b"\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x20"])  # 2**61
def test_int_keys_that_could_collide_decline(key: bytes) -> None:
    """Int keys hash to themselves modulo 2**61 - 1: a program could pick keys that all
    collide and make C's dict insert quadratic. Only 0 <= key < 2**60 is accepted."""
    assert fastpath.try_fast(_ctx(), b"\x80\x02}(K\x05N" + key + b"Nu.", StorageCatalog()) is None
    assert fastpath.try_fast(_ctx(), b"\x80\x02}(K\x05NK\x06Nu.", StorageCatalog()) is not None


# --- the fast path's tables, pinned both ways -------------------------------------------------

from ckptguard.analysis import opcodes as O  # noqa: E402
from ckptguard.model import Engine  # noqa: E402

ACCEPTED_OPCODES = {
    "MARK", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE", "EMPTY_DICT", "EMPTY_LIST",
    "SETITEM", "SETITEMS", "APPEND", "APPENDS", "BUILD", "REDUCE", "BINPERSID", "NONE",
    "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "BINUNICODE",
    "GLOBAL", "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET", "PROTO", "STOP",
}


def test_accepted_opcodes_are_weights_only() -> None:
    accepted = {getattr(O, n) for n in ACCEPTED_OPCODES}
    assert accepted <= O.TORCH_WEIGHTS_ONLY


def _with_op(name: str) -> bytes:
    """A tiny program that executes opcode ``name`` once and is otherwise accepted."""
    progs = {
        "MARK": b"(K\x01t", "TUPLE": b"(K\x01t", "TUPLE1": b"K\x01\x85", "TUPLE2": b"K\x01K\x02\x86",
        "TUPLE3": b"K\x01K\x02K\x03\x87", "EMPTY_TUPLE": b")", "EMPTY_DICT": b"}",
        "EMPTY_LIST": b"]", "SETITEM": b"}K\x01Ns", "SETITEMS": b"}(K\x01Nu",
        "APPEND": b"]Na", "APPENDS": b"](Ne", "BUILD": b"ccollections\nOrderedDict\n)R}b",
        "REDUCE": b"ccollections\nOrderedDict\n)R", "BINPERSID": None, "NONE": b"N",
        "NEWTRUE": b"\x88", "NEWFALSE": b"\x89", "BININT": b"J\x01\x00\x00\x00",
        "BININT1": b"K\x01", "BININT2": b"M\x01\x01", "LONG1": b"\x8a\x01\x05",
        "BINFLOAT": b"G" + b"\x00" * 8, "BINUNICODE": b"X\x01\x00\x00\x00a",
        "GLOBAL": b"ccollections\nOrderedDict\n", "BINPUT": b"Nq\x00",
        "LONG_BINPUT": b"Nr\x00\x00\x00\x00", "BINGET": b"Nq\x00h\x00\x86",
        "LONG_BINGET": b"Nq\x00j\x00\x00\x00\x00\x86", "PROTO": b"N", "STOP": b"N",
    }
    body = progs[name]
    assert body is not None
    return b"\x80\x02" + body + b"."


@pytest.mark.parametrize("name", sorted(ACCEPTED_OPCODES - {"BINPERSID"}))
def test_each_accepted_opcode_is_accepted(name: str) -> None:
    prog = _with_op(name)
    assert fastpath.try_fast(_ctx(), prog, StorageCatalog()) is not None, name


def test_binpersid_is_accepted() -> None:
    buf = io.BytesIO()
    torch.save(torch.zeros(1), buf)  # a bare tensor: BINPERSID and REDUCE of the rebuild
    data, cat = _data_pkl(buf.getvalue())
    assert data is not None and b"Q" in data
    assert fastpath.try_fast(_ctx(), data, cat) is not None


@pytest.mark.parametrize("op", sorted(set(O.NAMES) - {getattr(O, n) for n in ACCEPTED_OPCODES}))
def test_every_other_opcode_is_outside_the_grammar(op: int) -> None:
    """Any other opcode, whatever its argument (0-9 bytes), is not a token: the program is
    refused before the C unpickler sees it. (Accepted opcodes with such arguments are.)"""
    for k in range(10):
        assert fastpath._rewrite(b"\x80\x02N" + bytes([op]) + b"\x00" * k + b".") is None
    assert fastpath._rewrite(b"\x80\x02NK\x00\x86.") is not None


def test_understood_globals_table() -> None:
    from ckptguard.policy import classify_global

    storages = {f"torch.{n}Storage" for n in (
        "Double", "Float", "Half", "Long", "Int", "Short", "Char", "Byte", "Bool", "BFloat16",
        "ComplexDouble", "ComplexFloat", "QInt8", "QInt32", "QUInt8", "QUInt4x2", "QUInt2x4")}
    expected = {"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                "collections.OrderedDict"} | storages
    understood = set(fastpath._UNDERSTOOD)
    assert understood == expected
    for full in fastpath._UNDERSTOOD:
        assert classify_global(full, Policy()).status.value == "allow", full
    # allowlisted globals outside the table decline (the VM handles them)
    assert classify_global("torch._utils._rebuild_tensor", Policy()).status.value == "allow"
    prog = b"\x80\x02ctorch._utils\n_rebuild_tensor\n."
    assert fastpath.try_fast(_ctx(), prog, StorageCatalog()) is None


def test_engine_values_pinned() -> None:
    assert {e.value for e in Engine} == {"torch", "ckptguard"}
    assert Engine("ckptguard") is Engine.CKPTGUARD and Engine("torch") is Engine.TORCH


# --- what CPython's C unpickler does silently (regressions: the Python path accepted these) ---

def test_build_slot_state_on_a_storage_declines() -> None:
    """BUILD with (None, {"numel": 1000}) on the StorageRef a BINPERSID made: the C
    unpickler sets the slot after persistent_load checked it (the view bound then used the
    forged numel). Declined on both fast paths; the VM reports CKG111."""
    buf = io.BytesIO()
    torch.save(torch.zeros(4), buf)
    data, cat = _data_pkl(buf.getvalue())
    assert data is not None
    i = data.index(b"Q") + 1
    prog = data[:i] + b"N}X\x05\x00\x00\x00numelM\xe8\x03s\x86b" + data[i:]
    for core in (fastpath._try_python, fastpath.try_fast):
        assert core(_ctx(), prog, StorageCatalog(records=dict(cat.records))) is None
    ctx = _ctx()
    audit_pickle(ctx, prog, mode=PickleMode.TORCH_ZIP,
                 storages=StorageCatalog(records=dict(cat.records)))
    assert "CKG111" in {f.rule_id for f in ctx.findings}


@pytest.mark.parametrize("prog", [b"\x80\x02N(u.", b"\x80\x02N(e.", b"\x80\x02K\x01Nb.",
                                  b"\x80\x02)Nb."])
def test_silent_no_ops_decline(prog: bytes) -> None:
    """SETITEMS/APPENDS of nothing on a non-container, BUILD with None on an int or a tuple:
    no-ops for the C unpickler, CKG202 for the VM. Declined on both fast paths."""
    for core in (fastpath._try_python, fastpath.try_fast):
        assert core(_ctx(), prog, StorageCatalog()) is None
    ctx = _ctx()
    audit_pickle(ctx, prog, mode=PickleMode.TORCH_ZIP, storages=StorageCatalog())
    assert "CKG202" in {f.rule_id for f in ctx.findings}


def _shared_meta_level(lvl: int) -> bytes:
    """A dict of 60 keys; below level 1 every value is the same dict of the level below
    (built inline for the first key, then read from the memo)."""
    keys = [b"X\x02\x00\x00\x00" + bytes([65 + i // 26, 97 + i % 26]) for i in range(60)]
    if lvl == 1:
        return b"}q\x01(" + b"".join(k + b"K\x01" for k in keys) + b"u"
    return (b"}q" + bytes([lvl]) + b"(" + keys[0] + _shared_meta_level(lvl - 1) +
            b"".join(k + b"h" + bytes([lvl - 1]) for k in keys[1:]) + b"u")


def test_shared_metadata_dag_is_budgeted() -> None:
    """_metadata four dicts deep, each level's 60 values one shared dict (60**4 = 13M
    visits for a 3 KB program): the check's work budget declines at once."""
    import time

    prog = b"\x80\x02ccollections\nOrderedDict\n)R" + _shared_meta_level(4) + b"b."
    t = time.process_time()
    for core in (fastpath._try_python, fastpath.try_fast):
        assert core(_ctx(), prog, StorageCatalog()) is None
    assert time.process_time() - t < 2.0
    # the same metadata without sharing-blowup (one level) is proven
    ok = b"\x80\x02ccollections\nOrderedDict\n)R" + _shared_meta_level(1) + b"b."
    for core in (fastpath._try_python, fastpath.try_fast):
        assert core(_ctx(), ok, StorageCatalog()) is not None


def test_shared_shape_walks_are_charged() -> None:
    """One memoised 1,000-int shape reused by 100 rebuilds: the VM charges every walk of it
    to max_container_items (200,000 > 100,000: CKG901). Both fast paths charge it too and
    decline (the Python path used to walk it 100 times and prove the file SAFE)."""
    lim = DEFAULT_LIMITS.replace(max_container_items=100_000)
    ctx = AuditContext("<gen>", Source.from_bytes(b""), Policy(), lim)
    cat = StorageCatalog(records={"0": ("a/data/0", 64, 4)})
    shape = b"(" + b"K\x01" * 1000 + b"tr\x00\x00\x01\x00"  # memo slot 65536
    pid = (b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000"
           b"X\x03\x00\x00\x00cpuK\x01tQ")
    one = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"K\x00j\x00\x00\x01\x00"
           b"j\x00\x00\x01\x00\x89ccollections\nOrderedDict\n)RtR")
    prog = b"\x80\x02](" + shape + one * 100 + b"e."
    for core in (fastpath._try_python, fastpath.try_fast):
        assert core(ctx, prog, StorageCatalog(records=dict(cat.records))) is None
    vctx = AuditContext("<gen>", Source.from_bytes(b""), Policy(), lim)
    audit_pickle(vctx, prog, mode=PickleMode.TORCH_ZIP,
                 storages=StorageCatalog(records=dict(cat.records)))
    assert "CKG901" in {f.rule_id for f in vctx.findings}
    # with the default budget the same program is proven, and the VM agrees
    assert fastpath.try_fast(_ctx(), prog, StorageCatalog(records=dict(cat.records))) \
        is not None


def test_native_core_initialises_when_built() -> None:
    """Where picklecore is built, try_fast uses it: the classes it fills in C (StorageRef,
    TensorRecord, FastTensor, FastOrderedDict, TensorInfo) still have the slots it writes.
    A new TensorInfo field must be added to the core too (else its records are left to
    _emit_tensors, correct but slow): pinned here."""
    from dataclasses import fields

    from ckptguard._native import native
    from ckptguard.model import TensorInfo

    assert tuple(f.name for f in fields(TensorInfo)) == fastpath._INFO_FIELDS
    mod = native("picklecore")
    if mod is None:
        pytest.skip("picklecore not built (or CKPTGUARD_PURE=1)")
    assert fastpath._core() is mod
