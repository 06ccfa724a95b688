"""CliRunner tests: every option and exit code of ``ckptguard scan``, the HF cache layout,
hostile names, and golden outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
from cli_helpers import (
    evil_pickle,
    hf_cache,
    model_folder,
    namespace_pickle,
    safetensors_bytes,
    write,
)
from click.testing import CliRunner, Result
from golden_util import check_golden

import ckptguard
from ckptguard.cli import cli
from ckptguard.cli.discover import default_hf_cache, repo_display

ROOT = Path(__file__).resolve().parents[1]
SARIF_SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-2.1.0-subset.schema.json")
                          .read_text(encoding="utf-8"))
JSON_SCHEMA = json.loads((ROOT / "docs" / "report-schema.json").read_text(encoding="utf-8"))


@pytest.fixture()
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME",
                "NO_COLOR"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def scan_json(*args: str) -> tuple[int, dict]:
    res = run("scan", "--format", "json", *args)
    doc = json.loads(res.stdout)
    jsonschema.Draft202012Validator(JSON_SCHEMA).validate(doc)
    return res.exit_code, doc


def paths(doc: dict) -> list[str]:
    return [r["path"] for r in doc["reports"]]


def normalise_json(text: str) -> str:
    """Drop what changes between runs (inode, mtime, version) for golden files."""
    doc = json.loads(text)
    doc["tool"]["version"] = "<version>"
    for r in doc["reports"]:
        r["identity"] = None
        r["bytes_read"] = 0  # how much the engine reads is its own business
        r["tool_version"] = "<version>"
    return json.dumps(doc, indent=2, ensure_ascii=True) + "\n"


def normalise_sarif(text: str) -> str:
    doc = json.loads(text)
    drv = doc["runs"][0]["tool"]["driver"]
    drv["version"] = drv["semanticVersion"] = "<version>"
    bases = doc["runs"][0]["originalUriBaseIds"]
    assert bases["%SRCROOT%"]["uri"] == Path.cwd().as_uri() + "/"
    bases["%SRCROOT%"]["uri"] = "file:///<cwd>/"
    return json.dumps(doc, indent=2, ensure_ascii=True) + "\n"


# --- exit codes ------------------------------------------------------------------------------

def test_safe_file_exits_0(here: Path) -> None:
    write(here / "ok.safetensors", safetensors_bytes())
    res = run("scan", "ok.safetensors")
    assert res.exit_code == 0, res.output
    assert "1 file scanned: 1 SAFE, 0 UNSAFE, 0 INCOMPLETE" in res.stdout


def test_unsafe_file_exits_1(here: Path) -> None:
    write(here / "evil.pkl", evil_pickle())
    res = run("scan", "evil.pkl")
    assert res.exit_code == 1
    line = res.stdout.splitlines()[0]
    assert line.startswith("UNSAFE ") and "evil.pkl  CKG101 critical at byte " in line


def test_incomplete_exits_2(here: Path) -> None:
    write(here / "empty.bin", b"")
    res = run("scan", "empty.bin")
    assert res.exit_code == 2
    assert "INCOMPLETE" in res.stdout


def test_unsafe_beats_incomplete(here: Path) -> None:
    write(here / "empty.bin", b"")
    write(here / "evil.pkl", evil_pickle())
    assert run("scan", "empty.bin", "evil.pkl").exit_code == 1


def test_missing_path_is_reported_not_fatal(here: Path) -> None:
    write(here / "ok.safetensors", safetensors_bytes())
    code, doc = scan_json("ok.safetensors", "nope.pt")
    assert code == 2
    assert paths(doc) == ["ok.safetensors", "nope.pt"]
    assert doc["reports"][1]["findings"][0]["rule_id"] == "CKG010"


def test_empty_scan_says_so_and_passes(here: Path) -> None:
    """A repository without model files passes (and says so); --fail-on-empty makes a job
    that must scan something fail with 2."""
    (here / "empty_dir").mkdir()
    res = run("scan", "empty_dir")
    assert res.exit_code == 0
    assert "no files to scan: no model files found" in res.stderr
    for i in range(1000):
        write(here / "only_text" / f"n{i}.md", b"# hello\n")
    res = run("scan", "only_text")
    assert res.exit_code == 0
    assert "1000 files skipped" in res.stderr
    assert "no files scanned; 1000 skipped (not model files)" in res.stdout
    assert run("scan", "--fail-on-empty", "only_text").exit_code == 2
    assert run("scan", "--fail-on-empty", "empty_dir").exit_code == 2
    code, doc = scan_json("only_text")
    assert code == 0 and doc["summary"]["files"] == 0 and doc["summary"]["skipped"] == 1000


def test_empty_scan_table() -> None:
    from ckptguard.cli.exitcodes import EMPTY_SCAN, ExitCode, empty_scan_code

    assert EMPTY_SCAN == {False: ExitCode.OK, True: ExitCode.UNDECIDED}
    assert [empty_scan_code(b) for b in (False, True)] == [ExitCode.OK, ExitCode.UNDECIDED]


def test_unreadable_named_file_is_a_ckg010_row(tmp_path: Path) -> None:
    """Not a click usage error: the documented CKG010 row (as root, the scan runs without
    the capabilities that let root read every file)."""
    import shutil
    import subprocess
    import sys
    import tempfile

    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to drop the DAC capabilities")
    folder = Path(tempfile.mkdtemp(prefix="ckg-unreadable-"))
    try:
        folder.chmod(0o755)
        write(folder / "ok.safetensors", safetensors_bytes())
        secret = write(folder / "secret.pt", evil_pickle())
        secret.chmod(0o000)
        (folder / "ok.safetensors").chmod(0o644)
        src = str(ROOT / "src")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m", "ckptguard", "scan", "--format", "json", "secret.pt",
               "ok.safetensors"]
        res = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, check=False,
                             env={**os.environ, "PYTHONPATH": src, "HOME": str(folder)})
        assert res.returncode == 2, res.stderr
        doc = json.loads(res.stdout)
        assert [r["path"] for r in doc["reports"]] == ["secret.pt", "ok.safetensors"]
        assert doc["reports"][0]["verdict"] == "INCOMPLETE"
        assert doc["reports"][0]["findings"][0]["rule_id"] == "CKG010"
        assert doc["reports"][1]["verdict"] == "SAFE"
        assert "Usage" not in res.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_limits_print_as_integers(here: Path) -> None:
    from ckptguard.context import limit_text

    assert [limit_text(v) for v in (2147483648, 2147483648.0, 120.0, 0.5)] == [
        "2147483648", "2147483648", "120", "0.5"]
    write(here / "ok.safetensors", safetensors_bytes())
    res = run("scan", "--format", "json", "ok.safetensors")
    limits = json.loads(res.stdout)["reports"][0]["limits"]
    assert isinstance(limits["max_pickle_bytes"], int) and "e+" not in res.stdout
    # 3,000 distinct strings: 3,000 new objects by the VM's check at the FRAME's end (a
    # list of small ints allocates almost nothing: whether it crossed 5 blocks was luck)
    write(here / "many.pkl", __import__("pickle").dumps([str(i) * 3 for i in range(3000)]))
    res = run("scan", "--limit", "max_objects=5", "many.pkl")
    assert res.exit_code == 2 and "CKG901" in res.stdout, res.output
    assert "limit max_objects=5 reached" in res.stdout


def test_usage_errors_exit_2(here: Path) -> None:
    assert run("scan").exit_code == 2
    assert run("scan", "--format", "xml", ".").exit_code == 2
    assert run("scan", "--fail-on", "low", ".").exit_code == 2
    assert run("scan", "--workers", "0", ".").exit_code == 2
    assert run("scan", "--limit", "bogus=1", ".").exit_code == 2
    assert run("scan", "--limit", "max_objects=abc", ".").exit_code == 2
    assert run("scan", "--limit", "max_objects=-1", ".").exit_code == 2
    assert run("nosuchcommand").exit_code == 2


def test_internal_error_never_exits_0(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(here / "ok.safetensors", safetensors_bytes())

    def boom(*a: object, **k: object) -> object:
        raise RuntimeError("kaboom")

    monkeypatch.setattr("ckptguard.cli.scanfile.scan", boom)
    res = run("scan", "ok.safetensors")
    assert res.exit_code == 2
    assert "kaboom" in res.stdout  # recorded as a CKG902 finding

    monkeypatch.setattr("ckptguard.cli.scan_run.discover", boom)
    res = run("scan", "ok.safetensors")
    assert res.exit_code == 2
    assert "internal error" in res.stderr and "kaboom" in res.stderr


def test_ctrl_c_stops_with_partial_summary(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(4):
        write(here / "m" / f"f{i}.safetensors", safetensors_bytes())
    import ckptguard.cli.runner as runner

    real = runner.scan_one
    calls = []

    def interrupting(*a: object, **k: object) -> object:
        calls.append(a)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "scan_one", interrupting)
    res = run("scan", "m")
    assert res.exit_code == 2
    assert "2 files scanned: 2 SAFE" in res.stdout
    assert "interrupted after 2 of 4 files" in res.stdout
    assert "interrupted" in res.stderr
    code, doc = scan_json("m")  # the next run is complete again
    assert code == 0 and doc["summary"]["interrupted"] is False


# --- --fail-on --------------------------------------------------------------------------------

@pytest.mark.parametrize("files, fail_on, expected", [
    (["ns.pkl"], None, 1),
    (["ns.pkl"], "critical", 0),
    (["ns.pkl"], "high", 0),
    (["ns.pkl"], "medium", 1),
    (["ns.pkl"], "any", 1),
    (["evil.pkl"], "critical", 1),
    (["ok.safetensors"], "any", 0),
    (["empty.bin"], "critical", 2),
    (["empty.bin", "ns.pkl"], "critical", 2),
    (["empty.bin", "evil.pkl"], "critical", 1),
])
def test_fail_on(here: Path, files: list[str], fail_on: str | None, expected: int) -> None:
    write(here / "ns.pkl", namespace_pickle())
    write(here / "evil.pkl", evil_pickle())
    write(here / "empty.bin", b"")
    write(here / "ok.safetensors", safetensors_bytes())
    args = ["scan", *files] + (["--fail-on", fail_on] if fail_on else [])
    assert run(*args).exit_code == expected


# --- folders, exclude, workers, links ----------------------------------------------------------

def test_folder_walk_sorted_by_content(here: Path) -> None:
    model_folder(here / "m")
    write(here / "m" / "disguised.txt", evil_pickle())   # picked by content
    write(here / "m" / "weights.bin", b"ZZZZ not really")  # picked by extension
    code, doc = scan_json("m")
    assert code == 1
    assert paths(doc) == ["m/disguised.txt", "m/empty.bin", "m/safe.safetensors",
                          "m/sub/evil.pkl", "m/weights.bin"]
    assert doc["summary"]["skipped"] == 1
    assert doc["reports"][0]["verdict"] == "UNSAFE"


def test_exclude(here: Path) -> None:
    model_folder(here / "m")
    code, doc = scan_json("m", "--exclude", "*.pkl", "--exclude", "empty.bin")
    assert code == 0
    assert paths(doc) == ["m/safe.safetensors"]
    code, doc = scan_json("m", "--exclude", "sub")
    assert "m/sub/evil.pkl" not in paths(doc)


def test_vcs_folders_skipped(here: Path) -> None:
    write(here / "repo" / ".git" / "objects" / "x.pkl", evil_pickle())
    write(here / "repo" / "ok.safetensors", safetensors_bytes())
    code, doc = scan_json("repo")
    assert code == 0 and paths(doc) == ["repo/ok.safetensors"]


def test_workers_same_output_order(here: Path) -> None:
    for i in range(12):
        data = evil_pickle() if i % 5 == 0 else safetensors_bytes()
        write(here / "m" / f"f{i:02d}.{'pkl' if i % 5 == 0 else 'safetensors'}", data)
    code1, doc1 = scan_json("m")
    code4, doc4 = scan_json("m", "--workers", "4")
    assert code1 == code4 == 1
    assert paths(doc1) == paths(doc4) == sorted(paths(doc1))
    assert [r["verdict"] for r in doc1["reports"]] == [r["verdict"] for r in doc4["reports"]]


def test_symlink_loops_and_special_files(here: Path) -> None:
    m = here / "m"
    write(m / "ok.safetensors", safetensors_bytes())
    (m / "self").symlink_to("self")              # a link loop (ELOOP)
    (m / "a").symlink_to("b")
    (m / "b").symlink_to("a")
    (m / "dirloop").symlink_to(".")              # a directory link: not followed
    (m / "dangling.pt").symlink_to("missing.pt")
    os.mkfifo(m / "fifo.pt")                     # must not block the scan
    code, doc = scan_json("m")
    assert code == 2
    by_path = {r["path"]: r for r in doc["reports"]}
    for name in ("m/self", "m/a", "m/b", "m/dangling.pt", "m/fifo.pt"):
        assert by_path[name]["verdict"] == "INCOMPLETE", name
        assert by_path[name]["findings"][0]["rule_id"] == "CKG010"
    assert by_path["m/ok.safetensors"]["verdict"] == "SAFE"
    assert any("directory link not followed: m/dirloop" in n for n in doc["notes"])


def test_same_file_twice_scanned_once_reported_twice(here: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    write(here / "a.safetensors", safetensors_bytes())
    os.link(here / "a.safetensors", here / "b.safetensors")
    import ckptguard.cli.runner as runner

    real = runner.scan_one
    calls: list[str] = []

    def counting(path: str, *a: object) -> object:
        calls.append(path)
        return real(path, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "scan_one", counting)
    code, doc = scan_json(".")
    assert code == 0
    assert paths(doc) == ["./a.safetensors", "./b.safetensors"]
    assert len(calls) == 1


# --- Hugging Face cache -----------------------------------------------------------------------

def test_hf_cache_layout(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = hf_cache(here / "hub")
    import ckptguard.cli.runner as runner

    real = runner.scan_one
    calls: list[str] = []

    def counting(path: str, *a: object) -> object:
        calls.append(path)
        return real(path, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "scan_one", counting)
    code, doc = scan_json("--hf-cache", str(cache))
    assert code == 1
    assert paths(doc) == [
        "datasets/org/data@r9/data.safetensors",
        "org/name@r1/model.safetensors",
        "org/name@main (r2)/extra/pytorch_model.bin",
        "org/name@main (r2)/model.safetensors",
    ]
    assert len(calls) == 3  # the shared blob once
    by_path = {r["path"]: r for r in doc["reports"]}
    evil = by_path["org/name@main (r2)/extra/pytorch_model.bin"]
    assert evil["verdict"] == "UNSAFE"
    assert evil["findings"][0]["location"]["path"] == "org/name@main (r2)/extra/pytorch_model.bin"
    assert evil["metadata"]["hf_cache.refs"] == "main"
    assert evil["metadata"]["hf_cache.file"] == "models--org--name/snapshots/r2/extra/pytorch_model.bin"
    assert evil["metadata"]["hf_cache.blob"] == "2" * 40
    assert by_path["org/name@r1/model.safetensors"]["metadata"]["hf_cache.revision"] == "r1"
    assert by_path["org/name@main (r2)/model.safetensors"]["metadata"]["hf_cache.revision"] == "r2"
    assert doc["summary"]["skipped"] == 2  # config.json in r1 and r2: one blob, two names
    assert any("partial download not scanned" in n for n in doc["notes"])


def sharded_snapshot(cache: Path, repo: str = "models--org--sharded",
                     rev: str = "0123456789abcdef0123456789abcdef01234567",
                     index: bytes | None = None, refs: dict[str, str] | None = None) -> None:
    """A two-shard safetensors checkpoint with its index, as the hub cache stores it."""
    root = cache / repo
    snap = root / "snapshots" / rev
    snap.mkdir(parents=True)
    for ref, target in (refs if refs is not None else {"main": rev}).items():
        write(root / "refs" / ref, target.encode())
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    files = {
        "model-00001-of-00002.safetensors": safetensors_bytes({"a": ("F32", [1], b"\0" * 4)}),
        "model-00002-of-00002.safetensors": safetensors_bytes({"b": ("F32", [1], b"\0" * 4)}),
        "model.safetensors.index.json": index if index is not None else json.dumps(
            {"metadata": {}, "weight_map": weight_map}).encode(),
    }
    for i, (name, data) in enumerate(sorted(files.items())):
        write(root / "blobs" / f"{rev[:8]}{i}", data)
        (snap / name).symlink_to(Path("..") / ".." / "blobs" / f"{rev[:8]}{i}")


def test_hf_cache_refs_and_shards_listed_once(here: Path) -> None:
    cache = here / "hub"
    sharded_snapshot(cache, refs={"main": "0123456789abcdef0123456789abcdef01234567",
                                  "pr/7": "0123456789abcdef0123456789abcdef01234567"})
    sharded_snapshot(cache, repo="models--org--old", rev="f" * 40, refs={})
    code, doc = scan_json("--hf-cache", str(cache))
    assert code == 0
    base = "org/sharded@main (0123456)/"
    assert paths(doc) == ["org/old@fffffff/model.safetensors.index.json",
                          base + "model.safetensors.index.json"]
    index = doc["reports"][1]
    assert [c["path"] for c in index["children"]] == [
        base + "model-00001-of-00002.safetensors", base + "model-00002-of-00002.safetensors"]
    assert index["metadata"]["hf_cache.refs"] == "main,pr/7"
    # listed and counted once: 2 indexes + 4 shards
    assert doc["summary"]["files"] == doc["summary"]["planned"] == 6
    assert str(cache) not in json.dumps(doc["reports"])  # no absolute snapshot path
    text = run("scan", "--hf-cache", str(cache)).stdout
    assert text.count("model-00001-of-00002.safetensors") == 2  # once per revision
    assert "6 files scanned: 6 SAFE" in text


def test_shards_of_a_broken_index_are_still_scanned(here: Path) -> None:
    """An index that cannot be read covers nothing: its shards are reported on their own."""
    sharded_snapshot(here / "hub", index=b'{"weight_map": {"a": "model-00001-of-00002.safetensors",')
    code, doc = scan_json("--hf-cache", str(here / "hub"))
    assert [p.rsplit("/", 1)[1] for p in paths(doc)] == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json"]
    assert [r["verdict"] for r in doc["reports"]] == ["SAFE", "SAFE", "UNSAFE"]
    assert doc["reports"][2]["findings"][0]["rule_id"] == "CKG701"
    assert doc["reports"][2]["children"] == []
    assert code == 1


def test_shards_in_a_folder_listed_under_their_index(here: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    sharded_snapshot(here / "hub")
    folder = here / "plain"
    snap = next((here / "hub").glob("*/snapshots/*"))
    folder.mkdir()
    for f in snap.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    write(folder / "model-00003-of-00002.safetensors", evil_pickle())  # not in the index
    import ckptguard.cli.runner as runner

    real = runner.scan_one
    calls: list[str] = []

    def counting(path: str, *a: object) -> object:
        calls.append(os.path.basename(path))
        return real(path, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "scan_one", counting)
    for workers in ("1", "2"):
        calls.clear()
        code, doc = scan_json("plain", "--workers", workers)
        assert code == 1
        assert paths(doc) == ["plain/model-00003-of-00002.safetensors",
                              "plain/model.safetensors.index.json"]
        assert [c["path"] for c in doc["reports"][1]["children"]] == [
            "plain/model-00001-of-00002.safetensors", "plain/model-00002-of-00002.safetensors"]
        assert doc["summary"]["files"] == 4
        if workers == "1":  # (workers run in other processes: not counted)
            assert sorted(calls) == ["model-00003-of-00002.safetensors",
                                     "model.safetensors.index.json"]


def test_hf_cache_default_location(here: Path) -> None:
    cache = hf_cache(here / "custom")
    res = run("scan", "--hf-cache", "--format", "json", env={"HF_HUB_CACHE": str(cache)})
    assert res.exit_code == 1 and len(json.loads(res.stdout)["reports"]) == 4
    home = here / "hfhome"
    hf_cache(home / "hub")
    res = run("scan", "--hf-cache", "--format", "json", env={"HF_HOME": str(home)})
    assert res.exit_code == 1 and len(json.loads(res.stdout)["reports"]) == 4
    res = run("scan", "--hf-cache", env={"HF_HUB_CACHE": str(here / "missing")})
    assert res.exit_code == 2 and "cache not found" in res.stderr


def test_hf_cache_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert repo_display("models--org--name") == "org/name"
    assert repo_display("models--gpt2") == "gpt2"
    assert repo_display("datasets--o--d") == "datasets/o/d"
    assert repo_display(".locks") is None
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert default_hf_cache() == os.path.expanduser("~/.cache/huggingface/hub")
    monkeypatch.setenv("XDG_CACHE_HOME", "/x")
    assert default_hf_cache() == "/x/huggingface/hub"
    monkeypatch.setenv("HF_HOME", "/h")
    assert default_hf_cache() == "/h/hub"
    monkeypatch.setenv("HF_HUB_CACHE", "/c")
    assert default_hf_cache() == "/c"


# --- policy -----------------------------------------------------------------------------------

POLICY = """
[tool.ckptguard]
allow = [{ global = "argparse.Namespace", reason = "hparams saved by our trainer" }]
"""


def test_policy_file(here: Path) -> None:
    write(here / "ns.pkl", namespace_pickle())
    (here / "policy.toml").write_text(POLICY)
    assert run("scan", "ns.pkl").exit_code == 1
    res = run("scan", "ns.pkl", "--policy", "policy.toml", "-v")
    assert res.exit_code == 0, res.output
    assert "hparams saved by our trainer" in res.stdout
    code, doc = scan_json("ns.pkl", "--policy", "policy.toml")
    assert code == 0
    assert doc["policy"] == [{"global": "argparse.Namespace",
                              "reason": "hparams saved by our trainer",
                              "source": "file:policy.toml"}]
    assert doc["policy_source"] == {"origin": {"kind": "file", "location": "policy.toml"},
                                    "profiles": []}


def test_pyproject_policy_only_with_discovery_opt_in(here: Path) -> None:
    write(here / "ns.pkl", namespace_pickle())
    (here / "pyproject.toml").write_text("[project]\nname = 'x'\n" + POLICY)
    code, doc = scan_json("ns.pkl")  # never picked up on its own
    assert code == 1 and "CKG102" in {f["rule_id"] for f in doc["reports"][0]["findings"]}
    assert doc["policy_source"]["origin"] == {"kind": "default", "location": None}
    code, doc = scan_json("ns.pkl", "--discover-policy")
    assert code == 0
    assert doc["policy_source"]["origin"] == {"kind": "discovered",
                                              "location": str(here / "pyproject.toml")}


def test_policy_errors_exit_2(here: Path) -> None:
    write(here / "ns.pkl", namespace_pickle())
    (here / "bad.toml").write_text('allow = [{ global = "os.system", reason = "no" }]\n')
    res = run("scan", "ns.pkl", "--policy", "bad.toml")
    assert res.exit_code == 2 and "invalid policy" in res.stderr
    (here / "noreason.toml").write_text('allow = [{ global = "argparse.Namespace" }]\n')
    assert run("scan", "ns.pkl", "--policy", "noreason.toml").exit_code == 2
    assert run("scan", "ns.pkl", "--policy", "missing.toml").exit_code == 2


def test_limit_option(here: Path) -> None:
    write(here / "evil.pkl", evil_pickle())
    assert run("scan", "evil.pkl", "--limit", "max_seconds=60").exit_code == 1


# --- formats and output -----------------------------------------------------------------------

def test_output_file(here: Path) -> None:
    write(here / "ok.safetensors", safetensors_bytes())
    res = run("scan", "ok.safetensors", "--format", "sarif", "--output", "out.sarif")
    assert res.exit_code == 0
    assert res.stdout == ""
    assert "1 file scanned" in res.stderr
    doc = json.loads((here / "out.sarif").read_text())
    jsonschema.Draft202012Validator(SARIF_SCHEMA).validate(doc)
    res = run("scan", "ok.safetensors", "--output", str(here / "nodir" / "x.txt"))
    assert res.exit_code == 2 and "cannot write" in res.stderr


def test_no_colour_without_tty(here: Path) -> None:
    write(here / "evil.pkl", evil_pickle())
    res = run("scan", "evil.pkl")
    assert "\x1b" not in res.output


def test_progress_flag_without_tty_is_harmless(here: Path) -> None:
    write(here / "ok.safetensors", safetensors_bytes())
    res = run("scan", "ok.safetensors", "--no-progress")
    assert res.exit_code == 0 and res.stderr == ""


def _golden_folder(here: Path) -> None:
    write(here / "m" / "a.safetensors", safetensors_bytes(metadata={"format": "pt"}))
    write(here / "m" / "empty.bin", b"")
    write(here / "m" / "unknown.bin", b"ZZZZ this is not a checkpoint\n")
    write(here / "m" / "notes.txt", b"ZZZ skipped\n")


@pytest.mark.parametrize("fmt, suffix", [("text", "txt"), ("json", "json"), ("sarif", "sarif")])
def test_cli_golden(here: Path, fmt: str, suffix: str) -> None:
    _golden_folder(here)
    res = run("scan", "m", "--format", fmt)
    assert res.exit_code == 2
    out = res.stdout
    if fmt == "json":
        jsonschema.Draft202012Validator(JSON_SCHEMA).validate(json.loads(out))
        out = normalise_json(out)
    elif fmt == "sarif":
        jsonschema.Draft202012Validator(SARIF_SCHEMA).validate(json.loads(out))
        out = normalise_sarif(out)
    check_golden(f"cli-scan.{suffix}", out)


# --- hostile names ----------------------------------------------------------------------------

HOSTILE_NAMES = [
    "esc\x1b[31mred\x1b[0m.pkl",
    "new\nline.pkl",
    "cr\rreturn\x07bell.pkl",
    "rtl\u202elkp.pt",
    "long-" + "x" * 240 + ".pkl",
]


@pytest.mark.parametrize("fmt", ["text", "json", "sarif"])
def test_hostile_names_escaped_everywhere(here: Path, fmt: str) -> None:
    for name in HOSTILE_NAMES:
        write(here / "h" / name, evil_pickle())
    res = run("scan", "h", "--format", fmt, "-v")
    assert res.exit_code == 1
    out = res.output
    for bad in ("\x1b", "\r", "\x07", "\u202e"):
        assert bad not in out, (fmt, repr(bad))
    if fmt == "text":
        assert "esc\\x1b[31mred" in out and "new\\x0aline" in out and "rtl\\u202elkp" in out
        assert "new\nline" not in out  # no raw newline from a name
        # not a terminal: the whole path on one line with its verdict, never wrapped
        long_line = next(ln for ln in res.stdout.splitlines() if "x" * 240 in ln)
        assert long_line.startswith("UNSAFE ") and "h/long-" + "x" * 240 + ".pkl  CKG101" in long_line
    else:
        doc = json.loads(res.stdout)
        if fmt == "json":
            assert sorted(paths(doc)) == sorted("h/" + n for n in HOSTILE_NAMES)
        else:
            jsonschema.Draft202012Validator(SARIF_SCHEMA).validate(doc)
            uris = {a["location"]["uri"] for a in doc["runs"][0]["artifacts"]}
            assert "h/new%0Aline.pkl" in uris
            # a message is for display (viewers print it): decoded, it holds no control
            texts = [x["message"]["text"] for x in doc["runs"][0]["results"]]
            assert any("esc\\x1b[31mred" in t for t in texts)
            for t in texts:
                for bad in ("\x1b", "\r", "\n", "\x07", "\u202e"):
                    assert bad not in t, (t, repr(bad))


def test_undecodable_file_name(here: Path) -> None:
    raw = os.fsencode(str(here / "h")) + b"/bad\xff\xfename.pkl"
    os.makedirs(here / "h")
    with open(raw, "wb") as fh:
        fh.write(evil_pickle())
    for fmt in ("text", "json", "sarif"):
        res = run("scan", "h", "--format", fmt)
        assert res.exit_code == 1
        assert "\\udcff" in res.output or "%FF" in res.output


def test_version() -> None:
    res = run("--version")
    assert res.exit_code == 0 and ckptguard.__version__ in res.stdout


def test_skip_non_models_for_hooks(here: Path) -> None:
    write(here / "README.md", b"# hi\n")
    write(here / "disguised.png", evil_pickle())
    assert run("scan", "README.md").exit_code == 2           # named: always scanned
    res = run("scan", "--skip-non-models", "README.md")
    assert res.exit_code == 0 and "no files to scan" in res.stderr
    assert run("scan", "--skip-non-models", "--fail-on-empty", "README.md").exit_code == 2
    assert run("scan", "--skip-non-models", "README.md", "disguised.png").exit_code == 1


def test_pre_commit_hook_definition() -> None:
    text = (ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8")
    assert "- id: ckptguard" in text
    assert "  require_serial: true" in text.splitlines()  # one run per commit: one table
    entry = next(ln.split(":", 1)[1].strip() for ln in text.splitlines()
                 if ln.strip().startswith("entry:"))
    args = entry.split()
    assert args[:2] == ["ckptguard", "scan"]
    from ckptguard.cli.scan_cmd import scan_command

    known = {opt for p in scan_command.params for opt in getattr(p, "opts", [])}
    assert all(a in known for a in args[2:] if a.startswith("-"))


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = next(ln for ln in readme.splitlines()
                   if ln.startswith("python3 -m pip install -c constraints/test.txt"))
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if ln.strip() and not ln.lstrip().startswith("#")]
    assert ci[-1] == command
    assert "python3 -m venv" in readme and "download.pytorch.org/whl/cpu" in readme


def test_ctrl_c_while_parsing_arguments_exits_2(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """click alone would print 'Aborted!' and exit 1 ('findings'). (``--workers 1``: an
    option makes main() parse with click; ``scan PATH`` alone skips it, cli/plain.py.)"""
    from ckptguard.cli import cli as group
    from ckptguard.cli import main

    def interrupted(*a: object, **k: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(group, "make_context", interrupted)
    monkeypatch.setattr("sys.argv", ["ckptguard", "scan", "--workers", "1", "."])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    assert "interrupted" in capsys.readouterr().err


def test_ctrl_c_while_looking_for_files(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*a: object, **k: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr("ckptguard.cli.scan_run.discover", interrupted)
    res = run("scan", "--format", "json", ".")
    assert res.exit_code == 2
    summary = json.loads(res.stdout)["summary"]
    assert summary["interrupted"] is True and summary["files"] == 0
    assert "interrupted while looking for files" in res.stderr
