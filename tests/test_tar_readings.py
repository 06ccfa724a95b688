"""torch.load's tar reading, as Python's tarfile decides it (fixtures/families/tar_readings.py).

torch.load (a path, or an open file, that is not a zip) first tries ``tarfile.open``, which
needs no ``ustar`` magic: a v7 header hides inside a safetensors JSON string, an npy
header comment or a pickle literal. Every generated variant must be
- valid for its host format (nothing of the payload reachable by that format's reader),
- a tar whose ``storages`` member is the payload,
- UNSAFE, with the payload's CKG101 and CKG007 (sniffed as a tar) or CKG012 (an npy that
  torch.load also reads as a tar).
A subset runs for real under torch.load(weights_only=False) and creates the marker.
"""

from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import Path
from typing import Any

import pytest
from ckg_families import Probe, family, load_for_real, reached
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptguard
from ckptguard.detect import (
    TORCH_LEGACY_MAGIC,
    Head,
    Loader,
    Reading,
    head_kinds,
    is_tar_header,
    readings,
)
from ckptguard.model import Format, Verdict

ROOT = Path(__file__).resolve().parents[1]


FAM = family("tar_readings")
tar_polyglot = FAM["tar_polyglot"]
PAYLOADS: dict[str, Any] = FAM["PAYLOADS"]
MARKER: str = FAM["MARKER"]

VARIANTS = [(host, kind, signed, magic)
            for host in FAM["HOSTS"] for kind in FAM["KINDS"] for signed in (False, True)
            for magic in (FAM["MAGICS"] if host in FAM["NUL_HOSTS"] else ("none",))]
NAMES = {"safetensors": ["model.safetensors", "pytorch_model.bin", "w.pt", "weights"],
         "npy": ["a.npy", "a.bin"], "pickle": ["m.pkl", "m.pt", "m"], "legacy": ["m.pt", "m.bin"],
         "plain": ["m.tar", "m.pth", "m.bin"]}
#: (format the scan sniffs, the rule naming the tar reading)
EXPECT = {"safetensors": (Format.TORCH_LEGACY_TAR, "CKG007"),
          "npy": (Format.NUMPY_NPY, "CKG012"),
          "pickle": (Format.TORCH_LEGACY_TAR, "CKG007"),
          "legacy": (Format.TORCH_LEGACY, "CKG012"),
          "plain": (Format.TORCH_LEGACY_TAR, "CKG007")}


def _host_reads_it(host: str, data: bytes) -> None:
    """The file is what its host format says, and that reader reaches nothing."""
    if host == "safetensors":
        from safetensors.numpy import load

        (t,) = load(data).values()
        assert t.dtype.name == "uint8" and t.size == len(data) - 512
    elif host == "npy":
        import numpy as np

        a = np.load(io.BytesIO(data), allow_pickle=False)
        assert a.dtype == np.uint8 and a.size == len(data) - 512
    elif host == "legacy":  # magic number, protocol, then a sys_info dict holding the tar
        f = io.BytesIO(data)
        assert Probe(f).load() == TORCH_LEGACY_MAGIC and Probe(f).load() == 1001
        info = Probe(f).load()
        assert info["little_endian"] is True and len(info["p"]) > 1024
    elif host == "pickle":
        got = Probe(io.BytesIO(data)).load()
        assert isinstance(got, bytes) and len(got) == len(data) - 8
    assert reached(data) is None  # read as a pickle from byte 0: no global


def _storages(data: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        m = tar.getmember("storages")
        f = tar.extractfile(m)
        assert f is not None
        return f.read()


#: the payloads in a fixed order; each variant takes the next one, so every host meets all
#: of them (a host has at least 10 variants) without every variant paying for five scans
PAYLOAD_ORDER = sorted(PAYLOADS)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v)))
def test_tar_polyglot_variants(variant: tuple[Any, ...], tmp_path: Path) -> None:
    host, kind, signed, magic = variant
    fmt, rule = EXPECT[host]
    i = VARIANTS.index(variant)
    pname = PAYLOAD_ORDER[i % len(PAYLOAD_ORDER)]
    payload = PAYLOADS[pname]()
    data = tar_polyglot(payload, host=host, kind=kind, signed=signed, magic=magic)
    _host_reads_it(host, data)
    # ... and a tar whose storages member is the payload (what torch.load unpickles)
    assert _storages(data) == payload
    assert reached(payload) in ("posix.system", "builtins.exec"), pname
    assert is_tar_header(data) and Head.TAR in head_kinds(data)
    name = NAMES[host][i % len(NAMES[host])]
    p = tmp_path / name
    p.write_bytes(data)
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE, (name, pname, sorted(r.rule_ids()))
    assert {"CKG101", rule} <= r.rule_ids(), (name, pname, sorted(r.rule_ids()))
    assert r.format is fmt, (name, r.format)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from(VARIANTS), st.integers(0, 511), st.integers(0, 255))
