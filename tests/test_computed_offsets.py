"""torch may compute a torch zip's storage offsets only where the audit proved them exact
(loaders/offsets.py). Both directions:

- the model of torch's ``getRecordOffsetNoRead`` is torch's own (a table test on every
  branch, against the installed torch);
- on every file ``computed_offsets_hold`` accepts, ``torch.load`` with computed offsets
  returns the same tensors at the same storage offsets as with read ones (fixtures,
  generated checkpoints); on every layout it refuses, computing would have read other bytes
  or failed (so the check is what keeps the load exact);
- ``safe_load`` lets torch compute only then, only with one Python thread, and puts the
  option back.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ckg_families import generate_module
from ckg_loader_helpers import assert_same_tensor, random_checkpoint, random_tensor

import ckptguard
from ckptguard.loaders import _torch, base, torchfile
from ckptguard.loaders.base import open_audited
from ckptguard.loaders.offsets import record_offset_no_read

torch = pytest.importorskip("torch")
from torch.utils.serialization import config  # noqa: E402

G = generate_module()
ROOT = Path(__file__).resolve().parent.parent
BENIGN = sorted((ROOT / "fixtures" / "benign").glob("*.pt"))


def test_the_installed_torch_computes_as_modelled() -> None:
    assert _torch.OFFSETS_MODEL_HOLDS  # torch 2.13 (constraints/test.txt)


def test_the_model_is_torchs_formula_on_every_branch() -> None:
    import io

    reader = torch._C.PyTorchFileReader(io.BytesIO(_torch._PROBE_ARCHIVE))
    rng = random.Random(5)
    edges = [0, 1, 0xFFFFFFFE, 0xFFFFFFFF, 0x100000000]
    for _ in range(5000):
        cursor = rng.choice([*edges, rng.randrange(1 << 20), rng.randrange(1 << 40)])
        size = rng.choice([*edges, rng.randrange(1 << 20), rng.randrange(1 << 40)])
        name = f"data/{rng.randrange(10 ** rng.randint(1, 7))}"
        align = rng.choice([1, 2, 3, 8, 64, 4096, 1 << 20])
        assert reader.get_record_offset_no_read(cursor, name, size, align) == \
            record_offset_no_read(cursor, 2 + len(name), size, align), (cursor, name, size, align)


@pytest.fixture
def computing() -> Iterator[Callable[[bool], Any]]:
    """Set torch's option directly (the reference loads)."""
    old = config.load.calculate_storage_offsets

    def set_(on: bool) -> None:
        config.load.calculate_storage_offsets = on

    yield set_
    config.load.calculate_storage_offsets = old


def _load(p: Path) -> Any:
    return torch.load(p, weights_only=True, mmap=True)


def _flat(obj: Any) -> dict[str, Any]:
    return dict(torchfile.iter_tensors(obj))


def _offsets(obj: Any) -> dict[str, int]:
    """Each tensor's storage address relative to the first one's (one map of the file)."""
    ts = _flat(obj)
    if not ts:
        return {}
    base = min(t.untyped_storage().data_ptr() for t in ts.values())
    return {k: t.untyped_storage().data_ptr() - base for k, t in ts.items()}


def _holds(p: Path) -> bool:
    with open_audited(p) as af:
        return torchfile._offsets_hold(af)


def _generated(tmp_path: Path, n: int) -> list[Path]:
    rng = random.Random(41)
    out = []
    for i in range(n):
        obj = random_checkpoint(rng, rng.randint(1, 3), [],
                                lambda r: random_tensor(r, [torch.float32, torch.int8,
                                                            torch.float16, torch.bool]))
        p = tmp_path / f"g{i}.pt"
        torch.save(obj, p)
        out.append(p)
    return out


def test_where_it_holds_computing_loads_the_same(tmp_path: Path,
                                                 computing: Callable[[bool], Any]) -> None:
    held = 0
    for p in BENIGN + _generated(tmp_path, 120):
        if not _holds(p):
            continue
        held += 1
        computing(False)
        read = _load(p)
        computing(True)
        computed = _load(p)
        assert _offsets(read) == _offsets(computed), p.name
        for k, t in _flat(read).items():
            assert_same_tensor(_flat(computed)[k], t, f"{p.name}:{k}")
    assert held >= 100  # torch.save's own archives: nearly all


# --- layouts where torch's computation is wrong: refused, and wrong they are -------------------

A, B = b"\x01" * 24, b"\x02" * 24  # two float32[6] storages, told apart by their bytes


def _pkl(*keys: str) -> bytes:
    return G.state_dict([(f"t{k}", G.tensor(k)) for k in keys])


def _entries(pkl: bytes, storages: list[tuple[str, bytes]], **kw: Any) -> list[Any]:
    return G.torch_entries(pkl, storages, seed="computed-offsets", **kw)


def _swap_alignment(ents: list[Any], text: bytes) -> list[Any]:
    return [G.ZipEntry(e.name, text) if e.name.endswith("/.storage_alignment") else e
            for e in ents]


def _gap(ents: list[Any]) -> list[Any]:
    i = next(i for i, e in enumerate(ents) if e.name.endswith("/data/0"))
    return [*ents[:i + 1], G.ZipEntry("archive/notes", b"between the records"), *ents[i + 1:]]


