"""Zip extra fields outside the harmless kinds are CKG313 (fixtures/families/zip_extra_fields.py).

CPython >= 3.12's zipfile renames a member by its Info-ZIP Unicode Path field (0x7075,
version 1, CRC-32 of the raw name): a torch.save archive whose tensor record carries one
naming it ``<folder>/data.pkl`` hands a zipfile-based loader the tensor's bytes as its
pickle. The audit read the raw names (miniz, CPython 3.11) and proved such archives SAFE.
Every variant of the family (field id, Unicode Path version and CRC, central / local / both
headers, which member, which new name, with and without an archive comment and the UTF-8
flag) is UNSAFE with exactly CKG313, natively and with ``CKPTGUARD_PURE=1`` alike, and the
C prover declines it; the harmless ids (``HarmlessExtra``: what torch.save, zipfile and
common zippers write) stay SAFE and proven. The payloads are shown to fire under CPython
3.12/3.13's zipfile and under Info-ZIP unzip exactly where the family says they do.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ckg_families import family
from ckg_zip_archives import read_outcome, torch_pool

from ckptguard._native import native
from ckptguard.analysis import engine
from ckptguard.model import Report, Verdict
from ckptguard.policy import DEFAULT_LIMITS, Policy
from ckptguard.readers.zipfile import HarmlessExtra

FAM = family("zip_extra_fields")
ExtraVariant = FAM["ExtraVariant"]
extra_archive = FAM["extra_archive"]
VARIANTS: list[Any] = FAM["VARIANTS"]
HARMLESS_VARIANTS: list[Any] = FAM["HARMLESS_VARIANTS"]
FIELDS: dict[str, tuple[int, int | None, bool]] = FAM["FIELDS"]
MARKER: str = FAM["MARKER"]
PY312 = Path("/root/.pyenv/versions/3.12.1/bin/python")
PY313 = Path("/root/.pyenv/versions/3.13.0/bin/python")

needs_native = pytest.mark.skipif(native("zipcore") is None,
                                  reason="zipcore not built (pure-Python install)")


def _report(data: bytes, pure: bool, monkeypatch: pytest.MonkeyPatch) -> Report:
    with monkeypatch.context() as m:
        m.setenv("CKPTGUARD_PURE", "1" if pure else "0")
        return engine.audit_bytes(data, "model.pt", policy=Policy(), limits=DEFAULT_LIMITS)


def _proven(data: bytes, monkeypatch: pytest.MonkeyPatch) -> bool:
    with monkeypatch.context() as m:
        m.setenv("CKPTGUARD_PURE", "0")
        return read_outcome(data, DEFAULT_LIMITS)[1]


def _both(data: bytes, monkeypatch: pytest.MonkeyPatch) -> Report:
    """The report, the same natively and with CKPTGUARD_PURE=1."""
    native_r = _report(data, False, monkeypatch)
    pure_r = _report(data, True, monkeypatch)
    assert native_r == pure_r
    return native_r


def test_family_is_not_vacuous() -> None:
    assert len(VARIANTS) >= 500 and len(HARMLESS_VARIANTS) >= 100
    assert {v.field for v in VARIANTS} == set(FIELDS)
    assert sum(v.fires_312 for v in VARIANTS) >= 8
    assert sum(v.fires_unzip for v in VARIANTS) >= 8
    # no field the family calls hostile is on the harmless list, and every harmless id
    # but Zip64 (decoded by the reader itself) has a benign variant
    assert not {xid for xid, _, _ in FIELDS.values()} & {int(x) for x in HarmlessExtra}
    assert {xid for xid, _ in FAM["HARMLESS"].values()} == \
        {int(x) for x in HarmlessExtra} - {HarmlessExtra.ZIP64}


@pytest.mark.parametrize("comment", [False, True])
@pytest.mark.parametrize("utf8", [True, False])
def test_baseline_is_safe(comment: bool, utf8: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the extra field the same archive is SAFE: the field alone makes a variant
    UNSAFE."""
    data = extra_archive(ExtraVariant("none", comment=comment, utf8=utf8))
    r = _both(data, monkeypatch)
    assert r.verdict is Verdict.SAFE and r.findings == (), r.rule_ids()
    if native("zipcore") is not None:
        assert _proven(data, monkeypatch) is not comment


