"""numpy.load and torch.load reading zips that are not theirs (fixtures/families/numpy_pt2_readings.py).

- numpy.load(allow_pickle=True) reads any zip as an npz: a ``\\x93NUMPY`` member with an
  object dtype is unpickled, whatever its name, in a torch zip, a .pt2, an npz or a plain
  zip. Every header quirk numpy accepts is either found as an object array (CKG602 and
  the payload's CKG101) or, where ckptguard does not model the spelling, fails closed
  (CKG601); never SAFE.
- torch.load reads ``<folder>/data.pkl`` of a .pt2 from its first byte, and
  torch.export.load pickle.loads ``opaque_obj_N``: a payload behind a prefix that sniffs
  as safetensors, gguf or a legacy torch stream is found all the same (CKG101).
Controls: every variant fires under its real reader in a subprocess; genuine torch.save /
torch.export.save files and benign headers stay SAFE with their current rules; the
header parser never calls a descr object-free when numpy's dtype.hasobject says otherwise.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ckg_families import family

import ckptguard
from ckptguard.detect import sniff
from ckptguard.model import Effect, Format, Severity, Verdict
from ckptguard.readers.npy import NpyHeaderError, parse_descr
from ckptguard.rules import RULES

FAM = family("numpy_pt2_readings")
QUIRKS: dict[str, tuple[str, tuple[int, int], str]] = FAM["NPY_QUIRKS"]
NPY_HOSTS: tuple[str, ...] = FAM["NPY_HOSTS"]
PREFIXES: dict[str, bytes] = FAM["PT2_PREFIXES"]
PT2_HOSTS: tuple[str, ...] = FAM["PT2_HOSTS"]
PAYLOADS: dict[str, Any] = FAM["PAYLOADS"]
PAYLOAD_NAMES = sorted(PAYLOADS)
MARKER: str = FAM["MARKER"]
npy_quirk, npy_host, pt2_pickle = FAM["npy_quirk"], FAM["npy_host"], FAM["pt2_pickle"]

NPY_VARIANTS = [(tag, host) for tag in QUIRKS for host in NPY_HOSTS]
PT2_VARIANTS = [(host, prefix) for host in PT2_HOSTS for prefix in PREFIXES]
#: the file name each host is saved under (what a user would call it)
NPY_NAMES = {"torch_zip": "model.pt", "pt2_weight": "model.pt2", "npz": "arrays.npz",
             "zip": "bundle.zip"}
NPY_FORMATS = {"torch_zip": Format.TORCH_ZIP, "pt2_weight": Format.TORCH_EXPORT,
               "npz": Format.NUMPY_NPZ, "zip": Format.ZIP}


def _payload(i: int) -> bytes:
    """Each variant takes the next payload: every host meets every payload."""
    return bytes(PAYLOADS[PAYLOAD_NAMES[i % len(PAYLOAD_NAMES)]]())


def _npy_file(folder: Path, tag: str, host: str) -> Path:
    i = NPY_VARIANTS.index((tag, host))
    data = npy_host(host, npy_quirk(tag, _payload(i)), f"t-{tag}-{host}")
    p = folder / f"{tag}-{host}" / NPY_NAMES[host]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def _pt2_file(folder: Path, host: str, prefix: str) -> Path:
    i = PT2_VARIANTS.index((host, prefix))
    p = folder / f"{host}-{prefix}" / "model.pt2"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(pt2_pickle(host, prefix, _payload(i)))
    return p


@pytest.fixture(scope="module")
def npy_files(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    d = tmp_path_factory.mktemp("npy")
    return {v: _npy_file(d, *v) for v in NPY_VARIANTS}


@pytest.fixture(scope="module")
def pt2_files(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    d = tmp_path_factory.mktemp("pt2")
    return {v: _pt2_file(d, *v) for v in PT2_VARIANTS}


def _describe(r: Any) -> str:
    return f"{r.verdict.value} {r.format.value} " + ", ".join(
        f"{f.rule_id}: {f.message[:120]}" for f in r.all_findings())


# --------------------------------------------------------------------- npy header quirks

@pytest.mark.parametrize(("tag", "host"), NPY_VARIANTS, ids=[f"{t}-{h}" for t, h in NPY_VARIANTS])
def test_npy_quirk_is_unsafe(npy_files: dict[tuple[str, str], Path], tag: str,
                             host: str) -> None:
    r = ckptguard.scan(npy_files[(tag, host)])
    assert r.verdict is Verdict.UNSAFE, _describe(r)
    assert r.format is NPY_FORMATS[host], _describe(r)
    want = {"CKG602", "CKG101"} if QUIRKS[tag][2] == "object" else {"CKG601"}
    assert want <= r.rule_ids(), _describe(r)
    if host == "pt2_weight":
        assert "CKG820" in r.rule_ids()


def test_unparsed_member_header_fails_closed_blocking(tmp_path: Path) -> None:
    """The numpy reading's CKG601 is a blocking HIGH finding that names numpy.load."""
    p = tmp_path / "model.pt"
    p.write_bytes(npy_host("torch_zip", npy_quirk("comma_string", _payload(0)), "t-closed"))
    r = ckptguard.scan(p)
    (f,) = [f for f in r.findings if f.rule_id == "CKG601"]
    assert f.severity is Severity.HIGH and RULES["CKG601"].effect is Effect.BLOCKS
    assert "numpy.load" in f.message and f.location.member == "archive/data/0"


