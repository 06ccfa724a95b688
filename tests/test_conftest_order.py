"""tests/conftest.py's work order: heavy units first (slow tests, grouped modules), heaviest
first, then the rest in collection order; a group's tests stay together."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from conftest import SLOW_WEIGHT, longest_first


@dataclass
class FakeItem:
    nodeid: str
    module: Any
    slow: bool = False
    marks: list[str] = field(default_factory=list)

    def get_closest_marker(self, name: str) -> object | None:
        return object() if name == "slow" and self.slow else None


def _items(spec: list[tuple[str, str, bool]]) -> list[FakeItem]:
    return [FakeItem(f"{mod}.py::{name}", SimpleNamespace(__name__=mod), slow)
            for mod, name, slow in spec]


def test_heavy_units_lead_heaviest_first_the_rest_keep_their_order() -> None:
    items = _items([
        ("a", "t1", False), ("a", "t2", False),   # plain module: singles, order kept
        ("g", "t1", False), ("g", "t2", False),   # grouped, no slow test: 20 + 2
        ("b", "t1", True),                        # one slow single: 20
        ("h", "t1", True), ("h", "t2", False),    # grouped with a slow test: 40 + 1
        ("c", "t1", False),
    ])
    order = [i.nodeid for i in longest_first(items, {"g", "h"})]  # type: ignore[arg-type]
    assert order == ["h.py::t1", "h.py::t2", "g.py::t1", "g.py::t2", "b.py::t1",
                     "a.py::t1", "a.py::t2", "c.py::t1"]


def test_equal_weights_keep_collection_order_and_nothing_is_lost() -> None:
    items = _items([("x", "s1", True), ("y", "s2", True), ("z", "q", False),
                    ("x", "s3", True)])
    out = longest_first(items, set())  # type: ignore[arg-type]
    assert [i.nodeid for i in out] == ["x.py::s1", "y.py::s2", "x.py::s3", "z.py::q"]
    assert sorted(map(id, out)) == sorted(map(id, items))
    assert SLOW_WEIGHT > 1
