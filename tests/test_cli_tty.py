"""A real terminal: the progress bar appears on a TTY (tmux), and the final table is clean.

Skipped when tmux is not installed.
"""

from __future__ import annotations

import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def _tmux(*args: str) -> str:
    """tmux ARGS on the session's own server (``-L`` its name): the default server is shared
    with every other tmux user of the machine, and one that exits as its last session is
    killed makes a concurrent ``new-session`` fail."""
    session = args[args.index("-s" if "-s" in args else "-t") + 1]
    return subprocess.run(["tmux", "-L", session, *args], check=True, capture_output=True,
                          text=True).stdout


def _kill(session: str) -> None:
    subprocess.run(["tmux", "-L", session, "kill-server"], capture_output=True, check=False)
    sockets = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
    (sockets / session).unlink(missing_ok=True)


def _scan_in_tmux(tmp_path: Path, files: int, *args: str) -> tuple[str, Path]:
    """Start ``ckptguard scan ARGS <folder of FILES pickles>`` in a real terminal (a tmux
    session); return the session name and the file the exit status is written to."""
    folder = tmp_path / "models"
    folder.mkdir()
    # pickles with many opcodes: slow enough to scan (tens of ms each) to see the bar
    payload = pickle.dumps([list(range(1000)) for _ in range(200)], protocol=4)
    for i in range(files):
        (folder / f"f{i:03d}.pkl").write_bytes(payload)
    done = tmp_path / "done"
    session = f"ckg-{uuid.uuid4().hex[:8]}"
    cmd = (f"{shlex.quote(sys.executable)} -m ckptguard.cli scan "
           f"{' '.join(shlex.quote(a) for a in args)} {shlex.quote(str(folder))}; "
           f"echo EXIT=$? > {shlex.quote(str(done))}; sleep 30")
    env_prefix = "env -u NO_COLOR -u COLUMNS -u LINES TERM=xterm-256color "
    _tmux("new-session", "-d", "-s", session, "-x", "200", "-y", "50",
          env_prefix + "bash -c " + shlex.quote(cmd))
    _tmux("set-option", "-t", session, "remain-on-exit", "on")
    return session, done


@pytest.mark.slow
def test_progress_bar_in_terminal(tmp_path: Path) -> None:
    session, done = _scan_in_tmux(tmp_path, 60)
    try:
        seen_bar = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not done.exists():
            screen = _tmux("capture-pane", "-p", "-t", session)
            if "scanning" in screen and "files" in screen and "/60" in screen:
                seen_bar = screen
                break
            time.sleep(0.05)
        assert seen_bar, "no progress bar seen while scanning"
        line = next(ln for ln in seen_bar.splitlines() if "scanning" in ln)
        assert re.search(r"\d+/60 files", line), line          # files done / total
        assert re.search(r"B/[\d.]+ [kMG]?B", line), line       # bytes done / total
        while time.monotonic() < deadline and not done.exists():
            time.sleep(0.1)
        assert done.read_text().strip() == "EXIT=0"
        final = _tmux("capture-pane", "-p", "-t", session, "-S", "-100")
        assert "60 files scanned: 60 SAFE" in final
        assert "scanning" not in final.split("60 files scanned")[-1]
    finally:
        _kill(session)


def test_no_progress_when_not_a_tty(tmp_path: Path) -> None:
    (tmp_path / "a.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    res = subprocess.run([sys.executable, "-m", "ckptguard.cli", "scan", str(tmp_path)],
                         capture_output=True, text=True, env={**os.environ, "NO_COLOR": ""},
                         check=False)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert "\x1b" not in res.stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_in_terminal(tmp_path: Path, workers: str) -> None:
    session, done = _scan_in_tmux(tmp_path, 200, "--workers", workers)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            screen = _tmux("capture-pane", "-p", "-t", session)
            if re.search(r"[1-9]\d*/200 files", screen):
                break
            time.sleep(0.05)
        _tmux("send-keys", "-t", session, "C-c")
        while time.monotonic() < deadline and not done.exists():
            time.sleep(0.1)
        final = _tmux("capture-pane", "-p", "-t", session, "-S", "-300")
        assert done.exists(), final
        assert done.read_text().strip() == "EXIT=2", final
        assert "interrupted after" in final
        assert "Traceback" not in final
    finally:
        _kill(session)


