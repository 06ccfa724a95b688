"""``safe_load(path, map_location="meta")`` on a torch zip returns what
``torch.load(path, weights_only=True, mmap=True, map_location="meta")`` returns, attribute by
attribute: container types and key order, ``OrderedDict`` and its ``_metadata``, shared
sub-objects, and for every tensor its class (Tensor / Parameter), dtype, shape, stride,
storage offset, version counter, storage size, ``_checkpoint_offset``, storage sharing (on meta torch gives
every rebuilt tensor a storage of its own), ``requires_grad``, ``is_leaf`` and
``_backward_hooks``. Where the audit's fast path proved the pickle, the result is built from
the audit (torch.load is never called); elsewhere torch.load builds it after the audit.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from ckg_loader_helpers import (
    legacy_state_dict,
    random_checkpoint,
    random_tensor,
    save_torch,
    spy_torch_load,
)

import ckptguard
from ckptguard.errors import FileChangedError
from ckptguard.loaders import _torch as torch_mod
from ckptguard.loaders import load_audited, open_audited

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
BENIGN = sorted((ROOT / "fixtures" / "benign").glob("*.pt"))
#: benign fixtures the fast path does not prove (their meta load is torch.load's own)
NOT_PROVEN = {"all_dtypes.pt", "quantized.pt", "sparse.pt"}


def _same(a: Any, b: Any, objs: dict[int, int], stores: dict[int, int],
          path: str = "") -> None:
    """``a`` (torch.load) and ``b`` (ours) are equal attribute by attribute; ``objs`` and
    ``stores`` pair object ids and storage ids both ways (sharing must match exactly)."""
    assert type(a) is type(b), path
    if not isinstance(a, (str, int, float, bool, type(None))):
        # the same sub-object in one is the same sub-object in the other, and only then
        assert objs.setdefault(id(a), id(b)) == id(b), f"{path}: object sharing differs"
        assert objs.setdefault(-id(b) - 1, id(a)) == id(a), f"{path}: object sharing differs"
    if isinstance(a, torch.Tensor) and a.layout != torch.strided:
        # only torch.load builds these (the fast path declines them): no storage to compare
        assert (a.dtype, a.shape, a.layout, a.device, a.requires_grad) == (
            b.dtype, b.shape, b.layout, b.device, b.requires_grad), path
        return
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.stride(), a.storage_offset(), a.requires_grad,
                a.is_leaf, a.device, a.layout, a._version) == (
            b.dtype, b.shape, b.stride(), b.storage_offset(), b.requires_grad, b.is_leaf,
            b.device, b.layout, b._version), path
        assert b.device.type == "meta", path
        sa, sb = a.untyped_storage(), b.untyped_storage()
        assert (sa.nbytes(), sa.resizable(), sa.device) == (sb.nbytes(), sb.resizable(),
                                                            sb.device), path
        assert getattr(sa, "_checkpoint_offset", None) == \
            getattr(sb, "_checkpoint_offset", None), path
        assert type(a._backward_hooks) is type(b._backward_hooks), path
        assert a._backward_hooks == b._backward_hooks, path
        assert vars(a).keys() == vars(b).keys(), path
        assert stores.setdefault(sa._cdata, sb._cdata) == sb._cdata, \
            f"{path}: storage sharing differs"
        assert stores.setdefault(-sb._cdata - 1, sa._cdata) == sa._cdata, \
            f"{path}: storage sharing differs"
        return
    if isinstance(a, dict):
        assert list(a) == list(b), path
        da, db = getattr(a, "__dict__", {}), getattr(b, "__dict__", {})
        assert list(da) == list(db), path
        for k in da:
            _same(da[k], db[k], objs, stores, f"{path}.{k}")
        for k in a:
            _same(a[k], b[k], objs, stores, f"{path}.{k}")
        return
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, objs, stores, f"{path}[{i}]")
        return
    assert a == b or (a != a and b != b), path


def _check(path: Path, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Compare; return whether ckptguard built it without torch.load. Both builders:
    safe_load's (the native core builds the object during the audit, where it is built;
    else from the Python fast path's graph) and the graph's (``open_audited(keep_graph=
    True)``, then ``load_audited``: direct._build over the symbolic graph)."""
    try:
        want = torch.load(path, weights_only=True, mmap=True, map_location="meta")
    except RuntimeError as e:  # torch cannot build it on meta (quantized): nor can we
        with pytest.raises(type(e)):
            ckptguard.safe_load(path, map_location="meta")
        return False
    with monkeypatch.context() as m:
        used = spy_torch_load(m)
        got = ckptguard.safe_load(path, map_location="meta")
        got_dev = ckptguard.safe_load(path, map_location=torch.device("meta"))
        with open_audited(path, keep_graph=True) as af:
            got_graph = load_audited(af, "meta")
    _same(want, got, {}, {})
    _same(want, got_dev, {}, {})
    _same(want, got_graph, {}, {})
    return not used


