"""Allowlisted callables are modelled by what they call and allocate (issue 10 point 2).

- the CALL_MODELS table covers exactly the weights-only allowlist, and its effects are
  pinned here in both directions;
- ``fixtures/families/allocation_gadgets.py`` generates torch zips that name only
  allowlisted globals and still make the loader allocate memory not backed by the file:
  every variant is UNSAFE with its rule ID (before: 23 of 36 scanned SAFE);
- a few representative variants are loaded with ``torch.load(weights_only=True)`` in a
  subprocess under RLIMIT_AS: the benign twin loads, the gadget dies allocating;
- real torch.save output of every tensor kind stays SAFE.
"""

from __future__ import annotations

import collections
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ckg_families import family

import ckptguard
from ckptguard.analysis.callmodels import CALL_MODELS, Alloc, Effect
from ckptguard.policy.defaults import ALLOW_KINDS

ROOT = Path(__file__).resolve().parents[1]


def _family() -> dict[str, Any]:
    return family("allocation_gadgets")


FAM = _family()
VARIANTS: dict[str, tuple[bytes, str, int]] = FAM["allocation_variants"]()

# --- the table ---------------------------------------------------------------------------

_LEGACY = {f"torch.{t}Tensor" for t in ("Float", "Double", "Half", "BFloat16", "Long", "Int",
                                        "Short", "Char", "Byte", "Bool")}
_LEGACY |= {f"torch.cuda.{t}Tensor" for t in ("Float", "Double", "Half", "BFloat16", "Long",
                                               "Int", "Short", "Char", "Byte", "Bool")}
_LEGACY |= {f"torch.{m}.{t}Tensor" for m in ("sparse", "cuda.sparse")
            for t in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char",
                      "Byte")}
U = "torch._utils."
EXPECTED_NON_CONSTANT: dict[Effect, set[str]] = {
    Effect.DATA: {"builtins.bytearray", "builtins.complex", "builtins.set",
                  "collections.Counter", "collections.OrderedDict", "torch.Size"},
    Effect.ENCODE: {"_codecs.encode"},
    Effect.LOOKUP: {"torch.device", "torch.serialization._get_layout"},
    Effect.ALLOCATE: {"torch.Tensor", "torch.storage.TypedStorage",
                      "torch.storage.UntypedStorage"} | _LEGACY,
    Effect.VIEW: {U + "_rebuild_tensor", U + "_rebuild_tensor_v2", U + "_rebuild_tensor_v3"},
    Effect.QUANTIZED: {U + "_rebuild_qtensor"},
    Effect.COPY: {U + "_rebuild_device_tensor_from_cpu_tensor",
                  U + "_rebuild_device_tensor_from_numpy"},
    Effect.WRAP: {"torch.nn.parameter.Parameter", U + "_rebuild_parameter",
                  U + "_rebuild_parameter_with_state"},
    Effect.CALLS_ARGUMENT: {"torch._tensor._rebuild_from_type_v2"},
    Effect.META: {U + "_rebuild_meta_tensor_no_storage"},
    Effect.NO_DATA: {U + "_rebuild_wrapper_subclass"},
    Effect.COMPOSITE: {U + "_rebuild_sparse_tensor", U + "_rebuild_nested_tensor"},
}


def test_every_allowlisted_global_has_a_call_model_and_no_other() -> None:
    assert set(CALL_MODELS) == set(ALLOW_KINDS)


def test_call_model_effects_are_pinned_both_ways() -> None:
    by_effect: dict[Effect, set[str]] = collections.defaultdict(set)
    for name, m in CALL_MODELS.items():
        by_effect[m.effect].add(name)
    constants = by_effect.pop(Effect.CONSTANT)
    assert dict(by_effect) == EXPECTED_NON_CONSTANT
    # the constants are exactly what ALLOW_KINDS calls values (dtypes, qschemes, storages)
    assert constants == {k for k, v in ALLOW_KINDS.items() if v == "value"}


def test_only_allocators_allocate_from_an_argument() -> None:
    assert {k for k, m in CALL_MODELS.items() if m.alloc is Alloc.ARGUMENT} == \
        EXPECTED_NON_CONSTANT[Effect.ALLOCATE]
    assert {k for k, m in CALL_MODELS.items() if m.alloc is Alloc.TENSOR} == \
        EXPECTED_NON_CONSTANT[Effect.COPY] | EXPECTED_NON_CONSTANT[Effect.QUANTIZED]


def test_only_the_nested_rebuild_reads_tensor_values_while_unpickling() -> None:
    """CKG431: in a legacy stream no storage byte is read until the pickle is done; the
    calls that read their tensor arguments' values then are exactly these."""
    assert {k for k, m in CALL_MODELS.items() if m.reads_tensor_values} == \
        {"torch._utils._rebuild_nested_tensor"}


