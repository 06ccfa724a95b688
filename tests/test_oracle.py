"""The differential oracle, short run (tests/oracle_harness.py; the long run is
fuzz/oracle.py): whenever ckptguard says SAFE, no plausible loader of the same bytes --
pickle.load, numpy.load(allow_pickle=True), torch.load with and without weights_only,
safetensors, torch.jit.load -- resolves a global outside the allowlist, fires a payload
event (audit hook), creates a file, crashes, runs out of memory or hangs; and whatever
ckptguard.safe_load returns (it is the seventh loader) is usable: sparse tensors keep
their invariants.

The corpus: every fixture under its own name and two other extensions, generated files of
every format and polyglot kind, and seeded mutants of all of those (``CKG_ORACLE_SEED``
picks another corpus). ONE worker process per loader kind reads every file.

A class the oracle finds that is not fixed yet is listed in KNOWN_OPEN with the issue that
owns it, and pinned by an xfail(strict=True) test named after it: the short run tolerates
exactly those, so a new class fails it.
"""

from __future__ import annotations

import os
import random

import pytest

pytest.importorskip("torch")
pytest.importorskip("numpy")
pytest.importorskip("safetensors")

from oracle_harness import (
    KNOWN_OPEN,
    LOADER_KINDS,
    POLYGLOTS,
    Case,
    Disagreement,
    LoadResult,
    Totals,
    check,
    corpus,
    safetensors_hop_polyglot,
    sparse_tensors,
    torch_zip_npy_member,
)

SEED = int(os.environ.get("CKG_ORACLE_SEED", "0"))

def _known(d: Disagreement) -> str | None:
    return next((k for k in KNOWN_OPEN if k in d.case.origin), None)


def _hops(n: int) -> list[Case]:
    rng = random.Random(SEED + 1)
    return [safetensors_hop_polyglot(rng, i) for i in range(n)]


def _sparse(n: int) -> list[Case]:
    rng = random.Random(SEED + 2)
    out: list[Case] = []
    while len(out) < n:
        c = sparse_tensors(rng, len(out))
        if c.origin == "gen:sparse-bad":
            out.append(c)
    return out


def _npy_members(n: int) -> list[Case]:
    rng = random.Random(SEED + 3)
    return [torch_zip_npy_member(rng, i) for i in range(n)]


#: the class samples below, also part of the short run's corpus (loaded by every loader)
CLASS_SAMPLES = {"safetensors-hop": _hops(12), "sparse-bad": _sparse(10),
                 "torch-zip-npy-member": _npy_members(12)}
_SAMPLE_IDS = {id(c) for cs in CLASS_SAMPLES.values() for c in cs}


@pytest.fixture(scope="module")
def short_run() -> Totals:
    # the robustness fixtures (limit bombs, seconds each to scan) are in the long run only
    cases = corpus(SEED, generated_per_kind=3, mutants=120, renames=2,
                   folders=("benign", "medium", "hostile"))
    cases += [c for cs in CLASS_SAMPLES.values() for c in cs]
    # SAFE files go to every loader; polyglots (which carry payloads) and the class samples
    # too, to prove the oracle sees payloads through this very path
    tot = check(cases, keep_results=True, loads_for=lambda c, v: c.origin.startswith(
        "polyglot:") or id(c) in _SAMPLE_IDS)
    print("\n" + tot.summary())
    return tot


def _results(tot: Totals, cls: str, kind: str) -> list[tuple[str, LoadResult]]:
    ids = {id(c) for c in CLASS_SAMPLES[cls]}
    out = [(v, r) for c, k, v, r in tot.results if id(c) in ids and k == kind]
    assert len(out) == len(ids), (cls, kind, len(out))
    return out


@pytest.mark.slow
def test_oracle_short_run_finds_no_new_class(short_run: Totals) -> None:
    new = [d for d in short_run.disagreements if _known(d) is None]
    assert not new, f"{len(new)} SAFE files a loader exploits:\n" + "\n".join(
        d.describe() for d in new[:20])


def test_oracle_short_run_is_not_vacuous(short_run: Totals) -> None:
    tot = short_run
    assert tot.files >= 500, tot.summary()
    assert tot.safe >= 60, tot.summary()
    assert tot.loads >= tot.safe * len(LOADER_KINDS), tot.summary()
    # every format generator and the mutators produced files; the polyglots fired
    for origin in ("fixture", "renamed", "gen", "polyglot", "mutated"):
        assert tot.by_origin[origin] > 0, (origin, tot.by_origin)
    assert tot.events > 0 and tot.outside_globals > 0, tot.summary()


def test_oracle_generators_cover_every_format() -> None:
    rng = random.Random(SEED)
    from oracle_harness import FORMATS

    seen = {make(rng, i).origin for i, make in enumerate((*FORMATS.values(),
                                                         *POLYGLOTS.values()))}
    assert {o.split(":")[1] for o in seen} >= {
        "torch-zip", "legacy", "raw-pickle", "safetensors", "npy", "npz", "torchscript",
        "json-index", "safetensors-hop", "npz-object", "allowlist-calls"}


