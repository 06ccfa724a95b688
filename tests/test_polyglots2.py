"""Every reader of the same bytes (issue 10 point 1, issue 17 points 1-3 and 6).

- the reader table in detect.py, pinned both ways;
- generated cross-format polyglots (safetensors whose length field is pickle opcodes, tar
  names that are pickles) under many names: UNSAFE with CKG011 and the payload's CKG101,
  each variant proven valid for its own format and proven to reach the payload's global
  when unpickled from byte 0 (a ``find_class`` probe: nothing runs);
- benign controls: real safetensors files whose header length starts with every byte value
  stay SAFE without CKG011;
- npz archives that CPython's zipfile (numpy.load) and miniz read differently: UNSAFE with
  CKG313/CKG314 and the hidden object array's payload named;
- legacy storage views: CKG430; hard links: CKG706 (a note).
The fixtures of the same builders (fixtures/families/polyglots2.py) fire for real with
the named loader in tests/test_fixtures.py::test_payload_fires.
"""

from __future__ import annotations

import io
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from ckg_families import family, reached
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptguard
from ckptguard.detect import (
    ANY_FILE_LOADERS,
    AUDITED_BY_FORMAT,
    FORMAT_LOADERS,
    LOADER_RULES,
    Head,
    Loader,
    NameKind,
    Reading,
    head_kinds,
    reading_of,
    readings,
    unaudited_readings,
)
from ckptguard.model import Format, Severity, Verdict

ROOT = Path(__file__).resolve().parents[1]


FAM = family("polyglots2")
PAYLOADS: dict[str, Any] = FAM["PAYLOADS"]


def scan(tmp: Path, name: str, data: bytes) -> Any:
    p = tmp / name
    p.write_bytes(data)
    return ckptguard.scan(p)


# --- the table ------------------------------------------------------------------------------

#: every combination of the loaders' magic tests a file's first bytes can pass (an npy or
#: an empty-zip head can also be a tar header; a zip head is a zip for every loader)
HEAD_SETS = [frozenset(h for i, h in enumerate(Head) if mask >> i & 1)
             for mask in range(1 << len(Head))]


def expected_reading(loader: Loader, heads: frozenset[Head], name: NameKind) -> Reading:
    """Written out by hand from the loaders' own code (torch/serialization.py load,
    _is_zipfile, _legacy_load; numpy/lib/_npyio_impl.py load): the table must say this."""
    if loader is Loader.TORCH_LOAD:
        if name is NameKind.SAFETENSORS:     # a path ending in .safetensors
            return Reading.SAFETENSORS
        if Head.ZIP_LOCAL in heads:          # _is_zipfile: PK\x03\x04 only
            return Reading.ZIP_MINIZ
        if Head.TAR in heads:                # _legacy_load tries tarfile first
            return Reading.TAR
        return Reading.PICKLE_TORCH
    if loader is Loader.NUMPY_LOAD:
        if heads & {Head.ZIP_LOCAL, Head.ZIP_EMPTY}:
            return Reading.ZIP_PYTHON
        if Head.NPY in heads:
            return Reading.NPY
        return Reading.PICKLE
    return {Loader.TORCH_JIT_LOAD: Reading.ZIP_MINIZ, Loader.PICKLE_LOAD: Reading.PICKLE,
            Loader.SAFETENSORS_LOAD: Reading.SAFETENSORS, Loader.JSON_LOAD: Reading.JSON}[loader]


def test_reader_table_pinned_both_ways() -> None:
    for loader in Loader:
        for heads in HEAD_SETS:
            for k in NameKind:
                assert reading_of(loader, heads, k) is expected_reading(loader, heads, k), (
                    loader, sorted(heads), k)
    # every rule is reachable (no dead row) and the tables cover every format
    for rule in LOADER_RULES:
        assert any(reading_of(rule.loader, hs, k) is rule.reading for hs in HEAD_SETS
                   for k in NameKind
                   if (rule.head is None or rule.head in hs) and rule.name in (None, k)), rule
    assert set(FORMAT_LOADERS) == set(Format) == set(AUDITED_BY_FORMAT)
    assert {Loader.PICKLE_LOAD, Loader.NUMPY_LOAD, Loader.TORCH_LOAD,
            Loader.TORCH_JIT_LOAD} == ANY_FILE_LOADERS
    assert {r for r in Reading if not r.runs_code} == {Reading.SAFETENSORS, Reading.JSON}


