""".npy / .npz audit (analysis/numpy.py), through ckptguard.scan."""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

import ckptguard
from ckptguard import Limits, Verdict
from ckptguard.model import Format

HEADER_OK = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"


def npy(header: str | bytes, data: bytes = b"", *, version: tuple[int, int] = (1, 0),
        length: int | None = None) -> bytes:
    raw = header.encode("latin1") if isinstance(header, str) else header
    width = 2 if version == (1, 0) else 4
    pad = (64 - (8 + width + len(raw) + 1) % 64) % 64
    raw = raw + b" " * pad + b"\n"
    n = len(raw) if length is None else length
    fmt = "<H" if width == 2 else "<I"
    return b"\x93NUMPY" + bytes(version) + struct.pack(fmt, n) + raw + data


def write(tmp_path: Path, blob: bytes, name: str = "a.npy") -> Path:
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def torch_name(a: np.ndarray) -> str:
    return {np.dtype(np.bool_): "bool", np.dtype(np.float16): "float16"}.get(
        a.dtype, a.dtype.name)


# --- benign .npy written by numpy -------------------------------------------------------

@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.zeros((2, 3, 4), dtype=np.float64),
    np.ones(5, dtype=np.int64),
    np.array([True, False, True]),
    np.arange(6, dtype=np.uint8),
    np.arange(6, dtype=np.int16),
    np.zeros(3, dtype=np.float16),
    np.zeros(2, dtype=np.complex64),
    np.float32(3.0).reshape(()),
    np.zeros((0, 7), dtype=np.float32),
])
def test_numeric_npy_is_safe(tmp_path: Path, array: np.ndarray) -> None:
    p = tmp_path / "arr.npy"
    np.save(p, array)
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    assert r.format is Format.NUMPY_NPY
    assert [(t.name, t.dtype, t.shape, t.nbytes) for t in r.tensors] == [
        ("arr", torch_name(array), array.shape, array.nbytes)]
    t = r.tensors[0]
    assert t.data_offset is not None
    assert p.read_bytes()[t.data_offset:] == array.tobytes()


def test_fortran_order_and_big_endian_are_safe(tmp_path: Path) -> None:
    p = tmp_path / "f.npy"
    np.save(p, np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3)))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    assert r.tensors[0].shape == (2, 3) and r.tensors[0].dtype == "numpy:>i4"


@pytest.mark.parametrize("array", [
    np.zeros(3, dtype=[("x", "<f4"), ("y", "<i8", (2,))]),
    np.array(["ab", "cde"]),
    np.array([b"xy", b"z"]),
    np.array(["2020-01-01"], dtype="datetime64[D]"),
    np.zeros(2, dtype=np.dtype({"names": ["a", "b"], "formats": ["u1", "<f8"],
                                "offsets": [0, 8], "itemsize": 24})),
])
def test_other_plain_dtypes_are_safe(tmp_path: Path, array: np.ndarray) -> None:
    p = tmp_path / "s.npy"
    np.save(p, array)
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    assert r.tensors[0].shape == array.shape and r.tensors[0].nbytes == array.nbytes


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_header_versions(tmp_path: Path, version: tuple[int, int]) -> None:
    p = write(tmp_path, npy(HEADER_OK, b"\0" * 24, version=version))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    assert np.load(p).shape == (2, 3)


# --- object dtypes: CKG602 + the embedded pickle audited ----------------------------------

def test_object_array_npy(tmp_path: Path) -> None:
    p = tmp_path / "o.npy"
    np.save(p, np.array([1, "x", None], dtype=object), allow_pickle=True)
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and "CKG602" in r.rule_ids()
    assert "CKG102" in r.rule_ids()  # the VM saw numpy's reconstruct globals
    assert r.problems == ()


def test_structured_dtype_with_object_field(tmp_path: Path) -> None:
    p = tmp_path / "so.npy"
    np.save(p, np.zeros(2, dtype=[("a", "<f4"), ("b", "O")]), allow_pickle=True)
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and "CKG602" in r.rule_ids()