# --- the safetensors hop polyglot (issue 10 item 1) -------------------------------------------

def test_safetensors_hop_polyglot_is_a_real_attack(short_run: Totals) -> None:
    """Every variant is a valid safetensors file AND a pickle program whose payload runs
    under pickle.load (the generator is sound, so the xfail below tests something)."""
    from safetensors import safe_open

    for verdict, res in _results(short_run, "safetensors-hop", "pickle"):
        assert res.events, (verdict, res)
    for verdict, res in _results(short_run, "safetensors-hop", "safetensors"):
        assert res.ok, (verdict, res.error)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        for c in CLASS_SAMPLES["safetensors-hop"]:
            p = Path(d) / "x.safetensors"
            p.write_bytes(c.data)
            with safe_open(str(p), "pt") as f:
                assert list(f.keys()) == ["t"]


def test_safetensors_hop_polyglot_is_never_safe(short_run: Totals) -> None:
    verdicts = [v for v, _ in _results(short_run, "safetensors-hop", "pickle")]
    assert "SAFE" not in verdicts, verdicts


# --- sparse tensors whose indices point outside their shape (issue 10 item 3) ----------------

def test_sparse_generator_breaks_invariants(short_run: Totals) -> None:
    """torch.load(weights_only=True) loads the bad variants without a word; their indices
    break the invariants (the generator is sound, so the xfail below tests something)."""
    res = _results(short_run, "sparse-bad", "torch_wo")
    assert sum(1 for _, r in res if ("sparse-invariant" in {e for e, _ in r.events})) >= 5
    _results(short_run, "sparse-bad", "ckptguard")   # the xfail below fails for its reason


def test_safe_load_never_returns_broken_sparse_tensors(short_run: Totals) -> None:
    bad = [r for _, r in _results(short_run, "sparse-bad", "ckptguard") if r.events]
    assert not bad, bad[:3]


# --- a torch zip that is also an .npz with an object member (found by the oracle) -----------

def test_torch_zip_npy_member_is_a_real_attack(short_run: Totals) -> None:
    """Every variant loads under torch.load(weights_only=True) with nothing to see, and
    runs its payload under numpy.load(allow_pickle=True) when the member is read."""
    cases = CLASS_SAMPLES["torch-zip-npy-member"]
    assert {c.origin.rsplit("-", 1)[1] for c in cases} == {"extra", "unreferenced", "tensor"}
    for _v, res in _results(short_run, "torch-zip-npy-member", "torch_wo"):
        assert res.ok and not res.events, res
    for _v, res in _results(short_run, "torch-zip-npy-member", "numpy"):
        assert ("file-created", "ckptguard_marker") in res.events, res


def test_torch_zip_npy_member_is_never_safe(short_run: Totals) -> None:
    verdicts = [v for v, _ in _results(short_run, "torch-zip-npy-member", "numpy")]
    assert "SAFE" not in verdicts, verdicts


# --- the zygote (oracle_harness.Zygote): a forked worker sees what a fresh one sees -------

@pytest.mark.slow
def test_forked_workers_load_like_fresh_interpreters(tmp_path: pytest.TempPathFactory,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The unsafe torch.load and safe_load over benign and firing fixtures:
    the same outcome, globals and payload events from a worker forked by the zygote as
    from a fresh ``python -c`` worker (CKG_ORACLE_FORK=0)."""
    import json
    import shutil
    from pathlib import Path

    from oracle_harness import FIXTURES, Forked, Worker, run_loads

    manifest = json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))
    firing = [e["path"] for e in manifest["fixtures"] if e["fires"] == "torch.load"][:4]
    benign = [e["path"] for e in manifest["fixtures"]
              if e["path"].startswith("benign/") and e["path"].endswith((".pt", ".bin"))][:2]
    assert len(firing) == 4 and len(benign) == 2

    def run(kind: str, fork: str) -> list[tuple[bool, str, list[tuple[str, str]], list[str]]]:
        monkeypatch.setenv("CKG_ORACLE_FORK", fork)
        jobs = []
        for i, rel in enumerate(firing + benign):
            d = Path(str(tmp_path)) / f"{kind}-{fork}-{i}"
            d.mkdir()
            shutil.copy(FIXTURES / rel, d / Path(rel).name)
            jobs.append((d / Path(rel).name, d, 60.0))
        return [(r.ok, r.error.split(":", 1)[0], sorted(r.globals), sorted(e for e, _ in r.events))
                for _p, r, _n in run_loads(kind, jobs)]

    for kind in ("torch_full", "ckptguard"):
        forked, fresh = run(kind, "1"), run(kind, "0")
        assert forked == fresh, kind
        if kind == "torch_full":
            assert all("file-created" in ev for _ok, _e, _g, ev in forked[:4]), forked
    monkeypatch.setenv("CKG_ORACLE_FORK", "1")
    w = Worker("torch_wo")
    try:
        assert isinstance(w.p, Forked)
    finally:
        w.close()