def _tar_head() -> bytes:
    import tarfile

    ti = tarfile.TarInfo("storages")
    ti.size = 1
    return ti.tobuf(format=tarfile.USTAR_FORMAT) + b"x".ljust(512, b"\x00")


FAM_TAR_HEAD = _tar_head()


@pytest.mark.parametrize("fmt", list(Format))
@pytest.mark.parametrize("head", [b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY",
                                  FAM_TAR_HEAD, b"\x80\x02", b"{}"])
@pytest.mark.parametrize("name", ["m.safetensors", "m.bin", "m.npz", "m.json", "m"])
def test_every_unaudited_reading_has_an_audit(fmt: Format, head: bytes, name: str) -> None:
    """The engine audits each reading a plausible loader takes and the format's audit does
    not cover; NPY is only ever read from an npy head, which sniffs as NUMPY_NPY."""
    todo = unaudited_readings(fmt, head, name)
    assert set(todo) <= {Reading.PICKLE, Reading.PICKLE_TORCH, Reading.ZIP_MINIZ,
                         Reading.ZIP_PYTHON, Reading.TAR} | (
        {Reading.NPY} if Head.NPY in head_kinds(head) and fmt is not Format.NUMPY_NPY
        else set())
    plan = readings(fmt, head, name)
    # pickle.load and numpy.load always read the bytes, whatever the name and content say
    assert Loader.PICKLE_LOAD in plan[Reading.PICKLE]


def test_plan_for_a_safetensors_file() -> None:
    head = b"\x10\x00\x00\x00\x00\x00\x00\x00{}"
    # torch.load hands a PATH ending in .safetensors to safetensors, but an open file of
    # the same bytes goes through its legacy reader: the name narrows nothing
    # (and torch.jit.load's miniz finds an archive from the end of any file)
    assert unaudited_readings(Format.SAFETENSORS, head, "m.safetensors") == {
        Reading.PICKLE: frozenset({Loader.PICKLE_LOAD, Loader.NUMPY_LOAD}),
        Reading.PICKLE_TORCH: frozenset({Loader.TORCH_LOAD}),
        Reading.ZIP_MINIZ: frozenset({Loader.TORCH_JIT_LOAD})}
    todo = unaudited_readings(Format.SAFETENSORS, head, "pytorch_model.bin")
    assert todo[Reading.PICKLE_TORCH] == {Loader.TORCH_LOAD}
    assert todo[Reading.ZIP_MINIZ] == {Loader.TORCH_JIT_LOAD}


# --- safetensors whose length field is a pickle program -------------------------------------

NAMES = ["model.safetensors", "pytorch_model.bin", "w.pt", "w.pth", "w.ckpt", "weights",
         "w.npy", "w.st"]
ST_VARIANTS = [(lead, count, hop, hop_op, where)
               for lead, count in (("C", 100), ("C", 255), ("U", 110), ("B", 96),
                                   ("T", 200), ("X", 130))
               for hop, hop_op in ((120, b"C"), (33, b"U"), (126, b"C"))
               for where in ("metadata", "name")]


@pytest.mark.parametrize("variant", ST_VARIANTS, ids=lambda v: "-".join(map(str, v)))
def test_safetensors_length_as_opcodes(variant: tuple[Any, ...], tmp_path: Path) -> None:
    lead, count, hop, hop_op, where = variant
    from safetensors import safe_open

    for i, (pname, payload) in enumerate(sorted(PAYLOADS.items())):
        data = FAM["st_polyglot"](payload(), lead=lead, count=count, hop=hop, hop_op=hop_op,
                                  where=where)
        name = NAMES[(i + len(ST_VARIANTS)) % len(NAMES)] if i else NAMES[count % len(NAMES)]
        p = tmp_path / name
        p.write_bytes(data)
        # a valid safetensors file ...
        with safe_open(str(p), "np") as f:
            (key,) = f.keys()
            assert (key == "t") is (where == "metadata")
            assert f.get_tensor(key).tobytes() == payload()
        # ... that pickle.load (and numpy.load's fallback) runs up to the payload's global
        assert reached(data) in ("posix.system", "builtins.exec"), pname
        r = ckptguard.scan(p)
        assert r.verdict is Verdict.UNSAFE, (name, pname, sorted(r.rule_ids()))
        assert {"CKG011", "CKG101"} <= r.rule_ids(), (name, pname, sorted(r.rule_ids()))
        assert r.max_severity is Severity.CRITICAL
        assert r.format is Format.SAFETENSORS