def _run_in_terminal(tmp_path: Path, width: int, *args: str, colour: bool = True) -> str:
    """``ckptguard scan ARGS`` in a WIDTH-column tmux terminal; the final screen (with the
    ANSI colours when ``colour``), once the command has finished."""
    session = f"ckg-{uuid.uuid4().hex[:8]}"
    done = tmp_path / f"done-{session}"
    cmd = (f"cd {shlex.quote(str(tmp_path))}; {shlex.quote(sys.executable)} -m ckptguard.cli "
           f"scan {' '.join(shlex.quote(a) for a in args)}; touch {shlex.quote(str(done))}; "
           "sleep 30")
    env = "env -u NO_COLOR -u COLUMNS -u LINES TERM=xterm-256color "
    _tmux("new-session", "-d", "-s", session, "-x", str(width), "-y", "60",
          env + "bash --norc -c " + shlex.quote(cmd))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not done.exists():
            time.sleep(0.05)
        assert done.exists()
        time.sleep(0.2)
        return _tmux("capture-pane", "-p", *(["-e"] if colour else []), "-t", session)
    finally:
        _kill(session)


def _layout_folder(tmp_path: Path) -> None:
    import json

    from cli_helpers import evil_pickle, namespace_pickle, safetensors_bytes, write

    m = tmp_path / "models"
    write(m / "a" / "model.safetensors", safetensors_bytes())
    write(m / "a" / "pytorch_model.bin", evil_pickle())
    write(m / "runs" / ("run-" + "x" * 30) / "checkpoint.ckpt", namespace_pickle())
    shards = {"w1": "model-00001-of-00002.safetensors", "w2": "model-00002-of-00002.safetensors"}
    for name, shard in shards.items():
        write(m / "big" / shard, safetensors_bytes({name: ("F32", [1], b"\0" * 4)}))
    write(m / "big" / "model.safetensors.index.json",
          json.dumps({"weight_map": shards}).encode())


@pytest.mark.parametrize("width", [80, 200])
def test_terminal_layout_at_80_and_200_columns(tmp_path: Path, width: int) -> None:
    _layout_folder(tmp_path)
    screen = _run_in_terminal(tmp_path, width, "models", colour=False)
    lines = [ln.rstrip() for ln in screen.splitlines() if ln.strip()]
    assert all(len(ln) <= width for ln in lines)
    assert "6 files scanned: 4 SAFE, 2 UNSAFE, 0 INCOMPLETE" in screen
    # the path once; the finding under it, at the file column, with the place in the file
    assert screen.count("models/a/pytorch_model.bin") == 1
    i = next(k for k, ln in enumerate(lines) if ln.endswith("models/a/pytorch_model.bin"))
    assert lines[i].startswith("UNSAFE ")
    assert re.match(r" {26}CKG101 critical at byte \d+: ", lines[i + 1]), lines[i + 1]
    # shards under their index, by name
    assert sum("└ model-0000" in ln for ln in lines) == 2
    long_name = "run-" + "x" * 30
    if width == 200:   # everything fits: one line for the file, one for its finding
        j = next(k for k, ln in enumerate(lines) if long_name in ln)
        assert lines[j].endswith(f"models/runs/{long_name}/checkpoint.ckpt")
        assert lines[j + 1].lstrip().startswith("CKG102 medium") and "(+" in lines[j + 1]
    else:              # 80 columns: the long path breaks after a '/', the finding wraps
        j = next(k for k, ln in enumerate(lines) if ln.endswith(f"{long_name}/"))
        assert lines[j + 1].strip() == "checkpoint.ckpt"
        assert lines[j + 2].strip().startswith("CKG102 medium")
    coloured = _run_in_terminal(tmp_path, width, "models")
    assert "\x1b[" in coloured  # colours in a terminal


def test_piped_output_is_one_line_per_file(tmp_path: Path) -> None:
    """The same folder through a pipe: one unwrapped line per file, whole paths, no colour."""
    _layout_folder(tmp_path)
    res = subprocess.run([sys.executable, "-m", "ckptguard.cli", "scan", "models"],
                         cwd=tmp_path, capture_output=True, text=True, check=False,
                         env={**os.environ, "COLUMNS": "40"})
    lines = res.stdout.splitlines()
    assert len(lines) == 8 and "\x1b" not in res.stdout  # 6 files, policy line, summary
    grep = [ln for ln in lines if "UNSAFE" in ln.split()[:1]]
    assert [ln.split()[2] for ln in grep] == ["models/a/pytorch_model.bin",
                                             f"models/runs/run-{'x' * 30}/checkpoint.ckpt"]
