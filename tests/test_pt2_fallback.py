"""torch.export.load's torch 2.7 fallback (fixtures/families/pt2_fallback.py).

A member outside a .pt2's archive folder makes load_pt2 raise RuntimeError; torch.export.load
then reads the file with Python's zipfile as the torch 2.7 layout: a top-level ``version``,
``serialized_exported_program.json`` (every expr_str sympify'd, guards_code exec'd on call)
and the serialized_*.pt/.json members (torch.load, weights_only=False when weights_only=True
fails). ckptguard noted those members as CKG824 LOW and called the archive SAFE.

- every (payload place x layout) variant gets its verdict and rule ids: CKG821 (blocking)
  for the members outside the folder, and the payload's own finding (CKG823 for an
  expression, CKG101 for a pickle), CRITICAL, because the members are audited as the
  fallback reads them (also without ``version``);
- one variant of each payload kind fires under the real torch.export.load in a subprocess,
  and the same file is refused by the torch.export.load gate before anything runs;
- the fallback's member names and its ``version`` gate are pinned against torch's source;
- the plain torch.export.save archive stays SAFE (CKG820 only), and the C and pure paths agree.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ckg_families import family

import ckptguard
from ckptguard.analysis.pt2 import (
    FALLBACK_PROGRAM,
    FALLBACK_TORCH_LOAD,
    FALLBACK_VERSION,
)
from ckptguard.model import Severity, Verdict

torch = pytest.importorskip("torch")
pytest.importorskip("torch.export")


@functools.lru_cache(maxsize=1)
def _fam() -> dict[str, Any]:
    fam = family("pt2_fallback")
    try:
        fam["benign_archive"]()
    except Exception as e:  # a torch that cannot export the base model
        pytest.skip(f"torch.export cannot build the base archive: {type(e).__name__}: {e}")
    return fam


def _places() -> list[str]:
    return list(family("pt2_fallback")["FALLBACK_PLACES"])


def _layouts() -> list[str]:
    return list(family("pt2_fallback")["LAYOUTS"])


PLACES = _places()
LAYOUTS = _layouts()
MARKER = "ckptguard_marker"


def _write(tmp_path: Path, place: str, layout: str) -> Path:
    p = tmp_path / f"{place}-{layout}.pt2"
    p.write_bytes(_fam()["fallback_archive"](place, layout))
    return p


def _describe(r: Any) -> str:
    return f"{r.verdict.name} " + "; ".join(
        f"{f.rule_id}/{f.severity.name}: {f.message[:160]}" for f in r.all_findings())


# ------------------------------------------------------------------------ verdicts

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("place", PLACES)
def test_every_variant_is_refused_with_its_rules(tmp_path: Path, place: str,
                                                 layout: str) -> None:
    verdict, rules = _fam()["expected"](place, layout)
    r = ckptguard.scan(_write(tmp_path, place, layout))
    assert r.verdict is Verdict[verdict], _describe(r)
    assert rules <= r.rule_ids(), _describe(r)
    kind = _fam()["FALLBACK_PLACES"][place][0]
    if layout != "legacy_first":
        # the blocker names the fallback (or its absence), the payload is CRITICAL
        ck821 = [f for f in r.all_findings() if f.rule_id == "CKG821"
                 and "outside the archive folder" in f.message]
        assert len(ck821) == 1 and ck821[0].severity is Severity.HIGH, _describe(r)
        assert ("torch 2.7 reader" in ck821[0].message) is (layout != "no_version")
        if kind != "none":
            payload = "CKG823" if kind in ("expr", "guard") else "CKG101"
            assert any(f.rule_id == payload and f.severity is Severity.CRITICAL
                       for f in r.all_findings()), _describe(r)
        else:
            assert r.max_severity is Severity.HIGH, _describe(r)


def test_plain_export_stays_safe(tmp_path: Path) -> None:
    p = tmp_path / "plain.pt2"
    p.write_bytes(_fam()["benign_archive"]())
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == {"CKG820"}, _describe(r)


def test_torch_export_save_output_stays_safe(tmp_path: Path) -> None:
    ep = torch.export.export(torch.nn.Linear(4, 2), (torch.randn(3, 4),),
                             dynamic_shapes=({0: torch.export.Dim("b")},))
    p = tmp_path / "dyn.pt2"
    torch.export.save(ep, p)
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == {"CKG820"}, _describe(r)
    assert "pt2.fallback_version" not in dict(r.metadata)


def test_the_fallback_version_is_reported(tmp_path: Path) -> None:
    r = ckptguard.scan(_write(tmp_path, "benign", "fallback_only"))
    from torch._export.serde.schema import SCHEMA_VERSION

    meta = dict(r.metadata)
    assert meta["pt2.fallback_version"] == ".".join(map(str, SCHEMA_VERSION))
    assert meta["pt2.fallback.expressions"] == meta["pt2.expressions"]


@pytest.mark.parametrize(("place", "layout"), [
    ("tensor_size", "fallback_only"), ("guards_code", "directory_entry"),
    ("serialized_state_dict_pt_torch_zip", "unrelated_member"),
    ("serialized_constants_json_raw_pickle", "deflated"), ("benign", "no_version")])
def test_pure_path_agrees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, place: str,
                          layout: str) -> None:
    p = _write(tmp_path, place, layout)
    fast = ckptguard.scan(p)
    monkeypatch.setenv("CKPTGUARD_PURE", "1")
    slow = ckptguard.scan(p)
    assert (fast.verdict, fast.rule_ids()) == (slow.verdict, slow.rule_ids())


# ------------------------------------------------------------- the real reader

_LOADER = r"""
import json, logging, os, sys, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)
import torch
jobs, marker, gated = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3] == "gated"
out = {}
for path, call in jobs:
    os.chdir(os.path.dirname(path))
    err = ""
    try:
        if gated:
            import ckptguard
            with ckptguard.guard_torch_load():
                ep = torch.export.load(path)
        else:
            ep = torch.export.load(path)
        if call:
            ep.module()(torch.ones(4, 3))
    except Exception as e:
        err = type(e).__name__ + ": " + str(e)[:200]
    out[path] = [os.path.exists(marker), err]