#: layout -> the archive's bytes (each SAFE, each one torch must not compute)
LAYOUTS: dict[str, Callable[[], bytes]] = {
    "records-out-of-order": lambda: G.build_zip(_entries(_pkl("0", "1"), [("1", B), ("0", A)])),
    "first-named-key-is-not-0": lambda: G.build_zip(_entries(_pkl("1", "0"), [("0", A), ("1", B)])),
    "a-record-between": lambda: G.build_zip(_gap(_entries(_pkl("0", "1"), [("0", A), ("1", B)]))),
    "alignment-record-lies": lambda: G.build_zip(_swap_alignment(
        _entries(_pkl("0", "1"), [("0", A), ("1", B)]), b"8")),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_where_it_does_not_hold_computing_would_be_wrong(
        tmp_path: Path, layout: str, computing: Callable[[bool], Any]) -> None:
    p = tmp_path / "m.pt"
    p.write_bytes(LAYOUTS[layout]())
    assert ckptguard.scan(p).verdict.name == "SAFE"
    assert not _holds(p)
    computing(False)
    read = _load(p)
    computing(True)
    try:
        computed = _load(p)
    except (AssertionError, RuntimeError):
        return  # torch refuses (its first key must be "0")
    differs = _offsets(read) != _offsets(computed) or any(
        not torch.equal(t, _flat(computed)[k]) for k, t in _flat(read).items())
    assert differs, "torch computed the right offsets: the layout does not test the check"


def test_a_plain_layout_holds(tmp_path: Path) -> None:
    """The control for the layouts above: the same two storages, as torch.save lays them."""
    p = tmp_path / "m.pt"
    p.write_bytes(G.build_zip(_entries(_pkl("0", "1"), [("0", A), ("1", B)])))
    assert _holds(p)


# --- safe_load --------------------------------------------------------------------------------

@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What torch's option was during each load ckptguard made."""
    out: list[bool] = []
    real = _torch.ORIGINAL_LOAD

    def spy(*a: Any, **k: Any) -> Any:
        out.append(bool(config.load.calculate_storage_offsets))
        return real(*a, **k)

    monkeypatch.setattr(_torch, "ORIGINAL_LOAD", spy)
    monkeypatch.setattr(_torch.threading, "active_count", lambda: 1)
    return out


def test_safe_load_lets_torch_compute_where_it_holds(tmp_path: Path, seen: list[bool]) -> None:
    p = tmp_path / "m.pt"
    torch.save({"a": torch.ones(3), "b": torch.arange(4)}, p)
    got = ckptguard.safe_load(p)
    assert seen == [True] and config.load.calculate_storage_offsets is False
    want = torch.load(p, weights_only=True, mmap=True)
    for k in want:
        assert_same_tensor(got[k], want[k], k)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_safe_load_reads_the_headers_where_it_does_not(tmp_path: Path, seen: list[bool],
                                                       layout: str) -> None:
    p = tmp_path / "m.pt"
    p.write_bytes(LAYOUTS[layout]())
    ckptguard.safe_load(p)
    assert seen == [False]


#: when torch must read every header itself, and why
READS_HEADERS = {
    "without-mmap": "torch reads each record anyway",
    "another-thread": "the option is process-wide",
    "without-the-lease": "torch computes from the file as it reads it: only the lease keeps "
                         "that the audited file (a racing writer could hand it an alignment "
                         "of 0: SIGFPE)",
}


@pytest.mark.parametrize("case", list(READS_HEADERS))
def test_torch_reads_the_headers_when(tmp_path: Path, seen: list[bool],
                                      monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    p = tmp_path / "m.pt"
    torch.save({"a": torch.ones(3)}, p)
    if case == "another-thread":
        monkeypatch.setattr(_torch.threading, "active_count", lambda: 2)
    elif case == "without-the-lease":
        monkeypatch.setattr(base, "take_load_lease", lambda fd: False)
    ckptguard.safe_load(p, copy=case == "without-mmap")
    assert seen == [False], READS_HEADERS[case]


def test_the_option_is_put_back_when_the_load_fails(tmp_path: Path, seen: list[bool],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "m.pt"
    torch.save({"a": torch.ones(3)}, p)

    def boom(*a: Any, **k: Any) -> Any:
        seen.append(bool(config.load.calculate_storage_offsets))
        raise RuntimeError("torch failed")

    monkeypatch.setattr(_torch, "ORIGINAL_LOAD", boom)
    with pytest.raises(RuntimeError, match="torch failed"):
        ckptguard.safe_load(p)
    assert seen == [True] and config.load.calculate_storage_offsets is False


def test_an_option_the_user_set_is_left_alone(tmp_path: Path, seen: list[bool],
                                              computing: Callable[[bool], Any]) -> None:
    p = tmp_path / "m.pt"
    torch.save({"a": torch.ones(3)}, p)
    computing(True)
    ckptguard.safe_load(p)
    assert config.load.calculate_storage_offsets is True


def test_threads_are_counted(tmp_path: Path) -> None:
    """With a real second thread, the option is never set (no other load can see it)."""
    p = tmp_path / "m.pt"
    torch.save({"a": torch.ones(3)}, p)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        with _torch.computed_storage_offsets(True):
            assert config.load.calculate_storage_offsets is False
    finally:
        stop.set()
        t.join()
