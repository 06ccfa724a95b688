"""Issue 18.2 / 18.3: the gate's policy is per context (thread / task), and widened
policies are safe to use from many threads at once (no spurious UnpicklingError)."""

from __future__ import annotations

import argparse
import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from ckg_loader_helpers import assert_same_tensor, save_torch

import ckptguard
from ckptguard import Policy, UnsafeCheckpointError
from ckptguard.loaders import _torch, gate

REAL_LOAD = _torch.ORIGINAL_LOAD
ALLOW_NS = Policy().allow("argparse", "Namespace", reason="hparams in the checkpoint")
NS_ENTRY = (argparse.Namespace, "argparse.Namespace")


@pytest.fixture(autouse=True)
def _clean() -> object:
    yield
    assert gate.current() is None, "a test left a guard enabled"
    assert NS_ENTRY not in torch.serialization.get_safe_globals(), "a widened global leaked"
    assert _torch._sg_counts == {}


@pytest.fixture
def hp_file(tmp_path: Path) -> Path:
    return save_torch(tmp_path / "hp.pt", {"w": torch.arange(6.0), "args": argparse.Namespace(k=2)})


def _outcome(fn: Callable[[], Any]) -> str:
    try:
        out = fn()
    except UnsafeCheckpointError as e:
        return "refused " + " ".join(sorted({f.rule_id for f in e.report.all_findings()}))
    except Exception as e:
        return f"error {type(e).__name__}: {str(e)[:80]}"
    assert out["args"].k == 2
    assert_same_tensor(out["w"], torch.arange(6.0), "w")
    return "loaded"


def _run_threads(workers: dict[str, Callable[[threading.Barrier], list[str]]]
                 ) -> dict[str, Counter[str]]:
    barrier = threading.Barrier(len(workers))
    results: dict[str, Counter[str]] = {}

    def run(name: str) -> None:
        results[name] = Counter(workers[name](barrier))

    threads = [threading.Thread(target=run, args=(n,)) for n in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(not t.is_alive() for t in threads)
    return results


def test_each_thread_gets_the_policy_it_entered(hp_file: Path) -> None:
    n = 12

    def with_guard(policy: Policy | None) -> Callable[[threading.Barrier], list[str]]:
        def work(barrier: threading.Barrier) -> list[str]:
            with ckptguard.guard_torch_load(policy=policy):
                barrier.wait()            # every guard entered before any load
                out = [_outcome(lambda: torch.load(hp_file)) for _ in range(n)]
                barrier.wait()            # no guard exits before every load is done
            return out
        return work

    def no_guard(barrier: threading.Barrier) -> list[str]:
        barrier.wait()
        out = [_outcome(lambda: torch.load(hp_file)) for _ in range(n)]
        barrier.wait()
        return out

    res = _run_threads({"widened": with_guard(ALLOW_NS), "default": with_guard(None),
                        "none": no_guard, "widened2": with_guard(ALLOW_NS)})
    assert res["widened"] == Counter({"loaded": n})
    assert res["widened2"] == Counter({"loaded": n})
    assert res["default"] == Counter({"refused CKG102 CKG111": n})
    assert res["none"] == Counter({"refused CKG102 CKG111": n})  # default while any is on


def test_thread_without_guard_is_plain_torch_when_none_active(hp_file: Path) -> None:
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(
        _outcome(lambda: torch.load(hp_file, weights_only=False))))
    t.start()
    t.join()
    assert out == ["loaded"]


def test_everywhere_guard_is_the_fallback_policy(hp_file: Path) -> None:
    with ckptguard.guard_torch_load(policy=ALLOW_NS, everywhere=True):
        res = _run_threads({
            "none": lambda b: [_outcome(lambda: torch.load(hp_file))],
            "own-default": lambda b: _scoped(None, hp_file),
        })
    assert res["none"] == Counter({"loaded": 1})
    assert res["own-default"] == Counter({"refused CKG102 CKG111": 1})


def _scoped(policy: Policy | None, path: Path) -> list[str]:
    with ckptguard.guard_torch_load(policy=policy):
        return [_outcome(lambda: torch.load(path))]


def test_asyncio_tasks_keep_their_own_policy(hp_file: Path) -> None:
    async def task(policy: Policy | None, entered: asyncio.Event, other: asyncio.Event
                   ) -> str:
        with ckptguard.guard_torch_load(policy=policy):
            entered.set()
            await other.wait()            # both tasks are inside their guards now
            return _outcome(lambda: torch.load(hp_file))

    async def main() -> list[str]:
        a, b = asyncio.Event(), asyncio.Event()
        return list(await asyncio.gather(task(ALLOW_NS, a, b), task(None, b, a)))

    assert asyncio.run(main()) == ["loaded", "refused CKG102 CKG111"]


def test_disable_from_another_thread(hp_file: Path) -> None:
    g = ckptguard.guard_torch_load(policy=ALLOW_NS)
    t = threading.Thread(target=g.disable)
    t.start()
    t.join()
    assert gate.current() is None and not g.active
    assert torch.serialization.load.__code__ is _torch.ORIGINAL_CODE


@pytest.mark.parametrize("threads", [8, 32])
def test_widened_policy_from_many_threads_never_fails(hp_file: Path, threads: int) -> None:
    """torch's safe_globals adds/removes in one process-wide set; ours is reference-counted.
    Half the threads use safe_load, half the gate; every load must succeed."""
    loads = 480 // threads

    def via_safe_load(barrier: threading.Barrier) -> list[str]:
        barrier.wait()
        return [_outcome(lambda: ckptguard.safe_load(hp_file, policy=ALLOW_NS))
                for _ in range(loads)]

    def via_gate(barrier: threading.Barrier) -> list[str]:
        with ckptguard.guard_torch_load(policy=ALLOW_NS):
            barrier.wait()
            return [_outcome(lambda: torch.load(hp_file)) for _ in range(loads)]

    res = _run_threads({f"t{i}": via_safe_load if i % 2 else via_gate for i in range(threads)})
    total: Counter[str] = Counter()
    for c in res.values():
        total.update(c)
    assert total == Counter({"loaded": loads * threads}), total


def test_user_added_safe_global_survives(hp_file: Path) -> None:
    torch.serialization.add_safe_globals([NS_ENTRY])
    try:
        assert _outcome(lambda: ckptguard.safe_load(hp_file, policy=ALLOW_NS)) == "loaded"
        assert NS_ENTRY in torch.serialization.get_safe_globals()   # ours never removes it
    finally:
        torch.serialization.clear_safe_globals()
    assert _torch._sg_counts == {}


def test_registration_is_reference_counted() -> None:
    entries = [NS_ENTRY]
    _torch.register_safe_globals(entries)
    _torch.register_safe_globals(entries)
    _torch.release_safe_globals(entries)
    assert NS_ENTRY in torch.serialization.get_safe_globals()
    _torch.release_safe_globals(entries)
    assert NS_ENTRY not in torch.serialization.get_safe_globals()
