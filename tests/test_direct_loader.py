"""``engine="ckptguard"`` returns what ``torch.load(weights_only=True, mmap=True)`` returns,
bit for bit: object types and structure (dict / OrderedDict with ``_metadata`` / list /
tuple, shared sub-objects), and for every tensor its class (Tensor / Parameter), dtype,
shape, stride, storage offset, storage size, storage sharing, requires_grad,
``_backward_hooks`` and bytes. It never calls torch.load for a file the fast path proved.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
from ckg_loader_helpers import random_checkpoint, random_tensor, spy_torch_load

import ckptguard
from ckptguard import Engine, UnsafeCheckpointError

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
BENIGN = sorted((ROOT / "fixtures" / "benign").glob("*.pt"))


def _same(a: Any, b: Any, ptrs: dict[int, int], path: str = "") -> None:
    """Structural, bit-for-bit equality; ``ptrs`` pairs storage data pointers."""
    assert type(a) is type(b), path
    if isinstance(a, torch.Tensor) and (a.is_quantized or a.layout != torch.strided):
        # only the torch engine loads these (the fast path declines them)
        assert (a.dtype, a.layout, a.shape, a.is_quantized) == (b.dtype, b.layout, b.shape,
                                                                b.is_quantized), path
        da = a.dequantize() if a.is_quantized else a.to_dense()
        db = b.dequantize() if b.is_quantized else b.to_dense()
        assert torch.equal(da, db), path
        return
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.stride(), a.storage_offset(), a.requires_grad,
                a.is_leaf, a.device) == (b.dtype, b.shape, b.stride(), b.storage_offset(),
                                         b.requires_grad, b.is_leaf, b.device), path
        assert a.untyped_storage().nbytes() == b.untyped_storage().nbytes(), path
        assert a._backward_hooks == b._backward_hooks, path
        pa, pb = a.untyped_storage().data_ptr(), b.untyped_storage().data_ptr()
        assert ptrs.setdefault(pa, pb) == pb, f"{path}: storage sharing differs"
        ua = a.detach().contiguous().view(-1).view(torch.uint8) if a.numel() else a
        ub = b.detach().contiguous().view(-1).view(torch.uint8) if b.numel() else b
        assert torch.equal(ua, ub), path
        return
    if isinstance(a, dict):
        assert list(a) == list(b), path
        assert getattr(a, "__dict__", {}).keys() == getattr(b, "__dict__", {}).keys(), path
        for k in getattr(a, "__dict__", {}):
            _same(a.__dict__[k], b.__dict__[k], ptrs, f"{path}.{k}")
        for k in a:
            _same(a[k], b[k], ptrs, f"{path}.{k}")
        return
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, ptrs, f"{path}[{i}]")
        return
    assert a == b or (a != a and b != b), path


def _check(path: Path, monkeypatch: pytest.MonkeyPatch, *, must_be_direct: bool) -> bool:
    want = torch.load(path, weights_only=True, mmap=True)
    with monkeypatch.context() as m:
        used_torch = spy_torch_load(m)
        got = ckptguard.safe_load(path, engine=Engine.CKPTGUARD)
    _same(want, got, {})
    if must_be_direct:
        assert not used_torch, "the ckptguard engine fell back to torch.load"
    return not used_torch


@pytest.mark.parametrize("path", BENIGN, ids=lambda p: p.name)
def test_benign_fixtures_equal_torch_load(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    direct = {"linear.pt", "optimizer_adam.pt", "shared_storage.pt", "views.pt",
              "parameters.pt", "training_checkpoint.pt", "batchnorm.pt", "mlp_sequential.pt"}
    if path.name == "legacy_format.pt":
        pytest.skip("torch refuses mmap for the legacy format; the engine falls back")
    _check(path, monkeypatch, must_be_direct=path.name in direct)


_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
           torch.int32, torch.int8, torch.uint8, torch.bool, torch.complex64]


def _tensor(rng: random.Random) -> torch.Tensor:
    return random_tensor(rng, _DTYPES)


def _gen(rng: random.Random, depth: int, pool: list[Any]) -> Any:
    return random_checkpoint(rng, depth, pool, _tensor)


N_GENERATED = 300


def test_generated_checkpoints_equal_torch_load(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(13)
    direct = 0
    for i in range(N_GENERATED):
        obj = _gen(rng, rng.randint(1, 4), [])
        if rng.random() < 0.15:  # an optimizer state dict with a model
            m = torch.nn.Linear(3, 2)
            opt = torch.optim.Adam(m.parameters())
            m(torch.ones(1, 3)).sum().backward()
            opt.step()
            obj = {"model": m.state_dict(), "optimizer": opt.state_dict(), "extra": obj}
        p = tmp_path / f"g{i}.pt"
        torch.save(obj, p)
        direct += _check(p, monkeypatch, must_be_direct=False)
    # nearly every generated checkpoint is built by the engine itself (the rest: fallback)
    assert direct >= 0.9 * N_GENERATED


def test_whole_module_state_dict_and_optimizer(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                              torch.nn.Linear(8, 2))
    net.get_submodule("0").weight.data[0, 0] = 7.0
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(3, 4)).sum().backward()
    opt.step()
    p = tmp_path / "ckpt.pt"
    torch.save({"model": net.state_dict(), "optim": opt.state_dict(), "epoch": 3,
                "tied": [net[0].weight, net[0].weight]}, p)
    assert _check(p, monkeypatch, must_be_direct=True)


def test_hostile_file_still_refused(tmp_path: Path) -> None:
    hostile = ROOT / "fixtures" / "hostile" / "global_reduce_posix_system.pkl"
    with pytest.raises(UnsafeCheckpointError) as e:
        ckptguard.safe_load(hostile, engine="ckptguard")
    assert "CKG101" in e.value.report.rule_ids()


def test_unknown_engine_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "a.pt"
    torch.save({"w": torch.zeros(1)}, p)
    with pytest.raises(ValueError, match="not a valid Engine"):
        ckptguard.safe_load(p, engine="fast")


def _torch_zip(pkl: bytes, storages: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    recs = [("data.pkl", pkl), (".format_version", b"1"), (".storage_alignment", b"64"),
            ("byteorder", b"little"), *((f"data/{k}", v) for k, v in storages.items()),
            ("version", b"3\n"), (".data/serialization_id", b"0" * 40)]
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in recs:
            z.writestr(zipfile.ZipInfo(f"archive/{name}", date_time=(1980, 1, 1, 0, 0, 0)),
                       data)
    return buf.getvalue()


def test_hooks_filled_after_the_rebuild_are_refused(tmp_path: Path) -> None:
    """The hooks OrderedDict of a tensor is filled after its rebuild: torch.load attaches
    the filled dict, so the audit refuses the file (CKG408; it was SAFE, and the engine had
    to fall back to torch.load, before the VM and the fast path tracked the dict)."""
    # {"w": _rebuild_tensor_v2(storage 0, 0, (2,), (1,), False, OD() -> memo 9),
    #  "h": memo 9 after SETITEM "k" -> 1}
    pkl = (b"\x80\x02}q\x00(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n"
           b"((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00"
           b"\x00cpuK\x02tQK\x00K\x02\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rq\ttR"
           b"X\x01\x00\x00\x00hh\tX\x01\x00\x00\x00kK\x01su.")
    p = tmp_path / "hooks.pt"
    p.write_bytes(_torch_zip(pkl, {"0": b"\x00\x00\x80?\x00\x00\x00@"}))
    assert torch.load(p, weights_only=True)["w"]._backward_hooks == OrderedDict(k=1)
    r = ckptguard.scan(p)
    assert r.verdict is ckptguard.Verdict.UNSAFE and "CKG408" in r.rule_ids()
    for engine in ("ckptguard", "torch"):
        with pytest.raises(ckptguard.UnsafeCheckpointError):
            ckptguard.safe_load(p, engine=engine)


_HOOKS_REF = (b"\x80\x02}q\x00(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n"
              b"((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00"
              b"\x00\x00cpuK\x02tQK\x00K\x02\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rq\t"
              b"tRX\x01\x00\x00\x00hh\tu.")
_HOOKS_SHARED = (b"\x80\x02}q\x00(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\nq\x01"
                 b"((X\x07\x00\x00\x00storagectorch\nFloatStorage\nq\x02X\x01\x00\x00\x000X"
                 b"\x03\x00\x00\x00cpuK\x02tQK\x00K\x02\x85K\x01\x85\x89ccollections\n"
                 b"OrderedDict\n)Rq\ttRX\x01\x00\x00\x00vh\x01((X\x07\x00\x00\x00storageh"
                 b"\x02X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQK\x01K\x01\x85K\x01\x85"
                 b"\x89h\ttRu.")


@pytest.mark.parametrize("name", ["referenced", "shared"])
def test_a_hooks_dict_held_elsewhere_keeps_its_identity(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        name: str) -> None:
    """A tensor's (empty) backward-hooks dict that the program also holds as a value, or
    that two tensors share: torch.load keeps one dict, the engine built fresh ones (a hook
    registered through it reached only torch's tensor). It now falls back to torch.load."""
    pkl = _HOOKS_REF if name == "referenced" else _HOOKS_SHARED
    p = tmp_path / f"{name}.pt"
    p.write_bytes(_torch_zip(pkl, {"0": b"\x00\x00\x80?\x00\x00\x00@"}))
    assert ckptguard.scan(p).verdict is ckptguard.Verdict.SAFE
    want = torch.load(p, weights_only=True, mmap=True)
    with monkeypatch.context() as m:
        used_torch = spy_torch_load(m)
        got = ckptguard.safe_load(p, engine=Engine.CKPTGUARD)
    assert used_torch
    if name == "referenced":
        assert want["h"] is want["w"]._backward_hooks
        assert got["h"] is got["w"]._backward_hooks
    else:
        assert want["v"]._backward_hooks is want["w"]._backward_hooks
        assert got["v"]._backward_hooks is got["w"]._backward_hooks
