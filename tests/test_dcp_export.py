"""torch.distributed.checkpoint folders and torch.export archives (issue 12).

Benign artifacts are made by torch itself (``dcp.save``, ``torch.export.save``) in tmp
folders; hostile twins come from fixtures/families/dcp_export.py (opcode-built DCP
metadata, trojaned .pt2 members) and from the same builder with other parameters (paths,
ranges, transforms, byte items). Every payload is proven to fire with the real loader
(``dcp.load``, ``torch.export.load``) in a subprocess; loads are compared bit for bit with
torch's own loaders.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
from ckg_families import family

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")

import ckptguard  # noqa: E402
from ckptguard.analysis.pt2 import expr_problem, guard_problem  # noqa: E402
from ckptguard.cli import cli  # noqa: E402
from ckptguard.model import Format, Severity, Verdict  # noqa: E402
from ckptguard.policy import GlobalStatus, Policy, classify_global  # noqa: E402
from ckptguard.policy.benign_formats import (  # noqa: E402
    BENIGN_FORMAT_GLOBALS,
    FormatScope,
    allowance_for,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
MARKER = MANIFEST["marker"]
DCP_FIXTURES = [e for e in MANIFEST["fixtures"] if e["family"] == "dcp-metadata"]
PT2_FIXTURES = [e for e in MANIFEST["fixtures"] if e["family"] == "pt2-archive"]


@functools.lru_cache(maxsize=1)
def _family() -> dict[str, Any]:
    """fixtures/families/dcp_export.py's namespace, built once."""
    return family("dcp_export")


def _save(folder: Path, sd: dict[str, Any]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, checkpoint_id=str(folder))
    return folder


def _state() -> dict[str, Any]:
    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
            "b": torch.ones(3, dtype=torch.float16),
            "i": torch.arange(4, dtype=torch.int64),
            "step": 7, "cfg": {"lr": 0.1, "name": "x", "betas": [0.9, 0.99]}}


def _torch_reference(folder: Path) -> dict[str, Any]:
    """What torch's own reader returns (dcp_to_torch_save's path)."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _load_state_dict(out, storage_reader=FileSystemReader(str(folder)),
                         planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    return out


def assert_same(a: Any, b: Any) -> None:
    """Equal structure; tensors equal bit for bit (dtype, shape, bytes)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
        assert bytes(a.detach().contiguous().view(torch.uint8).numpy()) == \
            bytes(b.detach().contiguous().view(torch.uint8).numpy())
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


def _fires(script: str, cwd: Path) -> bool:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CKPTGUARD")}
    subprocess.run([sys.executable, "-c", "import warnings; warnings.simplefilter('ignore')\n"
                    "try:\n" + "".join(f"    {line}\n" for line in script.splitlines())
                    + "except BaseException as e:\n    print('raised', type(e).__name__)\n"],
                   cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                   text=True, timeout=300, check=False)
    return (cwd / MARKER).exists()


def _cli(*args: str) -> int:
    from click.testing import CliRunner

    return CliRunner().invoke(cli, ["scan", *args], catch_exceptions=False).exit_code


def _critical(report: Any) -> bool:
    return any(f.severity is Severity.CRITICAL for f in report.all_findings())


def _w_only(tmp: Path) -> tuple[Path, int, int]:
    """dcp.save of {'w': float32 (2, 3)} and w's (offset, length) in __0_0.distcp."""
    folder = _save(tmp / "ckpt", {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)})
    with open(folder / ".metadata", "rb") as f:
        md = pickle.load(f)  # made by torch just now
    (info,) = md.storage_data.values()
    return folder, info.offset, info.length


@pytest.fixture(scope="module")
def dcp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(tmp_path_factory.mktemp("dcp") / "ckpt", _state())


# =========================================================================== DCP: benign

