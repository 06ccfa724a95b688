"""``ckptguard scan PATH... [--format F]`` without click (cli/plain.py): the argument lists
it takes (and all it leaves to click), and the same output and exit code as the click
group for every fixture, each format, the empty and unreadable cases, and an interrupt or
an internal error while looking for files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from cli_helpers import evil_pickle, safetensors_bytes, write

import ckptguard.cli.plain as plain
from ckptguard.cli import main
from ckptguard.report import ReportFormat

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"


# --- what the plain lane takes: a table, both directions -------------------------------------

TAKEN = [
    (["scan", "a"], (("a",), "text")),
    (["scan", "a", "b"], (("a", "b"), "text")),
    (["scan", "a", "--format", "json"], (("a",), "json")),
    (["scan", "--format", "sarif", "a"], (("a",), "sarif")),
    (["scan", "--format=text", "a", "b"], (("a", "b"), "text")),
    (["scan", "a", "--format=json", "b"], (("a", "b"), "json")),
    (["scan", ""], (("",), "text")),  # click passes an empty PATH on too
    (["scan", "scan"], (("scan",), "text")),
    (["scan", "x-y", "a=b", "\udcff"], (("x-y", "a=b", "\udcff"), "text")),
]

LEFT_TO_CLICK = [
    [], ["scan"], ["inspect", "a"], ["explain", "a"], ["--version"], ["-h"], ["Scan", "a"],
    ["scan", "--help"], ["scan", "-h", "a"], ["scan", "--format", "json"],  # no path
    ["scan", "a", "--format"], ["scan", "a", "--format", "JSON"], ["scan", "a", "--format="],
    ["scan", "a", "--format", "xml"], ["scan", "a", "--format", "json", "--format", "json"],
    ["scan", "a", "--format=json", "--format=text"], ["scan", "a", "--forma", "json"],
    ["scan", "a", "--format-json"], ["scan", "a", "-o", "out.json"], ["scan", "-", "a"],
    ["scan", "--", "a"], ["scan", "a", "-v"], ["scan", "a", "--no-progress"],
    ["scan", "-1"], ["scan", "a", "--workers", "2"], ["scan", "a", "--policy", "p.toml"],
    ["scan", "a", "--limit", "max_seconds=1"], ["scan", "--hf-cache"],
    ["scan", "a", "--from-file", "l"], ["scan", "a", "--fail-on", "high"],
]


@pytest.mark.parametrize(("argv", "want"), TAKEN)
def test_plain_lane_takes_paths_and_one_format(argv: list[str],
                                               want: tuple[tuple[str, ...], str]) -> None:
    assert plain.plain_scan(argv) == want


@pytest.mark.parametrize("argv", LEFT_TO_CLICK)
def test_plain_lane_leaves_everything_else_to_click(argv: list[str]) -> None:
    assert plain.plain_scan(argv) is None


def test_plain_lane_formats_are_the_report_formats() -> None:
    for fmt in ReportFormat:
        assert plain.plain_scan(["scan", "a", "--format", fmt.value]) == (("a",), fmt.value)


def test_a_shell_completion_request_goes_to_click(monkeypatch: pytest.MonkeyPatch) -> None:
    assert plain.plain_scan(["scan", "a"]) is not None
    monkeypatch.setenv(plain.COMPLETE_VAR, "bash_complete")
    assert plain.plain_scan(["scan", "a"]) is None


# --- the same output and exit code as the click group ----------------------------------------

def _run_main(argv: list[str], capfd: pytest.CaptureFixture[str],
              monkeypatch: pytest.MonkeyPatch, *, lane: str) -> tuple[object, str, str]:
    """``main()`` with ``argv``: the plain lane when it takes it, or click when forced."""
    assert plain.plain_scan(argv) is not None  # every case here is a plain one
    with monkeypatch.context() as m:
        m.setattr(sys, "argv", ["ckptguard", *argv])
        if lane == "click":
            m.setattr(plain, "plain_scan", lambda _argv: None)
        capfd.readouterr()
        with pytest.raises(SystemExit) as exc:
            main()
        out, err = capfd.readouterr()
    return exc.value.code, out, err


def _both(argv: list[str], capfd: pytest.CaptureFixture[str],
          monkeypatch: pytest.MonkeyPatch) -> tuple[object, str, str]:
    fast = _run_main(argv, capfd, monkeypatch, lane="plain")
    slow = _run_main(argv, capfd, monkeypatch, lane="click")
    assert fast == slow
    return fast


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [None, *(f.value for f in ReportFormat)])
def test_fixture_folders_same_output_both_lanes(fmt: str | None, capfd: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # the lanes differ only in how argv is parsed: every format on the folder with findings
    # of every severity, JSON (the richest) on the SAFE and MEDIUM folders too
    monkeypatch.chdir(ROOT)
    folders = ("benign", "medium", "hostile") if fmt == "json" else ("hostile",)
    for folder in folders:
        argv = ["scan", f"fixtures/{folder}", *(["--format", fmt] if fmt else [])]
        code, out, _ = _both(argv, capfd, monkeypatch)
        assert code in (0, 1, 2) and out
        if folder == "hostile":
            assert code == 1


@pytest.mark.parametrize("fmt", [f.value for f in ReportFormat])
def test_files_missing_and_empty_same_output_both_lanes(
        fmt: str, tmp_path: Path, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "ok.safetensors", safetensors_bytes())
    write(tmp_path / "evil.pkl", evil_pickle())
    write(tmp_path / "notes.txt", b"hello")
    (tmp_path / "empty").mkdir()
    cases = {
        ("ok.safetensors",): 0,
        ("evil.pkl",): 1,
        ("ok.safetensors", "evil.pkl"): 1,
        ("missing.pt",): 2,
        ("notes.txt",): 1,  # named on the command line: scanned (unknown format)
        ("empty",): 0,
        (".",): 1,
    }
    for paths, want in cases.items():
        code, out, err = _both(["scan", *paths, f"--format={fmt}"], capfd, monkeypatch)
        assert code == want, (paths, out, err)


@pytest.mark.parametrize("raised", [KeyboardInterrupt, RuntimeError])
def test_errors_while_looking_for_files_same_both_lanes(
        raised: type[BaseException], tmp_path: Path, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C (the summary says interrupted, exit 2) and an internal error (exit 2 and the
    message on stderr), as the click group reports them."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "ok.safetensors", safetensors_bytes())

    def boom(*a: object, **k: object) -> object:
        raise raised("kaboom")

    monkeypatch.setattr("ckptguard.cli.scan_run.discover", boom)
    code, out, err = _both(["scan", "ok.safetensors", "--format", "json"], capfd, monkeypatch)
    assert code == 2
    if raised is RuntimeError:
        assert "error: internal error: RuntimeError: kaboom" in err
    else:
        assert '"interrupted":true' in out.replace(" ", "") and "interrupted" in err


def test_a_ctrl_c_in_the_scan_exits_2_in_both_lanes(
        tmp_path: Path, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt that escapes the scan body (here: while writing the report's
    summary line) is "interrupted", exit 2, in both lanes (GuardedGroup / run_plain)."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "ok.safetensors", safetensors_bytes())
    calls: list[int] = []

    def interrupted(*a: object, **k: object) -> int:
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr("ckptguard.cli.scan_run.exit_code", interrupted)
    code, _, err = _both(["scan", "ok.safetensors"], capfd, monkeypatch)
    assert code == 2 and err.endswith("interrupted\n") and len(calls) == 2


def test_the_plain_lane_never_imports_click(tmp_path: Path) -> None:
    import subprocess

    write(tmp_path / "ok.safetensors", safetensors_bytes())
    probe = ("import sys; sys.argv = ['ckptguard', *sys.argv[1:]]\n"
             "from ckptguard.cli import main\n"
             "try:\n    main()\nexcept SystemExit as e:\n"
             "    print(e.code, 'click' in sys.modules, file=sys.stderr)\n")
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    got: dict[str, str] = {}
    for lane, extra in (("plain", []), ("click", ["--no-progress"])):
        out = subprocess.run([sys.executable, "-c", probe, "scan", str(tmp_path), *extra],
                             capture_output=True, text=True, check=False, env=env)
        got[lane] = out.stderr.strip().splitlines()[-1]
    assert got == {"plain": "0 False", "click": "0 True"}


def test_the_policy_from_the_environment_applies_in_both_lanes(
        tmp_path: Path, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """$CKPTGUARD_POLICY is read by the command's body, not by click: a plain scan honours
    it (and reports where it came from) exactly as the click group does."""
    import json
    import pickle
    from argparse import Namespace

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ns.pkl").write_bytes(pickle.dumps(Namespace(a=1), protocol=2))
    pol = tmp_path / "p.toml"
    pol.write_text('allow = [{ global = "argparse.Namespace", reason = "hp" }]\n')
    monkeypatch.delenv("CKPTGUARD_POLICY", raising=False)
    code, _, _ = _both(["scan", "ns.pkl"], capfd, monkeypatch)
    assert code == 1  # not on the weights-only allowlist without the policy
    monkeypatch.setenv("CKPTGUARD_POLICY", str(pol))
    code, out, _ = _both(["scan", "ns.pkl", "--format", "json"], capfd, monkeypatch)
    assert code == 0
    assert json.loads(out)["policy_source"]["origin"] == {
        "kind": "environment", "location": f"CKPTGUARD_POLICY={pol}"}
