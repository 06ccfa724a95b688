"""Torch record selection mirrors torch's reader; tensor records come out right."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

import ckptguard
from ckptguard import Verdict

torch = pytest.importorskip("torch")


def test_case_insensitive_record_lookup_like_torch(tmp_path: Path) -> None:
    """torch's miniz lookup ignores ASCII case: archive/DATA.PKL *is* data.pkl to torch."""
    src_path = tmp_path / "u.pt"
    torch.save({"w": torch.zeros(2)}, src_path)
    upper = tmp_path / "upper.pt"
    with zipfile.ZipFile(src_path) as src, zipfile.ZipFile(upper, "w") as z:
        for info in src.infolist():
            z.writestr(info.filename.replace("data.pkl", "DATA.PKL"), src.read(info.filename))
    assert torch.equal(torch.load(upper, weights_only=True)["w"], torch.zeros(2))  # torch reads it
    r = ckptguard.scan(upper)
    assert r.format is ckptguard.Format.TORCH_ZIP
    assert r.verdict is Verdict.UNSAFE and "CKG301" in r.rule_ids()


def test_tensor_records_match_torch(tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"a": base, "t": base.t(), "s": base[1:, 2:4], "h": torch.ones(3, dtype=torch.bfloat16),
          "f8": torch.zeros(5, dtype=torch.float8_e5m2), "z": torch.tensor(2.0),
          "e": torch.zeros(0, 3), "p": torch.nn.Parameter(torch.ones(2))}
    p = tmp_path / "m.pt"
    torch.save(sd, p)
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE, r.findings
    got = {t.name: t for t in r.tensors}
    loaded = torch.load(p, weights_only=True)
    assert set(got) == set(loaded)
    for name, t in loaded.items():
        info = got[name]
        assert info.dtype == str(t.dtype).removeprefix("torch."), name
        assert info.shape == tuple(t.shape) and info.stride == t.stride(), name
        assert info.storage_offset == t.storage_offset(), name
        assert info.requires_grad == t.requires_grad, name
    # views share the storage record of their base
    assert got["t"].storage == got["a"].storage == got["s"].storage
    # only the directory, local headers, small records and data.pkl were read
    assert r.bytes_read < p.stat().st_size + 16384


def test_scan_reads_directory_and_data_pkl_only(tmp_path: Path) -> None:
    p = tmp_path / "big.pt"
    torch.save({"w": torch.empty(16 << 20, dtype=torch.float32), "b": torch.zeros(8)}, p)
    assert p.stat().st_size > 64 << 20
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE
    assert r.bytes_read < 64 << 10, r.bytes_read  # not one tensor byte beyond header windows


def _jit_archive(tmp_path: Path) -> Path:
    p = tmp_path / "script.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), p)
    return p


def test_real_torchscript_archive_reports_its_code_and_nothing_else(tmp_path: Path) -> None:
    r = ckptguard.scan(_jit_archive(tmp_path))
    assert r.format is ckptguard.Format.TORCHSCRIPT
    assert r.verdict is Verdict.UNSAFE
    assert r.rule_ids() == {"CKG008"}, [(f.rule_id, f.message) for f in r.findings]
    code = dict(r.findings[0].evidence)["code_files"]
    assert "code/__torch__/torch/nn/modules/linear.py" in code


def test_payload_injected_into_torchscript_constants_is_caught(tmp_path: Path) -> None:
    src = _jit_archive(tmp_path)
    evil = tmp_path / "evil.pt"
    payload = b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R."
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(evil, "w") as zout:
        for info in zin.infolist():
            data = payload if info.filename.endswith("/constants.pkl") else zin.read(info)
            zout.writestr(info.filename, data)
    r = ckptguard.scan(evil)
    assert r.verdict is Verdict.UNSAFE and {"CKG008", "CKG101"} <= r.rule_ids()


# --- picklecore.split_records: audit_zip's member split and the catalog loop in C ---------

def _py_split(entries: list, prefix: str) -> tuple | None:  # type: ignore[type-arg]
    """The Python loops split_records stands for (audit_zip's, without capitals, then
    _torch_zip's catalog loop); None where the C pass must decline: a repeated record
    (setdefault keeps the first) or a compressed tensor record (CKG305)."""
    n = len(prefix)
    records: dict = {}  # type: ignore[type-arg]
    outside = []
    for e in entries:
        if e.name.startswith(prefix):
            if e.name[n:] in records:
                return None
            records.setdefault(e.name[n:], e)
        else:
            outside.append(e)
    catalog, others, in_cat = {}, {}, set()
    for rel, e in records.items():
        if rel[:5] == "data/" and len(rel) > 5:
            if e.method != 0:
                return None
            catalog[rel[5:]] = (e.name, e.data_offset, e.size)
            in_cat.add(id(e))
        else:
            others[rel] = e
    return others, catalog, outside, [e for e in entries if id(e) not in in_cat]


def test_split_records_equals_the_python_loops() -> None:
    """On 3,000 random member lists (names inside and outside the folder, ``data/`` and
    look-alikes, repeats, compressed members, odd field types) the C split gives exactly
    the Python loops' records, catalog, outside members and kept entries, in order, or
    declines exactly where the loops would keep a first repeat or report CKG305."""
    import random

    from ckptguard._native import native
    from ckptguard.readers.zipfile import ZipEntry

    core = native("picklecore")
    if core is None:
        pytest.skip("the native picklecore is not built (or CKPTGUARD_PURE=1)")
    rng = random.Random(1313)
    names = ["archive/data.pkl", "archive/version", "archive/byteorder", "archive/data/",
             "archive/data", "archive/datax/1", "archive/data//", "archive/.data/version",
             "other/data/0", "archive", "archive/data/é", "x/archive/data/1", ""]
    counts = {"split": 0, "declined": 0}
    for _ in range(3000):
        entries = []
        for i in range(rng.randint(0, 12)):
            name = rng.choice(names) if rng.random() < 0.4 else \
                f"archive/data/{rng.randint(0, 20)}"
            e = ZipEntry(i, name, name.encode(), 0, rng.randint(0, 1 << 40), 4, 4,
                         0 if rng.random() < 0.95 else 8, 0, 0, 0, None)
            entries.append(e)
        want = _py_split(entries, "archive/")
        got = core.split_records(entries, "archive/", ZipEntry)
        if got is None:
            counts["declined"] += 1
            assert want is None
            continue
        counts["split"] += 1
        assert want is not None
        records, catalog, outside, kept = got
        assert list(records.items()) == list(want[0].items())
        assert list(catalog.items()) == list(want[1].items())
        assert outside == want[2] and kept == want[3]
        assert all(a is b for a, b in zip(kept, want[3], strict=True))
    assert counts["split"] > 500 and counts["declined"] > 500, counts
    # not exactly a ZipEntry with str/int fields: declined
    e = ZipEntry(0, "archive/data/0", b"", 0, 1, 4, 4, 0, 0, 0, 0, None)
    assert core.split_records([e], "archive/", ZipEntry) is not None
    for bad in (ZipEntry(0, b"archive/data/0", b"", 0, 1, 4, 4, 0, 0, 0, 0, None),  # type: ignore[arg-type]
                ZipEntry(0, "archive/data/0", b"", 0, 1.0, 4, 4, 0, 0, 0, 0, None),  # type: ignore[arg-type]
                ZipEntry(0, "archive/data/0", b"", 0, 1, 4, 4, 1 << 70, 0, 0, 0, None),
                ("archive/data/0",)):
        assert core.split_records([bad], "archive/", ZipEntry) is None