def test_is_tar_header_is_tarfiles_own_decision(variant: tuple[Any, ...], at: int,
                                                value: int) -> None:
    """The checksum pre-test never refuses a block tarfile accepts: one byte of a valid
    header changed anywhere (checksum, numeric fields, type, magic) gives the answer
    tarfile.TarInfo.frombuf gives."""
    host, kind, signed, magic = variant
    block = bytearray(tar_polyglot(PAYLOADS["exec"](), host=host, kind=kind, signed=signed,
                                   magic=magic)[:512])
    block[at] = value
    try:
        tarfile.TarInfo.frombuf(bytes(block), "utf-8", "surrogateescape")
        accepted = True
    except tarfile.HeaderError:
        accepted = False
    assert is_tar_header(bytes(block)) is accepted


#: torch.load's first pickle of a legacy stream: the magic number, then STOP. As the head
#: of a member it sniffs as a legacy torch file, not a pickle, yet torch's tar loader
#: unpickles it (a count of storages) and then the payload right after it.
LEGACY_HEAD = b"\x80\x02\x8a\x0a" + TORCH_LEGACY_MAGIC.to_bytes(10, "little") + b"."


@pytest.mark.parametrize("decoy", [False, True], ids=["one", "decoy-first"])
@pytest.mark.parametrize("host", FAM["HOSTS"])
def test_every_storages_member_is_audited(host: str, decoy: bool, tmp_path: Path) -> None:
    """torch unpickles the member tarfile's getmember('storages') returns, the last of that
    name, from its first byte whatever it looks like: the audit names its payload behind
    a benign namesake and behind a legacy magic number."""
    k = FAM["HOSTS"].index(host) * 2 + decoy
    for pname in (PAYLOAD_ORDER[k % len(PAYLOAD_ORDER)],
                  PAYLOAD_ORDER[(k + 2) % len(PAYLOAD_ORDER)]):
        payload = PAYLOADS[pname]
        for body in (payload(), LEGACY_HEAD + payload()):
            data = tar_polyglot(body, host=host, decoy=decoy)
            assert _storages(data) == body
            p = tmp_path / "m.bin"
            p.write_bytes(data)
            r = ckptguard.scan(p)
            assert r.verdict is Verdict.UNSAFE
            assert {"CKG101", EXPECT[host][1]} <= r.rule_ids(), (pname, sorted(r.rule_ids()))


@pytest.mark.parametrize("kind", ["x", "L"])
def test_extended_header_claiming_gigabytes_is_a_limit(kind: str, tmp_path: Path) -> None:
    """tarfile reads a PAX / GNU long-name member's whole declared size into memory in one
    read: the tar audit counts those reads against max_header_bytes (CKG901), so a header
    that claims more than the limit is never read, and one under it is read as before."""
    from ckptguard import Limits

    head = bytearray(b"v7".ljust(100, b"\x00") + b"0" * 412)
    FAM["_fill_header"](head, size=3 << 20, kind=kind, signed=False, magic="none")
    p = tmp_path / "m.bin"
    with open(p, "wb") as fh:  # a sparse 4 MiB file: the declared 3 MiB are there (zeros)
        fh.write(bytes(head))
        fh.truncate(4 << 20)
    small = ckptguard.scan(p, limits=Limits(max_header_bytes=1 << 20))
    assert small.verdict is Verdict.UNSAFE and {"CKG007", "CKG901"} <= small.rule_ids()
    assert any("max_header_bytes" in f.message for f in small.findings
               if f.rule_id == "CKG901")
    default = ckptguard.scan(p)
    assert "CKG901" not in default.rule_ids() and "CKG007" in default.rule_ids()


