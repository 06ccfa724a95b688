"""End to end: audit with the real engine, then load. Bit-exact against torch.load /
safetensors on every benign fixture; hostile files never reach torch.load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from ckg_loader_helpers import (
    HAS_CUDA,
    assert_same_state_dict,
    assert_same_tensor,
    benign_state_dict,
    hostile_raw_pickle,
    hostile_torch_zip,
    io_chars,
    legacy_state_dict,
    safetensors_state_dict,
    save_safetensors,
    save_torch,
    sharing,
)
from safetensors.torch import load_file

import ckptguard
from ckptguard import (
    FileChangedError,
    IncompleteScanError,
    Policy,
    UnsafeCheckpointError,
    Verdict,
)
from ckptguard.loaders import _torch

#: writers inside this process during a load: the lease would make them wait (conftest)
pytestmark = pytest.mark.usefixtures("no_lease")

REAL_LOAD = _torch.ORIGINAL_LOAD
SRC = str(Path(ckptguard.__file__).resolve().parents[1])


@pytest.fixture
def no_torch_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> object:
        pytest.fail("torch.load was reached for a file that is not SAFE")

    monkeypatch.setattr(_torch, "ORIGINAL_LOAD", fail)


# --- benign: bit-exact --------------------------------------------------------------------

@pytest.mark.parametrize("container", [dict, OrderedDict])
def test_torch_zip_bit_exact(tmp_path: Path, container: type) -> None:
    path = save_torch(tmp_path / "model.pt", container(benign_state_dict()))
    ours = ckptguard.safe_load(path)
    ref = torch.load(path, weights_only=True)
    assert_same_state_dict(ours, ref)
    assert frozenset({"embed.weight", "lm_head.weight"}) in sharing(ours)


def test_torch_zip_without_mmap(tmp_path: Path) -> None:
    path = save_torch(tmp_path / "model.pt", benign_state_dict())
    assert_same_state_dict(ckptguard.safe_load(path, mmap=False),
                           torch.load(path, weights_only=True))


def test_torch_legacy_bit_exact(tmp_path: Path) -> None:
    path = save_torch(tmp_path / "model.bin", legacy_state_dict(), legacy=True)
    ours = ckptguard.safe_load(path)
    assert_same_state_dict(ours, torch.load(path, weights_only=True))


def test_nested_checkpoint(tmp_path: Path) -> None:
    obj = {"model": benign_state_dict(), "step": 10, "lr": 0.5, "tags": ("a", "b")}
    path = save_torch(tmp_path / "ckpt.pth", obj)
    ours = ckptguard.safe_load(path)
    ref = torch.load(path, weights_only=True)
    assert ours["step"] == 10 and ours["tags"] == ("a", "b")
    assert_same_state_dict(ours["model"], ref["model"])


def test_parameters_and_requires_grad(tmp_path: Path) -> None:
    obj = {"p": torch.nn.Parameter(torch.randn(3)), "t": torch.randn(2).requires_grad_()}
    path = save_torch(tmp_path / "params.pt", obj)
    assert_same_state_dict(ckptguard.safe_load(path), torch.load(path, weights_only=True))


def test_safetensors_bit_exact(tmp_path: Path) -> None:
    path = save_safetensors(tmp_path / "model.safetensors", safetensors_state_dict())
    ours = ckptguard.safe_load(path)
    ref = load_file(str(path))
    assert set(ours) == set(ref)
    for k in ref:
        assert_same_tensor(ours[k], ref[k], k)


def test_load_state_dict_signature(tmp_path: Path) -> None:
    path = save_safetensors(tmp_path / "model.safetensors", safetensors_state_dict())
    ours = ckptguard.load_state_dict(str(path), False, "cpu", True)
    assert set(ours) == set(load_file(str(path)))
    pt = save_torch(tmp_path / "pytorch_model.bin", benign_state_dict())
    out = ckptguard.load_state_dict(pt, map_location="cpu", weights_only=True)
    assert_same_state_dict(out, torch.load(pt, weights_only=True))


# --- meta: no tensor bytes ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors"])
def test_meta_reads_no_tensor_bytes(tmp_path: Path, kind: str) -> None:
    big = {"w": torch.randn(4 << 20), "b": torch.randn(16, 8), "s": torch.tensor(1.0)}
    big["tied"] = big["b"]
    if kind == "safetensors":
        del big["tied"]
        path = save_safetensors(tmp_path / "big.safetensors", big)
    else:
        path = save_torch(tmp_path / "big.pt", big, legacy=kind == "legacy")
    size = path.stat().st_size
    r0, _ = io_chars()
    ours = ckptguard.safe_load(path, map_location="meta")
    r1, _ = io_chars()
    assert r1 - r0 < size // 8, (r1 - r0, size)  # the audit reads headers, not 16 MB of data
    if kind == "zip":  # tied weights share one meta storage, as in the file
        assert ours["tied"].untyped_storage()._cdata == ours["b"].untyped_storage()._cdata
    for k, v in big.items():
        assert ours[k].device.type == "meta"
        assert (ours[k].dtype, tuple(ours[k].shape), ours[k].stride()) == (
            v.dtype, tuple(v.shape), v.stride()), k


def test_meta_device_object(tmp_path: Path) -> None:
    path = save_safetensors(tmp_path / "m.safetensors", {"x": torch.ones(3)})
    out = ckptguard.safe_load(path, map_location=torch.device("meta"))
    assert out["x"].is_meta


# --- hostile: never loaded ---------------------------------------------------------------------

@pytest.mark.parametrize("make", [hostile_torch_zip, hostile_raw_pickle], ids=["zip", "pickle"])
@pytest.mark.parametrize("loc", ["cpu", "meta"])
def test_hostile_never_reaches_torch_load(tmp_path: Path, make: object, loc: str,
                                          no_torch_load: None) -> None:
    marker = tmp_path / "pwned"
    path = make(tmp_path / "evil.pt", marker)  # type: ignore[operator]
    with pytest.raises(UnsafeCheckpointError) as ei:
        ckptguard.safe_load(path, map_location=loc)
    assert ei.value.report.verdict is Verdict.UNSAFE
    assert str(path) in str(ei.value)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        ckptguard.iter_state_dict(path)
    with pytest.raises(UnsafeCheckpointError):
        ckptguard.load_state_dict(path)
    assert not marker.exists()


@pytest.mark.slow
def test_hostile_fixture_is_live(tmp_path: Path) -> None:
    """The hostile zip really executes under an unsafe load (run in a child process)."""
    marker = tmp_path / "pwned"
    path = hostile_torch_zip(tmp_path / "evil.pt", marker)
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, timeout=120)
    assert marker.exists()


def test_unsafe_message_explains_how_to_allow(tmp_path: Path) -> None:
    import argparse

    path = save_torch(tmp_path / "hp.pt", {"w": torch.ones(2), "args": argparse.Namespace(a=1)})
    with pytest.raises(UnsafeCheckpointError) as ei:
        ckptguard.safe_load(path)
    msg = str(ei.value)
    assert "argparse" in msg and "Namespace" in msg
    assert '{ global = "argparse.Namespace", reason = "..." }' in msg  # the exact TOML entry
    assert "Policy().allow(" in msg
    policy = Policy().allow("argparse", "Namespace", reason="trainer hyper-parameters")
    out = ckptguard.safe_load(path, policy=policy)
    assert out["args"].a == 1 and torch.equal(out["w"], torch.ones(2))


def test_incomplete_is_not_loaded(tmp_path: Path, no_torch_load: None) -> None:
    path = tmp_path / "trunc.pt"
    save_torch(path, benign_state_dict())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises((IncompleteScanError, UnsafeCheckpointError)):
        ckptguard.safe_load(path)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ckptguard.ScanInputError):
        ckptguard.safe_load(tmp_path / "nope.pt")


# --- identity -----------------------------------------------------------------------------

def test_file_replaced_during_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_torch(tmp_path / "m.pt", benign_state_dict())
    other = save_torch(tmp_path / "other.pt", {"x": torch.zeros(1)})

    def racing(f: object, **kw: object) -> object:
        os.replace(other, path)
        return REAL_LOAD(f, **kw)

    monkeypatch.setattr(_torch, "ORIGINAL_LOAD", racing)
    with pytest.raises(FileChangedError, match="replaced"):
        ckptguard.safe_load(path)


def test_audited_region_rewritten_during_load(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_torch(tmp_path / "m.pt", benign_state_dict())
    st = os.stat(path)

    def racing(f: object, **kw: object) -> object:
        out = REAL_LOAD(f, **kw)
        data = bytearray(path.read_bytes())
        data[-30] ^= 0x01  # inside the zip's end records, which the audit relies on
        with open(path, "r+b") as fh:
            fh.write(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        return out

    monkeypatch.setattr(_torch, "ORIGINAL_LOAD", racing)
    with pytest.raises(FileChangedError):
        ckptguard.safe_load(path)


# --- sharded ---------------------------------------------------------------------------------

def _sharded(tmp_path: Path, kind: str) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = safetensors_state_dict()
    names = list(sd)
    half = len(names) // 2
    parts = [dict((k, sd[k]) for k in names[:half]), dict((k, sd[k]) for k in names[half:])]
    ext = "safetensors" if kind == "safetensors" else "bin"
    weight_map = {}
    for i, part in enumerate(parts, 1):
        shard = f"model-{i:05d}-of-00002.{ext}"
        if kind == "safetensors":
            save_safetensors(tmp_path / shard, part)
        else:
            save_torch(tmp_path / shard, part)
        weight_map.update({k: shard for k in part})
    index = tmp_path / f"model.{ext}.index.json"
    if kind != "safetensors":
        index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index, sd


@pytest.mark.parametrize("kind", ["safetensors", "torch"])
def test_iter_sharded(tmp_path: Path, kind: str) -> None:
    index, sd = _sharded(tmp_path, kind)
    with ckptguard.iter_state_dict(index) as it:
        got = dict(it)
    assert set(got) == set(sd)
    for k in sd:
        assert_same_tensor(got[k], sd[k], k)
    merged = ckptguard.safe_load(index)
    assert set(merged) == set(sd)
    meta = ckptguard.safe_load(index, map_location="meta")
    assert all(t.is_meta for t in meta.values()) and set(meta) == set(sd)


def test_iter_single_file_one_at_a_time(tmp_path: Path) -> None:
    path = save_safetensors(tmp_path / "m.safetensors", safetensors_state_dict())
    it = ckptguard.iter_state_dict(path)
    name, t = next(it)
    assert isinstance(name, str) and isinstance(t, torch.Tensor)
    it.close()


def test_sharded_hostile_shard_blocks_everything(tmp_path: Path, no_torch_load: None) -> None:
    index, _ = _sharded(tmp_path, "torch")
    marker = tmp_path / "pwned"
    hostile_torch_zip(tmp_path / "model-00002-of-00002.bin", marker)
    with pytest.raises(UnsafeCheckpointError):
        ckptguard.iter_state_dict(index)
    with pytest.raises(UnsafeCheckpointError):
        ckptguard.safe_load(index)
    assert not marker.exists()


def test_sharded_escaping_shard_name(tmp_path: Path, no_torch_load: None) -> None:
    index, _ = _sharded(tmp_path, "safetensors")
    doc = json.loads(index.read_text())
    first = next(iter(doc["weight_map"]))
    outside = tmp_path.parent / f"{tmp_path.name}-outside.safetensors"
    save_safetensors(outside, {"x": torch.ones(1)})
    doc["weight_map"][first] = f"../{outside.name}"
    index.write_text(json.dumps(doc))
    with pytest.raises(UnsafeCheckpointError):
        ckptguard.iter_state_dict(index)


def test_shard_swapped_after_audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index, _ = _sharded(tmp_path, "safetensors")
    from ckptguard.loaders import sharded

    real = sharded.audit_index_for

    def audit_then_swap(af: object) -> object:
        report = real(af)  # type: ignore[arg-type]
        shard = tmp_path / "model-00002-of-00002.safetensors"
        data = shard.read_bytes()
        shard.unlink()
        shard.write_bytes(data)  # same bytes, new inode
        return report

    monkeypatch.setattr(sharded, "audit_index_for", audit_then_swap)
    import ckptguard.loaders as loaders

    monkeypatch.setattr(loaders, "audit_index_for", audit_then_swap)
    with pytest.raises(FileChangedError):
        ckptguard.iter_state_dict(index)


# --- environment ------------------------------------------------------------------------------

def test_api_import_does_not_import_torch() -> None:
    code = ("import sys, ckptguard, ckptguard.api, ckptguard.guard; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": SRC})


def test_missing_torch_gives_install_hint(tmp_path: Path) -> None:
    path = save_safetensors(tmp_path / "m.safetensors", {"x": torch.ones(1)})
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import ckptguard\n"
        "try:\n"
        f"    ckptguard.safe_load({str(path)!r})\n"
        "except ckptguard.LoaderUnavailableError as e:\n"
        "    assert 'pip install' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": SRC})


# --- CUDA ---------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("loc", ["cuda", "cuda:0", torch.device("cuda:0"), {"cpu": "cuda:0"}])
def test_cuda_end_to_end(tmp_path: Path, loc: object) -> None:
    st = save_safetensors(tmp_path / "m.safetensors", safetensors_state_dict())
    ours = ckptguard.safe_load(st, map_location=loc)
    for k, v in load_file(str(st), device="cuda:0").items():
        assert ours[k].is_cuda
        assert_same_tensor(ours[k], v, k)
    pt = save_torch(tmp_path / "m.pt", benign_state_dict())
    out = ckptguard.safe_load(pt, map_location=loc)
    assert_same_state_dict(out, torch.load(pt, map_location=loc, weights_only=True))
    assert all(t.is_cuda for t in out.values())