def test_safetensors_polyglot_through_torch_persistent_reading(tmp_path: Path) -> None:
    """torch.load's legacy reading widens the pickle reading (persistent ids do not stop
    it), under every name: a path ending in .safetensors goes to safetensors, but
    torch.load(open(path, "rb")) of the same file does not."""
    data = FAM["st_polyglot"](PAYLOADS["exec"](), lead="C", count=120)
    for name in ("a.bin", "a.safetensors"):
        r = scan(tmp_path, name, data)
        f = next(f for f in r.findings if f.rule_id == "CKG011")
        readers = f.evidence_dict["readers"]
        assert "pickle.load" in readers and "numpy.load(allow_pickle=True)" in readers
        assert "torch.load" in readers


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.sampled_from(sorted(PAYLOADS)), st.integers(104, 255), st.integers(40, 126),
       st.sampled_from([b"C", b"U"]), st.sampled_from(NAMES))
def test_safetensors_polyglot_generated(pname: str, count: int, hop: int, hop_op: bytes,
                                        name: str) -> None:
    import tempfile

    if hop in (34, 92):
        hop += 1
    data = FAM["st_polyglot"](PAYLOADS[pname](), lead="C", count=count, hop=hop,
                              hop_op=hop_op)
    assert reached(data) in ("posix.system", "builtins.exec")
    with tempfile.TemporaryDirectory() as d:
        r = scan(Path(d), name, data)
    assert r.verdict is Verdict.UNSAFE and {"CKG011", "CKG101"} <= r.rule_ids()


def _benign_st(n: int) -> bytes | None:
    """A real safetensors file (one f32 tensor) whose header is padded to ``n`` bytes."""
    import json

    hdr = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "__metadata__": {"format": "pt"}}, separators=(",", ":")).encode()
    if n < len(hdr):
        return None
    return n.to_bytes(8, "little") + hdr + b" " * (n - len(hdr)) + b"\x00" * 8


@pytest.mark.parametrize("b1", [0, 1, 2, 3])
def test_benign_safetensors_with_every_length_byte_stays_safe(b1: int,
                                                              tmp_path: Path) -> None:
    """Header lengths whose bytes are pickle opcodes (0x80 PROTO, 'c' GLOBAL, ...) are
    common in real files: they must stay SAFE (the unpickler dies before any global)."""
    from safetensors.numpy import load

    checked = 0
    for b0 in range(256):
        data = _benign_st(b0 + 256 * b1)
        if data is None:
            continue
        assert reached(data) is None
        assert list(load(data)) == ["w"]
        r = scan(tmp_path, "model.safetensors", data)
        assert r.verdict is Verdict.SAFE, (b0, b1, sorted(r.rule_ids()))
        assert "CKG011" not in r.rule_ids()
        checked += 1
    assert checked >= 100


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.dictionaries(st.text("abcdefghijklmnop._0123456789", min_size=1, max_size=30),
                       st.tuples(st.sampled_from(["float32", "int64", "uint8", "float16"]),
                                 st.lists(st.integers(0, 5), max_size=3)),
                       max_size=6),
       st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=60), max_size=3))
def test_benign_safetensors_generated_stay_safe(tensors: dict[str, Any],
                                               meta: dict[str, str]) -> None:
    import tempfile

    import numpy as np
    from safetensors.numpy import save

    arrays = {k: np.zeros(shape, dtype=dt) for k, (dt, shape) in tensors.items()}
    data = save(arrays, metadata=meta or None)
    with tempfile.TemporaryDirectory() as d:
        r = scan(Path(d), "model.safetensors", data)
    assert "CKG011" not in r.rule_ids()
    assert r.verdict is Verdict.SAFE or r.rule_ids() & {"CKG504", "CKG506"}, sorted(
        r.rule_ids())


# --- tar names, npy, json: readings that die at byte 0 or run ------------------------------

