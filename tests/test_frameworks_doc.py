"""docs/frameworks.md shows what a gate refusal looks like inside transformers and
accelerate: check it against the installed versions (skipped when they are missing)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import ckptguard  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT checkpoint as trainers save it: the state dict plus argparse hparams."""
    folder = tmp_path_factory.mktemp("tiny")
    cfg = transformers.BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=16,
                                  max_position_embeddings=16)
    cfg.save_pretrained(folder)
    sd = transformers.BertModel(cfg).state_dict()
    sd["training_args"] = argparse.Namespace(lr=1e-3)
    torch.save(sd, folder / "pytorch_model.bin")
    return folder


def _refusal(exc: BaseException | None) -> ckptguard.UnsafeCheckpointError | None:
    """The helper docs/frameworks.md gives: the gate's refusal behind a framework's error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ckptguard.UnsafeCheckpointError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def test_transformers_refusal_reaches_the_user(tiny: Path) -> None:
    with ckptguard.guard_torch_load(), \
            pytest.raises((ckptguard.UnsafeCheckpointError, OSError)) as info:
        transformers.BertModel.from_pretrained(tiny)
    refusal = _refusal(info.value)
    assert refusal is not None, repr(info.value)
    assert refusal.report.verdict is ckptguard.Verdict.UNSAFE
    assert {"CKG102", "CKG111"} <= refusal.report.rule_ids()
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert info.value is refusal  # 5.x: unchanged (4.x wraps it in an OSError)


def test_transformers_loads_with_the_documented_policy(tiny: Path) -> None:
    policy = ckptguard.Policy().allow("argparse", "Namespace", reason="hparams of our trainer")
    with ckptguard.guard_torch_load(policy=policy):
        model = transformers.BertModel.from_pretrained(tiny)
    assert type(model).__name__ == "BertModel"


def test_accelerate_refusal_is_unchanged(tiny: Path) -> None:
    accelerate_utils = pytest.importorskip("accelerate.utils")
    model = transformers.BertModel(transformers.BertConfig.from_pretrained(tiny))
    with ckptguard.guard_torch_load(), pytest.raises(ckptguard.UnsafeCheckpointError) as info:
        accelerate_utils.load_checkpoint_in_model(model, str(tiny / "pytorch_model.bin"))
    assert "CKG102" in info.value.report.rule_ids()
