"""Session plumbing for pytest-xdist. The suite runs on every core (``-n auto --dist
loadgroup`` in pyproject.toml; ``-n0`` runs it in one process): tests are handed to the
workers one by one, except that all tests of a module with a module- or session-scoped
fixture of its own (an nginx server, one loader worker per loader kind, a generated
folder) go to ONE worker, so that fixture is still built once."""

from __future__ import annotations

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


def _name_group(item: pytest.Item, group: str) -> None:
    """Give ``item`` the ``@group`` nodeid suffix the loadgroup scheduler reads. xdist's own
    hook sets ``item._nodeid``, which pytest 9 no longer reads (``Node.nodeid`` is
    ``str(item._id)``): without this every test was a work unit of its own, and both
    workers built each module fixture (the oracle run, the loader workers) once each."""
    from _pytest.nodeid import NodeId

    nodeid = item.nodeid
    if nodeid.rfind("@") <= nodeid.rfind("]"):   # xdist did not name it already
        item._id = NodeId.parse(f"{nodeid}@{group}")  # type: ignore[attr-defined]