@pytest.mark.parametrize("pname", ["global_reduce", "inst", "obj"])
def test_tar_member_name_is_a_pickle(pname: str, tmp_path: Path) -> None:
    data = FAM["tar_name_polyglot"](PAYLOADS[pname]())
    assert reached(data) == "posix.system"
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as t:  # torch.load reads the tar
        assert len(t.getnames()) == 2
    for name in ("model.tar", "model.pt", "model"):
        r = scan(tmp_path, name, data)
        assert r.verdict is Verdict.UNSAFE and {"CKG011", "CKG101", "CKG007"} <= r.rule_ids()


def test_benign_npy_and_json_readings_die_at_byte_zero(tmp_path: Path) -> None:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.arange(6, dtype=np.float32))
    for name, data in (("a.npy", buf.getvalue()), ("a.bin", buf.getvalue()),
                       ("c.json", b'{"a": 1}'), ("c.bin", b' \n{"a": [1, 2]}')):
        assert reached(data) is None
        r = scan(tmp_path, name, data)
        assert "CKG011" not in r.rule_ids(), (name, sorted(r.rule_ids()))


# --- npz: CPython's zipfile vs miniz ---------------------------------------------------------

NPZ_VARIANTS = [dict(benign=b, hidden=h, keep_benign=k, sentinels=s, filler=f)
                for b, h in ((("w.npy",), ("evil.npy",)), (("w.npy",), ("w.npy",)),
                             (("a.npy", "b.npy"), ("c.npy",)),
                             (("a.npy",), ("x.npy", "y.npy")))
                for k in (False, True) for s in (True, False) for f in (0, 13)]


@pytest.mark.parametrize("kw", NPZ_VARIANTS, ids=lambda kw: "-".join(
    f"{k}={v}" for k, v in kw.items()))
def test_npz_zip64_differential(kw: dict[str, Any], tmp_path: Path) -> None:
    for pname in ("exec", "global_reduce"):
        data = FAM["npz_z64_differential"](PAYLOADS[pname](), **kw)
        # CPython's zipfile (what numpy.load uses) sees the object arrays ...
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
            for h in kw["hidden"]:
                assert h in names
                blob = z.read(h)
                assert b"'descr': '|O'" in blob
                assert reached(blob[blob.index(b"\n") + 1:]) in ("builtins.exec",
                                                                  "posix.system")
        r = scan(tmp_path, "arrays.npz", data)
        assert r.verdict is Verdict.UNSAFE, sorted(r.rule_ids())
        assert {"CKG313", "CKG314", "CKG602", "CKG101"} <= r.rule_ids(), sorted(r.rule_ids())
        # ... while the miniz reading is the benign one
        assert [m for m in r.members] == list(kw["benign"])


def test_npz_without_differential_is_safe(tmp_path: Path) -> None:
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, w=np.arange(3, dtype=np.float32))
    r = scan(tmp_path, "a.npz", buf.getvalue())
    assert r.verdict is Verdict.SAFE and not r.rule_ids() & {"CKG313", "CKG314", "CKG011"}


