"""``ckptguard scan`` under signals and faults, with real processes: Ctrl-C (SIGINT to the
process group, as a terminal sends it) while scanning with 1 and 2 workers and while the
report is being written, SIGTERM and SIGKILL to the parent (no worker may outlive it), a
worker killed mid-scan, and ``-o`` on a full disk (a small tmpfs when this runs as root and
may mount, and a file-size limit, RLIMIT_FSIZE, everywhere)."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import safetensors_bytes, write

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_COLOR": "1"}
# a pickle of ~200k opcodes: tens of milliseconds to audit, so a scan of a few hundred takes
# seconds and a signal lands in the middle of it
SLOW = pickle.dumps([list(range(1000)) for _ in range(200)], protocol=4)


def slow_folder(root: Path, n: int) -> Path:
    for i in range(n):
        write(root / "slow" / f"f{i:04d}.pkl", SLOW)
    return root / "slow"


def start(*args: str, cwd: Path, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ckptguard", "scan", *args], cwd=cwd,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **kw)  # type: ignore[call-overload]


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone: it runs nothing)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next(ln for ln in status.splitlines() if ln.startswith("State:"))
    return "Z" not in state.split()[1]


def wait_for(cond: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def started_scanning(proc: subprocess.Popen[str], workers: int) -> bool:
    """Workers started (parallel) or the first files audited (sequential)."""
    if workers > 1:
        return wait_for(lambda: len(children(proc.pid)) >= workers)
    return wait_for(lambda: _cpu_seconds(proc.pid) > 0.6)


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_while_scanning_ends_fast_with_a_partial_report(tmp_path: Path,
                                                               workers: int) -> None:
    folder = slow_folder(tmp_path, 400)
    proc = start(str(folder), "--workers", str(workers), "--format", "json", cwd=tmp_path)
    assert started_scanning(proc, workers)
    time.sleep(1.0)
    pool = children(proc.pid)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole process group
    out, err = proc.communicate(timeout=30)
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0, elapsed
    assert proc.returncode == 2, err
    doc = json.loads(out)
    s = doc["summary"]
    assert s["interrupted"] is True and 0 < s["files"] < s["planned"] == 400
    assert s["safe"] == s["files"] == len(doc["reports"])
    assert "interrupted after" in err and "Traceback" not in err
    assert not any(alive(p) for p in pool)


def test_sigterm_to_the_parent_leaves_no_worker(tmp_path: Path) -> None:
    folder = slow_folder(tmp_path, 400)
    proc = start(str(folder), "--workers", "2", "--format", "json", cwd=tmp_path)
    assert started_scanning(proc, 2)
    pool = children(proc.pid)
    assert len(pool) == 2
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGTERM)  # the parent only
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert json.loads(out)["summary"]["interrupted"] is True
    assert wait_for(lambda: not any(alive(p) for p in pool), 2.0), pool


def test_sigkill_to_the_parent_kills_the_workers(tmp_path: Path) -> None:
    folder = slow_folder(tmp_path, 400)
    proc = start(str(folder), "--workers", "2", cwd=tmp_path)
    assert started_scanning(proc, 2)
    pool = children(proc.pid)
    assert len(pool) == 2 and all(alive(p) for p in pool)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # PR_SET_PDEATHSIG: the kernel kills each worker when its parent dies
    assert wait_for(lambda: not any(alive(p) for p in pool), 2.0), pool


@pytest.mark.slow
def test_a_worker_killed_mid_scan_is_reported_not_lost(tmp_path: Path) -> None:
    n = 60  # ~0.05 s a file: the kill (0.3 s after both workers started) lands mid-scan
    folder = slow_folder(tmp_path, n)
    proc = start(str(folder), "--workers", "2", "--format", "json", cwd=tmp_path)
    assert started_scanning(proc, 2)
    time.sleep(0.3)
    victim = children(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    doc = json.loads(out)
    # every file is reported: the files of the dead worker's chunk are scanned again one per
    # chunk; only a death with a single file in flight names that file (CKG902)
    assert doc["summary"]["files"] == doc["summary"]["planned"] == n
    assert [r["path"] for r in doc["reports"]] == sorted(str(p) for p in folder.iterdir())
    died = [r for r in doc["reports"] if r["verdict"] != "SAFE"]
    assert len(died) <= 1, [r["path"] for r in died]
    for r in died:
        assert r["verdict"] == "INCOMPLETE" and r["findings"][0]["rule_id"] == "CKG902"
        assert "scan worker died (killed by signal 9)" in r["findings"][0]["message"]
    assert proc.returncode == (2 if died else 0), err


def _blocked_writing(pid: int) -> bool:
    try:
        return "pipe" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def _many_small(tmp_path: Path, n: int = 3000) -> Path:
    for i in range(n):
        write(tmp_path / "many" / f"m{i:05d}.safetensors", safetensors_bytes())
    return tmp_path / "many"


@pytest.mark.slow
def test_ctrl_c_while_writing_the_report_keeps_report_and_exit_code_in_agreement(
        tmp_path: Path) -> None:
    """One Ctrl-C while the (finished) report is being written: the whole report is written,
    it says interrupted: false, and the exit code is the one that report gives."""
    folder = _many_small(tmp_path)
    proc = start(str(folder), "-v", cwd=tmp_path)  # ~300 kB of text: stdout's pipe fills up
    assert wait_for(lambda: _blocked_writing(proc.pid), 60), "never blocked writing"
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.2)
    out, err = proc.communicate(timeout=60)
    lines = out.splitlines()
    assert len(lines) == 3002 and lines[-1] == "3000 files scanned: 3000 SAFE, 0 UNSAFE, 0 INCOMPLETE"
    assert proc.returncode == 0, err
    assert "the report is complete" in err


@pytest.mark.slow
def test_second_ctrl_c_while_writing_abandons_the_report(tmp_path: Path) -> None:
    folder = _many_small(tmp_path)
    proc = start(str(folder), "-v", cwd=tmp_path)
    assert wait_for(lambda: _blocked_writing(proc.pid), 60), "never blocked writing"
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "interrupted while writing the report" in err
    assert "files scanned" not in out  # the summary line never came: the report is cut


# --- -o on a full disk -------------------------------------------------------------------------

OLD = '{"a good report": "from an earlier run"}\n'


def _scan_to(tmp_path: Path, target: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    folder = tmp_path / "m"
    for i in range(300):
        write(folder / f"f{i:03d}.safetensors", safetensors_bytes())
    return subprocess.run([sys.executable, "-m", "ckptguard", "scan", str(folder), "--format",
                           "json", "-o", str(target)], env=ENV, capture_output=True, text=True,
                          check=False, **kw)  # type: ignore[call-overload]


def _assert_old_report_kept(res: subprocess.CompletedProcess[str], target: Path) -> None:
    assert res.returncode == 2, res.stderr
    assert "cannot write" in res.stderr and "unchanged" in res.stderr
    assert "Traceback" not in res.stderr
    assert target.read_text() == OLD
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temp file


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_output_on_a_full_tmpfs_keeps_the_old_report(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        target = disk / "report.json"
        target.write_text(OLD)
        filler = disk / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as fh:
            for _ in range(1 << 10):
                fh.write(b"\0" * (4 << 10))  # until the disk is full
        res = _scan_to(tmp_path, target)
        filler.unlink()
        _assert_old_report_kept(res, target)
        res = _scan_to(tmp_path, target)  # room again: the new report replaces the old
        assert res.returncode == 0, res.stderr
        assert json.loads(target.read_text())["summary"]["files"] == 300


def _fsize_limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))


def test_output_past_a_file_size_limit_keeps_the_old_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "report.json"
    target.write_text(OLD)
    res = _scan_to(tmp_path, target, preexec_fn=_fsize_limit)
    _assert_old_report_kept(res, target)


def test_atomic_write_interrupted_keeps_the_old_file(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from ckptguard.cli.common import atomic_write

    target = tmp_path / "report.json"
    target.write_text(OLD)
    target.chmod(0o640)

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(target), "new")
    assert target.read_text() == OLD and os.listdir(tmp_path) == ["report.json"]
    monkeypatch.undo()
    atomic_write(str(target), "new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o640  # the old file's mode is kept