@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize("where", FAM["WHERE"])
def test_extra_field_variants_are_ckg313(field: str, where: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    variants = [v for v in VARIANTS if v.field == field and v.where == where]
    assert len(variants) >= 12
    for v in variants:
        data = extra_archive(v)
        r = _both(data, monkeypatch)
        assert r.verdict is Verdict.UNSAFE, (v.slug, r.rule_ids())
        assert r.rule_ids() == {"CKG313"}, (v.slug, r.rule_ids())
        headers = {"central": ["central-directory"], "local": ["local-header"],
                   "both": ["central-directory", "local-header"]}[where]
        msgs = [f.message for f in r.findings]
        assert len(msgs) == len(headers), (v.slug, msgs)
        xid = FIELDS[field][0]
        for h, msg in zip(headers, msgs, strict=True):
            assert f"its {h} extra field 0x{xid:04x}" in msg, (v.slug, msg)
        if field == "upath":  # the message says what the member is renamed to
            assert f"renames it '{FAM['TARGETS'][v.target]}'" in msgs[0], msgs[0]
        if native("zipcore") is not None:
            assert not _proven(data, monkeypatch), v.slug


@pytest.mark.parametrize("where", FAM["WHERE"])
def test_harmless_extra_fields_stay_safe(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every harmless id, in either header, on any member: SAFE, and proven by the C
    prover when nothing else (a comment) keeps it off the fast path."""
    for v in (v for v in HARMLESS_VARIANTS if v.where == where):
        data = extra_archive(v)
        r = _both(data, monkeypatch)
        assert r.verdict is Verdict.SAFE and r.findings == (), (v.slug, r.rule_ids())
        if native("zipcore") is not None:
            assert _proven(data, monkeypatch) is not v.comment, v.slug


@needs_native
def test_prover_and_reader_share_the_harmless_table() -> None:
    core = native("zipcore")
    assert core is not None
    assert sorted(core.HARMLESS_EXTRA_IDS) == sorted(int(x) for x in HarmlessExtra)


def test_torch_save_archives_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save pads with its 'FB' field (0x4246) in every local header: still SAFE."""
    pool = torch_pool()
    if not pool:
        pytest.skip("torch not installed")
    for data in pool[:8]:
        r = _both(data, monkeypatch)
        assert r.verdict is Verdict.SAFE and not r.findings, r.rule_ids()
        if native("zipcore") is not None:
            assert _proven(data, monkeypatch)


@pytest.mark.skipif(shutil.which("zip") is None, reason="Info-ZIP zip not installed")
def test_info_zip_rezipped_checkpoint_is_safe(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch.save archive unpacked and stored again by Info-ZIP zip (its 'UT' and 'ux'
    fields in both headers) stays SAFE."""
    torch = pytest.importorskip("torch")
    bio = io.BytesIO()
    torch.save({"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}, bio)
    src = tmp_path / "unpacked"
    src.mkdir()
    import zipfile

    zipfile.ZipFile(io.BytesIO(bio.getvalue())).extractall(src)
    (folder,) = os.listdir(src)
    subprocess.run(["zip", "-q", "-r", "-D", "-0", str(tmp_path / "r.pt"), folder], cwd=src,
                   check=True, timeout=60)
    data = (tmp_path / "r.pt").read_bytes()
    assert any(zi.extra[:2] == b"UT" for zi in zipfile.ZipFile(io.BytesIO(data)).infolist())
    r = _both(data, monkeypatch)
    assert r.verdict is Verdict.SAFE and not r.findings, r.rule_ids()


# --- the payload, under the readers that honour the field --------------------------------

#: a zipfile-based checkpoint loader (tinygrad's torch_load and other pure-Python loaders):
#: the folder from the first member, <folder>/data.pkl unpickled with a persistent_load;
#: torch's own globals are stood in for (no torch in that interpreter)
_ZIPFILE_LOADER = r"""
import json, os, pickle, sys, zipfile
class U(pickle.Unpickler):
    def persistent_load(self, pid):
        return pid
    def find_class(self, module, name):
        if module.split(".")[0] in ("torch", "collections"):
            return lambda *a, **k: None
        return super().find_class(module, name)
out = {}
for path in json.loads(sys.argv[1]):
    os.chdir(os.path.dirname(path))
    try:
        zf = zipfile.ZipFile(path)
        base = zf.namelist()[0].split("/", 1)[0]
        with zf.open(base + "/data.pkl") as f:
            U(f).load()
        err = ""
    except Exception as e:
        err = type(e).__name__
    out[path] = [os.path.exists(sys.argv[2]), err]
print(json.dumps(out))
"""


def _write_all(tmp_path: Path, variants: list[Any]) -> dict[str, Any]:
    paths = {}
    for v in variants:
        d = tmp_path / v.slug
        d.mkdir()
        p = d / "model.pt"
        p.write_bytes(extra_archive(v))
        paths[str(p)] = v
    return paths


def _zipfile_fired(python: Path, paths: dict[str, Any]) -> dict[str, bool]:
    out = subprocess.run([str(python), "-c", _ZIPFILE_LOADER, json.dumps(sorted(paths)),
                          MARKER], capture_output=True, text=True, timeout=300, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {p: bool(f) for p, (f, _err) in got.items()}


@pytest.mark.parametrize("python", [PY312, PY313], ids=["3.12", "3.13"])
def test_payload_fires_under_cpython_312_zipfile(python: Path, tmp_path: Path) -> None:
    """Every Unicode Path variant under CPython >= 3.12's zipfile: the payload runs exactly
    for those the family marks (version 1, matching CRC, in the central directory, on the
    tensor record, renamed <folder>/data.pkl); CPython 3.11 (what ckptguard's second
    reading used) runs none of them, and the plain archive runs nothing."""
    if not python.exists():
        pytest.skip(f"{python} not installed")
    variants = [v for v in VARIANTS if v.field.startswith("upath") and v.carrier == "tensor"]
    variants.append(ExtraVariant("none"))
    paths = _write_all(tmp_path, variants)
    fired = _zipfile_fired(python, paths)
    want = {p: v.fires_312 for p, v in paths.items()}
    assert fired == want
    assert sum(fired.values()) >= 8
    if sys.version_info < (3, 12):
        for p in paths:
            Path(p).parent.joinpath(MARKER).unlink(missing_ok=True)
        assert not any(_zipfile_fired(Path(sys.executable), paths).values())


@pytest.mark.skipif(shutil.which("unzip") is None, reason="Info-ZIP unzip not installed")
def test_payload_lands_under_info_zip_unzip(tmp_path: Path) -> None:
    """Info-ZIP unzip honours the field (versions 0 and 1, matching CRC) for names without
    the UTF-8 flag: it extracts the payload as <folder>/data.pkl."""
    payload = FAM["payload"]()
    variants = [v for v in VARIANTS if v.field.startswith("upath") and v.carrier == "tensor"
                and v.target == "data.pkl" and not v.comment]
    landed = 0
    for v in variants:
        d = tmp_path / v.slug
        d.mkdir()
        (d / "model.pt").write_bytes(extra_archive(v))
        subprocess.run(["unzip", "-q", "-o", "model.pt"], cwd=d, capture_output=True,
                       timeout=60, check=False)
        pkl = d / "archive" / "data.pkl"
        got = pkl.exists() and pkl.read_bytes() == payload
        assert got is v.fires_unzip, v.slug
        landed += got
    assert landed >= 4


def test_prover_with_another_table_is_not_used() -> None:
    """A zipcore built from other sources (no table, or another one) is not trusted: it
    could prove an archive the Python reader flags."""
    from types import SimpleNamespace

    from ckptguard.readers.zipfast import same_extra_table

    ids = tuple(int(x) for x in HarmlessExtra)
    assert same_extra_table(SimpleNamespace(HARMLESS_EXTRA_IDS=ids[::-1]), HarmlessExtra)
    assert not same_extra_table(SimpleNamespace(), HarmlessExtra)
    assert not same_extra_table(SimpleNamespace(HARMLESS_EXTRA_IDS=(*ids, 0x7075)),
                                HarmlessExtra)
    assert not same_extra_table(SimpleNamespace(HARMLESS_EXTRA_IDS=ids[1:]), HarmlessExtra)
    core = native("zipcore")
    if core is not None:
        assert same_extra_table(core, HarmlessExtra)