@pytest.mark.slow
def test_many_members_are_not_all_held(tmp_path: Path) -> None:
    """tarfile keeps every TarInfo it reads (~450 bytes each); the tar audit keeps a name
    per member and (name, offset, size) per file, and lets tarfile's list go as it reads.
    10,000 members: ~1.6 MB at the peak of the scan, ~4.5 MB when every TarInfo was kept."""
    import tracemalloc

    p = tmp_path / "m.tar.pt"
    with open(p, "wb") as fh:
        for i in range(10_000):
            ti = tarfile.TarInfo(f"m{i}")
            fh.write(ti.tobuf(format=tarfile.USTAR_FORMAT))
        fh.write(b"\x00" * 1024)
    ckptguard.scan(tmp_path / "m.tar.pt")  # imports and first-use caches out of the count
    tracemalloc.start()
    try:
        r = ckptguard.scan(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.verdict is Verdict.UNSAFE and "CKG007" in r.rule_ids()
    assert len(r.members) == 10_000
    assert peak < 3_000_000, peak


def test_is_tar_header_edges() -> None:
    good = tar_polyglot(PAYLOADS["exec"](), host="plain")
    assert is_tar_header(good) and is_tar_header(good[:512])
    assert not is_tar_header(good[:511])  # tarfile: a truncated header
    assert not is_tar_header(b"\x00" * 1024)  # the end-of-archive block: no member
    bad = bytearray(good[:512])
    bad[150] = ord("9")  # not an octal digit
    assert not is_tar_header(bytes(bad))
    # a real ustar header, as tarfile writes it, and a base-256 checksum field
    ti = tarfile.TarInfo("storages")
    ti.size = 3
    real = ti.tobuf(format=tarfile.USTAR_FORMAT)
    assert is_tar_header(real)
    b256 = bytearray(real)
    chk = 256 + sum(b256[:148]) + sum(b256[156:512])
    b256[148:156] = b"\x80" + chk.to_bytes(7, "big")
    assert is_tar_header(bytes(b256)) is True


def test_benign_fixtures_have_no_tar_head() -> None:
    """No real checkpoint starts with a valid tar checksum by accident."""
    checked = 0
    for p in sorted((ROOT / "fixtures" / "benign").iterdir()):
        if p.is_file():
            with p.open("rb") as fh:
                assert not is_tar_header(fh.read(512)), p.name
            checked += 1
    assert checked >= 10


def test_torch_load_of_an_open_file_reads_by_content() -> None:
    """torch.load looks at a path's name only: an open .safetensors file is read by its
    content, so the plan holds torch.load's content reading for that name too."""
    head = tar_polyglot(PAYLOADS["exec"](), host="safetensors")[:4096]
    plan = readings(Format.SAFETENSORS, head, "model.safetensors")
    assert Loader.TORCH_LOAD in plan[Reading.SAFETENSORS]  # the path
    assert plan[Reading.TAR] == {Loader.TORCH_LOAD}       # the open file
    plain = b"\x10" + b"\x00" * 7 + b"{}"
    plan = readings(Format.SAFETENSORS, plain, "model.safetensors")
    assert Loader.TORCH_LOAD in plan[Reading.PICKLE_TORCH]
    assert Reading.TAR not in plan


# --- for real: torch.load(weights_only=False) runs each host's payload ------------------



@pytest.mark.slow
def test_payload_fires_under_torch_load(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    jobs = []
    cases = list(itertools.product(FAM["HOSTS"], FAM["KINDS"]))
    for i, (host, kind) in enumerate(cases):
        pname = sorted(PAYLOADS)[i % len(PAYLOADS)]
        data = tar_polyglot(PAYLOADS[pname](), host=host, kind=kind, signed=bool(i % 2))
        for as_file, wo in ((False, False), (True, False), (False, True)):
            d = tmp_path / f"{host}-{kind}-{int(as_file)}{int(wo)}"
            d.mkdir()
            # a path named .safetensors is handed to safetensors: the open file is not
            name = "model.safetensors" if host == "safetensors" and as_file else "m.bin"
            (d / name).write_bytes(data)
            jobs.append((str(d / name), as_file, wo))
    got = load_for_real([(p, ("torch-file" if f else "torch") + ("-wo" if w else ""))
                         for p, f, w in jobs], MARKER)
    for path, as_file, wo in jobs:
        fired, err = got[path]
        if wo:  # weights_only=True refuses the tar before unpickling anything
            assert not fired and "legacy .tar format" in err, (path, err)
        else:
            assert fired, (path, err)