def test_numpy_fires_every_npy_variant(npy_files: dict[tuple[str, str], Path]) -> None:
    """numpy.load(allow_pickle=True) runs every variant's payload (each in its own cwd)."""
    script = textwrap.dedent(f"""
        import json, os, sys, numpy
        fired = {{}}
        for path in json.loads(sys.argv[1]):
            os.chdir(os.path.dirname(path))
            z = numpy.load(path, allow_pickle=True)
            for k in z.files:
                try:
                    z[k]
                except Exception:
                    pass
            fired[path] = os.path.exists({MARKER!r})
        print(json.dumps(fired))
    """)
    paths = [str(p) for p in npy_files.values()]
    out = subprocess.run([sys.executable, "-c", script, json.dumps(paths)], check=True,
                         capture_output=True, text=True, timeout=300)
    fired = json.loads(out.stdout.strip().splitlines()[-1])
    assert [p for p in paths if not fired[p]] == []


# ------------------------------------------------------------ .pt2 data.pkl and opaque_obj

@pytest.mark.parametrize(("host", "prefix"), PT2_VARIANTS, ids=[f"{h}-{p}" for h, p in PT2_VARIANTS])
def test_pt2_pickle_member_is_unsafe(pt2_files: dict[tuple[str, str], Path], host: str,
                                     prefix: str) -> None:
    p = pt2_files[(host, prefix)]
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE, _describe(r)
    assert r.format is Format.TORCH_EXPORT
    assert {"CKG101", "CKG820"} <= r.rule_ids(), _describe(r)
    if host != "opaque_obj":
        assert "CKG824" in r.rule_ids()
    if host == "data_pkl_upper":
        assert "CKG301" in r.rule_ids()  # DATA.PKL is data.pkl only to miniz


@pytest.mark.parametrize("prefix", ["safetensors", "gguf", "legacy"])
def test_prefixes_dodge_the_pickle_sniff(prefix: str) -> None:
    """The variants test what they claim: the member's head does not sniff as a pickle."""
    body = (PREFIXES[prefix] + b"0" + _payload(0)).ljust(1400, b"\0")
    assert sniff(body[:4096], len(body))[0] is not Format.PICKLE


def test_torch_fires_every_pt2_variant(pt2_files: dict[tuple[str, str], Path]) -> None:
    """torch.load(weights_only=False) (data.pkl: by path, mmap, open file) and
    torch.export.load (opaque_obj) run every variant's payload."""
    pytest.importorskip("torch")
    script = textwrap.dedent(f"""
        import json, os, sys, torch
        fired = {{}}
        for path, host, i in json.loads(sys.argv[1]):
            os.chdir(os.path.dirname(path))
            try:
                if host == "opaque_obj":
                    torch.export.load(path)
                elif i % 3 == 0:
                    torch.load(path, weights_only=False)
                elif i % 3 == 1:
                    torch.load(path, weights_only=False, mmap=True)
                else:
                    with open(path, "rb") as fh:
                        torch.load(fh, weights_only=False)
            except Exception:
                pass
            fired[path] = os.path.exists({MARKER!r})
        print(json.dumps(fired))
    """)
    todo = [(str(p), host, i) for i, ((host, _), p) in enumerate(pt2_files.items())]
    out = subprocess.run([sys.executable, "-c", script, json.dumps(todo)], check=True,
                         capture_output=True, text=True, timeout=600)
    fired = json.loads(out.stdout.strip().splitlines()[-1])
    assert [p for p, _, _ in todo if not fired[p]] == []


# --------------------------------------------------------------------------- benign table

#: tag -> (header with the element count as %d, item size)
BENIGN_HEADERS = {
    "f4": ("{'descr': '<f4', 'fortran_order': False, 'shape': (%d,), }", 4),
    "py2_long": ("{'descr': '<f4', 'fortran_order': False, 'shape': (%dL,), }", 4),
    "repeated_key": ("{'descr': '|O', 'fortran_order': False, 'shape': (%d,), "
                     "'descr': '<f4'}", 4),
    "struct": ("{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, "
               "'shape': (%d,), }", 8),
    "subarray": ("{'descr': ('<f4', (1,)), 'fortran_order': False, 'shape': (%d,), }", 4),
}