def test_object_array_with_code_execution_payload(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    # protocol 2: GLOBAL os.system, ('touch <marker>',), REDUCE, STOP -- never executed here
    payload = (b"\x80\x02cos\nsystem\nX" + struct.pack("<I", 6 + len(str(marker)))
               + f"touch {marker}".encode() + b"\x85R.")
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    p = write(tmp_path, npy(header, payload))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE
    assert {"CKG602", "CKG101"} <= r.rule_ids()
    assert not marker.exists()


def test_object_pickle_with_trailing_bytes(tmp_path: Path) -> None:
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    payload = pickle.dumps(None, protocol=2) + b"HIDDEN"
    r = ckptguard.scan(write(tmp_path, npy(header, payload)))
    assert r.verdict is Verdict.UNSAFE and {"CKG602", "CKG203"} <= r.rule_ids()


# --- CKG601: malformed headers ------------------------------------------------------------

@pytest.mark.parametrize("blob", [
    pytest.param(npy(HEADER_OK, b"\0" * 24, version=(4, 0)), id="unknown-version"),
    pytest.param(npy(HEADER_OK, b"\0" * 24, version=(1, 1)), id="unknown-minor"),
    pytest.param(npy(HEADER_OK, length=10_000), id="length-past-end"),
    pytest.param(b"\x93NUMPY\x01\x00", id="truncated-length"),
    pytest.param(b"\x93NUMPY\x01", id="truncated-version"),
    pytest.param(npy("['descr', 'fortran_order', 'shape']"), id="not-a-dict"),
    pytest.param(npy("{'descr': '<f4', 'fortran_order': False}"), id="missing-key"),
    pytest.param(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}",
                     b"\0" * 4), id="extra-key"),
    pytest.param(npy("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}", b"\0" * 4),
                 id="fortran-not-bool"),
    pytest.param(npy("{'descr': '<f4', 'fortran_order': False, 'shape': [1]}", b"\0" * 4),
                 id="shape-list"),
    pytest.param(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}", b"\0" * 4),
                 id="negative-dim"),
    pytest.param(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1.0,)}", b"\0" * 4),
                 id="float-dim"),
    pytest.param(npy("{'descr': '<f3', 'fortran_order': False, 'shape': (1,)}", b"\0" * 3),
                 id="bad-itemsize"),
    pytest.param(npy("{'descr': 'float32', 'fortran_order': False, 'shape': (1,)}",
                     b"\0" * 4), id="non-canonical-descr"),
    pytest.param(npy("{'descr': 42, 'fortran_order': False, 'shape': (1,)}", b"\0" * 4),
                 id="descr-int"),
    pytest.param(npy("{'descr': [('a', '<f4'), ('a', '<f4')], 'fortran_order': False, "
                     "'shape': (1,)}", b"\0" * 8), id="duplicate-field"),
    pytest.param(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} + 1",
                     b"\0" * 4), id="expression"),
    pytest.param(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (" + "9" * 5000 + ",)}"),
                 id="huge-int-literal"),
    pytest.param(npy("{'descr': '<f4', 'fortran_order': False, 'shape': "
                     + "(" * 300 + ")" * 300 + "}"), id="deep-nesting"),
    pytest.param(npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}\x00",
                     b"\0" * 4), id="nul-byte"),
    pytest.param(npy(b"{'descr': '\xff', 'fortran_order': False, 'shape': (1,)}", b"\0",
                     version=(3, 0)), id="v3-invalid-utf8"),
])
def test_malformed_header_ckg601(tmp_path: Path, blob: bytes) -> None:
    r = ckptguard.scan(write(tmp_path, blob))
    assert r.verdict is Verdict.UNSAFE and "CKG601" in r.rule_ids()
    assert r.problems == ()


def test_header_read_as_numpy_reads_it(tmp_path: Path) -> None:
    """numpy keeps a repeated key's last value (here an object dtype: its data is a pickle)
    and drops the L of Python-2 longs in 1.0/2.0 headers (a plain float array)."""
    dup = npy("{'descr': '<f4', 'descr': '|O', 'fortran_order': False, 'shape': (1,)}",
              pickle.dumps(["unpickled"], protocol=2))
    assert np.load(write(tmp_path, dup, "dup.npy"), allow_pickle=True) == ["unpickled"]
    r = ckptguard.scan(tmp_path / "dup.npy")
    assert r.verdict is Verdict.UNSAFE and "CKG602" in r.rule_ids()
    long_ = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1L,)}", b"\0" * 4)
    with pytest.warns(UserWarning, match="Python 2"):
        assert np.load(write(tmp_path, long_, "long.npy")).shape == (1,)
    r = ckptguard.scan(tmp_path / "long.npy")
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    v3 = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1L,)}", b"\0" * 4,
             version=(3, 0))
    r = ckptguard.scan(write(tmp_path, v3, "v3.npy"))  # no L filter for 3.0: numpy refuses
    assert r.verdict is Verdict.UNSAFE and "CKG601" in r.rule_ids()


def test_header_is_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "EVALUATED"
    header = ("{'descr': __import__('os').system('touch " + str(marker) + "'), "
              "'fortran_order': False, 'shape': (1,)}")
    r = ckptguard.scan(write(tmp_path, npy(header, b"\0" * 4)))
    assert r.verdict is Verdict.UNSAFE and "CKG601" in r.rule_ids()
    assert not marker.exists()


