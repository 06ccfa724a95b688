"""Faults under the loaders: torn files during a load (issue 18.6), importing torch under
an address-space limit (18.7), tensors that follow the file and copy=True (10.7)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from ckg_loader_helpers import (
    assert_same_state_dict,
    assert_same_tensor,
    benign_state_dict,
    legacy_state_dict,
    safetensors_state_dict,
    save_safetensors,
    save_torch,
)
from safetensors.torch import load_file

import ckptguard
from ckptguard import FileChangedError, LoaderUnavailableError
from ckptguard.loaders import _torch
from ckptguard.loaders import safetensors as st_loader

#: writers inside this process during a load: the lease would make them wait (conftest)
pytestmark = pytest.mark.usefixtures("no_lease")

REAL_LOAD = _torch.ORIGINAL_LOAD
SRC = str(Path(ckptguard.__file__).resolve().parents[1])


# --- torn files: the file changes between the audit and torch's read -------------------------

def _truncate(fraction: float) -> Callable[[Path], None]:
    def cut(path: Path) -> None:
        os.truncate(path, int(path.stat().st_size * fraction))
    return cut


def _cut_tail(n: int) -> Callable[[Path], None]:
    def cut(path: Path) -> None:
        os.truncate(path, max(path.stat().st_size - n, 0))
    return cut


def _zero_middle(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # same inode, same size, torn content
        fh.seek(size // 4)
        fh.write(b"\0" * (size // 2))


def _shrink_then_regrow(path: Path) -> None:
    data = path.read_bytes()
    os.truncate(path, 0)
    with open(path, "r+b") as fh:
        fh.write(data[: len(data) // 2] + b"\xff" * (len(data) - len(data) // 2))


TEARS: dict[str, Callable[[Path], None]] = {
    "truncate-0": _truncate(0.0), "truncate-quarter": _truncate(0.25),
    "truncate-half": _truncate(0.5), "truncate-90%": _truncate(0.9),
    "cut-end-records": _cut_tail(22), "cut-1-byte": _cut_tail(1),
    "zero-middle": _zero_middle, "shrink-regrow": _shrink_then_regrow,
}
KINDS = {
    "zip-mmap": (False, {"mmap": True}), "zip-nommap": (False, {"mmap": False}),
    "zip-copy": (False, {"copy": True}), "legacy": (True, {}),
}


def _tear_before_load(monkeypatch: pytest.MonkeyPatch, path: Path,
                      tear: Callable[[Path], None]) -> list[int]:
    calls: list[int] = []

    def torn(f: Any, **kw: Any) -> Any:
        calls.append(1)
        tear(path)  # after the audit, before torch reads a byte
        return REAL_LOAD(f, **kw)

    monkeypatch.setattr(_torch, "ORIGINAL_LOAD", torn)
    return calls


@pytest.mark.parametrize("tear", sorted(TEARS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_torn_torch_file_is_file_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         tear: str, kind: str) -> None:
    legacy, kwargs = KINDS[kind]
    path = save_torch(tmp_path / "m.pt", legacy_state_dict() if legacy else benign_state_dict(),
                      legacy=legacy)
    calls = _tear_before_load(monkeypatch, path, TEARS[tear])
    with pytest.raises(FileChangedError) as ei:
        ckptguard.safe_load(path, **kwargs)
    assert calls == [1] and str(path) in str(ei.value)


@pytest.mark.parametrize("tear", sorted(TEARS))
def test_torn_file_through_the_gate_is_file_changed(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    tear: str) -> None:
    path = save_torch(tmp_path / "m.pt", benign_state_dict())
    calls = _tear_before_load(monkeypatch, path, TEARS[tear])
    with ckptguard.guard_torch_load(), pytest.raises(FileChangedError):
        torch.load(path)
    assert calls == [1]


def test_torch_error_on_unchanged_file_is_not_translated(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: a load failure on a file that did NOT change keeps torch's own error."""
    path = save_torch(tmp_path / "m.pt", benign_state_dict())

    def failing(f: Any, **kw: Any) -> Any:
        raise RuntimeError("PytorchStreamReader failed reading zip archive")

    monkeypatch.setattr(_torch, "ORIGINAL_LOAD", failing)
    with pytest.raises(RuntimeError, match="PytorchStreamReader") as ei:
        ckptguard.safe_load(path)
    assert not isinstance(ei.value, FileChangedError)


