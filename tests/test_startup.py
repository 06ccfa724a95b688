"""Start-up: ``ckptguard scan FILE`` imports only what scanning that file needs.

Each case runs the CLI in a fresh interpreter and looks at the modules it imported on top
of what the interpreter had already imported before ckptguard (site hooks may import
certifi on their own: only ckptguard's imports count)."""

from __future__ import annotations

import inspect
import json
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ckptguard import context as CTX
from ckptguard import scan
from ckptguard.cli.exitcodes import ExitCode
from ckptguard.model import Finding, Location, Region, TensorInfo, Verdict

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"

PROBE = r"""
import json, sys
before = set(sys.modules)
sys.argv = ["ckptguard", "scan", *sys.argv[1:]]
from ckptguard.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "new": sorted(set(sys.modules) - before)}), file=sys.stderr)
"""

#: never imported by a scan of a local file, whatever its format and the output format
NEVER = ("torch", "numpy", "safetensors", "httpx", "certifi", "h11", "anyio", "fickling",
         "tomllib", "rich", "importlib.resources", "ckptguard.remote.http",
         "ckptguard.remote.scan", "ckptguard.loaders", "ckptguard.policy.suggest",
         "ckptguard.analysis.dcp", "ckptguard.analysis.folder", "ckptguard.cli.pool",
         "ckptguard.report.sarif", "ckptguard.report.inspect", "ckptguard.report.explain",
         "ckptguard.guard", "importlib.abc", "pathlib", "urllib.parse", "ipaddress", "shutil",
         "tempfile", "ckptguard.remote", "ckptguard.remote.targets")

#: not imported by the scan of a plain torch zip (a state dict, no finding): the sub-auditors
#: of the other things a zip can be, and the tables that only a finding needs
PLAIN_ZIP_NEVER = ("ckptguard.policy.benign", "ckptguard.policy.profiles",
                   "ckptguard.analysis.tscode", "ckptguard.analysis.pt2",
                   "ckptguard.analysis.nested", "ckptguard.readers.jsonfile",
                   "ckptguard.analysis.zipdefects", "ckptguard.rules", "ckptguard.analysis.numpy",
                   "hashlib", "_hashlib")


#: not imported by a plain ``scan PATH... [--format F]`` (cli/plain.py: no click parser)
PLAIN_SCAN_NEVER = ("click", "ckptguard.cli.group", "ckptguard.cli.scan_cmd", "uuid", "platform",
                    "datetime", "gettext")


def _imports(*args: str, code: int = 0) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                         text=True, check=False, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    rec = json.loads(out.stderr.strip().splitlines()[-1])
    assert rec["code"] == code, out.stderr
    return set(rec["new"])


def _top(mods: set[str]) -> set[str]:
    return mods | {m.split(".")[0] for m in mods}


def _safetensors(folder: Path) -> Path:
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    path = folder / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    return path


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("fixture", ["benign/linear.pt", "m.safetensors"])
def test_a_local_scan_imports_only_what_it_needs(fixture: str, fmt: str,
                                                 tmp_path: Path) -> None:
    path = _safetensors(tmp_path) if fixture == "m.safetensors" else FIXTURES / fixture
    assert path.is_file(), path
    mods = _top(_imports(str(path), "--format", fmt))
    assert "ckptguard.cli.scan_run" in mods  # the probe saw the scan
    for name in (*NEVER, *PLAIN_SCAN_NEVER):
        assert name not in mods, name
    if fmt == "json":
        assert "ckptguard.report.text" not in mods
    else:
        assert "ckptguard.report.fastjson" not in mods
    if fixture.endswith(".safetensors"):  # no pickle VM for a file without pickles
        for name in ("ckptguard.analysis.vm", "ckptguard.analysis.torchfile",
                     "ckptguard.readers.zipfile", "ckptguard.analysis.fastpath", "pickle",
                     "_pickle"):
            assert name not in mods, name
    else:
        assert "ckptguard.analysis.torchfile" in mods
        for name in PLAIN_ZIP_NEVER:
            assert name not in mods, name


def test_a_natively_proven_scan_compiles_no_fast_path_regex() -> None:
    """analysis/fastpath.py's two token patterns (~2 ms to compile) are compiled by the
    Python fast path only: a file the native core proves never needs them."""
    from ckptguard._native import native

    if native("picklecore") is None:
        pytest.skip("picklecore not built")
    probe = ("import sys, ckptguard\n"
             "from ckptguard.analysis import fastpath as fp\n"
             "r = ckptguard.scan(sys.argv[1])\n"
             "print(r.verdict.name, fp._run_pattern.cache_info().currsize,"
             " fp._token_pattern.cache_info().currsize)\n")
    out = subprocess.run([sys.executable, "-c", probe, str(FIXTURES / "benign/linear.pt")],
                         capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["SAFE", "0", "0"]
    pure = subprocess.run([sys.executable, "-c", probe, str(FIXTURES / "benign/linear.pt")],
                          capture_output=True, text=True, check=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin",
                               "CKPTGUARD_PURE": "1"})
    assert pure.stdout.split() == ["SAFE", "1", "0"]  # the Python fast path compiles it