def test_every_tensor_maker_is_a_valid_from_type_target() -> None:
    makers = {k for k, m in CALL_MODELS.items() if m.makes_tensor}
    tensor_effects = (Effect.VIEW, Effect.QUANTIZED, Effect.COPY, Effect.WRAP,
                      Effect.CALLS_ARGUMENT, Effect.META, Effect.NO_DATA, Effect.COMPOSITE)
    assert makers == {k for k, m in CALL_MODELS.items() if m.effect in tensor_effects} | \
        EXPECTED_NON_CONSTANT[Effect.ALLOCATE] - {"torch.storage.TypedStorage",
                                                  "torch.storage.UntypedStorage"}


# --- the generated gadgets ---------------------------------------------------------------

def test_the_generator_makes_many_variants() -> None:
    assert len(VARIANTS) >= 30
    assert {r for _, r, _ in VARIANTS.values()} == {"CKG112", "CKG113", "CKG114", "CKG117",
                                                    "CKG440", "CKG441", "CKG442"}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_allocation_gadget_is_unsafe_with_its_rule(tmp_path: Path, name: str) -> None:
    p = tmp_path / f"{name}.pt"
    p.write_bytes(FAM["allocation_zip"](name))
    assert p.stat().st_size < 4096
    r = ckptguard.scan(p)
    rule = VARIANTS[name][1]
    assert r.verdict.name == "UNSAFE", [(f.rule_id, f.message) for f in r.findings]
    assert rule in r.rule_ids(), [(f.rule_id, f.message) for f in r.findings]
    with pytest.raises(ckptguard.UnsafeCheckpointError):
        ckptguard.safe_load(p)


def test_benign_twin_is_safe(tmp_path: Path) -> None:
    """The gadget zips minus the gadget: what makes them UNSAFE is the call, nothing else."""
    g = runpy.run_path(str(ROOT / "fixtures" / "generate.py"), run_name="ckg_fixture_lib")
    p = tmp_path / "twin.pt"
    p.write_bytes(g["torch_zip"](g["sd_with"](g["op"].NONE), seed="twin"))
    assert ckptguard.scan(p).verdict.name == "SAFE"


# --- proof: the allocation is real -------------------------------------------------------

_LOADER = r"""
import resource, sys
import torch
twin, paths = sys.argv[1], sys.argv[2:]
torch.load(twin, weights_only=True)          # warm up: threads, allocator, imports
for path in paths:                           # one process (one torch import) for every gadget
    print("GADGET", path, flush=True)
    # the headroom is measured again before each gadget: a failed load that kept memory
    # would be inside vsz, so it cannot make the next gadget fail for less than 1 GiB
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    vsz = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    limit = vsz + (1 << 30)                  # 1 GiB of headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    torch.load(twin, weights_only=True)      # the benign twin still loads under the limit
    print("TWIN-LOADED", flush=True)
    try:
        torch.load(path, weights_only=True)
    except BaseException as e:
        print("LOAD-FAILED", type(e).__name__, str(e)[:300].replace("\n", " "), flush=True)
    else:
        print("LOADED", flush=True)
sys.stderr.flush()
import os; os._exit(0)                       # all printed: skip torch's ~0.3 s teardown
"""

PROVEN = ("tensor_ctor_reduce", "bytearray_size", "from_type_calls_bytearray",
          "device_copy_of_broadcast_view", "qtensor_larger_than_storage", "legacy_FloatTensor")


