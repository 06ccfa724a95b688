"""Session plumbing for pytest-xdist. The suite runs on every core (``-n auto --dist
loadgroup`` in pyproject.toml; ``-n0`` runs it in one process): tests are handed to the
workers one by one, except that all tests of a module with a module- or session-scoped
fixture of its own (an nginx server, one loader worker per loader kind, a generated
folder) go to ONE worker, so that fixture is still built once.

The work units (a grouped module, or a single test) are handed out longest first: the
groups and the units holding a ``@pytest.mark.slow`` test lead the queue, heaviest first
(``--no-loadscope-reorder`` keeps this order), so that no multi-second test starts last
while the other worker has already finished. An xdist worker ends with ``os._exit`` once
its atexit handlers ran: its results are already with the controller, and the interpreter's
own teardown (torch, hypothesis and thousands of reports freed one by one) took ~1.8 s at
the end of every run."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys

import pytest

_SHARED_SCOPES = frozenset({"module", "package", "session"})


def shares_a_fixture(item: pytest.Item) -> bool:
    """Does ``item`` use a module/package/session fixture defined in the test files?"""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(d.baseid and d.scope in _SHARED_SCOPES
               for defs in info.name2fixturedefs.values() for d in defs)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    grouped = {item.module.__name__ for item in items  # type: ignore[attr-defined]
               if isinstance(item, pytest.Function) and shares_a_fixture(item)}
    loadgroup = config.getoption("loadgroup", default=False)   # set on xdist workers
    for item in items:
        if isinstance(item, pytest.Function) and item.module.__name__ in grouped:
            group = item.module.__name__
            item.add_marker(pytest.mark.xdist_group(group))
            if loadgroup:
                _name_group(item, group)
    items[:] = longest_first(items, grouped)


#: the weight of a slow test, or of a grouped module's shared fixture, in typical tests
SLOW_WEIGHT = 20


def longest_first(items: list[pytest.Item], grouped: set[str]) -> list[pytest.Item]:
    """``items`` with the heavy work units first (heaviest first, ties in collection order),
    then the rest in collection order. A unit is a grouped module or one test; its weight is
    SLOW_WEIGHT per slow test, SLOW_WEIGHT for a group's fixture, and 1 per other test.
    Deterministic: every worker must collect the same order."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        module = getattr(item, "module", None)
        name = getattr(module, "__name__", None)
        units.setdefault(name if name in grouped else item.nodeid, []).append(item)

    def weight(key: str, unit: list[pytest.Item]) -> int:
        slow = sum(item.get_closest_marker("slow") is not None for item in unit)
        return SLOW_WEIGHT * (slow + (key in grouped)) + len(unit) - slow

    weights = {key: weight(key, unit) for key, unit in units.items()}
    order = sorted(units, key=lambda key: -weights[key] if weights[key] >= SLOW_WEIGHT else 0)
    return [item for key in order for item in units[key]]


def _end_worker_now() -> None:
    """Registered first, so run last of the atexit handlers: skip the interpreter teardown."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(0)


if os.environ.get("PYTEST_XDIST_WORKER"):
    atexit.register(_end_worker_now)


def _name_group(item: pytest.Item, group: str) -> None:
    """Give ``item`` the ``@group`` nodeid suffix the loadgroup scheduler reads. xdist's own
    hook sets ``item._nodeid``, which pytest 9 no longer reads (``Node.nodeid`` is
    ``str(item._id)``): without this every test was a work unit of its own, and both
    workers built each module fixture (the oracle run, the loader workers) once each."""
    from _pytest.nodeid import NodeId

    nodeid = item.nodeid
    if nodeid.rfind("@") <= nodeid.rfind("]"):   # xdist did not name it already
        item._id = NodeId.parse(f"{nodeid}@{group}")  # type: ignore[attr-defined]


@pytest.fixture
def no_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loads without the read lease (loaders/base.py): for tests that play a writer *inside*
    this process during a load. Under the lease that writer's ``open`` would wait for the
    load to end (up to the kernel's 45 s lease-break time) -- which is the lease's point,
    and what tests/test_lease.py proves with a writer in another process. These tests
    exercise the checks that stand in for the lease where the kernel refuses one."""
    import ckptguard.loaders.base as base

    monkeypatch.setattr(base, "take_read_lease", lambda fd: False)
