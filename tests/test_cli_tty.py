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
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


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
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, check=False)


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
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, check=False)