def test_a_finding_imports_the_rule_table_and_a_zip_defect_its_mapping(tmp_path: Path) -> None:
    """What the plain scans above leave out comes back where it is needed: bytes before the
    archive (a zip defect, CKG310) import the defect table and the rules, and the scan
    reports the defect."""
    bad = tmp_path / "prefixed.pt"
    bad.write_bytes(b"junk" + (FIXTURES / "benign/linear.pt").read_bytes())
    mods = _imports(str(bad), "--format", "json", code=int(ExitCode.FINDINGS))
    assert {"ckptguard.analysis.zipdefects", "ckptguard.rules"} <= mods
    report = scan(str(bad))
    assert report.verdict is Verdict.UNSAFE
    assert "CKG310" in {f.rule_id for f in report.findings}


@pytest.mark.parametrize("size", [0, 1, 55, 64, CTX.SMALL_REGION - 1, CTX.SMALL_REGION,
                                  CTX.SMALL_REGION + 1, 3 << 20])
def test_region_digests_are_hashlibs_whichever_sha256_computes_them(size: int) -> None:
    """context.sha256_hex: CPython's own SHA-256 for small regions (no OpenSSL at start-up),
    hashlib's for large ones: the same hex digest either way, and in ``regions()``."""
    import hashlib
    import random

    data = random.Random(size).randbytes(size)
    assert CTX.sha256_hex(data) == hashlib.sha256(data).hexdigest()
    src = CTX.Source.from_bytes(data + b"tail")
    assert src.read(0, size, record=True) == data
    assert [(r.offset, r.length, r.sha256) for r in src.regions()] == \
        [(0, size, hashlib.sha256(data).hexdigest())]


def test_the_benign_table_and_profiles_come_back_where_needed(tmp_path: Path) -> None:
    """A plain state dict leaves the BENIGN table and the profiles unimported (above); a
    global off the allowlist imports the table (and is reported by its rule), a chosen
    profile imports the profiles."""
    from ckptguard.model import Severity

    mods = _imports(str(FIXTURES / "medium/argparse_namespace.pt"), "--format", "json",
                    code=int(ExitCode.FINDINGS))
    assert "ckptguard.policy.benign" in mods
    report = scan(str(FIXTURES / "medium/argparse_namespace.pt"))
    assert report.verdict is Verdict.UNSAFE
    assert {(f.rule_id, f.severity) for f in report.findings} >= {("CKG102", Severity.MEDIUM)}
    mods = _imports(str(_safetensors(tmp_path)), "--profile", "numpy")
    assert {"ckptguard.policy.profiles", "ckptguard.policy.benign"} <= mods


def test_a_policy_file_imports_the_toml_parser(tmp_path: Path) -> None:
    pol = tmp_path / "p.toml"
    pol.write_text("# no entries: the default policy\n", encoding="utf-8")
    mods = _imports(str(_safetensors(tmp_path)), "--policy", str(pol))
    assert "tomllib" in mods


# --- TensorInfo & co.: the slot-descriptor __init__ (model._slot_init) ----------------------

@pytest.mark.parametrize("cls", [TensorInfo, Finding, Location, Region])
def test_slot_init_has_the_dataclass_signature(cls: type) -> None:
    """Same parameters, order and defaults as the ``__init__`` dataclasses generates."""
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    ns = {"__annotations__": {k: f.type for k, f in fields.items()}}
    for k, f in fields.items():
        if f.default is not f.default_factory:  # a default (no field here has a factory)
            ns[k] = f.default
    ref = dataclass(frozen=True, slots=True)(type("Ref", (), ns))
    got = inspect.signature(cls.__init__)
    want = inspect.signature(ref.__init__)
    assert [(p.name, p.default, p.kind) for p in got.parameters.values()] == \
        [(p.name, p.default, p.kind) for p in want.parameters.values()]


def test_slot_init_sets_every_field_and_stays_frozen() -> None:
    t = TensorInfo("a", "float32", (2, 3), storage="0", nbytes=24)
    assert t.to_dict() == {"name": "a", "dtype": "float32", "shape": [2, 3], "stride": None,
                           "storage": "0", "storage_offset": 0, "nbytes": 24,
                           "storage_nbytes": None, "data_offset": None, "device": "cpu",
                           "requires_grad": False, "file": None}
    assert t == TensorInfo.from_dict(t.to_dict()) and hash(t) == hash(TensorInfo(
        "a", "float32", (2, 3), None, "0", 0, 24))
    with pytest.raises(AttributeError):
        t.name = "b"  # type: ignore[misc]
    with pytest.raises(TypeError):
        TensorInfo("a")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        TensorInfo("a", "f", (), nope=1)  # type: ignore[call-arg]
    f = Finding("CKG101", *(None,) * 2, "m", Location("p"))  # type: ignore[arg-type]
    assert f.evidence == () and f.advice == "" and f.location.member is None


def test_slot_init_objects_pickle_copy_and_replace() -> None:
    import copy
    import dataclasses
    import pickle

    from ckptguard.model import Effect, Severity

    objs = [TensorInfo("a", "f", (1, 2), stride=(2, 1)), Location("p", "m", 3),
            Region(1, 2, "ab"), Finding("CKG101", Severity.HIGH, Effect.BLOCKS, "m",
                                        Location("p"), (("k", "v"),), "x")]
    for o in objs:
        assert pickle.loads(pickle.dumps(o)) == o  # the pool sends reports between processes
        assert copy.deepcopy(o) == o and copy.copy(o) == o
    assert dataclasses.replace(objs[0], name="b").name == "b"
