"""CliRunner tests for ``inspect``, ``explain`` and ``convert``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cli_helpers import evil_pickle, safetensors_bytes, write
from click.testing import CliRunner, Result

from ckptguard.cli import cli

torch = pytest.importorskip("torch")


@pytest.fixture()
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def tied_checkpoint(path: Path, **kw: object) -> dict:
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    sd = {"w": w, "b": torch.zeros(3), "tied": w, "view": w[:, 1], "nested": {"x": torch.ones(2)},
          "step": 7}
    torch.save(sd, path, **kw)
    return sd


# --- inspect ----------------------------------------------------------------------------------

def test_inspect_torch_zip(here: Path) -> None:
    tied_checkpoint(here / "m.pt")
    res = run("inspect", "m.pt")
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "torch-zip" in out and "SAFE" in out
    for name in ("w", "b", "tied", "nested.x"):
        assert name in out
    assert "Shares storage with" in out
    res = run("inspect", "m.pt", "--format", "json")
    doc = json.loads(res.stdout)
    shared = {tuple(sorted(g["tensors"])) for g in doc["shared_storages"]}
    assert any({"w", "tied"} <= set(g) for g in shared)
    by_name = {t["name"]: t for t in doc["tensors"]}
    assert by_name["w"]["shape"] == [2, 3] and by_name["w"]["dtype"]


def test_inspect_legacy(here: Path) -> None:
    tied_checkpoint(here / "old.bin", _use_new_zipfile_serialization=False)
    res = run("inspect", "old.bin")
    assert res.exit_code == 0, res.output
    assert "torch-legacy" in res.stdout and "tied" in res.stdout


def test_inspect_safetensors(here: Path) -> None:
    write(here / "a.safetensors", safetensors_bytes(metadata={"format": "pt"}))
    res = run("inspect", "a.safetensors")
    assert res.exit_code == 0
    assert "w" in res.stdout and "(2)" in res.stdout and "format" in res.stdout


def test_inspect_sharded_index(here: Path) -> None:
    pytest.importorskip("ckptguard.analysis.folder")
    write(here / "m-1.safetensors", safetensors_bytes())
    write(here / "m-2.safetensors", safetensors_bytes(
        {"v": ("F32", [1], b"\x00\x00\x80\x3f")}))
    (here / "m.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"w": "m-1.safetensors", "v": "m-2.safetensors"}}))
    res = run("inspect", "m.safetensors.index.json", "--format", "json")
    doc = json.loads(res.stdout)
    names = {t["name"] for t in doc["tensors"]}
    assert {"w", "v"} <= names, res.output


def test_inspect_unsafe_exit_code(here: Path) -> None:
    write(here / "evil.pkl", evil_pickle())
    res = run("inspect", "evil.pkl")
    assert res.exit_code == 1 and "CKG101" in res.stdout
    assert run("inspect", "missing.pt").exit_code == 2


# --- explain ----------------------------------------------------------------------------------

def test_explain_marks_flagged_calls(here: Path) -> None:
    marker = here / "marker"
    write(here / "evil.pkl", evil_pickle())
    res = run("explain", "evil.pkl")
    assert res.exit_code == 1, res.output
    out = res.stdout
    assert ">> from posix import system" in out or ">> from nt import system" in out
    flagged = [ln for ln in out.splitlines() if ln.startswith(">>")]
    assert any("system('true')" in ln and "CKG101" in ln for ln in flagged)
    assert not marker.exists()


def test_explain_torch_zip(here: Path) -> None:
    tied_checkpoint(here / "m.pt")
    res = run("explain", "m.pt")
    assert res.exit_code == 0, res.output
    assert "data.pkl" in res.stdout and "_rebuild_tensor_v2" in res.stdout
    assert ">>" not in res.stdout


def test_explain_legacy_and_non_pickle(here: Path) -> None:
    tied_checkpoint(here / "old.bin", _use_new_zipfile_serialization=False)
    res = run("explain", "old.bin")
    assert res.exit_code == 0 and "program 4" in res.stdout
    write(here / "a.safetensors", safetensors_bytes())
    res = run("explain", "a.safetensors")
    assert res.exit_code == 0 and "holds no pickle program" in res.stdout


def test_explain_hostile_strings_escaped(here: Path) -> None:
    import pickle

    write(here / "s.pkl", pickle.dumps({"k\x1b[2J": "v\x1b]0;title\x07"}))
    res = run("explain", "s.pkl")
    assert "\x1b" not in res.output and "\x07" not in res.output


def _shared_lists(depth: int) -> bytes:
    """L_i = [L_i-1, L_i-1] through the memo: ~20 bytes a level, 2**depth lists written out."""
    import struct

    def put(i: int) -> bytes:
        return b"r" + struct.pack("<I", i)

    def get(i: int) -> bytes:
        return b"j" + struct.pack("<I", i)

    q = b"\x80\x02]" + put(0) + b"0"
    for i in range(1, depth + 1):
        q += b"](" + get(i - 1) + get(i - 1) + b"e" + put(i) + b"0"
    return q + get(depth) + b"."


@pytest.mark.parametrize("depth", [8, 79])
def test_explain_of_shared_values_is_bounded(here: Path, depth: int) -> None:
    """A 1.6 KB program whose tree has 2**79 nodes: written out up to a budget, never
    expanded (it grew to gigabytes in ast.walk / ast.unparse). A small one renders."""
    import ast

    from ckptguard.report.explain import MAX_RENDER_NODES, _expanded_size

    write(here / "dag.pkl", _shared_lists(depth))
    res = run("explain", "dag.pkl")
    assert res.exit_code == 0, res.output
    if depth == 79:
        assert f"more than {MAX_RENDER_NODES:,} nodes" in res.stdout
    else:
        assert "not rendered" not in res.stdout and "[[[[" in res.stdout
    shared = ast.List(elts=[], ctx=ast.Load())
    for _ in range(depth):
        shared = ast.List(elts=[shared, shared], ctx=ast.Load())
    # each list and its ctx node, once per reference
    assert _expanded_size(shared, 10**6) == min(2 * (2 ** (depth + 1) - 1), 10**6 + 1)


def test_explain_truncated_pickle(here: Path) -> None:
    write(here / "cut.pkl", evil_pickle()[:-5])
    res = run("explain", "cut.pkl")
    assert res.exit_code in (1, 2)
    assert "Traceback" not in res.output


# --- convert ----------------------------------------------------------------------------------

def test_convert_with_shared_tensors(here: Path) -> None:
    from safetensors.torch import load_file

    sd = tied_checkpoint(here / "m.pt")
    res = run("convert", "m.pt", "out.safetensors")
    assert res.exit_code == 0, res.output
    assert "verified" in res.stdout and "step" in res.stdout  # non-tensor entry listed
    loaded = load_file(str(here / "out.safetensors"))
    assert torch.equal(loaded["b"], sd["b"])
    assert torch.equal(loaded["nested.x"], sd["nested"]["x"])
    assert torch.equal(loaded["view"], sd["view"])
    kept = "tied" if "tied" in loaded else "w"
    assert torch.equal(loaded[kept], sd["w"])
    assert ("w" in loaded) != ("tied" in loaded)  # written once
    scan = run("scan", "out.safetensors")
    assert scan.exit_code == 0


def test_convert_legacy_and_safetensors(here: Path) -> None:
    tied_checkpoint(here / "old.bin", _use_new_zipfile_serialization=False)
    assert run("convert", "old.bin", "old.safetensors").exit_code == 0
    write(here / "a.safetensors", safetensors_bytes())
    assert run("convert", "a.safetensors", "b.safetensors").exit_code == 0


def test_convert_refuses_unsafe(here: Path) -> None:
    write(here / "evil.pkl", evil_pickle())
    res = run("convert", "evil.pkl", "out.safetensors")
    assert res.exit_code == 1
    assert "not converted" in res.stderr and "CKG101" in res.stdout
    assert not (here / "out.safetensors").exists()
    write(here / "empty.bin", b"")
    assert run("convert", "empty.bin", "out.safetensors").exit_code == 2


@pytest.mark.parametrize("obj", [
    {"m": {"a": [1.0]}, "m.a": [2.0]},     # a nested key and a dotted one
    {1: [1.0], "1": [2.0]},                # an int key and its string
    {"l": [[1.0], [2.0]], "l.0": [3.0]},  # a list index and a dotted key
], ids=["dotted", "int-str", "list"])
def test_convert_refuses_names_that_collide(here: Path, obj: dict) -> None:
    """Two tensors flattening to one name: one was dropped, and the write still said
    'verified' (the re-check compared against the flattened dict)."""
    import torch

    def tensors(v: object) -> object:
        if isinstance(v, dict):
            return {k: tensors(x) for k, x in v.items()}
        if isinstance(v, list) and v and isinstance(v[0], list):
            return [tensors(x) for x in v]
        return torch.tensor(v)

    torch.save(tensors(obj), here / "c.pt")
    res = run("convert", "c.pt", "c.safetensors")
    assert res.exit_code == 2 and "flatten to the name" in res.stderr, res.output
    assert not (here / "c.safetensors").exists()


@pytest.mark.parametrize("kind", ["sparse_coo", "sparse_csr", "nested", "quantized"])
def test_convert_refuses_tensors_safetensors_cannot_hold(here: Path, kind: str) -> None:
    """Was 'internal error: RuntimeError ... data pointer' (a raw RuntimeError from the
    library call)."""
    import torch

    dense = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    t = {"sparse_coo": dense.to_sparse, "sparse_csr": dense.to_sparse_csr,
         "nested": lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),
         "quantized": lambda: torch.quantize_per_tensor(dense, 0.1, 0, torch.qint8)}[kind]()
    torch.save({"t": t}, here / "k.pt")
    res = run("convert", "k.pt", "k.safetensors")
    assert res.exit_code == 2 and "dense tensors only" in res.stderr, res.output
    assert "internal error" not in res.output
    assert not (here / "k.safetensors").exists()


def test_convert_argument_errors(here: Path) -> None:
    tied_checkpoint(here / "m.pt")
    assert run("convert", "m.pt", "out.bin").exit_code == 2
    (here / "exists.safetensors").write_bytes(b"x")
    res = run("convert", "m.pt", "exists.safetensors")
    assert res.exit_code == 2 and "exists" in res.stderr
    assert (here / "exists.safetensors").read_bytes() == b"x"
    assert run("convert", "m.pt", "exists.safetensors", "--force").exit_code == 0
    assert not [p for p in os.listdir(here) if p.endswith(".tmp")]
