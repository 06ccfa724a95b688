"""Model folders, sharded checkpoints and remote code (analysis/folder.py, analysis/jsonfile.py)."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import ckptguard
from ckptguard import Limits, Verdict
from ckptguard.model import Format, Report

ST = "model.safetensors.index.json"
S1 = "model-00001-of-00002.safetensors"
S2 = "model-00002-of-00002.safetensors"


def sharded_safetensors(d: Path, *, index: dict[str, Any] | None = None) -> dict[str, Any]:
    d.mkdir(parents=True, exist_ok=True)
    save_file({"enc.w": torch.zeros(2, 2), "enc.b": torch.zeros(2)}, str(d / S1),
              metadata={"format": "pt"})
    save_file({"dec.w": torch.ones(3)}, str(d / S2), metadata={"format": "pt"})
    idx = index if index is not None else {
        "metadata": {"total_size": 36},
        "weight_map": {"enc.w": S1, "enc.b": S1, "dec.w": S2},
    }
    (d / ST).write_text(json.dumps(idx))
    (d / "config.json").write_text(json.dumps({"model_type": "toy", "hidden_size": 2}))
    return idx


def child(r: Report, name: str) -> Report:
    for c in r.children:
        if os.path.basename(c.path) == name:
            return c
    raise KeyError(name)


# --- benign folders ----------------------------------------------------------------------

def test_sharded_safetensors_folder_is_safe(tmp_path: Path) -> None:
    d = tmp_path / "model"
    sharded_safetensors(d)
    (d / "README.md").write_text("# toy model\n")
    (d / "tokenizer.model").write_bytes(b"\x0a\x05hello\x12\x03abc")  # sentencepiece-ish
    (d / "vocab.txt").write_text("a\nb\n")
    r = ckptguard.scan(d)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    assert r.format is Format.MODEL_FOLDER
    names = [os.path.basename(c.path) for c in r.children]
    assert names == sorted(names) == ["config.json", S1, S2, ST]
    md = dict(r.metadata)
    assert md["skipped_files"] == "3" and md["files"] == "4"
    assert {t.name for t in child(r, S1).tensors} == {"enc.w", "enc.b"}


def test_json_arrays_and_other_data_are_skipped(tmp_path: Path) -> None:
    sharded_safetensors(tmp_path)
    (tmp_path / "modules.json").write_text(json.dumps([{"idx": 0, "type": "x"}]))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    os.symlink(tmp_path / "nowhere", tmp_path / "README.md")
    r = ckptguard.scan(tmp_path)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    assert dict(r.metadata)["skipped_files"] == "3"


def test_garbage_index_is_still_audited(tmp_path: Path) -> None:
    sharded_safetensors(tmp_path)
    (tmp_path / ST).write_bytes(b"\x00garbage")
    r = ckptguard.scan(tmp_path)
    assert r.verdict is Verdict.UNSAFE and {"CKG001", "CKG701"} <= r.rule_ids()


def test_scan_index_json_audits_its_shards(tmp_path: Path) -> None:
    d = tmp_path / "model"
    sharded_safetensors(d)
    r = ckptguard.scan(d / ST)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    assert sorted(os.path.basename(c.path) for c in r.children) == [S1, S2]
    assert {(t.name, t.file, t.shape) for t in r.tensors} == {
        ("enc.w", S1, (2, 2)), ("enc.b", S1, (2,)), ("dec.w", S2, (3,))}


def test_sharded_bin_folder_is_safe(tmp_path: Path) -> None:
    d = tmp_path / "model"
    d.mkdir()
    torch.save({"a.w": torch.zeros(2), "a.b": torch.zeros(1)},
               d / "pytorch_model-00001-of-00002.bin")
    torch.save({"b.w": torch.ones(3)}, d / "pytorch_model-00002-of-00002.bin")
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        "a.w": "pytorch_model-00001-of-00002.bin", "a.b": "pytorch_model-00001-of-00002.bin",
        "b.w": "pytorch_model-00002-of-00002.bin"}}))
    r = ckptguard.scan(d)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    r = ckptguard.scan(d / "pytorch_model.bin.index.json")
    assert r.verdict is Verdict.SAFE and {t.name for t in r.tensors} == {"a.w", "a.b", "b.w"}


def test_subfolders_are_walked(tmp_path: Path) -> None:
    d = tmp_path / "pipe"
    sharded_safetensors(d / "unet")
    (d / "vae").mkdir()
    save_file({"x": torch.zeros(1)}, str(d / "vae" / "d.safetensors"))
    r = ckptguard.scan(d)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    rels = [os.path.relpath(c.path, d) for c in r.children]
    assert rels == sorted(rels) and os.path.join("vae", "d.safetensors") in rels


def test_hf_cache_snapshot_links_to_blobs_are_inside(tmp_path: Path) -> None:
    repo = tmp_path / "models--org--toy"
    staging = tmp_path / "staging"
    sharded_safetensors(staging)
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(os.listdir(staging))):
        blob = repo / "blobs" / f"hash{i}"
        os.replace(staging / f, blob)
        os.symlink(os.path.join("..", "..", "blobs", f"hash{i}"), snap / f)
    r = ckptguard.scan(snap)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    r = ckptguard.scan(snap / ST)
    assert r.verdict is Verdict.SAFE and len(r.tensors) == 3


@pytest.mark.parametrize("name,payload", [
    ("optimizer.pt", {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}),
    ("scheduler.pt", {"last_epoch": 3, "base_lrs": [0.1]}),
])
def test_benign_training_files_are_audited_safe(tmp_path: Path, name: str, payload: Any) -> None:
    save_file({"w": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    torch.save(payload, tmp_path / name)
    r = ckptguard.scan(tmp_path)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    assert child(r, name).format is Format.TORCH_ZIP


# --- pickle-bearing files audited by content ---------------------------------------------

def _reduce_payload(marker: Path) -> bytes:
    cmd = f"touch {marker}".encode()
    return b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(cmd)) + cmd + b"\x85R."


@pytest.mark.parametrize("name", ["training_args.bin", "rng_state.pth", "model.pkl",
                                  "scaler.joblib", "notes.txt"])
def test_hostile_pickle_files_in_folder(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "PWNED"
    save_file({"w": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    (tmp_path / name).write_bytes(_reduce_payload(marker))
    r = ckptguard.scan(tmp_path)
    assert r.verdict is Verdict.UNSAFE and "CKG101" in r.rule_ids()
    assert child(r, name).verdict is Verdict.UNSAFE
    assert not marker.exists()
    if name.endswith(".txt"):
        assert "CKG003" in r.rule_ids()


def test_training_args_namespace_is_not_allowlisted(tmp_path: Path) -> None:
    (tmp_path / "training_args.bin").write_bytes(
        pickle.dumps(argparse.Namespace(lr=0.1), protocol=2))
    r = ckptguard.scan(tmp_path)
    assert r.verdict is Verdict.UNSAFE and "CKG102" in r.rule_ids()


# --- remote code -------------------------------------------------------------------------

def test_config_auto_map_is_remote_code(tmp_path: Path) -> None:
    sharded_safetensors(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "toy", "auto_map": {
        "AutoConfig": "configuration_toy.ToyConfig",
        "AutoModel": "modeling_toy.ToyModel"}}))
    r = ckptguard.scan(tmp_path)
    assert r.verdict is Verdict.UNSAFE and "CKG705" in r.rule_ids()
    f = next(f for f in r.all_findings() if f.rule_id == "CKG705")
    assert "modeling_toy.ToyModel" in f.evidence_dict["classes"]
    assert "configuration_toy.ToyConfig" in f.message


def test_tokenizer_config_auto_map_list_form(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"auto_map": {
        "AutoTokenizer": ["tokenization_toy.ToyTokenizer", None]}}))
    r = ckptguard.scan(tmp_path / "tokenizer_config.json")
    assert r.verdict is Verdict.UNSAFE and "CKG705" in r.rule_ids()
    assert "tokenization_toy.ToyTokenizer" in r.findings[0].evidence_dict["classes"]


def test_python_files_beside_weights(tmp_path: Path) -> None:
    sharded_safetensors(tmp_path)
    (tmp_path / "modeling_toy.py").write_text("import os\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "helper.py").write_text("x = 1\n")
    r = ckptguard.scan(tmp_path)
    assert r.verdict is Verdict.UNSAFE and "CKG705" in r.rule_ids()
    files = {f.evidence_dict["file"] for f in r.findings if f.rule_id == "CKG705"}
    assert files == {"modeling_toy.py", os.path.join("sub", "helper.py")}


def test_plain_config_alone_is_safe(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "toy", "layers": [1, 2, {"a": None}]}))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and r.format is Format.JSON and r.rule_ids() == set()


def test_invalid_config_json_is_unknown(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    p.write_text('{"model_type": "toy",')
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.INCOMPLETE and "CKG001" in r.rule_ids()


# --- CKG701: index invalid ---------------------------------------------------------------

@pytest.mark.parametrize("text", [
    pytest.param('{"weight_map": {"a": "x.safetensors",', id="truncated-json"),
    pytest.param('{"metadata": {}}', id="no-weight-map"),
    pytest.param('{"weight_map": ["x.safetensors"]}', id="weight-map-list"),
    pytest.param('{"weight_map": {"enc.w": 3}}', id="value-not-string"),
    pytest.param(f'{{"weight_map": {{"enc.w": "{S1}", "enc.w": "{S2}"}}}}', id="duplicate-key"),
    pytest.param(f'{{"weight_map": {{"": "{S1}"}}}}', id="empty-tensor-name"),
])
def test_invalid_index_ckg701(tmp_path: Path, text: str) -> None:
    sharded_safetensors(tmp_path)
    (tmp_path / ST).write_text(text)
    for target in (tmp_path, tmp_path / ST):
        r = ckptguard.scan(target)
        assert r.verdict is Verdict.UNSAFE and "CKG701" in r.rule_ids(), target


def test_index_deep_nesting_is_not_safe(tmp_path: Path) -> None:
    sharded_safetensors(tmp_path)
    (tmp_path / ST).write_text('{"weight_map": ' + "[" * 200 + "]" * 200 + "}")
    r = ckptguard.scan(tmp_path / ST)
    assert r.verdict is Verdict.INCOMPLETE and "CKG901" in r.rule_ids() and r.problems == ()


# --- CKG702: outside the folder ----------------------------------------------------------

@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../" + S1,
                                   "..", "C:\\x.safetensors", "a\\b.safetensors"])
def test_weight_map_path_outside_folder(tmp_path: Path, shard: str) -> None:
    d = tmp_path / "model"
    sharded_safetensors(d, index={"weight_map": {"enc.w": S1, "enc.b": S1, "dec.w": S2,
                                                 "evil": shard}})
    save_file({"evil": torch.zeros(1)}, str(tmp_path / "outside.safetensors"))
    r = ckptguard.scan(d / ST)
    assert r.verdict is Verdict.UNSAFE and "CKG702" in r.rule_ids()


def test_shard_link_outside_folder(tmp_path: Path) -> None:
    d = tmp_path / "model"
    sharded_safetensors(d)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.replace(d / S2, elsewhere / S2)
    os.symlink(elsewhere / S2, d / S2)
    r = ckptguard.scan(d / ST)
    assert r.verdict is Verdict.UNSAFE and "CKG702" in r.rule_ids()
    r = ckptguard.scan(d)
    assert r.verdict is Verdict.UNSAFE and "CKG702" in r.rule_ids()


# --- CKG703: missing shard ----------------------------------------------------------------

def test_missing_shard(tmp_path: Path) -> None:
    sharded_safetensors(tmp_path)
    (tmp_path / S2).unlink()
    for target in (tmp_path, tmp_path / ST):
        r = ckptguard.scan(target)
        assert r.verdict is Verdict.UNSAFE and "CKG703" in r.rule_ids()


# --- CKG704: index and shards disagree ---------------------------------------------------

def test_tensor_missing_from_its_shard(tmp_path: Path) -> None:
    sharded_safetensors(tmp_path, index={"weight_map": {"enc.w": S1, "enc.b": S1,
                                                        "dec.w": S2, "ghost": S2}})
    r = ckptguard.scan(tmp_path)
    assert r.verdict is Verdict.UNSAFE and "CKG704" in r.rule_ids()


def test_tensor_in_two_shards(tmp_path: Path) -> None:
    sharded_safetensors(tmp_path)
    save_file({"dec.w": torch.ones(3), "enc.w": torch.full((2, 2), 9.0)}, str(tmp_path / S2))
    r = ckptguard.scan(tmp_path / ST)
    assert r.verdict is Verdict.UNSAFE and "CKG704" in r.rule_ids()
    assert any("more than one shard" in f.message for f in r.findings)


def test_shard_tensor_not_in_index(tmp_path: Path) -> None:
    sharded_safetensors(tmp_path, index={"weight_map": {"enc.w": S1, "dec.w": S2}})
    r = ckptguard.scan(tmp_path / ST)
    assert r.verdict is Verdict.UNSAFE and "CKG704" in r.rule_ids()


def test_tensor_mapped_to_wrong_shard(tmp_path: Path) -> None:
    sharded_safetensors(tmp_path, index={"weight_map": {"enc.w": S2, "enc.b": S1,
                                                        "dec.w": S2}})
    r = ckptguard.scan(tmp_path)
    assert r.verdict is Verdict.UNSAFE and "CKG704" in r.rule_ids()


def test_shard_outside_the_index(tmp_path: Path) -> None:
    sharded_safetensors(tmp_path)
    save_file({"extra": torch.zeros(1)}, str(tmp_path / "model-00003-of-00003.safetensors"))
    r = ckptguard.scan(tmp_path / ST)
    assert r.verdict is Verdict.UNSAFE and "CKG704" in r.rule_ids()


def test_bin_shard_missing_tensor(tmp_path: Path) -> None:
    torch.save({"a.w": torch.zeros(2)}, tmp_path / "pytorch_model-00001-of-00001.bin")
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {
        "a.w": "pytorch_model-00001-of-00001.bin",
        "a.b": "pytorch_model-00001-of-00001.bin"}}))
    r = ckptguard.scan(tmp_path)
    assert r.verdict is Verdict.UNSAFE and "CKG704" in r.rule_ids()


# --- links, unreadable files, limits -----------------------------------------------------

def test_symlink_loop_and_dangling_link(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    os.symlink(tmp_path / "loop.bin", tmp_path / "loop.bin")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.pt")
    r = ckptguard.scan(tmp_path)
    assert r.verdict is Verdict.INCOMPLETE and "CKG010" in r.rule_ids()
    assert child(r, "loop.bin").verdict is Verdict.INCOMPLETE
    assert child(r, "dangling.pt").verdict is Verdict.INCOMPLETE


def test_directory_links_are_not_followed(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    os.symlink(tmp_path, tmp_path / "again")
    r = ckptguard.scan(tmp_path)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    assert dict(r.metadata)["skipped_dir_links"] == "again"


def test_fifo_in_folder_is_not_read(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    os.mkfifo(tmp_path / "pytorch_model.bin")
    r = ckptguard.scan(tmp_path)  # must not block on the FIFO
    assert r.verdict is Verdict.INCOMPLETE and "CKG010" in r.rule_ids()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_unreadable_file(tmp_path: Path) -> None:
    p = tmp_path / "model.bin"
    p.write_bytes(b"x")
    p.chmod(0)
    try:
        r = ckptguard.scan(tmp_path)
    finally:
        p.chmod(0o600)
    assert r.verdict is Verdict.INCOMPLETE and "CKG010" in r.rule_ids()


def test_max_files_limit(tmp_path: Path) -> None:
    for i in range(5):
        save_file({"w": torch.zeros(1)}, str(tmp_path / f"m{i}.safetensors"))
    r = ckptguard.scan(tmp_path, limits=Limits(max_files=3))
    assert r.verdict is Verdict.INCOMPLETE and "CKG901" in r.rule_ids()
    assert len(r.children) <= 3


def test_empty_folder_is_not_safe(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("nothing here")
    r = ckptguard.scan(tmp_path)
    assert r.verdict is Verdict.INCOMPLETE and "CKG001" in r.rule_ids()


def test_child_unsafe_makes_folder_unsafe_over_incomplete(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(_reduce_payload(tmp_path / "PWNED"))
    os.symlink(tmp_path / "nowhere", tmp_path / "b.pt")
    r = ckptguard.scan(tmp_path)
    assert r.verdict is Verdict.UNSAFE and {"CKG101", "CKG010"} <= r.rule_ids()


def test_folder_report_round_trips(tmp_path: Path) -> None:
    sharded_safetensors(tmp_path)
    r = ckptguard.scan(tmp_path)
    assert Report.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()


def test_shard_whose_names_collide_once_flattened(tmp_path: Path) -> None:
    """{"m.a": x, "m": {"a": y}} in a .bin shard: transformers' load_state_dict sees
    "m.a" = x, a flattening loader keeps the last one. The index scan said SAFE."""
    d = tmp_path / "model"
    d.mkdir()
    torch.save({"m.a": torch.tensor([9.0]), "m": {"a": torch.tensor([1.0])}},
               d / "s1.bin")
    (d / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"m.a": "s1.bin"}}))
    r = ckptguard.scan(d / "pytorch_model.bin.index.json")
    assert r.verdict is Verdict.UNSAFE and "CKG704" in r.rule_ids(), sorted(r.rule_ids())
    assert any("once its nesting is flattened" in f.message for f in r.findings)


@pytest.mark.parametrize("layout", ["self", "mutual"])
def test_index_naming_an_index_is_not_followed(tmp_path: Path, layout: str) -> None:
    """An index json named as a shard (itself, or two naming each other) recursed without
    end (INCOMPLETE with a RecursionError; safe_load raised it raw). A loader opens a shard
    as a checkpoint, never as an index: the tensors are not in it (CKG704)."""
    d = tmp_path / "model"
    d.mkdir()
    a, b = d / "a.safetensors.index.json", d / "b.safetensors.index.json"
    other = a if layout == "self" else b
    a.write_text(json.dumps({"metadata": {}, "weight_map": {"w": other.name}}))
    b.write_text(json.dumps({"metadata": {}, "weight_map": {"w": a.name}}))
    r = ckptguard.scan(a)
    assert r.verdict is Verdict.UNSAFE and "CKG704" in r.rule_ids(), sorted(r.rule_ids())
    assert "CKG902" not in r.rule_ids()
    with pytest.raises(ckptguard.UnsafeCheckpointError):
        ckptguard.safe_load(a)