@pytest.mark.parametrize("tear", ["truncate-0", "truncate-half", "cut-1-byte", "zero-middle"])
@pytest.mark.parametrize("copy", [False, True])
def test_torn_safetensors_is_file_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          tear: str, copy: bool) -> None:
    """The seam: after the identity check, just before the loader maps the file (default)
    or reads its first tensor (copy=True)."""
    path = save_safetensors(tmp_path / "m.safetensors", _big_sd())
    torn: list[int] = []
    seam = "_read_owned" if copy else "_map"
    real = getattr(st_loader, seam)

    def tear_first(*args: Any) -> Any:
        if not torn:
            torn.append(1)
            TEARS[tear](path)
        return real(*args)

    monkeypatch.setattr(st_loader, seam, tear_first)
    with pytest.raises(FileChangedError):
        ckptguard.safe_load(path, copy=copy)
    assert torn == [1]


# --- importing torch under an address-space limit ------------------------------------------

_CHILD = """
import resource, sys
import ckptguard
limit = {limit}
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    ckptguard.safe_load({path!r})
    print("loaded")
except ckptguard.LoaderUnavailableError as e:
    print("LoaderUnavailableError:", e)
"""


@pytest.mark.parametrize("limit_mb", [150, 200])
def test_torch_import_out_of_memory_names_the_cause(tmp_path: Path, limit_mb: int) -> None:
    path = save_torch(tmp_path / "m.pt", {"x": torch.ones(2)})
    env = {**os.environ, "PYTHONPATH": SRC}
    code = _CHILD.format(limit=limit_mb << 20, path=str(path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=180, check=False)
    out = r.stdout
    assert "LoaderUnavailableError" in out, (out, r.stderr[-2000:])
    assert "not installed" not in out
    assert "out of memory" in out and "RLIMIT_AS" in out


@pytest.mark.slow
def test_torch_import_without_limit_loads(tmp_path: Path) -> None:
    """Control: the same child without the limit loads."""
    path = save_torch(tmp_path / "m.pt", {"x": torch.ones(2)})
    env = {**os.environ, "PYTHONPATH": SRC}
    r = subprocess.run([sys.executable, "-c", _CHILD.format(limit=0, path=str(path))],
                       capture_output=True, text=True, env=env, timeout=180, check=False)
    assert r.stdout.strip() == "loaded", r.stderr[-2000:]


@pytest.mark.parametrize(("exc", "expect"), [
    (ModuleNotFoundError("No module named 'torch'", name="torch"), "not installed"),
    (ModuleNotFoundError("No module named 'torch._C'", name="torch._C"), "could not be imported ("),
    (MemoryError(), "out of memory"),
    (OSError(12, "Cannot allocate memory"), "out of memory"),
    (ImportError("libtorch_cpu.so: failed to map segment from shared object"), "out of memory"),
    (ImportError("libc10.so: cannot open shared object file"), "could not be imported ("),
    (OSError(5, "Input/output error"), "could not be imported ("),
])
def test_import_failure_table(exc: BaseException, expect: str) -> None:
    err = _torch.import_failure(exc)
    assert isinstance(err, LoaderUnavailableError)
    assert expect in str(err)
    assert ("not installed" in str(err)) == (expect == "not installed")


# --- tensors that follow the file; copy=True detaches them ---------------------------------

def _rewrite_in_place(path: Path) -> None:
    """Same inode, same size: every byte after the first 4 KiB flipped (tensor data)."""
    data = bytearray(path.read_bytes())
    for i in range(len(data)):
        data[i] ^= 0xFF
    with open(path, "r+b") as fh:
        fh.write(bytes(data))


def _big_sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"w": torch.randn(64, 1024, generator=g), "b": torch.randn(4096, generator=g)}