@pytest.mark.parametrize("path", BENIGN, ids=lambda p: p.name)
def test_benign_fixtures_equal_torch_meta(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if path.name == "legacy_format.pt":
        pytest.skip("legacy files load on meta as a flat dict from the records")
    direct = _check(path, monkeypatch)
    assert direct == (path.name not in NOT_PROVEN), path.name


def _state_dict() -> OrderedDict[str, torch.Tensor]:
    """The helpers' benign state dict without float8 (torch saves those through an untyped
    storage, which the fast path leaves to the VM)."""
    return legacy_state_dict()


_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64,
                     torch.int64, torch.int8, torch.uint8, torch.bool, torch.complex64]


def _tensor(rng: random.Random) -> torch.Tensor:
    return random_tensor(rng, _DTYPES)


N_GENERATED = 320


def test_generated_checkpoints_equal_torch_meta(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(1313)
    direct = 0
    for i in range(N_GENERATED):
        pool: list[Any] = []
        obj = random_checkpoint(rng, rng.randint(1, 4), pool, _tensor)
        if pool and rng.random() < 0.3:  # views of one storage as separate entries
            base = pool[0]
            obj = {"x": obj, "views": [base.detach()[1:], base]} if len(base) > 1 else obj
        if rng.random() < 0.1:
            m = torch.nn.Linear(3, 2)
            opt = torch.optim.Adam(m.parameters())
            m(torch.ones(1, 3)).sum().backward()
            opt.step()
            obj = {"model": m.state_dict(), "optimizer": opt.state_dict(), "extra": obj}
        p = tmp_path / f"g{i}.pt"
        torch.save(obj, p)
        direct += _check(p, monkeypatch)
    assert direct >= 0.9 * N_GENERATED, direct


def test_tied_and_views_as_torch_shows_them_on_meta(tmp_path: Path) -> None:
    """The same tensor twice is one tensor; two views of one storage get two meta storages
    (torch caches only storages with data); each keeps its record's data offset."""
    sd = _state_dict()
    p = save_torch(tmp_path / "m.pt", sd)
    out = ckptguard.safe_load(p, map_location="meta")
    assert type(out) is OrderedDict and list(out) == list(sd)
    assert out["embed.weight"] is out["lm_head.weight"]
    assert out["view"].untyped_storage()._cdata != out["base"].untyped_storage()._cdata
    assert out["view"].untyped_storage()._checkpoint_offset == \
        out["base"].untyped_storage()._checkpoint_offset
    assert out["view"].storage_offset() == 8


def test_meta_from_graph_checks_identity(tmp_path: Path) -> None:
    p = save_torch(tmp_path / "m.pt", _state_dict())
    with open_audited(p, keep_graph=True) as af:
        assert af.proven and af.graph is not None
        with open(p, "r+b") as f:  # same size, one byte of data.pkl changed
            data = f.read()
            i = data.index(b"embed.weight")
            f.seek(i)
            f.write(b"E")
        with pytest.raises(FileChangedError):
            load_audited(af, "meta")


def test_meta_without_graph_uses_torch_load(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An audited file whose graph was not kept: torch.load(map_location="meta") builds
    the same object after the audit."""
    p = save_torch(tmp_path / "m.pt", _state_dict())
    seen: list[dict[str, Any]] = []
    real = torch_mod.ORIGINAL_LOAD

    def spy(*a: Any, **k: Any) -> Any:
        seen.append(k)
        return real(*a, **k)

    monkeypatch.setattr(torch_mod, "ORIGINAL_LOAD", spy)
    with open_audited(p) as af:
        assert af.proven and af.graph is None
        got = load_audited(af, "meta")
    assert len(seen) == 1 and seen[0]["weights_only"] is True
    want = real(p, weights_only=True, mmap=True, map_location="meta")
    _same(want, got, {}, {})


@pytest.mark.parametrize("loc", ["meta", "cpu"])
def test_unexpected_graph_falls_back_to_torch_load(tmp_path: Path, loc: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph node the builders do not know (here planted after the audit) makes them
    decline: torch.load builds the object after the audit, never a traceback."""
    import dataclasses

    from ckptguard import Engine
    from ckptguard.analysis.fastpath import FastDict

    p = save_torch(tmp_path / "m.pt", {"w": torch.ones(2)})
    seen = spy_torch_load(monkeypatch)
    with open_audited(p, keep_graph=True) as af:
        odd = FastDict()
        dict.__setitem__(odd, "w", object())
        af.graph = dataclasses.replace(af.graph, root=odd)  # type: ignore[type-var]
        got = load_audited(af, loc, engine=Engine.CKPTGUARD)
    assert seen == [1]
    if loc == "cpu":
        assert torch.equal(got["w"], torch.ones(2))
    else:
        assert got["w"].is_meta and got["w"].shape == (2,)


@pytest.mark.parametrize("lease", [True, False], ids=["lease", "no-lease"])
def test_built_in_the_audit_and_fallbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          lease: bool) -> None:
    """With the native core, safe_load's meta object is built during the audit (no graph
    is kept, torch.load is not called; picklecore's meta maker); a build that fails there
    leaves the proof as it is and torch.load(map_location="meta") builds the object after
    the audit -- with the read lease and without it (then what torch built is compared
    with the audit, and the graph the failed build used up is not there to compare)."""
    from ckptguard._native import native
    from ckptguard.analysis.fastpath import FastResult
    from ckptguard.loaders import base, direct

    if lease:
        monkeypatch.setattr(base, "_one_python_thread", lambda: True)
    else:
        monkeypatch.setattr(base, "take_read_lease", lambda fd: False)

    sd = _state_dict()
    p = save_torch(tmp_path / "m.pt", sd)
    want = torch.load(p, weights_only=True, mmap=True, map_location="meta")
    with direct.open_audited_meta(p) as af:
        g = af.graph
        assert isinstance(g, FastResult) and af.proven
        if native("picklecore") is None:  # CKPTGUARD_PURE=1: the Python path's graph
            assert g.built is None and g.root is not None
        else:
            assert g.built is not None and g.root is None
        report = af.report
    full = ckptguard.scan(p)
    assert len(full.tensors) == len(sd)
    if native("picklecore") is None:
        assert report == full
    else:  # the object is the load: the core left the report's tensor rows out
        assert g.rows_skipped and report == replace(full, tensors=())
        assert g.infos == [] and g.result.tensors == []  # names freed before the build
        report = full

    # a failed build audits the descriptor again without the maker: the full report

    real = direct._meta_spec

    def failing() -> Any:  # a dtype the maker cannot find: its build fails
        spec, fresh = real()
        return (*spec[:3], {}, *spec[4:]), fresh

    monkeypatch.setattr(direct, "_meta_spec", failing)
    used = spy_torch_load(monkeypatch)
    with direct.open_audited_meta(p) as af:
        assert af.proven and af.report == report
    got = ckptguard.safe_load(p, map_location="meta")
    _same(want, got, {}, {})
    assert used == ([1] if native("picklecore") is not None else [])


def test_refused_meta_load_reports_every_tensor(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A meta load the audit refuses although the core proved (and built) data.pkl: the
    refusal carries scan()'s report, tensor rows and all (the descriptor is audited again
    without the maker), and nothing is loaded."""
    import zipfile

    from ckptguard._native import native
    from ckptguard.errors import UnsafeCheckpointError
    from ckptguard.loaders import direct

    p = save_torch(tmp_path / "m.pt", _state_dict())
    with zipfile.ZipFile(p, "a") as z:  # a member outside the archive folder: CKG311
        z.writestr("outside.txt", b"hello")
    want = ckptguard.scan(p)
    assert want.verdict.name == "UNSAFE" and "CKG311" in {f.rule_id for f in want.findings}
    assert len(want.tensors) == len(_state_dict())
    again: list[int] = []
    real = direct._audit_again

    def spy(af: Any) -> Any:
        again.append(1)
        return real(af)

    monkeypatch.setattr(direct, "_audit_again", spy)
    used = spy_torch_load(monkeypatch)
    with pytest.raises(UnsafeCheckpointError) as exc:
        ckptguard.safe_load(p, map_location="meta")
    assert exc.value.report == want
    assert used == []
    assert again == ([1] if native("picklecore") is not None else [])


@pytest.mark.parametrize("increments", [True, False])
def test_version_counters_both_ways(tmp_path: Path, increments: bool,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The tensors made without ``set_`` get torch's version counter 1 both ways: one
    increment of each (where torch's ``_increment_version`` takes a list) or one call that
    sets them; ties, views and Parameters included."""
    from ckptguard.loaders import direct

    if increments and not direct._increments_lists():
        pytest.skip("this torch's _increment_version takes no list")
    monkeypatch.setattr(direct, "_increments", [increments])
    w = torch.arange(12.0).reshape(3, 4)
    sd = OrderedDict(w=w, tied=w, view=w[1], p=torch.nn.Parameter(torch.ones(2, 2)),
                     g=torch.ones(3, requires_grad=True), i=torch.arange(5))
    p = save_torch(tmp_path / "v.pt", sd)
    want = torch.load(p, weights_only=True, mmap=True, map_location="meta")
    got_safe = ckptguard.safe_load(p, map_location="meta")
    with open_audited(p, keep_graph=True) as af:
        got_graph = load_audited(af, "meta")
    for got in (got_safe, got_graph):
        _same(want, got, {}, {})
        assert [t._version for t in got.values()] == [t._version for t in want.values()]
        assert {t._version for t in got.values()} == {1}


def test_equal_shape_tuples_reached_as_values_stay_apart(tmp_path: Path) -> None:
    """A built meta load shares equal shape tuples among the records (only the maker reads
    them), never among nodes the loaded object reaches: a data.pkl whose two tensors'
    size tuples are memoised and read again as two dict values gives two tuple objects,
    as torch.load does (sharing compared both ways)."""
    import io
    import pickle
    import zipfile

    from ckptguard._native import native
    from ckptguard.analysis.fastpath import FastResult
    from ckptguard.loaders import direct

    p = save_torch(tmp_path / "s.pt", {"w": torch.ones(2), "w2": torch.zeros(2)})

    class Storage:
        def __init__(self, key: str) -> None:
            self.key = key

    class Rebuilt:
        def __init__(self, key: str, shape: tuple[int, ...]) -> None:
            self.key, self.shape = key, shape

        def __reduce_ex__(self, proto: Any) -> Any:
            return (torch._utils._rebuild_tensor_v2,
                    (Storage(self.key), 0, self.shape, (1,), False, OrderedDict()))

    class Writer(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, Storage):
                return ("storage", torch.FloatStorage, obj.key, "cpu", 2)
            return None

    s1, s2 = tuple([2]), tuple([2])
    assert s1 is not s2
    buf = io.BytesIO()
    Writer(buf, protocol=2).dump({"w": Rebuilt("0", s1), "s1": s1,
                                  "w2": Rebuilt("1", s2), "s2": s2})
    with zipfile.ZipFile(p) as z:
        records = [(i.filename.split("/", 1)[1], z.read(i.filename)) for i in z.infolist()]
    w = torch._C.PyTorchFileWriter(str(p))
    for rel, raw in records:
        if rel != ".data/serialization_id":
            b = buf.getvalue() if rel == "data.pkl" else raw
            w.write_record(rel, b, len(b))
    w.write_end_of_file()

    assert ckptguard.scan(p).verdict.name == "SAFE"
    want = torch.load(p, weights_only=True, mmap=True, map_location="meta")
    assert want["s1"] == want["s2"] == (2,) and want["s1"] is not want["s2"]
    with direct.open_audited_meta(p) as af:
        assert isinstance(af.graph, FastResult) and af.proven
        assert (af.graph.built is not None) == (native("picklecore") is not None)
    got = ckptguard.safe_load(p, map_location="meta")
    _same(want, got, {}, {})
    assert got["s1"] is not got["s2"]
