"""The native core (src/ckptguard/_native/picklecore.c) against the Python fast path and
the VM: three ways, on every fixture and on >= 10,000 generated programs.

- native accepts => the VM (under the same limits) records nothing, reaches STOP, and
  names the same tensors with the same records, globals and storages;
- native and Python both accept => identical results (records, globals, storages, the
  report's TensorInfo records, and the symbolic graph engine="ckptguard" builds from);
- every fixture: the engine with the native core, with ``CKPTGUARD_PURE=1`` and with the
  VM alone gives the same verdict, rule IDs, findings, tensor records and metadata;
- hostile programs (wrong globals, extra opcodes, bad storage ids, huge lengths, deep
  nesting, memo tricks, truncated streams) are declined, and the VM flags them under a
  specific rule.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pytest
from test_fastpath import _data_pkl, _mutate, _program

from ckptguard.analysis import engine, fastpath, torchfile
from ckptguard.analysis.tensors import (
    GRAD_DTYPES,
    LOCATION_PREFIXES,
    STORAGE_DTYPES,
    StorageCatalog,
)
from ckptguard.analysis.vm import PickleMode, audit_pickle
from ckptguard.context import AuditContext, Source
from ckptguard.model import Verdict
from ckptguard.policy import DEFAULT_LIMITS, Limits, Policy

torch = pytest.importorskip("torch")
CORE = fastpath._core()
pytestmark = pytest.mark.skipif(CORE is None, reason="native picklecore not built")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = sorted(p for p in (ROOT / "fixtures").rglob("*") if p.is_file() and
                  p.suffix not in (".json", ".md", ".py"))


def _ctx(limits: Limits = DEFAULT_LIMITS, keep_graph: bool = False) -> AuditContext:
    c = AuditContext("<gen>", Source.from_bytes(b""), Policy(), limits)
    c.keep_graph = keep_graph
    return c


def _native(data: bytes, cat: StorageCatalog, limits: Limits = DEFAULT_LIMITS,
            keep_graph: bool = False) -> tuple[Any, StorageCatalog]:
    c = StorageCatalog(records=dict(cat.records))
    ctx = _ctx(limits, keep_graph)
    r = fastpath._try_native(CORE, ctx, data, c)
    assert not ctx.findings
    if r is None:
        assert not c.seen
    return r, c


def _python(data: bytes, cat: StorageCatalog, limits: Limits = DEFAULT_LIMITS,
            keep_graph: bool = False) -> tuple[Any, StorageCatalog]:
    c = StorageCatalog(records=dict(cat.records))
    ctx = _ctx(limits, keep_graph)
    r = fastpath._try_python(ctx, data, c)
    assert not ctx.findings
    return r, c


def _vm(data: bytes, cat: StorageCatalog, limits: Limits = DEFAULT_LIMITS) -> tuple[Any, Any]:
    ctx = _ctx(limits)
    c = StorageCatalog(records=dict(cat.records))
    res = audit_pickle(ctx, data, member="archive/data.pkl", mode=PickleMode.TORCH_ZIP,
                       storages=c)
    ctx.vm_seen = c.seen  # type: ignore[attr-defined]
    return res, ctx


def _rec(r: Any) -> tuple[Any, ...]:
    """A tensor record without the pickle positions (the VM keeps them, the fast paths
    write 0)."""
    st = r.storage
    s = None if st is None else (st.key, st.dtype, st.itemsize, st.numel, st.location,
                                 st.member, st.data_offset, st.record_size)
    return (s, r.storage_offset, r.shape, r.stride, r.dtype, r.requires_grad, r.kind)


def _emitted(fast: Any, cat: StorageCatalog) -> list[Any]:
    ctx = _ctx()
    torchfile._emit_tensors(ctx, fast.result, cat)
    return list(ctx.tensors)


def _check_native_vs_vm(data: bytes, cat: StorageCatalog, limits: Limits) -> bool:
    """True when native accepted (after checking it against the VM)."""
    nat, ncat = _native(data, cat, limits)
    if nat is None:
        return False
    res, vctx = _vm(data, cat, limits)
    vm_seen = vctx.vm_seen
    assert [f.rule_id for f in vctx.findings] == [], "native accepted a program the VM flags"
    assert res.complete and res.end == len(data) == nat.result.end
    assert {g.full for g in res.globals} == {g.full for g in nat.result.globals}
    assert [(n, _rec(r)) for n, r in res.tensors] == \
        [(n, _rec(r)) for n, r in nat.result.tensors]
    assert list(ncat.seen) == list(nat.storages)
    assert set(ncat.seen) == set(vm_seen)
    assert nat.infos == _emitted(nat, ncat)
    return True


def _check_native_vs_python(data: bytes, cat: StorageCatalog, limits: Limits) -> str:
    nat, ncat = _native(data, cat, limits)
    py, pcat = _python(data, cat, limits)
    if nat is None or py is None:
        return "n" if nat is not None else ("p" if py is not None else "-")
    assert nat.result.tensors == py.result.tensors
    assert [g.full for g in nat.result.globals] == [g.full for g in py.result.globals]
    assert ncat.seen == pcat.seen and list(ncat.seen) == list(pcat.seen)
    assert nat.infos == _emitted(py, pcat)
    assert nat.result.end == py.result.end
    return "both"


# --- the tables ------------------------------------------------------------------------------

def test_tables_pinned_to_the_python_ones() -> None:
    names, storages, locations = CORE.tables()
    assert set(names) == set(fastpath._UNDERSTOOD)
    assert names[:3] == ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                         "collections.OrderedDict")
    for full, (dtype, itemsize, grad) in zip(names[3:], storages, strict=True):
        assert STORAGE_DTYPES[full.rsplit(".", 1)[1]] == (dtype, itemsize), full
        assert bool(grad) == (dtype in GRAD_DTYPES), full
    assert locations == LOCATION_PREFIXES


# --- every fixture, three ways -----------------------------------------------------------------

def _report(path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        if how == "pure":
            m.setenv("CKPTGUARD_PURE", "1")
        elif how == "vm":
            m.setattr(torchfile, "try_fast", lambda *a, **k: None)
        return engine.audit_file(str(path), policy=Policy(), limits=DEFAULT_LIMITS)


def _full(r: Any) -> Any:
    return (r.verdict, r.format, sorted(f.rule_id for f in r.findings), r.findings,
            r.tensors, r.metadata, r.members)


@pytest.mark.slow
@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: str(p.relative_to(ROOT / "fixtures")))
def test_every_fixture_native_pure_vm(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nat = _report(path, "native", monkeypatch)
    assert _full(nat) == _full(_report(path, "pure", monkeypatch))
    assert _full(nat) == _full(_report(path, "vm", monkeypatch))


def test_native_proves_the_benign_fixtures() -> None:
    accepted = []
    for p in sorted((ROOT / "fixtures" / "benign").glob("*.pt")):
        try:
            data, cat = _data_pkl(p.read_bytes())
        except Exception:  # not a zip
            continue
        if data is not None and _native(data, cat)[0] is not None:
            accepted.append(p.name)
    assert {"linear.pt", "optimizer_adam.pt", "shared_storage.pt", "views.pt",
            "parameters.pt", "training_checkpoint.pt"} <= set(accepted)


# --- generated programs -------------------------------------------------------------------------

def _limits(rng: random.Random) -> Limits:
    if rng.random() < 0.85:
        return DEFAULT_LIMITS
    return DEFAULT_LIMITS.replace(
        max_mark_depth=rng.randint(6, 40), max_tensors=rng.randint(0, 12),
        max_container_items=rng.randint(5, 400), max_stack=rng.randint(5, 400),
        max_memo=rng.randint(1, 60))


_HOSTILE = [
    b"cos\nsystem\n", b"cbuiltins\neval\n", b"ctorch._utils\n_rebuild_qtensor\n",
    b"ctorch\nUntypedStorage\n", b"ctorch\n_utils._rebuild_tensor_v2\n", b"\x8c\x03abc",
    b"\x94", b"\x95" + b"\x00" * 8, b"0", b"2", b"(", b"t", b"u", b"e", b"s", b"a", b"b",
    b"R", b"Q", b"N", b")", b"}", b"]", b"\x85", b"\x86", b"\x87", b"\x88", b"\x89",
    b"h\x00", b"h\xff", b"j\xff\xff\xff\x7f", b"q\x00", b"r\xff\xff\x3f\x00",
    b"r\x00\x00\x40\x00", b"X\xff\xff\xff\x7f", b"X\x80\x00\x00\x00",
    b"X\x02\x00\x00\x00\xed\xa0", b"X\x02\x00\x00\x00\xc3\x28", b"\x8a\x09",
    b"\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40", b"J\xff\xff\xff\xff", b"K\x00", b"M\xff\xff",
    b"G" + b"\x7f\xf8" + b"\x00" * 6, b"(" * 50, b"\x85" * 50, b"]" * 30 + b"a" * 29,
    b"N(u", b"N(e", b"K\x01Nb", b"N}X\x05\x00\x00\x00numelM\xe8\x03s\x86b",
]


def _hostile(rng: random.Random, data: bytes) -> bytes:
    """A targeted mutation: splice a hostile token, truncate, or rewrite a storage id."""
    r = rng.random()
    if r < 0.5:
        i = rng.randrange(2, len(data))
        return data[:i] + rng.choice(_HOSTILE) + data[i:]
    if r < 0.65:
        return data[: rng.randrange(len(data))]  # truncated
    if r < 0.85 and b"storage" in data:
        # a storage id with another key, location or size
        i = data.index(b"storage")
        j = data.find(b"X", i + 7)
        if j > 0:
            tail = rng.choice([b"X\x02\x00\x00\x0099", b"X\x03\x00\x00\x00tpu",
                               b"X\x01\x00\x00\x001", b"K\x7f", b"J\xff\xff\xff\xff"])
            return data[:j] + tail + data[j:]
    # a memo trick: re-read a random earlier memo slot somewhere
    i = rng.randrange(2, len(data))
    return data[:i] + b"h" + bytes([rng.randrange(64)]) + data[i:]


N_PROGRAMS = 1200
N_MUTANTS = 8


@pytest.mark.slow
def test_generated_programs_native_python_vm() -> None:
    rng = random.Random(20261129)
    counts: dict[str, int] = {"native": 0, "decline": 0, "n": 0, "p": 0, "both": 0, "-": 0}
    total = 0
    for k in range(N_PROGRAMS):
        data, cat = _data_pkl(_program(rng))
        assert data is not None
        variants = [data] + [(_mutate if j % 2 else _hostile)(rng, data)
                             for j in range(N_MUTANTS)]
        for j, prog in enumerate(variants):
            limits = _limits(rng) if j else DEFAULT_LIMITS
            total += 1
            ok = _check_native_vs_vm(prog, cat, limits)
            counts["native" if ok else "decline"] += 1
            both = _check_native_vs_python(prog, cat, limits)
            counts[both] += 1
            if j == 0:
                # every plain torch.save program the Python path proves, the core proves
                # (both leave ints over 8 bytes, e.g. 10**20, to the VM)
                assert both != "p", "native declined a plain torch.save program"
    assert total >= 10_000
    assert counts["native"] >= N_PROGRAMS and counts["decline"] > 0
    # the Python path accepts what the native core declines only for shapes it does not
    # cover (repeated dict keys, cycles...): rare
    assert counts["p"] < total // 50, counts


# --- the graph for engine="ckptguard" ----------------------------------------------------------

def _same_graph(a: object, b: object) -> None:
    """Same types, items, order, state, hooks marks, records and sharing."""
    pairs: dict[int, int] = {}
    todo = [(a, b)]
    while todo:
        x, y = todo.pop()
        assert type(x) is type(y), (type(x), type(y))
        if type(x) in (str, int, float, bool, type(None)):
            assert x == y or (x != x and y != y)
            continue
        if id(x) in pairs:
            assert pairs[id(x)] == id(y), "sharing differs"
            continue
        pairs[id(x)] = id(y)
        if isinstance(x, dict):
            assert list(x) == list(y)  # type: ignore[call-overload]
            todo.extend(zip(x.values(), y.values(), strict=True))  # type: ignore[attr-defined]
            if type(x) is fastpath.FastOrderedDict:
                assert x.hooks == y.hooks  # type: ignore[attr-defined]
                todo.append((x.state, y.state))  # type: ignore[attr-defined]
        elif isinstance(x, (list, tuple)):
            assert len(x) == len(y)  # type: ignore[arg-type]
            todo.extend(zip(x, y, strict=True))  # type: ignore[call-overload]
        elif type(x) is fastpath.FastTensor:
            assert x.tensor == y.tensor  # type: ignore[attr-defined]
            assert x.func.full == y.func.full  # type: ignore[attr-defined]
            todo.append((x.args, y.args))  # type: ignore[attr-defined]
        else:
            assert x == y, (x, y)


def test_graph_equals_the_python_paths() -> None:
    rng = random.Random(7)
    n = 0
    for _ in range(300):
        data, cat = _data_pkl(_program(rng))
        assert data is not None
        nat, _ = _native(data, cat, keep_graph=True)
        py, _ = _python(data, cat, keep_graph=True)
        assert nat is not None or py is None
        if nat is None or py is None:
            continue
        _same_graph(nat.root, py.root)
        assert nat.result.root is nat.root
        n += 1
    assert n >= 200


# --- hostile programs, one by one ---------------------------------------------------------------

def _one_tensor() -> tuple[bytes, StorageCatalog]:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buf)
    data, cat = _data_pkl(buf.getvalue())
    assert data is not None
    return data, cat


def _flags(data: bytes, cat: StorageCatalog, limits: Limits = DEFAULT_LIMITS) -> set[str]:
    return {f.rule_id for f in _vm(data, cat, limits)[1].findings}


def _declined_everywhere(data: bytes, cat: StorageCatalog) -> None:
    assert _native(data, cat)[0] is None
    assert _python(data, cat)[0] is None


def test_build_slot_state_on_a_storage() -> None:
    """BUILD with slot state on the StorageRef a BINPERSID made would change its numel
    after the checks (the C unpickler applies it silently): declined; VM: CKG111."""
    data, cat = _one_tensor()
    i = data.index(b"Q") + 1
    prog = data[:i] + b"N}X\x05\x00\x00\x00numelM\xe8\x03s\x86b" + data[i:]
    _declined_everywhere(prog, cat)
    assert "CKG111" in _flags(prog, cat)


@pytest.mark.parametrize("prog, rule", [
    (b"\x80\x02N(u.", "CKG202"),     # SETITEMS of nothing on None
    (b"\x80\x02N(e.", "CKG202"),     # APPENDS of nothing on None
    (b"\x80\x02K\x01Nb.", "CKG202"),  # BUILD on an int
    (b"\x80\x02)Nb.", "CKG202"),      # BUILD on a tuple
])
def test_silent_c_unpickler_no_ops_decline(prog: bytes, rule: str) -> None:
    _declined_everywhere(prog, StorageCatalog())
    assert rule in _flags(prog, StorageCatalog())


def test_wrong_globals_decline() -> None:
    data, cat = _one_tensor()
    for g, rule in [(b"cos\nsystem\n", "CKG101"), (b"cbuiltins\neval\n", "CKG101")]:
        prog = data[:2] + g + b"X\x04\x00\x00\x00true\x85R0" + data[2:]
        _declined_everywhere(prog, cat)
        assert rule in _flags(prog, cat)
    # an allowlisted global the fast paths do not model: declined, the VM decides
    prog = data.replace(b"ctorch._utils\n_rebuild_tensor_v2\n",
                        b"ctorch._utils\n_rebuild_tensor\n")
    assert _native(prog, cat)[0] is None


def test_bad_storage_ids_decline() -> None:
    data, cat = _one_tensor()
    cases = {
        "CKG402": data.replace(b"X\x01\x00\x00\x000", b"X\x01\x00\x00\x009", 1),
        "CKG403": data.replace(b"K\x04t", b"K\x05t", 1),
        "CKG407": data.replace(b"X\x03\x00\x00\x00cpu", b"X\x03\x00\x00\x00tpu", 1),
    }
    for rule, prog in cases.items():
        assert prog != data, rule
        _declined_everywhere(prog, cat)
        assert rule in _flags(prog, cat), rule


def test_tensor_argument_checks_decline() -> None:
    data, cat = _one_tensor()
    # a view past its storage (size 5 of a 4-element storage)
    prog = data.replace(b"K\x00K\x04\x85", b"K\x00K\x05\x85", 1)
    assert prog != data
    _declined_everywhere(prog, cat)
    assert "CKG404" in _flags(prog, cat)
    # requires_grad on an int64 storage
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4, dtype=torch.int64)}, buf)
    d2, c2 = _data_pkl(buf.getvalue())
    assert d2 is not None
    prog = d2.replace(b"\x89ccollections", b"\x88ccollections", 1)
    assert prog != d2
    _declined_everywhere(prog, c2)
    assert "CKG408" in _flags(prog, c2)


def test_hooks_filled_after_the_rebuild_decline() -> None:
    """The backward-hooks OrderedDict handed to a rebuild, filled afterwards through the
    memo: torch would attach it to the tensor. Declined; VM: CKG408."""
    data, cat = _one_tensor()
    # torch.save memoises the hooks OrderedDict() as the BINPUT after its REDUCE
    i = data.index(b")R") + 2
    assert data[i] == ord("q")
    slot = data[i + 1]
    # (POP is outside the grammar: SETITEM leaves the hooks dict, TUPLE2 pairs it with the
    # state dict)
    prog = data[:-1] + b"h" + bytes([slot]) + b"X\x01\x00\x00\x00kNs\x86."
    assert _native(prog, cat)[0] is None
    assert _python(prog, cat)[0] is None
    assert "CKG408" in _flags(prog, cat)


def test_state_filled_after_build_declines() -> None:
    data, cat = _one_tensor()
    body = data[2:-1]
    assert body.endswith(b"Rq\rs")  # the tensor is memo slot 13
    head = data[:2] + b"(ccollections\nOrderedDict\n)R}r\x00\x00\x10\x00b" + body
    # state["t"] = <the tensor> after BUILD checked the state: declined (the VM names it)
    prog = head + b"j\x00\x00\x10\x00X\x01\x00\x00\x00th\rst."
    assert _native(prog, cat)[0] is None
    # state["t"] = 5: still plain metadata, proven, and the VM agrees
    prog = head + b"j\x00\x00\x10\x00X\x01\x00\x00\x00tK\x05st."
    assert _check_native_vs_vm(prog, cat, DEFAULT_LIMITS)


def test_deep_nesting_declines() -> None:
    # MARKs nested 20,000 deep (VM: a max_mark_depth limit)
    prog = b"\x80\x02" + b"(" * 20_000 + b"K\x01" + b"t" * 20_000 + b"."
    assert _native(prog, StorageCatalog())[0] is None
    assert "CKG901" in _flags(prog, StorageCatalog())
    # 1-tuples nested 200,000 deep without a MARK (the naming walk's depth limit)
    prog = b"\x80\x02K\x01" + b"\x85" * 200_000 + b"."
    assert _native(prog, StorageCatalog())[0] is None
    assert "CKG901" in _flags(prog, StorageCatalog())
    # lists nested 30,000 deep
    prog = b"\x80\x02" + b"]" * 30_000 + b"a" * 29_999 + b"."
    assert _native(prog, StorageCatalog())[0] is None
    # a deep tuple as a dict key (CPython's recursive hash)
    prog = b"\x80\x02}(K\x00" + b"\x85" * 200_000 + b"K\x01u."
    assert _native(prog, StorageCatalog())[0] is None


def test_memo_tricks() -> None:
    # a read of a slot never written (VM: CKG202), a huge LONG_BINPUT index
    for prog in (b"\x80\x02h\x05.", b"\x80\x02j\x00\x00\x00\x01.",
                 b"\x80\x02Nr\x00\x00\x40\x00.", b"\x80\x02Nr\xff\xff\xff\xff."):
        assert _native(prog, StorageCatalog())[0] is None
    assert "CKG202" in _flags(b"\x80\x02h\x05.", StorageCatalog())
    # a list that contains itself through the memo: declined (a cycle)
    assert _native(b"\x80\x02]q\x00h\x00a.", StorageCatalog())[0] is None
    # a slot overwritten, then read: the later value, as the C unpickler does
    prog = (b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01q\x01X\x01\x00\x00\x00cK\x02q\x01"
            b"X\x01\x00\x00\x00bh\x01u.")
    nat, _ = _native(prog, StorageCatalog(), keep_graph=True)
    assert nat is not None and dict(nat.root) == {"a": 1, "c": 2, "b": 2}
    assert _check_native_vs_vm(prog, StorageCatalog(), DEFAULT_LIMITS)
    # a repeated dict key: the native core declines (torch.save never writes one)
    prog = b"\x80\x02}(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00aK\x02u."
    assert _native(prog, StorageCatalog())[0] is None


def test_huge_lengths_and_bad_literals_decline() -> None:
    for body in (b"X\xff\xff\xff\x7f", b"X\x80\x00\x00\x00" + b"a" * 128,
                 b"X\x02\x00\x00\x00\xc3\x28", b"\x8a\x09" + b"\x00" * 9, b"\x8a\xff",
                 b"J\x01\x00", b"G\x00\x00", b"ctorch\nFloatStorage", b"c" + b"a" * 300):
        assert _native(b"\x80\x02" + body + b".", StorageCatalog())[0] is None, body


def test_every_truncation_declines() -> None:
    data, cat = _one_tensor()
    for i in range(len(data)):
        assert _native(data[:i], cat)[0] is None
        # cut and closed with STOP: declined, or a smaller program the VM agrees with
        _check_native_vs_vm(data[:i] + b".", cat, DEFAULT_LIMITS)
    assert "CKG201" in _flags(data[:-5], cat)


def test_int_keys_that_could_collide_decline() -> None:
    for key in (b"J\xff\xff\xff\xff", b"\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x20"):
        assert _native(b"\x80\x02}(K\x05N" + key + b"Nu.", StorageCatalog())[0] is None
    assert _native(b"\x80\x02}(K\x05NK\x06Nu.", StorageCatalog())[0] is not None


def test_limits_are_met_or_declined() -> None:
    """With a limit the VM would hit, the native core declines (the VM reports CKG901)."""
    buf = io.BytesIO()
    torch.save({f"t{i}": torch.zeros(1) for i in range(300)}, buf)
    data, cat = _data_pkl(buf.getvalue())
    assert data is not None
    assert _native(data, cat)[0] is not None
    for lim in (DEFAULT_LIMITS.replace(max_tensors=299),
                DEFAULT_LIMITS.replace(max_memo=100),
                DEFAULT_LIMITS.replace(max_container_items=1000),
                DEFAULT_LIMITS.replace(max_stack=1000),
                DEFAULT_LIMITS.replace(max_objects=5000)):
        assert _native(data, cat, lim)[0] is None, lim


def test_engine_report_uses_the_native_records(tmp_path: Path) -> None:
    p = tmp_path / "m.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), p)
    calls = []
    real = fastpath._try_native

    def spy(*a: Any) -> Any:
        r = real(*a)
        calls.append(r is not None)
        return r

    mp = pytest.MonkeyPatch()
    mp.setattr(fastpath, "_try_native", spy)
    try:
        r = engine.audit_file(str(p), policy=Policy(), limits=DEFAULT_LIMITS)
    finally:
        mp.undo()
    assert calls == [True]
    assert r.verdict is Verdict.SAFE and [t.name for t in r.tensors] == ["weight", "bias"]
    assert r.tensors[0].storage == "data/0" and r.tensors[0].nbytes == 24


# --- memory (issue #13: peak RSS of a 50k-tensor scan) -----------------------------------------

def test_unset_memo_slots_below_and_past_the_highest_index_decline() -> None:
    # the memo is cleared up to the highest index written only: a read of an unset slot
    # below it (5) or past it but inside the capacity (1010) still declines, as the VM
    # flags it (CKG202); the slot written is read back
    put = b"\x80\x02]r\xe8\x03\x00\x00"  # EMPTY_LIST, LONG_BINPUT 1000
    for get in (b"h\x05", b"j\xf2\x03\x00\x00"):
        prog = put + get + b"a."
        assert _native(prog, StorageCatalog())[0] is None
        assert "CKG202" in _flags(prog, StorageCatalog())
    prog = put + b"K\x01r\xe7\x03\x00\x00aj\xe7\x03\x00\x00a."  # [1, 1]: slot 999 (< 1000) is set
    nat, _ = _native(prog, StorageCatalog(), keep_graph=True)
    assert nat is not None and list(nat.root) == [1, 1]


def _big_state_dict(n: int) -> tuple[bytes, StorageCatalog]:
    sd = {f"layer{i // 3}.{('weight', 'bias', 'scale')[i % 3]}":
          torch.zeros((4, 4) if i % 3 == 0 else (i % 5 + 1,)) for i in range(n)}
    buf = io.BytesIO()
    torch.save(sd, buf)
    data, cat = _data_pkl(buf.getvalue())
    assert data is not None
    return data, cat


@pytest.mark.slow
def test_large_program_on_mapped_arrays_matches_python_and_vm() -> None:
    # 20k tensors: every working array of the core passes the size where it gets its own
    # mapping (grown by mremap): the result is still the Python path's and the VM's
    data, cat = _big_state_dict(20000)
    assert _check_native_vs_python(data, cat, DEFAULT_LIMITS) == "both"
    assert _check_native_vs_vm(data, cat, DEFAULT_LIMITS)
    nat, _ = _native(data, cat, keep_graph=True)
    py, _ = _python(data, cat, keep_graph=True)
    assert nat is not None and py is not None
    _same_graph(nat.root, py.root)


def test_equal_shapes_shared_in_a_scan_not_in_a_kept_graph() -> None:
    data, cat = _big_state_dict(300)
    nat, _ = _native(data, cat)
    assert nat is not None
    shapes = [r.shape for _, r in nat.result.tensors]
    assert len({id(s) for s in shapes}) == len(set(shapes)) == 6
    assert [i.shape for i in nat.infos] == shapes
    kept, _ = _native(data, cat, keep_graph=True)
    assert kept is not None
    # the graph shares objects exactly as the Python path's (one tuple per rebuild)
    assert len({id(r.shape) for _, r in kept.result.tensors}) == 300


@pytest.mark.parametrize("obj", [
    "tensor", "tuple", "list", "empty",
], ids=str)
def test_scan_roots_of_every_shape_match_python_and_vm(obj: str) -> None:
    # a scan makes the storages and records after its pass (after the naming walk when the
    # root is a container, before it otherwise): every root shape, same results
    t = torch.arange(6.0).reshape(2, 3)
    value = {"tensor": t, "tuple": (t, t[1], 5), "list": [t, {"a": t[0]}],
             "empty": {}}[obj]
    buf = io.BytesIO()
    torch.save(value, buf)
    data, cat = _data_pkl(buf.getvalue())
    assert data is not None
    assert _check_native_vs_python(data, cat, DEFAULT_LIMITS) == "both"
    assert _check_native_vs_vm(data, cat, DEFAULT_LIMITS)


# --- globals resolved when the program first names them (fastpath._Gobjs) -------------------

def _state_dict_zip() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2, 3), "b": torch.ones(3, dtype=torch.float16)}, buf)
    return buf.getvalue()


def test_only_the_globals_a_program_names_are_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "_gobjs_cache", {})
    r = engine.audit_bytes(_state_dict_zip(), "x.pt", policy=Policy(), limits=DEFAULT_LIMITS)
    assert r.verdict is Verdict.SAFE and not r.findings
    (gobjs,) = fastpath._gobjs_cache.values()
    resolved = {gobjs.names[i] for i, v in enumerate(gobjs.values) if v is not ...}
    assert resolved == {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
                        ("torch", "FloatStorage"), ("torch", "HalfStorage")}, resolved
    assert all(v is ... for i, v in enumerate(gobjs.values) if gobjs.names[i] not in resolved)
    # the second audit under the same (policy, protocol) resolves nothing again
    calls: list[int] = []
    real = fastpath._Gobjs.resolve
    monkeypatch.setattr(fastpath._Gobjs, "resolve", lambda self, i: calls.append(i) or
                        real(self, i))
    engine.audit_bytes(_state_dict_zip(), "x.pt", policy=Policy(), limits=DEFAULT_LIMITS)
    assert calls == []


def test_a_failing_resolver_declines_and_the_vm_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "_gobjs_cache", {})

    def boom(self: object, i: int) -> None:
        raise RuntimeError("resolver failed")

    monkeypatch.setattr(fastpath._Gobjs, "resolve", boom)
    data = _state_dict_zip()
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        pkl = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    c = StorageCatalog(records={})
    assert fastpath._try_native(CORE, _ctx(), pkl, c) is None and not c.seen
    r = engine.audit_bytes(data, "x.pt", policy=Policy(), limits=DEFAULT_LIMITS)
    assert r.verdict is Verdict.SAFE  # the Python fast path or the VM proved it instead
