"""A plain tensor rebuild over a quantized storage (CKG421).

torch.save writes a quantized tensor with ``_rebuild_qtensor``, which gives it its
quantizer. ``_rebuild_tensor_v2`` (or a Parameter around it) over a ``QInt8Storage`` and
its kin makes a quantized tensor with *no* quantizer: ``torch.load(weights_only=True)``
accepts it, and torch hits an internal assertion on its first quantized use. The scan
flags it (VM), both fast paths decline it (the native core and the Python path), and the
loader's invariant walk refuses such a tensor if one ever reaches it.

The generator: every quantized storage class x (rebuild_v2, a Parameter around
it, a tensor nested in a list) x (native, pure).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ckptguard import UnsafeCheckpointError, safe_load, scan  # noqa: E402
from ckptguard.loaders import invariants  # noqa: E402

#: quantized storage class -> the plain storage class of the same item size
QUANTIZED = {"QInt8Storage": ("CharStorage", torch.int8),
             "QInt32Storage": ("IntStorage", torch.int32),
             "QUInt8Storage": ("ByteStorage", torch.uint8),
             "QUInt4x2Storage": ("ByteStorage", torch.uint8),
             "QUInt2x4Storage": ("ByteStorage", torch.uint8)}
SHAPES = ["v2", "parameter", "nested"]


def _saved(kind: str, dtype: torch.dtype) -> bytes:
    t = torch.arange(6, dtype=dtype).reshape(2, 3)
    obj: object
    if kind == "parameter":
        obj = {"w": torch.nn.Parameter(t, requires_grad=False)}
    elif kind == "nested":
        obj = {"layers": [{"w": t}]}
    else:
        obj = {"w": t}
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _requantize(data: bytes, plain: str, quantized: str) -> bytes:
    """The same archive with data.pkl naming ``quantized`` where torch wrote ``plain``
    (GLOBAL arguments are newline-terminated: the swap needs no other change)."""
    zin = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in zin.infolist():
            d = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                assert f"torch\n{plain}\n".encode() in d
                d = d.replace(f"torch\n{plain}\n".encode(), f"torch\n{quantized}\n".encode())
            z.writestr(info, d)
    return out.getvalue()


def _case(tmp_path: Path, quantized: str, kind: str) -> Path:
    plain, dtype = QUANTIZED[quantized]
    p = tmp_path / f"{quantized}-{kind}.pt"
    p.write_bytes(_requantize(_saved(kind, dtype), plain, quantized))
    return p


@pytest.mark.parametrize("pure", ["0", "1"])
@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("quantized", sorted(QUANTIZED))
def test_plain_rebuild_over_quantized_storage_is_flagged(
        tmp_path: Path, quantized: str, kind: str, pure: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPTGUARD_PURE", pure)
    p = _case(tmp_path, quantized, kind)
    r = scan(p)
    assert r.verdict.value == "UNSAFE" and "CKG421" in r.rule_ids()
    with pytest.raises(UnsafeCheckpointError):
        safe_load(p)


@pytest.mark.parametrize("quantized", sorted(QUANTIZED))
def test_the_malformed_tensor_is_real(tmp_path: Path, quantized: str) -> None:
    """torch.load(weights_only=True) hands the tensor out, it is quantized, and its
    quantizer is missing (torch asserts); the loader's walk refuses it with CKG421."""
    p = _case(tmp_path, quantized, "v2")
    t = torch.load(p, weights_only=True)["w"]
    assert t.is_quantized
    with pytest.raises(RuntimeError, match=r"UnknownQuantizer|INTERNAL ASSERT"):
        t.qscheme()
    with pytest.raises(invariants.Violation) as e:
        invariants.check_tensor(t)
    assert e.value.rule_id == "CKG421"


def test_plain_storages_still_pass(tmp_path: Path) -> None:
    """The control: the same archives before the swap are SAFE and load bit for bit."""
    for plain, dtype in set(QUANTIZED.values()):
        p = tmp_path / f"{plain}.pt"
        p.write_bytes(_saved("v2", dtype))
        assert scan(p).verdict.value == "SAFE"
        a, b = safe_load(p)["w"], torch.load(p, weights_only=True)["w"]
        assert torch.equal(a, b) and a.dtype == b.dtype