def test_python_zipfile_refusal_is_a_disagreement(tmp_path: Path) -> None:
    """A central-directory entry Python's zipfile refuses (corrupt Zip64 extra) while the
    strict reader reads the archive: CKG313."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, w=np.arange(3, dtype=np.float32))
    data = bytearray(buf.getvalue())
    cd = data.rfind(b"PK\x01\x02")
    xlen_at = cd + 30
    assert data[xlen_at:xlen_at + 2] == b"\x00\x00"
    # append a 4-byte extra header claiming 8 bytes: Python raises "Corrupt extra field"
    name_end = cd + 46 + int.from_bytes(data[cd + 28:cd + 30], "little")
    data[name_end:name_end] = b"\x99\x99\x08\x00"
    data[xlen_at:xlen_at + 2] = (4).to_bytes(2, "little")
    eocd = data.rfind(b"PK\x05\x06")
    size = int.from_bytes(data[eocd + 12:eocd + 16], "little") + 4
    data[eocd + 12:eocd + 16] = size.to_bytes(4, "little")
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(bytes(data)))
    r = scan(tmp_path, "a.npz", bytes(data))
    assert r.verdict is not Verdict.SAFE and "CKG313" in r.rule_ids()


# --- legacy views ---------------------------------------------------------------------------

@pytest.mark.parametrize("view", [("v0", 0, 6), ("v0", 2, 2), ("0", 0, 6), ("x", 5, 1),
                                  ("v", 0, 0)])
def test_legacy_view_metadata_refused(view: tuple[str, int, int], tmp_path: Path) -> None:
    r = scan(tmp_path, "legacy.pt", FAM["legacy_view_file"](view))
    assert r.verdict is Verdict.UNSAFE and "CKG430" in r.rule_ids()


def test_legacy_without_view_is_safe_and_torch_agrees(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    p = tmp_path / "legacy.pt"
    p.write_bytes(FAM["legacy_view_file"](None, (2, 3), (3, 1)))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and "CKG430" not in r.rule_ids()
    obj = torch.load(p, weights_only=True)
    assert obj["weight"].shape == (2, 3)


def test_legacy_view_changes_what_torch_loads(tmp_path: Path) -> None:
    """Why CKG430 exists: torch's legacy loader applies the view, so the tensor differs
    from the records the audit would have reported."""
    torch = pytest.importorskip("torch")
    p = tmp_path / "legacy.pt"
    p.write_bytes(FAM["legacy_view_file"](("v0", 2, 2), (2,), (1,)))
    obj = torch.load(p, weights_only=True)
    assert obj["weight"].tolist() == [2.0, 3.0]  # not data[0:2] = [0.0, 1.0]


# --- hard links -----------------------------------------------------------------------------

def test_hard_linked_shard_is_noted(tmp_path: Path) -> None:
    src = ROOT / "fixtures" / "benign"
    benign = sorted(p for p in src.iterdir() if p.suffix == ".pt")[0]
    outside = tmp_path / "outside.pt"
    outside.write_bytes(benign.read_bytes())
    folder = tmp_path / "model"
    folder.mkdir()
    os.link(outside, folder / "pytorch_model.bin")
    r = ckptguard.scan(folder / "pytorch_model.bin")
    assert "CKG706" in r.rule_ids() and r.verdict is Verdict.SAFE
    f = next(f for f in r.findings if f.rule_id == "CKG706")
    assert f.severity is Severity.LOW and f.evidence_dict["links"] == "2"
    rf = ckptguard.scan(folder)
    assert "CKG706" in {f.rule_id for f in rf.all_findings()}
    os.unlink(outside)
    assert "CKG706" not in ckptguard.scan(folder / "pytorch_model.bin").rule_ids()


# --- npz: every SAFE verdict agrees with numpy.load through CPython's zipfile ---------------

@st.composite
def npz_case(draw: st.DrawFn) -> bytes:
    import numpy as np

    arrays = {f"a{i}": np.arange(draw(st.integers(0, 6)), dtype=draw(st.sampled_from(
        ["<f4", "<i8", "|u1", "<f2"]))) for i in range(draw(st.integers(1, 3)))}
    buf = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(buf, **arrays)
    b = bytearray(buf.getvalue())
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.integers(0, 3))
        i = draw(st.integers(0, len(b) - 1))
        if kind == 0:
            b[i] ^= draw(st.integers(1, 255))
        elif kind == 1:  # aim at the directory and end records
            j = max(0, len(b) - draw(st.integers(1, 200)))
            b[j] ^= draw(st.integers(1, 255))
        elif kind == 2:
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del b[i : i + draw(st.integers(1, 8))]
    return bytes(b)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(npz_case())
def test_npz_safe_means_numpy_reads_the_same(data: bytes) -> None:
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory() as d:
        r = scan(Path(d), "arrays.npz", data)
    if r.verdict is not Verdict.SAFE:
        return
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.namelist() == list(r.members)
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        got = sorted((k, str(npz[k].dtype), list(npz[k].shape)) for k in npz.files)
    ours = sorted((t.name, t.dtype, list(t.shape)) for t in r.tensors)
    dtype_names = {"float32": "float32", "int64": "int64", "uint8": "uint8",
                   "float16": "float16"}
    assert [(k, dtype_names.get(dt, dt), s) for k, dt, s in got] == ours


def test_security_md_writes_the_reader_table_out() -> None:
    from ckptguard.detect import reader_table_rows

    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    for row in reader_table_rows():
        assert row in text, row


# --- text files whose lines CPython's unpickler reads as numbers -----------------------------

TEXT_PREFIXES = [b"I0\x00 model card: see README\n", b"L12\x00 weights v2\n",
                 b"F1.5\x00 release notes\n", b"I7\x00x\np0\x00 cached\n",
                 b"I1\x00 a\nI2\x00 b\n0"]


@pytest.mark.parametrize("prefix", TEXT_PREFIXES)
@pytest.mark.parametrize("pname", ["global_reduce", "inst", "exec"])
def test_text_lines_the_c_unpickler_accepts(prefix: bytes, pname: str,
                                            tmp_path: Path) -> None:
    """strtol-style parsing stops at a NUL: CPython runs what follows. Whatever the format
    sniffing says about such a file, the pickle reading names its global (CKG011)."""
    data = prefix + PAYLOADS[pname]()
    assert reached(data) in ("posix.system", "builtins.exec")
    for name in ("README.md", "config.json", "notes.txt", "model.bin"):
        r = scan(tmp_path, name, data)
        why = (name, r.format, sorted(r.rule_ids()))
        assert r.verdict is Verdict.UNSAFE, why
        if r.format is Format.PICKLE:
            # sniffed as a pickle: its own audit reads it from byte 0 (the VM's text
            # parsing decides between CKG202 and the payload's CKG101)
            assert r.rule_ids() & {"CKG101", "CKG202"}, why
        else:
            assert "CKG011" in r.rule_ids() and r.max_severity is Severity.CRITICAL, why


@st.composite
def zip_variant(draw: st.DrawFn) -> bytes:
    """Archives from Python's zipfile with odd but legal layouts (comments, extra fields,
    Zip64, non-ASCII and UTF-8 names, deflate), then mutated a little."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", allowZip64=True) as z:
        for i in range(draw(st.integers(1, 4))):
            name = draw(st.sampled_from([f"a{i}.npy", f"d/é{i}.npy", f"x{i}", f"B{i}.npy"]))
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = draw(st.sampled_from([zipfile.ZIP_STORED,
                                                       zipfile.ZIP_DEFLATED]))
            info.extra = draw(st.sampled_from([b"", b"\x99\x99\x02\x00ab",
                                               b"\x01\x00\x00\x00"]))
            z.writestr(info, draw(st.binary(max_size=40)))
        z.comment = draw(st.sampled_from([b"", b"c", b"PK\x05\x06"]))
    b = bytearray(buf.getvalue())
    for _ in range(draw(st.integers(0, 2))):
        j = max(0, len(b) - draw(st.integers(1, 120)))
        b[j] ^= draw(st.integers(1, 255))
    return bytes(b)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.one_of(npz_case(), zip_variant()))
