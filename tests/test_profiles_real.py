"""Profiles against the real artifacts of the real libraries (issue 11.2/11.3): a
transformers Trainer checkpoint folder and an accelerate ``save_state`` folder scan SAFE
under their profiles, resume under the torch.load gate, and refusals are logged at WARNING.
Skipped with a reason where transformers / accelerate are not installed."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import ckptguard
from ckptguard.cli import cli
from ckptguard.guard import is_torch_load_guarded
from ckptguard.model import Severity, Verdict

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _transformers() -> Any:
    return pytest.importorskip("transformers", reason="transformers is not installed")


def _accelerate() -> Any:
    return pytest.importorskip("accelerate", reason="accelerate is not installed")


class _DS(torch.utils.data.Dataset):  # type: ignore[misc]
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, Any]:
        x = torch.arange(8) % 32
        return {"input_ids": x, "labels": x}


def _trainer(out: Path, max_steps: int) -> Any:
    tf = _transformers()
    cfg = tf.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=32, n_positions=16)
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(cfg)  # a tiny model built locally: no hub download
    args = tf.TrainingArguments(output_dir=str(out), max_steps=max_steps, save_steps=1,
                                per_device_train_batch_size=2, report_to=[], use_cpu=True,
                                disable_tqdm=True, logging_strategy="no")
    return tf.Trainer(model=model, args=args, train_dataset=_DS())


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf")
    _trainer(out, 2).train()
    return out


@pytest.fixture(scope="module")
def acc_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    acc_mod = _accelerate()
    out = tmp_path_factory.mktemp("acc") / "state"
    acc = acc_mod.Accelerator(cpu=True)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    model, opt, sched = acc.prepare(model, opt, sched)
    acc.backward(model(torch.randn(3, 4)).sum())
    opt.step()
    sched.step()
    acc.save_state(str(out))
    return out


class _Warnings:
    """WARNING+ records of the ``ckptguard`` logger seen so far."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.caplog.records
                if r.name == "ckptguard" and r.levelno >= logging.WARNING]


@pytest.fixture()
def ckptguard_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[_Warnings]:
    caplog.set_level(logging.WARNING, logger="ckptguard")
    yield _Warnings(caplog)


def _scan_cli(*args: str) -> int:
    return CliRunner().invoke(cli, ["scan", *args], catch_exceptions=False).exit_code


# --- transformers Trainer ----------------------------------------------------------------------

@pytest.mark.slow
def test_trainer_folder_is_medium_only_without_profile(hf_run: Path) -> None:
    ckpt = hf_run / "checkpoint-2"
    r = ckptguard.scan(ckpt)
    assert r.verdict is Verdict.UNSAFE
    assert r.max_severity is Severity.MEDIUM  # benign framework types: never HIGH/CRITICAL
    assert "CKG102" in r.rule_ids() and not r.rule_ids() & {"CKG101", "CKG104", "CKG120"}
    assert _scan_cli(str(ckpt)) == 1


def test_trainer_folder_scans_safe_under_hf_trainer(hf_run: Path) -> None:
    for ckpt in sorted(hf_run.glob("checkpoint-*")):
        r = ckptguard.scan(ckpt, profiles=["hf-trainer"])
        assert r.verdict is Verdict.SAFE, [(f.rule_id, f.message) for f in r.all_findings()]
        assert "CKG106" in r.rule_ids()
        assert _scan_cli(str(ckpt), "--profile", "hf-trainer") == 0


def test_trainer_resumes_under_the_gate(hf_run: Path, tmp_path: Path,
                                        ckptguard_warnings: _Warnings) -> None:
    t = _trainer(tmp_path, 3)
    with ckptguard.guard_torch_load(profiles=["hf-trainer"]) as g:
        assert g.active and is_torch_load_guarded()
        t.train(resume_from_checkpoint=str(hf_run / "checkpoint-2"))
    assert t.state.global_step == 3
    assert not ckptguard_warnings.messages()