print(json.dumps(out))
"""

#: one variant of each payload kind (an expression sympify'd at load, a guard exec'd on
#: call, a torch.save zip and a raw pickle torch.load runs), each fired through the fallback
FIRING = [("tensor_size", "fallback_only", False), ("tensor_stride", "unrelated_member", False),
          ("tensor_size", "nul_names", False), ("guards_code", "fallback_only", True),
          ("serialized_state_dict_pt_torch_zip", "fallback_only", False),
          ("serialized_constants_json_raw_pickle", "directory_entry", False),
          ("serialized_example_inputs_pt_torch_zip", "deflated", True)]


def _load(jobs: list[tuple[Path, bool]], gated: bool) -> dict[str, tuple[bool, str]]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CKPTGUARD")}
    out = subprocess.run(
        [sys.executable, "-c", _LOADER, json.dumps([[str(p), c] for p, c in jobs]), MARKER,
         "gated" if gated else "plain"],
        capture_output=True, text=True, timeout=300, check=True, env=env,
        stdin=subprocess.DEVNULL)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {p: (bool(f), str(e)) for p, (f, e) in got.items()}


@pytest.fixture(scope="module")
def firing(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each FIRING variant in a folder of its own, loaded without and with the gate."""
    plain: list[tuple[Path, bool]] = []
    gated: list[tuple[Path, bool]] = []
    for place, layout, call in FIRING:
        for kind, jobs in (("plain", plain), ("gated", gated)):
            d = tmp_path_factory.mktemp(f"{kind}-{place}-{layout}")
            jobs.append((_write(d, place, layout), call))
    return {"plain": _load(plain, gated=False), "gated": _load(gated, gated=True),
            "jobs": (plain, gated)}


@pytest.mark.parametrize(("place", "layout", "call"), FIRING)
def test_payload_fires_under_torch_export_load(firing: dict[str, Any], place: str,
                                               layout: str, call: bool) -> None:
    plain, _ = firing["jobs"]
    path = next(str(p) for p, _ in plain if p.name == f"{place}-{layout}.pt2")
    fired, err = firing["plain"][path]
    assert fired, f"{place}/{layout} did not fire under torch.export.load: {err}"
    r = ckptguard.scan(path)
    assert r.verdict is Verdict.UNSAFE, _describe(r)


@pytest.mark.parametrize(("place", "layout", "call"), FIRING)
def test_gate_refuses_before_the_fallback_runs(firing: dict[str, Any], place: str,
                                              layout: str, call: bool) -> None:
    _, gated = firing["jobs"]
    path = next(str(p) for p, _ in gated if p.name == f"{place}-{layout}.pt2")
    fired, err = firing["gated"][path]
    assert not fired and err.startswith("UnsafeCheckpointError"), err


def test_benign_fallback_is_what_torch_export_load_returns(tmp_path: Path) -> None:
    """The fallback members alone are a program torch.export.load returns (so it reads
    them, not the folder); without ``version`` it fails and runs nothing."""
    import logging

    logging.disable(logging.CRITICAL)
    try:
        ep = torch.export.load(_write(tmp_path, "benign", "fallback_only"))
        assert ep.module()(torch.ones(4, 3)).shape == (4, 2)
        with pytest.raises(RuntimeError, match="deserializing the saved file"):
            torch.export.load(_write(tmp_path, "benign", "no_version"))
    finally:
        logging.disable(logging.NOTSET)


def test_fallback_names_match_torch_source() -> None:
    """The members the fallback keeps by exact name and its ``version`` gate, read from the
    installed torch.export.load: a new name there must be audited here too."""
    src = inspect.getsource(torch.export.load)
    assert f'"{FALLBACK_VERSION}" not in zipf.namelist()' in src
    assert "except RuntimeError" in src
    names = set(re.findall(r'file_info\.filename == "([^"]+)"', src))
    assert names == {FALLBACK_PROGRAM} | FALLBACK_TORCH_LOAD, names
    assert 'file_info.filename.startswith("extra_files")' in src