def test_python_canonical_fast_path_is_sound(data: bytes) -> None:
    """When the strict reader calls an archive canonical it skips running CPython's
    zipfile: then zipfile must really read the same members, offsets and sizes."""
    from ckptguard.analysis.zipdefects import record_defects
    from ckptguard.context import AuditContext, Source
    from ckptguard.policy import Limits, Policy
    from ckptguard.readers.zipfile import python_zipfile_view, read_archive

    ctx = AuditContext("x.npz", Source.from_bytes(data), Policy(), Limits())
    try:
        archive = read_archive(ctx, record_defects(ctx))
    except Exception:  # limits: not this test's business
        return
    if archive is None or not archive.python_canonical:
        return
    view = python_zipfile_view(ctx)
    assert not isinstance(view, str), view
    assert [(m.name, m.header_offset, m.compressed_size, m.size, m.method, m.crc32)
            for m in view] == [(e.name, e.header_offset, e.compressed_size, e.size, e.method,
                                e.crc32) for e in archive.entries]
    blocked = {f.location.member for f in ctx.findings if f.rule_id in ("CKG302", "CKG306")}
    for m, e in zip(view, archive.entries, strict=True):
        # a member zipfile cannot open has a local-header finding (which blocks) already
        assert m.data_offset == e.data_offset or e.name in blocked, (m, e)