@pytest.mark.parametrize("kind", ["zip", "safetensors"])
def test_copy_true_does_not_follow_the_file(tmp_path: Path, kind: str) -> None:
    sd = _big_sd()
    if kind == "zip":
        path = save_torch(tmp_path / "m.pt", sd)
        ref = REAL_LOAD(path, weights_only=True)
    else:
        path = save_safetensors(tmp_path / "m.safetensors", sd)
        ref = load_file(str(path))
    ref = {k: v.clone() for k, v in ref.items()}
    out = ckptguard.safe_load(path, copy=True)
    for k in sd:
        assert_same_tensor(out[k], ref[k], k)
    _rewrite_in_place(path)
    for k in sd:
        assert_same_tensor(out[k], ref[k], k)   # unchanged after a rewrite
    os.truncate(path, 0)
    for k in sd:
        assert_same_tensor(out[k], ref[k], k)   # and readable after truncation (no SIGBUS)


@pytest.mark.parametrize("kind", ["zip", "safetensors"])
def test_copy_true_is_bit_exact(tmp_path: Path, kind: str) -> None:
    if kind == "zip":
        path = save_torch(tmp_path / "m.pt", benign_state_dict())
        assert_same_state_dict(ckptguard.safe_load(path, copy=True),
                               REAL_LOAD(path, weights_only=True))
    else:
        path = save_safetensors(tmp_path / "m.safetensors", safetensors_state_dict())
        ours = ckptguard.safe_load(path, copy=True)
        for k, v in load_file(str(path)).items():
            assert_same_tensor(ours[k], v, k)


def test_copy_true_through_iter_and_load_state_dict(tmp_path: Path) -> None:
    path = save_safetensors(tmp_path / "m.safetensors", _big_sd())
    ref = {k: v.clone() for k, v in load_file(str(path)).items()}
    with ckptguard.iter_state_dict(path, copy=True) as it:
        got = dict(it)
    lsd = ckptguard.load_state_dict(path, copy=True)
    os.truncate(path, 0)
    for k, v in ref.items():
        assert_same_tensor(got[k], v, k)
        assert_same_tensor(lsd[k], v, k)


@pytest.mark.parametrize("kind", ["zip", "safetensors"])
def test_without_copy_tensors_follow_the_file(tmp_path: Path, kind: str) -> None:
    """The documented difference: the default (mapped) tensors change with the file."""
    sd = _big_sd()
    path = save_torch(tmp_path / "m.pt", sd) if kind == "zip" else \
        save_safetensors(tmp_path / "m.safetensors", sd)
    out = ckptguard.safe_load(path)
    before = out["w"].clone()
    assert torch.equal(out["w"], sd["w"])
    _rewrite_in_place(path)
    assert not torch.equal(out["w"], before)


_SIGBUS_CHILD = """
import os, sys, ckptguard

out = ckptguard.safe_load({path!r}, copy={copy})
os.truncate({path!r}, 0)
print(float(out["w"].sum()))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["zip", "safetensors"])
@pytest.mark.parametrize("copy", [False, True])
def test_truncation_sigbus_only_without_copy(tmp_path: Path, kind: str, copy: bool) -> None:
    sd = _big_sd()
    path = save_torch(tmp_path / "m.pt", sd) if kind == "zip" else \
        save_safetensors(tmp_path / "m.safetensors", sd)
    env = {**os.environ, "PYTHONPATH": SRC}
    r = subprocess.run([sys.executable, "-c", _SIGBUS_CHILD.format(path=str(path), copy=copy)],
                       capture_output=True, text=True, env=env, timeout=180, check=False)
    if copy:
        assert r.returncode == 0, r.stderr[-2000:]
        assert float(r.stdout) == pytest.approx(float(sd["w"].sum()), rel=1e-5)
    else:
        assert r.returncode == -7, (r.returncode, r.stderr[-2000:])  # SIGBUS