def _benign_npy(header: str, itemsize: int) -> bytes:
    h = (header % 3).encode()
    h += b" " * ((-(10 + len(h) + 1)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + b"\x01" * (3 * itemsize)


@pytest.mark.filterwarnings("ignore:Reading `.npy` or `.npz` file required additional")
@pytest.mark.parametrize("tag", sorted(BENIGN_HEADERS))
def test_benign_npy_headers_in_a_tensor_stay_safe(tmp_path: Path, tag: str) -> None:
    """A numeric .npy as a tensor record (numpy reads a plain array): SAFE, no rule."""
    blob = _benign_npy(*BENIGN_HEADERS[tag])
    a = np.load(io.BytesIO(blob), allow_pickle=False)  # numpy reads it, no pickle
    assert not a.dtype.hasobject and a.shape[0] == 3
    p = tmp_path / "model.pt"
    p.write_bytes(npy_host("torch_zip", blob, f"t-benign-{tag}"))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set(), _describe(r)


def test_genuine_torch_export_save_stays_safe(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    p = tmp_path / "model.pt2"
    p.write_bytes(FAM["pt2_bytes"](FAM["pt2_base_members"]()))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == {"CKG820"}, _describe(r)


def test_genuine_torch_save_stays_safe(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    p = tmp_path / "model.pt"
    torch.save({"w": torch.arange(12.0).reshape(3, 4), "n": torch.tensor([1, 2])}, p)
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == set(), _describe(r)


def test_benign_data_pkl_in_pt2_is_a_note(tmp_path: Path) -> None:
    """A state dict as data.pkl of a .pt2 (torch.load reads it weights-only): a note only."""
    ms = FAM["pt2_base_members"]()
    sd = FAM["state_dict"]([("w", FAM["tensor"]("weights/weight_0", numel=6))])
    ms.append(["archive/data.pkl", sd])
    p = tmp_path / "model.pt2"
    p.write_bytes(FAM["pt2_bytes"](ms))
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == {"CKG820", "CKG824"}, _describe(r)


# ------------------------------------------------------------ the parser against numpy

def _descr_strings() -> list[str]:
    import string

    out = {o + k + d for o in ("", "<", ">", "|", "=") for k in string.ascii_letters
           for d in ("", "0", "1", "2", "4", "8", "16", "08")}
    return sorted(out | {"object", "object_", "float32", "f4,O", "(2,)O", "O,", "M8[ns]",
                         "<m8[s]", "T", "str", "V8"})


def _numpy_hasobject(descr: Any) -> bool | None:
    """numpy's own reading of a header descr (None: numpy raises)."""
    import warnings

    from numpy.lib import format as npformat

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bool(npformat.descr_to_dtype(descr).hasobject)
        except Exception:
            return None


DESCRS: list[Any] = [*_descr_strings(),
                     ("|O", (1,)), ("<f4", (2,)), ("<f4", 2), [("a", "<f4"), ("b", "|O")],
                     [("a", [("b", "|O")])], [["a", "O"]], [(("t", "a"), "<f4")],
                     [("a", "<f4", (2,))], [("a", "|O", (2,))], ["aO"], {"aO": 0}, [],
                     [("a", "<f4"), ("a", "<f4")], [("", "|V4"), ("b", "<f4")]]


@pytest.mark.parametrize("descr", DESCRS, ids=repr)
def test_parser_never_misses_an_object(descr: Any) -> None:
    """Where numpy says hasobject, parse_descr says has_object or refuses (-> CKG601);
    where parse_descr says object-free, numpy agrees or refuses the descr."""
    theirs = _numpy_hasobject(descr)
    try:
        ours: bool | None = parse_descr(descr).has_object
    except NpyHeaderError:
        ours = None
    if theirs is True:
        assert ours is not False
    if ours is False:
        assert theirs is not True


def test_filter_header_matches_numpy() -> None:
    from numpy.lib import _format_impl as impl

    from ckptguard.readers import npy

    for text in ["{'descr': '|O', 'fortran_order': False, 'shape': (1L, 2L), }",
                 "{'shape': (10L,), 'descr': '<f4', 'fortran_order': False}   \n"]:
        assert npy._filter_header(text) == impl._filter_header(text)


def test_environment_is_what_the_families_assume() -> None:
    """(a guard: numpy 2.x reads npz members whatever their name)"""
    assert int(np.__version__.split(".")[0]) >= 2
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("weights.bin", npy_quirk("plain_O", b"N."))
    assert np.load(io.BytesIO(z.getvalue()), allow_pickle=True)["weights.bin"] is None
    assert os.path.basename(MARKER) == MARKER