def test_header_over_limit_is_incomplete(tmp_path: Path) -> None:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }" + " " * 5000
    r = ckptguard.scan(write(tmp_path, npy(header, b"\0" * 4)),
                       limits=Limits(max_header_bytes=1024))
    assert r.verdict is Verdict.INCOMPLETE and "CKG901" in r.rule_ids()


# --- CKG603: size mismatch ------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"\0" * 23, b"\0" * 25, b"", b"\0" * 24 + b"PAYLOAD"])
def test_size_mismatch_ckg603(tmp_path: Path, data: bytes) -> None:
    r = ckptguard.scan(write(tmp_path, npy(HEADER_OK, data)))
    assert r.verdict is Verdict.UNSAFE and "CKG603" in r.rule_ids()


def test_real_file_with_appended_bytes(tmp_path: Path) -> None:
    p = tmp_path / "x.npy"
    np.save(p, np.arange(4, dtype=np.int32))
    with p.open("ab") as f:
        f.write(b"\x80\x02cos\nsystem\n.")
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and "CKG603" in r.rule_ids()


def test_pickle_named_npy_is_disguise(tmp_path: Path) -> None:
    p = tmp_path / "weights.npy"
    p.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and "CKG003" in r.rule_ids()


# --- .npz --------------------------------------------------------------------------------

@pytest.mark.parametrize("compressed", [False, True])
def test_npz_is_safe_and_tensors_match(tmp_path: Path, compressed: bool) -> None:
    arrays = {"weight": np.random.rand(3, 4).astype(np.float32),
              "bias": np.zeros(4, dtype=np.float64), "step": np.array(7, dtype=np.int64)}
    p = tmp_path / "m.npz"
    (np.savez_compressed if compressed else np.savez)(p, **arrays)  # type: ignore[operator]
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set()
    assert r.format is Format.NUMPY_NPZ
    got = {t.name: (t.dtype, t.shape) for t in r.tensors}
    assert got == {k: (v.dtype.name, v.shape) for k, v in arrays.items()}
    if not compressed:  # stored members: offsets point into the file
        blob = p.read_bytes()
        w = next(t for t in r.tensors if t.name == "weight")
        assert w.data_offset is not None
        assert blob[w.data_offset:w.data_offset + w.nbytes] == arrays["weight"].tobytes()


@pytest.mark.parametrize("member", ["a.npy", "a.NPY", "b.Npy"])
def test_npz_tensor_names_are_numpys_keys(tmp_path: Path, member: str) -> None:
    """numpy cuts ".npy" case-sensitively: member a.NPY is the key "a.NPY"."""
    import io
    import zipfile

    buf = io.BytesIO()
    np.save(buf, np.arange(3, dtype=np.int16))
    p = tmp_path / "m.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr(member, buf.getvalue())
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE
    with np.load(p) as f:
        assert [t.name for t in r.tensors] == f.files


def test_npz_with_object_member(tmp_path: Path) -> None:
    p = tmp_path / "o.npz"
    np.savez(p, ok=np.zeros(2), obj=np.array([{"a": 1}], dtype=object))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and "CKG602" in r.rule_ids()
    assert any(f.location.member == "obj.npy" for f in r.findings if f.rule_id == "CKG602")


def test_npz_with_malformed_member(tmp_path: Path) -> None:
    p = tmp_path / "bad.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("good.npy", npy(HEADER_OK, b"\0" * 24))
        z.writestr("bad.npy", npy("{'descr': '<f4'}", b"\0" * 4))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and "CKG601" in r.rule_ids()
    assert [t.name for t in r.tensors] == ["good"]


def test_npz_member_size_mismatch(tmp_path: Path) -> None:
    p = tmp_path / "short.npz"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.npy", npy(HEADER_OK, b"\0" * 20))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and "CKG603" in r.rule_ids()


def test_compressed_npz_is_streamed_and_crc_checked(tmp_path: Path) -> None:
    """A numeric member of np.savez_compressed is audited from its header and a streamed
    CRC check, never inflated whole; a flipped byte in its compressed data is caught."""
    np = pytest.importorskip("numpy")
    import zipfile

    p = tmp_path / "w.npz"
    np.savez_compressed(p, w=np.random.default_rng(0).standard_normal(300_000).astype("<f4"))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and [t.name for t in r.tensors] == ["w"]
    info = zipfile.ZipFile(p).infolist()[0]
    data = bytearray(p.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0x55  # deep inside the deflated array data
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    r = ckptguard.scan(bad)
    assert r.verdict is Verdict.UNSAFE and r.rule_ids() & {"CKG303", "CKG310"}, r.findings