def test_benign_dcp_folder_is_safe(dcp_dir: Path) -> None:
    r = ckptguard.scan(dcp_dir)
    assert r.verdict is Verdict.SAFE and r.format is Format.DCP_CHECKPOINT
    assert r.rule_ids() == {"CKG801"}
    kinds = {Path(c.path).name: c.format for c in r.children}
    assert kinds == {".metadata": Format.PICKLE, "__0_0.distcp": Format.DCP_SHARD}
    assert {t.name for t in r.tensors} == {"w", "b", "i"}
    assert _cli(str(dcp_dir)) == 0


def test_benign_dcp_in_a_model_folder(dcp_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(dcp_dir, tmp_path / "repo" / "step_10")
    r = ckptguard.scan(tmp_path / "repo")
    assert r.verdict is Verdict.SAFE and r.format is Format.MODEL_FOLDER
    assert [c.format for c in r.children] == [Format.DCP_CHECKPOINT]
    assert _cli(str(tmp_path / "repo")) == 0


def test_safe_load_matches_torch_dcp_reader(dcp_dir: Path) -> None:
    got = ckptguard.safe_load(dcp_dir)
    assert_same(got, _torch_reference(dcp_dir))
    assert_same(got["w"], _state()["w"])


def test_safe_load_dcp_detects_a_change_after_the_audit(dcp_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import ckptguard.analysis.dcp_folder as adcp

    folder = tmp_path / "ckpt"
    shutil.copytree(dcp_dir, folder)
    audit = adcp.audit_dcp

    def audit_then_change(path: str, **kw: Any) -> Any:
        report = audit(path, **kw)
        with open(folder / ".metadata", "r+b") as f:  # same size, other bytes
            data = f.read()
            f.seek(0)
            f.write(data.replace(b"1.0.0", b"1.0.1"))
        return report

    monkeypatch.setattr(adcp, "audit_dcp", audit_then_change)
    with pytest.raises(ckptguard.FileChangedError):
        ckptguard.safe_load(folder)


def test_table_is_what_dcp_save_writes(dcp_dir: Path) -> None:
    """Both directions: every global dcp.save writes is allowed only via the DCP table (or
    the default allowlist), and every DCP row is used by dcp.save."""
    from ckptguard.analysis.vm import PickleMode, audit_pickle
    from ckptguard.context import AuditContext, Source

    data = (dcp_dir / ".metadata").read_bytes()
    ctx = AuditContext("m", Source.from_bytes(data), Policy())
    result = audit_pickle(ctx, data, mode=PickleMode.RAW)
    written = {g.full for g in result.globals}
    rows = {f"{m}.{n}" for s, m, n, _ in BENIGN_FORMAT_GLOBALS if s is FormatScope.DCP_METADATA}
    default = {g for g in written if classify_global(g, Policy()).status is GlobalStatus.ALLOW}
    assert written - default == rows
    assert set(allowance_for(FormatScope.DCP_METADATA).entries) == rows


def test_dcp_names_stay_denied_outside_dcp_metadata(dcp_dir: Path, tmp_path: Path) -> None:
    for row in BENIGN_FORMAT_GLOBALS:
        # blocking outside DCP metadata (benign, unreviewed or denied: never allowed)
        assert not classify_global(f"{row[1]}.{row[2]}", Policy()).status.allowed
    copy = tmp_path / "meta.pkl"
    shutil.copy(dcp_dir / ".metadata", copy)
    r = ckptguard.scan(copy)
    assert r.verdict is Verdict.UNSAFE and "CKG101" in r.rule_ids() and "CKG801" not in \
        r.rule_ids()
    with pytest.raises(ckptguard.UnsafeCheckpointError):
        ckptguard.safe_load(copy)


def test_hand_built_twin_is_what_dcp_load_reads(tmp_path: Path) -> None:
    folder, offset, length = _w_only(tmp_path)
    expected = _torch_reference(folder)
    (folder / ".metadata").write_bytes(_family()["dcp_metadata"](length, offset=offset))
    r = ckptguard.scan(folder)
    assert r.verdict is Verdict.SAFE and r.rule_ids() == {"CKG801"}
    sd = {"w": torch.zeros(2, 3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(sd, checkpoint_id=str(folder))
    assert_same(sd, expected)
    assert_same(ckptguard.safe_load(folder), expected)


# ========================================================================== DCP: hostile

#: ONE torch process runs dcp.load on every hostile folder, each from a working directory
#: of its own, and says right after each load whether the payload's marker exists
_DCP_LOAD_ALL = (
    "import json, os, sys, warnings\n"
    "import torch, torch.distributed.checkpoint as dcp\n"
    "warnings.simplefilter('ignore')\n"
    "for i, folder, cwd in json.loads(sys.argv[1]):\n"
    "    os.chdir(cwd)\n"
    "    try:\n"
    "        dcp.load({'w': torch.zeros(2, 3)}, checkpoint_id=folder)\n"
    "    except BaseException as e:\n"
    "        print('raised', type(e).__name__, flush=True)\n"
    f"    print('LOADED', i, os.path.exists({MARKER!r}), flush=True)\n")


@pytest.fixture(scope="module")
def dcp_fired(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], str, str]:
    """Every hostile DCP metadata in a dcp.save folder of its own (cwd: the folder's
    parent), all loaded by one dcp.load worker: (cwds, its stdout, its stderr)."""
    base = tmp_path_factory.mktemp("dcp_fires")
    cwds, jobs = [], []
    for i, entry in enumerate(DCP_FIXTURES):
        cwd = base / str(i)
        cwd.mkdir()
        folder, _, _ = _w_only(cwd)
        shutil.copy(FIXTURES / entry["path"], folder / ".metadata")
        cwds.append(cwd)
        jobs.append((i, str(folder), str(cwd)))
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CKPTGUARD")}
    proc = subprocess.run([sys.executable, "-c", _DCP_LOAD_ALL, json.dumps(jobs)], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300, check=False)
    return cwds, proc.stdout, proc.stderr


@pytest.mark.parametrize("i", range(len(DCP_FIXTURES)),
                         ids=[e["path"] for e in DCP_FIXTURES])
@pytest.mark.slow
def test_hostile_metadata_is_critical_and_fires_with_dcp_load(
        i: int, dcp_fired: tuple[list[Path], str, str]) -> None:
    cwds, out, err = dcp_fired
    folder = cwds[i] / "ckpt"
    r = ckptguard.scan(folder)
    assert r.verdict is Verdict.UNSAFE and "CKG101" in r.rule_ids() and _critical(r)
    assert _cli(str(folder)) == 1
    assert f"LOADED {i} True\n" in out, (out[-2000:], err[-2000:])
    assert (cwds[i] / MARKER).exists()


def test_gate_blocks_dcp_load_of_hostile_metadata(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _, _ = _w_only(tmp_path)
    good = _torch_reference(folder)
    monkeypatch.chdir(tmp_path)
    with ckptguard.guard_torch_load(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd = {"w": torch.zeros(2, 3)}
        dcp.load(sd, checkpoint_id=str(folder))  # benign: loads as usual
        assert_same(sd, good)
        shutil.copy(FIXTURES / DCP_FIXTURES[0]["path"], folder / ".metadata")
        with pytest.raises(BaseException) as info:  # dcp wraps it in CheckpointException
            dcp.load({"w": torch.zeros(2, 3)}, checkpoint_id=str(folder))
        text = str(getattr(info.value, "failures", info.value))
        assert "verdict UNSAFE (not loaded)" in text and "CKG101 CRITICAL" in text
    assert not (tmp_path / MARKER).exists()
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    assert FileSystemReader.read_metadata.__name__ == "read_metadata"  # unhooked after


_TRAVERSALS = ["../outside.distcp", "/tmp/ckptguard-outside.distcp", "sub/__0_0.distcp",
               "..", "a\\b.distcp", "", "x\x00.distcp"]


@pytest.mark.parametrize("rel", _TRAVERSALS)
def test_storage_path_outside_the_folder(rel: str, tmp_path: Path) -> None:
    folder, offset, length = _w_only(tmp_path)
    (folder / ".metadata").write_bytes(_family()["dcp_metadata"](length, offset=offset, rel=rel))
    r = ckptguard.scan(folder)
    assert r.verdict is Verdict.UNSAFE and "CKG803" in r.rule_ids()


def test_storage_link_outside_the_folder(tmp_path: Path) -> None:
    folder, _, _ = _w_only(tmp_path)
    outside = tmp_path / "elsewhere.distcp"
    shutil.move(folder / "__0_0.distcp", outside)
    os.symlink(outside, folder / "__0_0.distcp")
    r = ckptguard.scan(folder)
    assert r.verdict is Verdict.UNSAFE and "CKG803" in r.rule_ids()


@pytest.mark.parametrize("where", ["past_end", "at_end", "negative", "huge", "missing_file"])
def test_byte_range_outside_its_file(where: str, tmp_path: Path) -> None:
    folder, offset, length = _w_only(tmp_path)
    size = (folder / "__0_0.distcp").stat().st_size
    kw: dict[str, Any] = {
        "past_end": {"offset": offset, "length": size - offset + 1},
        "at_end": {"offset": size, "length": 1},
        "negative": {"offset": -1, "length": length},
        "huge": {"offset": offset, "length": 2**31 - 1},
        "missing_file": {"offset": offset, "length": length, "rel": "__9_9.distcp"},
    }[where]
    n = kw.pop("length")
    (folder / ".metadata").write_bytes(_family()["dcp_metadata"](n, **kw))
    r = ckptguard.scan(folder)
    assert r.verdict is Verdict.UNSAFE and "CKG804" in r.rule_ids()


def test_stream_transforms_are_incomplete(tmp_path: Path) -> None:
    folder, offset, length = _w_only(tmp_path)
    (folder / ".metadata").write_bytes(
        _family()["dcp_metadata"](length, offset=offset, transforms=["zstd"]))
    r = ckptguard.scan(folder)
    assert r.verdict is Verdict.INCOMPLETE and "CKG805" in r.rule_ids()
    assert _cli(str(folder)) == 2


@pytest.mark.slow
def test_trojaned_bytes_item_fires_with_dcp_load(tmp_path: Path) -> None:
    """A non-tensor item: torch's default planner torch.load(weights_only=False)s it."""
    fam = _family()
    shard = fam["torch_zip"](fam["sd_with"](fam["call"]("posix", "system", fam["S"](
        fam["SHELL"]))), [("0", fam["F32_6"])], seed="dcp-bytes-item")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "__0_0.distcp").write_bytes(shard)
    (folder / ".metadata").write_bytes(fam["dcp_metadata"](len(shard), fqn="step",
                                                           bytes_item=True))
    r = ckptguard.scan(folder)
    assert r.verdict is Verdict.UNSAFE and "CKG101" in r.rule_ids() and _critical(r)
    shard_report = next(c for c in r.children if c.path.endswith(".distcp"))
    assert any(f.rule_id == "CKG101" and f.location.member == "step:archive/data.pkl"
               for f in shard_report.findings)
    with pytest.raises(ckptguard.UnsafeCheckpointError):
        ckptguard.safe_load(folder)
    assert not (tmp_path / MARKER).exists()
    assert _fires("import torch, torch.distributed.checkpoint as dcp\n"
                  f"dcp.load({{'step': 0}}, checkpoint_id={str(folder)!r})", tmp_path)


def test_stored_tensor_must_match_its_chunk(tmp_path: Path) -> None:
    folder = _save(tmp_path / "ckpt", {"w": torch.arange(6, dtype=torch.int64).reshape(2, 3)})
    with open(folder / ".metadata", "rb") as f:
        (info,) = pickle.load(f).storage_data.values()  # made by torch
    (folder / ".metadata").write_bytes(_family()["dcp_metadata"](info.length,
                                                                offset=info.offset))
    r = ckptguard.scan(folder)  # the metadata says float32, the shard holds int64
    assert r.verdict is Verdict.UNSAFE and "CKG808" in r.rule_ids()


def test_unreferenced_shard_is_a_note(dcp_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(dcp_dir, folder)
    (folder / "__1_0.distcp").write_bytes(b"PK\x05\x06" + bytes(18))
    r = ckptguard.scan(folder)
    assert r.verdict is Verdict.SAFE and "CKG807" in r.rule_ids()


@pytest.mark.parametrize("body", [b"\x80\x02}q\x00.", b"\x80\x02K\x07.",
                                  b"\x80\x02]q\x00."])
def test_metadata_that_is_not_metadata(body: bytes, dcp_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(dcp_dir, folder)
    (folder / ".metadata").write_bytes(body)
    r = ckptguard.scan(folder)
    assert r.verdict is Verdict.UNSAFE and "CKG802" in r.rule_ids()


def test_lone_shard_is_never_safe(dcp_dir: Path) -> None:
    """A shard alone: its byte ranges are named by the folder's .metadata (CKG809), and as
    a whole file zip readers (numpy.load, torch.load) read the last archive in it, with
    the earlier ones as leading bytes (CKG005, from the every-reader audit)."""
    r = ckptguard.scan(dcp_dir / "__0_0.distcp")
    assert r.verdict is Verdict.UNSAFE and {"CKG809", "CKG005"} <= r.rule_ids()


# ============================================================================ .pt2: benign

class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = torch.nn.Linear(3, 2)
        self.register_buffer("buf", torch.arange(2, dtype=torch.float32))
        self.c = torch.tensor([1.0, 2.0])

    def forward(self, x: Any) -> Any:
        return self.l(x) + self.buf + self.c


@pytest.fixture(scope="module")
def pt2_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pt2")
    torch.manual_seed(0)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(Tiny(), (torch.randn(4, 3),))
        torch.export.save(ep, d / "static.pt2")
        out["static"] = d / "static.pt2"
        batch = torch.export.Dim("batch", min=2, max=64)
        ep = torch.export.export(Tiny(), (torch.randn(4, 3),), dynamic_shapes={"x": {0: batch}})
        torch.export.save(ep, d / "dynamic.pt2")
        out["dynamic"] = d / "dynamic.pt2"
    return out


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_benign_pt2_is_safe(kind: str, pt2_files: dict[str, Path]) -> None:
    r = ckptguard.scan(pt2_files[kind])
    assert r.verdict is Verdict.SAFE and r.format is Format.TORCH_EXPORT
    assert r.rule_ids() == {"CKG820"}
    assert _cli(str(pt2_files[kind])) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.load(pt2_files[kind])
    want = {**dict(ep.state_dict), **dict(ep.constants)}
    assert {t.name: (t.dtype, t.shape) for t in r.tensors} == {
        k: (str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in want.items()}


def test_gated_export_load_matches_torch(pt2_files: dict[str, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = torch.export.load(pt2_files["dynamic"])
        with ckptguard.guard_torch_load():
            gated = torch.export.load(pt2_files["dynamic"])
            with open(pt2_files["static"], "rb") as f:
                torch.export.load(io.BytesIO(f.read()))
    assert_same(dict(gated.state_dict), dict(plain.state_dict))
    assert_same(dict(gated.constants), dict(plain.constants))
    x = torch.randn(5, 3)
    assert_same(gated.module()(x), plain.module()(x))
    assert torch.export.load.__doc__ is not None and "ckptguard" not in torch.export.load.__doc__


def test_safe_load_refuses_a_program(pt2_files: dict[str, Path]) -> None:
    from ckptguard.errors import UnsupportedFormatError

    with pytest.raises(UnsupportedFormatError, match="program"):
        ckptguard.safe_load(pt2_files["static"])


def test_raw_weight_too_small_for_its_view(pt2_files: dict[str, Path], tmp_path: Path) -> None:
    src = zipfile.ZipFile(pt2_files["static"])
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("model_weights_config.json"):
                cfg = json.loads(data)
                cfg["config"]["l.weight"]["tensor_meta"]["sizes"] = [{"as_int": 20},
                                                                     {"as_int": 3}]
                data = json.dumps(cfg).encode()
            out.writestr(info.filename, data)
    r = ckptguard.scan(bad)
    assert r.verdict is Verdict.UNSAFE and "CKG825" in r.rule_ids()


# =========================================================================== .pt2: hostile

@pytest.mark.parametrize("entry", PT2_FIXTURES, ids=lambda e: e["path"])
def test_hostile_pt2_blocked_by_the_gate(entry: dict[str, Any], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = FIXTURES / entry["path"]
    r = ckptguard.scan(path)
    assert r.verdict is Verdict.UNSAFE and set(entry["rules"]) <= r.rule_ids()
    assert _critical(r), r.rule_ids()
    assert _cli(str(path)) == 1
    monkeypatch.chdir(tmp_path)
    with ckptguard.guard_torch_load(), pytest.raises(ckptguard.UnsafeCheckpointError):
        torch.export.load(path)
    assert not (tmp_path / MARKER).exists()


def test_every_placement_has_both_payloads() -> None:
    places = {Path(e["path"]).parent.name.rsplit("_", 2)[0] for e in DCP_FIXTURES}
    assert places == {"version", "save_id", "planner_data", "storage_data"}
    assert len(DCP_FIXTURES) == 8 and len(PT2_FIXTURES) >= 14
    assert {e["fires"] for e in PT2_FIXTURES} == {"torch.export.load",
                                                  "torch.export.load+call", None}


_EXPRS_OK = ["Symbol('s77', positive=True, integer=True)", "s0*2 + 1",
             "FloorDiv(Symbol('s77', positive=True, integer=True), Integer(2))",
             "Max(1, Symbol('s1', integer=True))", "Float('1.5', precision=53)",
             "Mod(s0, 8) + Eq(s1, 2)"]
_EXPRS_BAD = ["__import__('os').system('x')", "Max('__import__(1)', 2)", "preview(1)",
              "Symbol.mro()", "(lambda: 1)()", "Symbol(**{'a': 1})", "s0.__class__",
              "lambdify(s0, s0)", "sympify('1')", "Integer(2)[0]", "[1][0]", "x" * 20000,
              "def", 3]
_GUARDS_OK = ["L['y'].size()[0] <= L['x'].size()[0]", "2 <= L['x'].size()[0]",
              "L['x'].size()[0] % 2 == 0 and math.floor(2.5) > 1",
              "L['x'].stride()[0] == L['x'].size()[1]"]
_GUARDS_BAD = ["__import__('os').system('x') == 0", "L['x'].__class__",
               "L['x'].size()[0] == 2 or print('x')", "[x for x in ()]", "open('f')",
               "L['x'].size()[0] == (lambda: 1)()", "L[__import__('os')]"]


@pytest.mark.parametrize("text", _EXPRS_OK)
def test_plain_expressions_pass(text: str) -> None:
    assert expr_problem(text) is None


@pytest.mark.parametrize("text", _EXPRS_BAD, ids=lambda t: repr(t)[:40])
def test_evaluating_expressions_are_refused(text: object) -> None:
    assert expr_problem(text) is not None


@pytest.mark.parametrize("text", _GUARDS_OK)
def test_plain_guards_pass(text: str) -> None:
    assert guard_problem(text) is None


@pytest.mark.parametrize("text", _GUARDS_BAD)
def test_code_guards_are_refused(text: str) -> None:
    assert guard_problem(text) is not None


# ======================================================================= never a traceback

@pytest.mark.parametrize("cut", [1, 2, 11, 62, 200, 500, 800, 1000, -2, -1])
def test_truncated_metadata_is_never_safe(cut: int, dcp_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(dcp_dir, folder)
    data = (folder / ".metadata").read_bytes()
    (folder / ".metadata").write_bytes(data[:cut])
    r = ckptguard.scan(folder)
    assert r.verdict is not Verdict.SAFE and r.rule_ids() & {"CKG201", "CKG202", "CKG802"}


@pytest.mark.parametrize("where", ["models/model.json", "data/weights/model_weights_config.json",
                                   "data/sample_inputs/model.pt",
                                   "data/constants/model_constants_config.json",
                                   "archive_version", "archive_format"])
@pytest.mark.parametrize("junk", [b"", b"{", b"[]", b'{"config": 3}', b"\xff\xfe",
                                  b'{"graph_module": {"graph": {"x": {"expr_str": 5}}}}'])
def test_broken_pt2_records_get_findings(where: str, junk: bytes, pt2_files: dict[str, Path],
                                         tmp_path: Path) -> None:
    src = zipfile.ZipFile(pt2_files["static"])
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.split("/", 1)[1] == where:
                data = junk
            out.writestr(info.filename, data)
    r = ckptguard.scan(bad)
    assert r.verdict is Verdict.UNSAFE and not r.problems
    assert r.rule_ids() & {"CKG821", "CKG823", "CKG825"}


def test_gate_refuses_metadata_swapped_after_the_folder_audit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ckptguard.analysis.dcp_folder as adcp

    folder, offset, length = _w_only(tmp_path)
    twin = _family()["dcp_metadata"](length, offset=offset, rel="../outside.distcp")
    audit = adcp.audit_dcp

    def audit_then_swap(path: str, **kw: Any) -> Any:
        report = audit(path, **kw)
        (folder / ".metadata").write_bytes(twin)  # SAFE as a pickle, but a path outside
        return report

    monkeypatch.setattr(adcp, "audit_dcp", audit_then_swap)
    with ckptguard.guard_torch_load(), warnings.catch_warnings(), \
            pytest.raises(BaseException) as info:
        warnings.simplefilter("ignore")
        dcp.load({"w": torch.zeros(2, 3)}, checkpoint_id=str(folder))
    assert "differs from the audited one" in str(getattr(info.value, "failures", info.value))


def test_dcp_folder_in_a_hf_cache_snapshot(dcp_dir: Path, tmp_path: Path) -> None:
    """Snapshot files are links to ../../blobs/<hash>: still one SAFE DCP checkpoint."""
    repo = tmp_path / "hub" / "models--org--dcp"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(dcp_dir.iterdir()):
        blob = blobs / f"blob{f.name.replace('.', '_')}"
        shutil.copy(f, blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    r = ckptguard.scan(snap)
    assert r.verdict is Verdict.SAFE and r.format is Format.DCP_CHECKPOINT
    assert_same(ckptguard.safe_load(snap), _torch_reference(dcp_dir))
    assert _cli("--hf-cache", str(tmp_path / "hub")) == 0


def test_archive_without_archive_format_is_still_audited(pt2_files: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """load_pt2 reads archive_version only: such an archive is a .pt2 all the same."""
    src = zipfile.ZipFile(pt2_files["static"])
    bad = tmp_path / "bad.pt2"
    fam = _family()
    payload = fam["torch_zip"](fam["sd_with"](fam["call"]("posix", "system", fam["S"](
        fam["SHELL"]))), [("0", fam["F32_6"])], seed="no-archive-format")
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            rel = info.filename.split("/", 1)[1]
            if rel == "archive_format":
                continue
            out.writestr(info.filename, payload if rel == "data/sample_inputs/model.pt"
                         else src.read(info))
    r = ckptguard.scan(bad)
    assert r.format is Format.TORCH_EXPORT and r.verdict is Verdict.UNSAFE
    assert {"CKG821", "CKG101"} <= r.rule_ids()


def test_every_scope_reports_under_an_info_note() -> None:
    from ckptguard.model import Effect
    from ckptguard.policy.benign_formats import SCOPE_RULES
    from ckptguard.rules import RULES

    assert set(SCOPE_RULES) == set(FormatScope)
    assert {s for s, *_ in BENIGN_FORMAT_GLOBALS} == set(FormatScope)
    for rid in SCOPE_RULES.values():
        assert RULES[rid].severity is Severity.INFO and RULES[rid].effect is Effect.NOTE
