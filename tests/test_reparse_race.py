"""A writer that rewrites data.pkl while torch.load re-reads it, then puts the original
bytes and the mtime back (os.utime) before the post-load check (the race in the security
review's /tmp/hunt_gate/toctou reproducers), replayed in-process and without threads:
``ORIGINAL_LOAD`` is wrapped so that, just before torch parses the file, a second
descriptor overwrites part of data.pkl, and just after, the bytes and times are restored.

1. The inode change time gives it away: FileChangedError from the identity check, for
   every API that loads a torch file.
2. With the ctime check blinded (os.fstat reports the audited ctime for that inode, as a
   writer through an already-dirty shared mapping would leave it until writeback), the
   structural comparison (loaders/structure.py) still refuses: what torch built is not what
   the audit saw. Without that comparison too, the load returns the rewritten content,
   which proves the replay is a real attack and the checks are what stop it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from ckg_loader_helpers import assert_same_tensor, save_torch, save_torch_shards

import ckptguard
from ckptguard.errors import FileChangedError
from ckptguard.loaders import _torch, torchfile
from ckptguard.loaders.base import open_audited

#: writers inside this process during a load: the lease would make them wait (conftest)
pytestmark = pytest.mark.usefixtures("no_lease")

REAL_LOAD = _torch.ORIGINAL_LOAD
REAL_FSTAT = os.fstat


def state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {f"k{i:06d}": torch.randn(2, 2, generator=g) for i in range(8)}
    sd["shape35"] = torch.randn(3, 5, generator=g)
    return sd


#: which region of data.pkl the writer changes: (same-size byte edits, a regex for what
#: part 2's refusal says, a check that the unguarded load returned the rewritten content)
VARIANTS: dict[str, tuple[list[tuple[bytes, bytes]], str, Callable[[dict[str, Any]], bool]]] = {
    "key-name": ([(b"k000007", b"EVIL007")], "'EVIL007' where the audit saw 'k000007'",
                 lambda sd: "EVIL007" in sd and "k000007" not in sd),
    # GLOBAL torch.IntStorage, then a BINPUT to an unused memo slot to keep the size (int32:
    # the same itemsize, so torch's record-size check holds with and without mmap)
    "dtype": ([(b"ctorch\nFloatStorage\n", b"ctorch\nIntStorage\nq\xff")],
              "is int32, the audit saw float32",
              lambda sd: sd["k000000"].dtype == torch.int32),
    "shape": ([(b"K\x03K\x05\x86", b"K\x02K\x05\x86")],
              r"has shape \[2, 5\], the audit saw \[3, 5\]",
              lambda sd: tuple(sd["shape35"].shape) == (2, 5)),
    # tensor k000001 reads storage "2" (k000002's bytes) instead of its own
    "storage-alias": ([(b"X\x01\x00\x00\x001", b"X\x01\x00\x00\x002")],
                      "does not share storage|is not the audited record",
                      lambda sd: torch.equal(sd["k000001"], sd["k000002"])),
}
#: storages "1" and "2" swapped: the partition of tensors into storages is unchanged, only
#: the file offsets tell (a mmap load maps the file once)
SWAP = ([(b"X\x01\x00\x00\x001", b"X\x01\x00\x00\x00\x00"),
         (b"X\x01\x00\x00\x002", b"X\x01\x00\x00\x001"),
         (b"X\x01\x00\x00\x00\x00", b"X\x01\x00\x00\x002")],
        "is not the audited record", None)


def _offsets(path: Path, edits: list[tuple[bytes, bytes]]) -> list[tuple[int, bytes]]:
    """(file offset, new bytes) for ``edits`` applied in order; each old pattern must occur
    exactly once (so the edit hits the region the variant names)."""
    data = bytearray(path.read_bytes())
    out: list[tuple[int, bytes]] = []
    for old, new in edits:
        assert len(old) == len(new) and data.count(old) == 1, (old, data.count(old))
        at = data.find(old)
        data[at:at + len(new)] = new
        out.append((at, new))
    return out


def _ctime_tick_past(path: Path) -> None:
    """Return once the filesystem's clock has moved past ``path``'s ctime (timestamps are
    taken from a coarse clock: a write in the same tick would keep the ctime). Waits on a
    condition, bounded, never for a fixed time."""
    probe = path.with_name(path.name + ".tick")
    target = os.stat(path).st_ctime_ns
    for _ in range(1_000_000):
        probe.write_bytes(b"x")
        if os.stat(probe).st_ctime_ns > target:
            probe.unlink()
            return
    raise AssertionError("the filesystem clock did not advance")


class _Ctime:
    """An fstat result whose ctime is the audited one (everything else is the real one)."""

    def __init__(self, st: os.stat_result, ctime_ns: int) -> None:
        self._st = st
        self.st_ctime_ns = ctime_ns

    def __getattr__(self, name: str) -> Any:
        return getattr(self._st, name)


def rewrite_during_load(monkeypatch: pytest.MonkeyPatch, target: Path,
                        edits: list[tuple[bytes, bytes]], *, blind_ctime: bool = False
                        ) -> list[int]:
    """Wrap torch.load: for ``target`` only, apply ``edits`` through a second descriptor
    just before torch reads the file and restore the bytes, atime and mtime just after.
    ``blind_ctime``: os.fstat on ``target``'s inode reports the ctime from before the
    attack. Returns a list that gets one entry per attacked load."""
    writes = _offsets(target, edits)
    st0 = os.stat(target)
    ino = (st0.st_dev, st0.st_ino)
    attacked: list[int] = []
    if blind_ctime:
        def fstat(fd: int) -> Any:
            st = REAL_FSTAT(fd)
            return _Ctime(st, st0.st_ctime_ns) if (st.st_dev, st.st_ino) == ino else st

        monkeypatch.setattr(os, "fstat", fstat)
    else:
        _ctime_tick_past(target)

    def racing(f: Any, **kw: Any) -> Any:
        st = os.stat(f)
        if (st.st_dev, st.st_ino) != ino:
            return REAL_LOAD(f, **kw)
        fd = os.open(target, os.O_RDWR)
        try:
            old = [(at, os.pread(fd, len(new), at)) for at, new in writes]
            for at, new in writes:
                assert os.pwrite(fd, new, at) == len(new)
            try:
                attacked.append(1)
                return REAL_LOAD(f, **kw)
            finally:
                for at, b in reversed(old):
                    os.pwrite(fd, b, at)
                os.utime(target, ns=(st0.st_atime_ns, st0.st_mtime_ns))
        finally:
            os.close(fd)

    monkeypatch.setattr(_torch, "ORIGINAL_LOAD", racing)
    return attacked


# --- the APIs --------------------------------------------------------------------------------

def _single(tmp_path: Path) -> tuple[Path, Path]:
    path = save_torch(tmp_path / "m.pt", state_dict())
    return path, path


def _sharded(tmp_path: Path) -> tuple[Path, Path]:
    """An index with two torch shards; every name the variants touch is in the second."""
    sd = state_dict()
    names = list(sd)
    index = save_torch_shards(tmp_path, [{k: sd[k] for k in names[:1]},
                                         {k: sd[k] for k in names[1:]}])
    return index, tmp_path / "model-00002-of-00002.bin"


def _iter(path: Path, **kw: Any) -> dict[str, Any]:
    with ckptguard.iter_state_dict(path, **kw) as it:
        return dict(it)


def _gate(path: Path, **kw: Any) -> Any:
    with ckptguard.guard_torch_load():
        return torch.load(path, **kw)


#: name -> (make the file(s): (what to load, the file to attack), load, mmap load?)
APIS: dict[str, tuple[Callable[[Path], tuple[Path, Path]], Callable[[Path], Any], bool]] = {
    "safe_load": (_single, ckptguard.safe_load, True),
    "safe_load-copy": (_single, lambda p: ckptguard.safe_load(p, copy=True), False),
    "gate": (_single, _gate, False),
    "gate-mmap": (_single, lambda p: _gate(p, mmap=True), True),
    "iter_state_dict": (_single, _iter, True),
    "sharded-safe_load": (_sharded, ckptguard.safe_load, True),
    "sharded-iter": (_sharded, _iter, True),
    "sharded-copy": (_sharded, lambda p: _iter(p, copy=True), False),
}


def _flat(obj: Any) -> dict[str, Any]:
    return dict(obj)


# --- 1. the ctime ----------------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("api", list(APIS))
def test_rewrite_and_restore_caught_by_ctime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             api: str, variant: str) -> None:
    make, load, _mmap = APIS[api]
    entry, target = make(tmp_path)
    before, st = target.read_bytes(), os.stat(target)
    attacked = rewrite_during_load(monkeypatch, target, VARIANTS[variant][0])
    with pytest.raises(FileChangedError, match="inode change time changed"):
        load(entry)
    assert attacked == [1]  # torch did parse the rewritten file
    # ... which now holds the audited bytes again, with the audited size and mtime
    assert target.read_bytes() == before and os.stat(target).st_mtime_ns == st.st_mtime_ns


def test_legacy_rewrite_caught_by_ctime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_torch(tmp_path / "m.pt", state_dict(), legacy=True)
    attacked = rewrite_during_load(monkeypatch, path, VARIANTS["key-name"][0])
    with pytest.raises(FileChangedError, match="inode change time changed"):
        ckptguard.safe_load(path)
    assert attacked == [1]


def test_ctime_alone_refuses_before_the_load(tmp_path: Path) -> None:
    """A utime that puts the mtime back after the audit still changes the ctime: refused by
    the pre-load stat, so torch never parses the file."""
    path = save_torch(tmp_path / "m.pt", state_dict())
    with open_audited(path) as af:
        st = os.stat(path)
        _ctime_tick_past(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(path).st_mtime_ns == af.report.identity.mtime_ns  # type: ignore[union-attr]
        with pytest.raises(FileChangedError, match="inode change time changed"):
            af.check_stat()


def test_identity_records_the_ctime(tmp_path: Path) -> None:
    path = save_torch(tmp_path / "m.pt", state_dict())
    report = ckptguard.scan(path)
    assert report.identity is not None
    assert report.identity.ctime_ns == os.stat(path).st_ctime_ns
    assert report.identity.to_dict()["ctime_ns"] == report.identity.ctime_ns
    assert type(report.identity).from_dict(report.identity.to_dict()) == report.identity


# --- 2. the structural comparison -------------------------------------------------------------

def _cases() -> Iterator[Any]:
    for api, (_make, _load, mmap) in APIS.items():
        for variant in VARIANTS:
            yield pytest.param(api, variant, id=f"{api}-{variant}")
        if mmap:
            yield pytest.param(api, "storage-swap", id=f"{api}-storage-swap")


def _variant(name: str) -> tuple[list[tuple[bytes, bytes]], str]:
    edits, message, _ = SWAP if name == "storage-swap" else VARIANTS[name]
    return edits, message


@pytest.mark.parametrize(("api", "variant"), list(_cases()))
def test_rewrite_with_ctime_blinded_caught_by_structure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api: str, variant: str) -> None:
    make, load, _mmap = APIS[api]
    entry, target = make(tmp_path)
    with open_audited(target) as af:
        assert af.proven  # check_loaded is skipped for it: the comparison is the guard
    edits, message = _variant(variant)
    attacked = rewrite_during_load(monkeypatch, target, edits, blind_ctime=True)
    with pytest.raises(FileChangedError, match=r"what torch\.load built differs") as info:
        load(entry)
    assert re.search(message, str(info.value)), str(info.value)
    assert attacked == [1]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_replay_is_a_real_attack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     variant: str) -> None:
    """With the ctime blinded and the comparison switched off, safe_load returns the
    rewritten content (so the two tests above fail without the checks)."""
    path, _ = _single(tmp_path)
    edits, _message, rewritten = VARIANTS[variant]
    rewrite_during_load(monkeypatch, path, edits, blind_ctime=True)
    monkeypatch.setattr(torchfile, "structure_difference", lambda *a, **k: None)
    monkeypatch.setattr(torchfile, "graph_difference", lambda *a, **k: None)
    got = ckptguard.safe_load(path)
    assert rewritten(got)


def test_legacy_rename_caught_by_structure(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_torch(tmp_path / "m.pt", state_dict(), legacy=True)
    rewrite_during_load(monkeypatch, path, VARIANTS["key-name"][0], blind_ctime=True)
    with pytest.raises(FileChangedError, match="'EVIL007' where the audit saw 'k000007'"):
        ckptguard.safe_load(path)


@pytest.mark.parametrize("api", list(APIS))
def test_unchanged_file_loads_bit_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        api: str) -> None:
    """The control: the same wrapper with no edit loads, equal to torch.load bit for bit."""
    make, load, _mmap = APIS[api]
    entry, _target = make(tmp_path)
    rewrite_during_load(monkeypatch, _target, [], blind_ctime=True)
    got = _flat(load(entry))
    ref = state_dict()
    assert list(got) == list(ref)
    for k, v in ref.items():
        assert_same_tensor(got[k], v, k)


@pytest.mark.parametrize("copy", [False, True])
def test_views_without_elements_keep_their_storage(tmp_path: Path, copy: bool) -> None:
    """A view with no elements has no data pointer (``data_ptr()`` is 0): the comparison
    takes its storage's, so empty slices of shared storages load (a generated checkpoint
    of tests/test_direct_loader.py was refused before)."""
    base = torch.arange(10, dtype=torch.int8)
    sd = {"base": base, "empty": base[4:4], "empty2d": base[2:2].view(0, 2),
          "alone": torch.zeros(0, 3)}
    p = tmp_path / "empty_views.pt"
    torch.save(sd, p)
    got = ckptguard.safe_load(p, copy=copy)
    want = torch.load(p, weights_only=True, mmap=not copy)
    assert list(got) == list(want)
    for k, v in want.items():
        assert_same_tensor(got[k], v, k)


# --- 3. the values around the tensors ----------------------------------------------------------

def values_checkpoint(tmp_path: Path) -> Path:
    """A training checkpoint whose non-tensor values each have a unique encoding in
    data.pkl (so each variant below edits exactly the value it names)."""
    from collections import OrderedDict

    model: OrderedDict[str, Any] = OrderedDict(w=torch.arange(4, dtype=torch.float32))
    model._metadata = OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]
    obj = {"model": model, "step": 0x13572468, "lr": 0.1234567, "tag": "alpha-audited",
           "flag": True, "none": None, "pair": (7, 9), "list": [1, 2]}
    p = tmp_path / "values.pt"
    torch.save(obj, p)
    return p


#: (what to find in data.pkl (a regex; its one match is edited), how to edit the match,
#: what safe_load's refusal says, what the unguarded load returned)
VALUE_VARIANTS: dict[str, tuple[bytes, Callable[[bytes], bytes], str,
                                Callable[[dict[str, Any]], bool]]] = {
    "int": (rb"Jh\$W\x13", lambda b: b"Ji$W\x13", r"value 'step' is int 324478057",
            lambda o: o["step"] == 0x13572469),
    "float": (rb"G\?\xbf\x9a\xdb\xb8\xf8\xdar", lambda b: b[:-1] + b"s",
              r"value 'lr' is float 0\.1234567000", lambda o: o["lr"] != 0.1234567),
    "str": (rb"alpha-audited", lambda b: b"omega-swapped", "value 'tag' is str 'omega",
            lambda o: o["tag"] == "omega-swapped"),
    "bool": (rb"flagq.\x88", lambda b: b[:-1] + b"\x89", "value 'flag' is bool False",
             lambda o: o["flag"] is False),
    "none-to-true": (rb"noneq.N", lambda b: b[:-1] + b"\x88", "value 'none' is bool True",
                     lambda o: o["none"] is True),
    "key": (rb"X\x04\x00\x00\x00none", lambda b: b[:-4] + b"nada",
            r"has keys \[.*'nada'", lambda o: "nada" in o and "none" not in o),
    "tuple-item": (rb"K\x07K\t\x86", lambda b: b"K\x08K\t\x86", r"value 'pair\.0' is int 8",
                   lambda o: o["pair"] == (8, 9)),
    "list-item": (rb"K\x01K\x02eu\.", lambda b: b"K\x01K\x03eu.", r"value 'list\.1' is int 3",
                  lambda o: o["list"] == [1, 3]),
    "metadata": (rb"versionq.K\x01", lambda b: b[:-1] + b"\x02",
                 r"value 'model\._metadata\.\.version' is int 2",
                 lambda o: o["model"]._metadata[""]["version"] == 2),
}


def _value_edit(path: Path, variant: str) -> list[tuple[bytes, bytes]]:
    pattern, edit, _, _ = VALUE_VARIANTS[variant]
    found = re.findall(pattern, path.read_bytes(), re.S)
    assert len(found) == 1, (variant, found)
    return [(found[0], edit(found[0]))]


#: the single-file loaders that hand torch.load's object out (or check it whole)
VALUE_APIS = {k: APIS[k] for k in ("safe_load", "safe_load-copy", "gate", "gate-mmap",
                                   "iter_state_dict")}


@pytest.mark.parametrize("variant", list(VALUE_VARIANTS))
@pytest.mark.parametrize("api", list(VALUE_APIS))
def test_rewritten_values_caught_by_the_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              api: str, variant: str) -> None:
    """Without a lease and with the ctime blinded, a writer swaps a non-tensor value (an
    int, a float, a string, a flag, a key, an item, ``_metadata``) while torch re-reads the
    file: every tensor is the audited one, so only the comparison of the values with the
    fast path's graph can tell."""
    _make, load, _mmap = VALUE_APIS[api]
    path = values_checkpoint(tmp_path)
    with open_audited(path) as af:
        assert af.proven and af.values_graph is not None
    attacked = rewrite_during_load(monkeypatch, path, _value_edit(path, variant),
                                   blind_ctime=True)
    with pytest.raises(FileChangedError, match=r"what torch\.load built differs") as info:
        load(path)
    assert re.search(VALUE_VARIANTS[variant][2], str(info.value)), str(info.value)
    assert attacked == [1]


@pytest.mark.parametrize("variant", list(VALUE_VARIANTS))
def test_the_value_replay_is_a_real_attack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           variant: str) -> None:
    """The control: with the graph comparison switched off, safe_load returns the rewritten
    value (the tensor comparison alone passes it)."""
    path = values_checkpoint(tmp_path)
    rewrite_during_load(monkeypatch, path, _value_edit(path, variant), blind_ctime=True)
    monkeypatch.setattr(torchfile, "graph_difference", lambda *a, **k: None)
    assert VALUE_VARIANTS[variant][3](ckptguard.safe_load(path))


def test_unchanged_values_load_equal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No edit: the values come back as torch.load gives them (the comparison passes)."""
    path = values_checkpoint(tmp_path)
    rewrite_during_load(monkeypatch, path, [], blind_ctime=True)
    got = ckptguard.safe_load(path)
    want = REAL_LOAD(path, weights_only=True)
    assert {k: v for k, v in got.items() if k != "model"} == \
        {k: v for k, v in want.items() if k != "model"}
    assert got["model"]._metadata == want["model"]._metadata
