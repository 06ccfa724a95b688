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


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    grouped = {item.module.__name__ for item in items  # type: ignore[attr-defined]
               if isinstance(item, pytest.Function) and shares_a_fixture(item)}
    for item in items:
        if isinstance(item, pytest.Function) and item.module.__name__ in grouped:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
