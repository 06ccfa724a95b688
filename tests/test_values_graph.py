"""``structure.graph_difference``: without a read lease, what torch.load built is compared
with the fast path's graph of the audited data.pkl, values and all (SECURITY.md, "The read
lease"). Both directions, on the shipped fixtures and on generated checkpoints:

- the object torch.load builds from the audited bytes always passes (no false refusal);
- every single change a swapped file version could make to the values around the tensors
  -- a scalar, a key, an item, a container type, ``_metadata``, which objects are shared,
  Tensor versus Parameter -- is named (a generator of variants, one per site and kind).
"""

from __future__ import annotations

import random
import struct
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ckg_loader_helpers import random_checkpoint, random_tensor

from ckptguard.analysis.fastpath import FastResult
from ckptguard.loaders.base import open_audited
from ckptguard.loaders.structure import graph_difference

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
BENIGN = sorted((ROOT / "fixtures" / "benign").glob("*.pt"))
_DTYPES = [torch.float32, torch.float16, torch.int64, torch.bool]
N_GENERATED = 200


def _graph_and_load(p: Path) -> tuple[Any, Any] | None:
    with open_audited(p) as af:  # no lease: the graph is kept for the comparison
        g = af.values_graph
        if not isinstance(g, FastResult):
            return None
        return g.root, torch.load(p, weights_only=True, mmap=True)


def _generated(tmp_path: Path) -> list[Path]:
    rng = random.Random(29)
    out = []
    for i in range(N_GENERATED):
        obj = random_checkpoint(rng, rng.randint(1, 4), [], lambda r: random_tensor(r, _DTYPES))
        p = tmp_path / f"g{i}.pt"
        torch.save(obj, p)
        out.append(p)
    return out


def test_what_torch_builds_from_the_audited_bytes_passes(tmp_path: Path) -> None:
    paths = BENIGN + _generated(tmp_path)
    proven = 0
    for p in paths:
        pair = _graph_and_load(p)
        if pair is None:
            continue
        proven += 1
        assert graph_difference(pair[1], pair[0]) is None, p.name
    assert proven >= 0.9 * N_GENERATED  # the fast path proves nearly all of them


# --- the variants: one change at one site of a faithful copy ----------------------------------

def _copy(o: Any, memo: dict[int, Any]) -> Any:
    """``o`` with every container copied (sharing kept, tensors kept as they are)."""
    if isinstance(o, torch.Tensor) or type(o) in (str, int, float, bool, type(None)):
        return o
    done = memo.get(id(o))
    if done is not None:
        return done
    if type(o) is tuple:
        out: Any = tuple(_copy(x, memo) for x in o)
    elif type(o) is list:
        out = memo[id(o)] = []
        out.extend(_copy(x, memo) for x in o)
    else:
        out = memo[id(o)] = type(o)()
        for k, v in o.items():
            out[k] = _copy(v, memo)
        for k, v in getattr(o, "__dict__", {}).items():
            setattr(out, k, _copy(v, memo))
    memo[id(o)] = out
    return out


def _other(v: Any) -> Any:
    """A value that differs from the scalar ``v`` (in value or in type)."""
    if type(v) is bool:
        return not v
    if type(v) is int:
        return v + 1
    if type(v) is float:
        return struct.unpack("<d", struct.pack("<q", struct.unpack("<q", struct.pack(
            "<d", v))[0] ^ 1))[0]  # the last mantissa bit
    if type(v) is str:
        return v + "x"
    return 0  # None


Site = tuple[Any, Any]  # (a mutable container, a key or index in it)


def _sites(root: Any) -> list[Site]:
    out: list[Site] = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, torch.Tensor):
            continue
        seen.add(id(o))
        if type(o) is list:
            out.extend((o, i) for i in range(len(o)))
            stack.extend(o)
        elif isinstance(o, dict):
            out.extend((o, k) for k in o)
            stack.extend(o.values())
            for k, v in getattr(o, "__dict__", {}).items():
                out.append((o.__dict__, k))
                stack.append(v)
        elif type(o) is tuple:
            stack.extend(o)
    return out


