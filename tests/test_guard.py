"""The torch.load gate: every torch.load in the process goes through the audit, for paths
and file-like objects; hostile files never reach torch's unpickler."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ckg_loader_helpers import (
    assert_same_state_dict,
    assert_same_tensor,
    benign_state_dict,
    hostile_raw_pickle,
    hostile_torch_zip,
    hostile_zip_bytes,
    legacy_state_dict,
    safetensors_state_dict,
    save_safetensors,
    save_torch,
)
from safetensors.torch import load_file

import ckptguard
from ckptguard import Policy, UnsafeCheckpointError
from ckptguard.guard import ENV_VAR, TorchLoadGuard, install_from_env, is_torch_load_guarded
from ckptguard.loaders import _torch, gate

REAL_LOAD = _torch.ORIGINAL_LOAD
TORCH_LOAD = torch.load  # the public function object: the gate never replaces the name
SRC = str(Path(ckptguard.__file__).resolve().parents[1])


@pytest.fixture(autouse=True)
def _no_leftover_guard() -> object:
    yield
    assert gate.current() is None, "a test left a guard enabled"
    assert torch.load is TORCH_LOAD and torch.serialization.load is TORCH_LOAD
    assert TORCH_LOAD.__code__ is _torch.ORIGINAL_CODE, "the gate's code was left installed"
    for name in gate.BACKSTOPPED:
        assert not hasattr(getattr(torch.serialization, name), "__ckptguard_backstop__")


@pytest.fixture
def no_torch_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> object:
        pytest.fail("the unsafe loader was reached")

    monkeypatch.setattr(_torch, "ORIGINAL_LOAD", fail)


def test_context_manager_patches_and_restores() -> None:
    assert not is_torch_load_guarded()
    with ckptguard.guard_torch_load() as g:
        assert isinstance(g, TorchLoadGuard) and g.active
        # the names still name torch's own function; its code is the gate's trampoline
        assert torch.load is TORCH_LOAD and torch.serialization.load is TORCH_LOAD
        assert TORCH_LOAD.__code__ is gate.TRAMPOLINE_CODE and gate.is_installed()
        assert is_torch_load_guarded()
    assert not g.active
    assert TORCH_LOAD.__code__ is _torch.ORIGINAL_CODE and not is_torch_load_guarded()


def test_process_wide_switch_and_nesting() -> None:
    outer = ckptguard.guard_torch_load()
    try:
        with ckptguard.guard_torch_load():
            assert is_torch_load_guarded()
        assert is_torch_load_guarded()  # the outer switch is still on
    finally:
        outer.disable()
    outer.disable()  # idempotent
    assert not is_torch_load_guarded()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("mmap", [None, False, True])
def test_guarded_path_load_is_unchanged(tmp_path: Path, legacy: bool, mmap: bool | None) -> None:
    sd = legacy_state_dict() if legacy else benign_state_dict()
    path = save_torch(tmp_path / "m.pt", sd, legacy=legacy)
    if legacy and mmap:
        with ckptguard.guard_torch_load(), pytest.raises(RuntimeError, match="mmap"):
            torch.load(path, mmap=True)  # torch's own rule, kept
        return
    ref = REAL_LOAD(path, weights_only=True, mmap=mmap)
    with ckptguard.guard_torch_load():
        ours = torch.load(path, mmap=mmap)
        ours_str = torch.load(str(path), map_location="cpu", mmap=mmap)
    assert_same_state_dict(ours, ref)
    assert_same_state_dict(ours_str, ref)


def test_guarded_file_like(tmp_path: Path) -> None:
    path = save_torch(tmp_path / "m.pt", benign_state_dict())
    ref = REAL_LOAD(path, weights_only=True)
    with ckptguard.guard_torch_load():
        with open(path, "rb") as fh:
            a = torch.load(fh)
        b = torch.load(io.BytesIO(path.read_bytes()), map_location=torch.device("cpu"))
    assert_same_state_dict(a, ref)
    assert_same_state_dict(b, ref)


def test_guarded_file_like_reads_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_torch(tmp_path / "m.pt", {"x": torch.arange(4)})

    class OneShot(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data, self.reads = data, 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            self.reads += 1
            assert self.reads == 1, "the file-like object was read twice"
            return self.data

    src = OneShot(path.read_bytes())
    with ckptguard.guard_torch_load():
        out = torch.load(src)
    assert torch.equal(out["x"], torch.arange(4))


def test_guarded_safetensors_path(tmp_path: Path) -> None:
    path = save_safetensors(tmp_path / "m.safetensors", safetensors_state_dict())
    with ckptguard.guard_torch_load():
        ours = torch.load(path)
    for k, v in load_file(str(path)).items():
        assert_same_tensor(ours[k], v, k)


@pytest.mark.parametrize("make", [hostile_torch_zip, hostile_raw_pickle], ids=["zip", "pickle"])
def test_hostile_path_never_reaches_torch_load(tmp_path: Path, make: object,
                                               no_torch_load: None) -> None:
    marker = tmp_path / "pwned"
    path = make(tmp_path / "evil.pt", marker)  # type: ignore[operator]
    with ckptguard.guard_torch_load():
        for kwargs in ({}, {"weights_only": False}, {"map_location": "meta"},
                       {"pickle_module": __import__("pickle"), "weights_only": False}):
            with pytest.raises(UnsafeCheckpointError):
                torch.load(path, **kwargs)
            with pytest.raises(UnsafeCheckpointError):
                torch.serialization.load(str(path), **kwargs)
    assert not marker.exists()


def test_hostile_file_like_never_reaches_torch_load(tmp_path: Path,
                                                    no_torch_load: None) -> None:
    marker = tmp_path / "pwned"
    with ckptguard.guard_torch_load():
        with pytest.raises(UnsafeCheckpointError):
            torch.load(io.BytesIO(hostile_zip_bytes(marker)), weights_only=False)
        path = hostile_raw_pickle(tmp_path / "evil.pkl", marker)
        with open(path, "rb") as fh, pytest.raises(UnsafeCheckpointError):
            torch.load(fh, weights_only=False)
    assert not marker.exists()


@pytest.mark.slow
def test_hostile_without_guard_would_run(tmp_path: Path) -> None:
    """Control: the same file, loaded unsafely in a child process, does create the marker."""
    marker = tmp_path / "pwned"
    path = hostile_torch_zip(tmp_path / "evil.pt", marker)
    subprocess.run([sys.executable, "-c",
                    f"import torch; torch.load({str(path)!r}, weights_only=False)"],
                   capture_output=True, check=False, timeout=120)
    assert marker.exists()


def test_guard_policy_extends_safe_globals(tmp_path: Path) -> None:
    import argparse

    path = save_torch(tmp_path / "hp.pt", {"w": torch.ones(1), "args": argparse.Namespace(k=2)})
    with ckptguard.guard_torch_load(), pytest.raises(UnsafeCheckpointError, match="Namespace"):
        torch.load(path)
    policy = Policy().allow("argparse", "Namespace", reason="hparams")
    with ckptguard.guard_torch_load(policy=policy):
        out = torch.load(path, weights_only=False)
    assert out["args"].k == 2


def test_stale_reference_after_guard_is_plain_torch_load(tmp_path: Path) -> None:
    path = save_torch(tmp_path / "m.pt", {"x": torch.ones(2)})
    with ckptguard.guard_torch_load():
        captured = torch.load
    out = captured(path, weights_only=True)
    assert torch.equal(out["x"], torch.ones(2))


def _run_child(code: str, env_on: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    env.pop(ENV_VAR, None)
    if env_on:
        env[ENV_VAR] = "1"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=180, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("torch_first", [True, False])
def test_environment_switch(tmp_path: Path, torch_first: bool) -> None:
    marker = tmp_path / "pwned"
    path = hostile_torch_zip(tmp_path / "evil.pt", marker)
    imports = "import torch\nimport ckptguard.guard as g\n" if torch_first else \
        "import ckptguard.guard as g\n"
    code = (
        imports
        + "assert g.install_from_env()\n"
        + "import torch\n"
        + "try:\n"
        + f"    torch.load({str(path)!r}, weights_only=False)\n"
        + "except Exception as e:\n"
        + "    print(type(e).__name__)\n"
    )
    proc = _run_child(code, env_on=True)
    assert "UnsafeCheckpointError" in proc.stdout, proc.stderr
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("probes", [1, 3])
def test_environment_switch_survives_find_spec_probes(tmp_path: Path, probes: int) -> None:
    """transformers and accelerate ask ``importlib.util.find_spec("torch")`` before they
    import torch; those probes must not use up the hook that guards the real import."""
    marker = tmp_path / "pwned"
    path = hostile_torch_zip(tmp_path / "evil.pt", marker)
    code = (
        "import importlib.util, ckptguard\n"
        + f"for _ in range({probes}):\n"
        + "    assert importlib.util.find_spec('torch') is not None\n"
        + "import torch\n"
        + "print('guarded', ckptguard.guard.is_torch_load_guarded())\n"
        + "try:\n"
        + f"    torch.load({str(path)!r}, weights_only=False)\n"
        + "except Exception as e:\n"
        + "    print(type(e).__name__)\n"
    )
    proc = _run_child(code, env_on=True)
    assert "guarded True" in proc.stdout, proc.stdout + proc.stderr
    assert "UnsafeCheckpointError" in proc.stdout, proc.stderr
    assert not marker.exists()


def test_environment_switch_off() -> None:
    assert install_from_env({}) is False
    assert install_from_env({ENV_VAR: "0"}) is False
    assert not is_torch_load_guarded()


def test_missing_path_is_file_not_found(tmp_path: Path) -> None:
    with ckptguard.guard_torch_load(), pytest.raises(FileNotFoundError):
        torch.load(tmp_path / "missing.pt")