@pytest.fixture(scope="module")
def torch_loads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every PROVEN gadget loaded by torch.load(weights_only=True) under 1 GiB of address
    space headroom, all in ONE child process (one torch import, not one per gadget; the
    headroom is re-measured and the benign twin reloaded before each): its output per
    gadget name."""
    pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("gadgets")
    g = runpy.run_path(str(ROOT / "fixtures" / "generate.py"), run_name="ckg_fixture_lib")
    twin = d / "twin.pt"
    twin.write_bytes(g["torch_zip"](g["sd_with"](g["op"].NONE), seed="twin"))
    paths = []
    for name in PROVEN:
        p = d / f"{name}.pt"
        p.write_bytes(FAM["allocation_zip"](name))
        paths.append(str(p))
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _LOADER, str(twin), *paths],
                          capture_output=True, text=True, timeout=600, env=env, check=False)
    out = proc.stdout + proc.stderr
    parts = out.split("GADGET ")
    got = {Path(part.split("\n", 1)[0]).stem: part for part in parts[1:]}
    return {name: got.get(name, "(the child never reached it)\n" + out[-2000:])
            for name in PROVEN}


@pytest.mark.slow
@pytest.mark.parametrize("name", PROVEN)
def test_gadget_really_allocates_under_torch_load(torch_loads: dict[str, str],
                                                  name: str) -> None:
    assert VARIANTS[name][2] > (1 << 30)  # allocates more than the headroom
    out = torch_loads[name]
    assert "TWIN-LOADED" in out, out[-2000:]
    assert "LOAD-FAILED" in out, out[-2000:]
    line = next(x for x in out.splitlines() if x.startswith("LOAD-FAILED"))
    assert "MemoryError" in line or "alloc" in line.lower() or "memory" in line.lower(), line


# --- real torch.save output stays SAFE ---------------------------------------------------

def test_real_tensor_kinds_stay_safe(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    objs: dict[str, Any] = {
        "param": torch.nn.Parameter(torch.randn(2, 2)),
        "q": torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8),
        "qc": torch.quantize_per_channel(torch.randn(4, 2), torch.tensor([0.1, 0.2, 0.3, 0.4]),
                                         torch.tensor([0, 0, 0, 0]), 0, torch.qint8),
        "coo": torch.randn(4, 4).to_sparse(), "csr": torch.randn(4, 4).to_sparse_csr(),
        "meta": torch.empty(3, device="meta"),
        "misc": {"b": b"abc", "ba": bytearray(b"xy"), "set": {1, 2}, "c": complex(1, 2),
                 "size": torch.Size([2, 3]), "dev": torch.device("cpu"),
                 "cnt": collections.Counter("aab"), "od": collections.OrderedDict(a=1)},
    }
    attr = torch.randn(3)
    attr.note = 1  # written as _rebuild_from_type_v2(_rebuild_tensor_v2, Tensor, ..., state)
    objs["attr"] = attr
    pattr = torch.nn.Parameter(torch.randn(2))
    pattr.tag = "x"  # _rebuild_parameter_with_state
    objs["pattr"] = pattr
    p = tmp_path / "kinds.pt"
    torch.save(objs, p)
    r = ckptguard.scan(p)
    assert r.verdict.name == "SAFE", [(f.rule_id, f.message) for f in r.findings]
    loaded = ckptguard.safe_load(p)
    ref = torch.load(p, weights_only=True)
    assert torch.equal(loaded["param"], ref["param"])
    assert torch.equal(loaded["q"].int_repr(), ref["q"].int_repr())
    assert torch.equal(loaded["attr"], ref["attr"]) and loaded["attr"].note == 1
    assert torch.equal(loaded["pattr"], ref["pattr"])


@pytest.mark.parametrize("full,n", [("torch.Size", 2), ("collections.OrderedDict", 2),
                                    ("builtins.set", 2), ("collections.Counter", 2),
                                    ("builtins.complex", 3), ("builtins.bytearray", 4)])
def test_data_constructor_with_too_many_arguments_is_refused(full: str, n: int) -> None:
    """Every loader raises TypeError (safe_load raised it raw): not SAFE. One argument
    fewer is the control."""
    import pickle as _pickle

    from ckptguard.model import Verdict

    mod, name = full.rsplit(".", 1)

    def prog(k: int) -> bytes:
        return (b"\x80\x02c" + mod.encode() + b"\n" + name.encode() + b"\n("
                + b"".join([b")"] if full in ("torch.Size", "collections.OrderedDict",
                                              "builtins.set", "collections.Counter")
                           else [b"K\x01"]) + b"K\x01" * (k - 1) + b"tR.")

    from ckptguard.analysis.engine import audit_bytes
    from ckptguard.policy import DEFAULT_LIMITS, DEFAULT_POLICY

    r = audit_bytes(prog(n), "x.pkl", policy=DEFAULT_POLICY, limits=DEFAULT_LIMITS)
    assert r.verdict is Verdict.UNSAFE and "CKG202" in r.rule_ids(), sorted(r.rule_ids())
    with pytest.raises(TypeError):
        _pickle.loads(prog(n))
    ok = audit_bytes(prog(n - 1), "x.pkl", policy=DEFAULT_POLICY, limits=DEFAULT_LIMITS)
    assert "CKG202" not in ok.rule_ids(), sorted(ok.rule_ids())


def test_arity_table_covers_every_data_constructor() -> None:
    """vm._MAX_POSITIONAL has a row for every DATA call model and nothing else."""
    from ckptguard.analysis.callmodels import CALL_MODELS, Effect
    from ckptguard.analysis.vm import _MAX_POSITIONAL

    assert set(_MAX_POSITIONAL) == {k for k, m in CALL_MODELS.items()
                                    if m.effect is Effect.DATA}