def _mutations(value: Any, shared: bool) -> list[tuple[str, Callable[[], Any]]]:
    """(name, make the changed value) for the value at one site."""
    t = type(value)
    if isinstance(value, torch.Tensor):
        return [("tensor-kind", lambda: torch.nn.Parameter(value.detach().clone(), False)
                 if t is torch.Tensor else value.detach())]
    if t in (str, int, float, bool, type(None)):
        return [("scalar", lambda: _other(value))]
    out: list[tuple[str, Callable[[], Any]]] = [("item-added", lambda: (
        (*value, 1) if t is tuple else [*value, 1] if t is list
        else _with(value, "added", 1)))]
    if t is tuple:
        out.append(("tuple-to-list", lambda: list(value)))
    elif t is list:
        out.append(("list-to-tuple", lambda: tuple(value)))
    elif t is dict:
        out.append(("dict-to-ordered", lambda: OrderedDict(value)))
    else:
        out.append(("ordered-to-dict", lambda: dict(value)))
        out.append(("metadata", lambda: _with_meta(value)))
    if shared and t is not tuple:
        out.append(("unshared", lambda: _copy(value, {})))
    return out


def _with(d: Any, k: str, v: Any) -> Any:
    out = _copy(d, {})
    out[k] = v
    return out


def _with_meta(d: Any) -> Any:
    out = _copy(d, {})
    out._metadata = OrderedDict({"": {"version": 99}})
    return out


def _counts(root: Any) -> dict[int, int]:
    """How many places hold each container (shared ones: more than one)."""
    n: dict[int, int] = {}
    stack = [root]
    while stack:
        o = stack.pop()
        if isinstance(o, torch.Tensor) or type(o) in (str, int, float, bool, type(None)):
            continue
        n[id(o)] = n.get(id(o), 0) + 1
        if n[id(o)] > 1:
            continue
        kids = list(o) if type(o) in (list, tuple) else list(o.values()) + \
            list(getattr(o, "__dict__", {}).values())
        stack.extend(kids)
    return n


def _shared_containers(tmp_path: Path) -> list[Path]:
    """Checkpoints where one list / dict / OrderedDict is held in two places."""
    lst, dct = [1, 2.5, "x"], {"lr": 0.1, "betas": (0.9, 0.999)}
    od: OrderedDict[str, Any] = OrderedDict(w=torch.ones(2))
    out = []
    for i, obj in enumerate([{"a": lst, "b": lst}, {"g": [dct, dct], "h": dct},
                             {"m": od, "n": [od, {"o": od}]}]):
        p = tmp_path / f"shared{i}.pt"
        torch.save(obj, p)
        out.append(p)
    return out


def test_every_change_to_the_values_is_named(tmp_path: Path) -> None:
    rng = random.Random(31)
    tried: dict[str, int] = {}
    for p in _shared_containers(tmp_path) * 4 + _generated(tmp_path)[:80]:
        pair = _graph_and_load(p)
        if pair is None:
            continue
        root, loaded = pair
        assert graph_difference(_copy(loaded, {}), root) is None, p.name  # the copy is faithful
        counts = _counts(loaded)
        for _ in range(6):
            memo: dict[int, Any] = {}
            obj = _copy(loaded, memo)
            sites = _sites(obj)
            if not sites:
                break
            parent, key = rng.choice(sites)
            value = parent[key]
            original = next((o for o, c in memo.items() if c is value), None)
            shared = original is not None and counts.get(original, 0) > 1
            name, make = rng.choice(_mutations(value, shared))
            if name == "scalar" and isinstance(parent, dict) and rng.random() < 0.3:
                name = "key-renamed"
                parent[f"{key}-renamed" if isinstance(key, str) else key + 1000] = \
                    parent.pop(key)
            else:
                parent[key] = make()
            tried[name] = tried.get(name, 0) + 1
            diff = graph_difference(obj, root)
            assert isinstance(diff, str), (p.name, name, key)
    # the generator reached every kind of change
    assert set(tried) >= {"scalar", "key-renamed", "item-added", "tuple-to-list",
                          "list-to-tuple", "dict-to-ordered", "ordered-to-dict", "metadata",
                          "unshared", "tensor-kind"}, tried