def test_non_utf8_archive_folder_is_no_internal_error(tmp_path: Path) -> None:
    """Regression (fuzz_zip): a folder name that is not UTF-8 (kept with surrogate escapes)
    crashed the TorchScript-name check with UnicodeEncodeError."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a/data.pkl", b"\x80\x02}.")
        z.writestr("a/version", b"3\n")
    data = buf.getvalue().replace(b"a/data.pkl", b"\xff/data.pkl").replace(
        b"a/version", b"\xff/version")
    r = scan(tmp_path, "x.pt", data)
    assert not r.problems and "CKG902" not in r.rule_ids()
    assert r.verdict is Verdict.UNSAFE and "CKG302" in r.rule_ids()  # non-ASCII, no UTF-8 flag


# --- torch zips that numpy.load reads as an npz ----------------------------------------------

@pytest.mark.parametrize("where", ["record", "notes.bin", "extra.npy", "data/x"])
@pytest.mark.parametrize("pname", sorted(PAYLOADS))
def test_torch_zip_member_numpy_reads_as_object_array(where: str, pname: str,
                                                      tmp_path: Path) -> None:
    data = FAM["torch_zip_npy_member"](PAYLOADS[pname](), where=where, seed=where + pname)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        blob = next(z.read(n) for n in z.namelist() if z.read(n).startswith(b"\x93NUMPY"))
    assert reached(blob[blob.index(b"\n") + 1:]) in ("posix.system", "builtins.exec")
    for name in ("pytorch_model.bin", "w.pt", "w.npz"):
        r = scan(tmp_path, name, data)
        assert r.verdict is Verdict.UNSAFE, (where, name, sorted(r.rule_ids()))
        assert {"CKG602", "CKG101"} <= r.rule_ids(), (where, name, sorted(r.rule_ids()))


def test_torch_zip_with_numeric_npy_record_stays_safe(tmp_path: Path) -> None:
    """Control: a tensor record that happens to be a numeric .npy runs nothing in numpy."""
    torch = pytest.importorskip("torch")
    g = FAM
    blob = g["_npy"]("<f4", (3,), bytes(12))
    n = len(blob)
    pkl = g["state_dict"]([("weight", g["tensor"]("0", "ByteStorage", n, 0, (n,), (1,)))])
    data = g["build_zip"](g["torch_entries"](pkl, [("0", blob)], seed="numeric"))
    r = scan(tmp_path, "w.pt", data)
    assert r.verdict is Verdict.SAFE and "CKG602" not in r.rule_ids(), sorted(r.rule_ids())
    assert torch.load(tmp_path / "w.pt", weights_only=True, mmap=True)["weight"].numel() == n


AGREEMENT = {"torch_version_zero.pt": "CKG311", "torch_version_eleven.pt": "CKG311",
             "torch_data_version_wins.pt": "CKG311", "torch_member_outside_folder.pt": "CKG311",
             "torch_stored_size_mismatch.pt": "CKG316"}
#: why torch's reader (caffe2 inline_container.cc / miniz) refuses each archive
TORCH_REFUSAL = {"torch_version_zero.pt": "minimum supported version",
                 "torch_version_eleven.pt": "maximum supported version",
                 "torch_data_version_wins.pt": "minimum supported version",
                 "torch_member_outside_folder.pt": "not in a subdirectory",
                 "torch_stored_size_mismatch.pt": "failed reading zip archive"}


@pytest.mark.parametrize("name", sorted(AGREEMENT))
def test_archives_torch_refuses_are_not_safe(name: str) -> None:
    torch = pytest.importorskip("torch")
    p = ROOT / "fixtures" / "hostile" / name
    with pytest.raises(RuntimeError, match=TORCH_REFUSAL[name]):
        torch.load(p, weights_only=True, mmap=True)
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and AGREEMENT[name] in r.rule_ids()


@pytest.mark.parametrize("i", range(0, len(NPZ_VARIANTS), 5))
def test_npz_differential_fires_with_numpy_load(i: int, tmp_path: Path) -> None:
    """The generated differentials are real attacks: numpy.load(allow_pickle=True) runs the
    hidden object array's pickle (inert payload: it creates the marker file)."""
    import subprocess

    kw = NPZ_VARIANTS[i]
    (tmp_path / "a.npz").write_bytes(FAM["npz_z64_differential"](PAYLOADS["exec"](), **kw))
    script = ("import numpy\nr = numpy.load('a.npz', allow_pickle=True)\n"
              "for k in r.files:\n    r[k]\n")
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                   timeout=120, check=False)
    assert (tmp_path / FAM["MARKER"]).exists(), kw