def test_trainer_rng_state_is_restored_bit_for_bit(hf_run: Path, tmp_path: Path) -> None:
    ckpt = hf_run / "checkpoint-2"
    saved = torch.load(ckpt / "rng_state.pth", weights_only=False)
    t = _trainer(tmp_path, 3)
    np.random.seed(123)
    random.seed(123)
    # no profile: transformers' own safe_globals context (numpy types, all BENIGN) is honoured
    with ckptguard.guard_torch_load():
        t._load_rng_state(str(ckpt))
    got = np.random.get_state()
    assert got[0] == saved["numpy"][0] and np.array_equal(got[1], saved["numpy"][1])
    assert got[2:] == tuple(saved["numpy"][2:])
    assert random.getstate() == saved["python"]
    assert torch.equal(torch.get_rng_state(), saved["cpu"])


def test_caller_safe_globals_never_widen_the_gate_beyond_benign(
        tmp_path: Path, ckptguard_warnings: _Warnings) -> None:
    """A checkpoint holding an unreviewed class stays refused even when the caller put that
    class into torch.serialization.safe_globals."""
    import collections

    Point = collections.namedtuple("Point", "x y")  # unreviewed: HIGH
    Point.__module__ = __name__
    globals()["Point"] = Point
    path = tmp_path / "rng_state.pth"
    torch.save({"numpy": np.random.get_state(), "p": Point(1, 2)}, path)
    allowed = [Point, np.ndarray, np.dtype, np._core.multiarray._reconstruct,
               type(np.dtype(np.uint32))]
    with ckptguard.guard_torch_load(), torch.serialization.safe_globals(allowed), \
            pytest.raises(ckptguard.UnsafeCheckpointError) as ei:
        torch.load(path, weights_only=True)
    assert "CKG120" in ei.value.report.rule_ids()
    assert any("refused" in m and "CKG120" in m for m in ckptguard_warnings.messages())


# --- accelerate save_state / load_state ---------------------------------------------------------

def test_accelerate_folder_scans_safe_under_its_profile(acc_state: Path) -> None:
    r = ckptguard.scan(acc_state)
    assert r.verdict is Verdict.UNSAFE and r.max_severity is Severity.MEDIUM
    assert _scan_cli(str(acc_state)) == 1
    r = ckptguard.scan(acc_state, profiles=["accelerate"])
    assert r.verdict is Verdict.SAFE
    assert _scan_cli(str(acc_state), "--profile", "accelerate") == 0


def test_accelerate_load_state_restores_rng_under_the_gate(
        acc_state: Path, ckptguard_warnings: _Warnings) -> None:
    acc_mod = _accelerate()
    states = torch.load(acc_state / "random_states_0.pkl", weights_only=False)
    acc = acc_mod.Accelerator(cpu=True)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    model, opt, sched = acc.prepare(model, opt, sched)
    random.seed(7)
    np.random.seed(7)
    with ckptguard.guard_torch_load(profiles=["accelerate"]):
        acc.load_state(str(acc_state))
    assert random.getstate() == states["random_state"]
    got = np.random.get_state()
    assert np.array_equal(got[1], states["numpy_random_seed"][1])
    assert not ckptguard_warnings.messages()


def test_accelerate_cannot_swallow_a_refusal(acc_state: Path, tmp_path: Path,
                                             ckptguard_warnings: _Warnings) -> None:
    """accelerate catches a failed RNG load and logs it at INFO; ckptguard's WARNING on its
    own logger still says what happened."""
    acc_mod = _accelerate()
    import shutil

    bad = tmp_path / "state"
    shutil.copytree(acc_state, bad)

    class _Evil:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, ("true",))

    (bad / "random_states_0.pkl").write_bytes(pickle.dumps({"random_state": _Evil()}))
    acc = acc_mod.Accelerator(cpu=True)
    model = acc.prepare(torch.nn.Linear(4, 2))
    del model
    # accelerate catches the refusal (some versions may not); the log is what matters
    with ckptguard.guard_torch_load(profiles=["accelerate"]), \
            contextlib.suppress(ckptguard.UnsafeCheckpointError):
        acc.load_state(str(bad))
    msgs = ckptguard_warnings.messages()
    assert any("random_states_0.pkl" in m and "CKG101" in m for m in msgs), msgs
