"""bench/overhead.py (issue 13's overhead split) keeps working as the code under it moves:
its wrappers must see every native call they split out, on a real torch zip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ckptguard._native import native  # noqa: E402
from ckptguard.primitives import take_read_lease  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "overhead.py"
COLUMNS = ("file", "torch.load(mmap)", "torch.load(mmap), computed offsets",
           "safe_load computes", "budget", "ours, call 1", "prove_fd",
           "split_records", "scan", "same_bytes", "structure", "glue", "faults", "lease",
           "ours, call 3", "ratio (est.)")


def _run(tmp_path: Path, *extra: str,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--ckpts", str(tmp_path), "--files", "w.bin", "-n", "1",
         "--python", sys.executable, "--torch-python", sys.executable, *extra],
        capture_output=True, text=True, timeout=240, check=False,
        env={**os.environ, **(env or {})})


def _median(cell: str) -> float:
    return float(cell.split(maxsplit=1)[0])


@pytest.mark.slow
@pytest.mark.skipif(native("zipcore") is None or native("picklecore") is None,
                    reason="the native cores are not built")
@pytest.mark.parametrize("lease", [True, False], ids=["lease", "no-lease"])
def test_overhead_splits_every_native_call(tmp_path: Path, lease: bool) -> None:
    torch.save({f"layer{i}.weight": torch.arange(i * 8.0, i * 8.0 + 8) for i in range(4)},
               tmp_path / "w.bin")
    fd = os.open(tmp_path / "w.bin", os.O_RDONLY)
    try:
        leasable = take_read_lease(fd)
    finally:
        os.close(fd)
    if lease and not leasable:
        pytest.skip("no read lease on this file system")
    out = _run(tmp_path, *([] if lease else ["--no-lease"]))
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert tuple(header) == COLUMNS
    assert set(lines[1]) == {"|", "-"} and lines[1].count("|") == len(COLUMNS) + 1
    row = dict(zip(COLUMNS, (c.strip() for c in lines[2].strip("|").split("|")), strict=True))
    assert row["file"] == "w.bin"
    assert row["lease"] == ("yes" if lease else "no")
    # each wrapped native call really ran inside safe_load (a renamed or bypassed call reads
    # 0); under the lease nothing is re-read or compared after the load
    after = ("same_bytes", "structure")
    for part in ("prove_fd", "split_records", "scan", *after):
        assert (_median(row[part]) > 0) is (part not in after or not lease), (part, out.stdout)
    assert _median(row["glue"]) > 0
    total = _median(row["ours, call 1"])
    parts = sum(_median(row[p]) for p in ("prove_fd", "split_records", "scan", "same_bytes",
                                           "structure", "glue"))
    assert abs(total - parts) < 0.01, out.stdout
    plain, computed = _median(row["torch.load(mmap)"]), \
        _median(row["torch.load(mmap), computed offsets"])
    assert plain > 0 and computed > 0
    # torch computes storage offsets inside safe_load only under the lease (loaders/offsets.py)
    assert row["safe_load computes"] == ("yes" if lease else "no")
    inner = computed if lease else plain
    assert float(row["budget"]) == pytest.approx(1.05 * plain - inner, abs=0.002)
    assert int(row["faults"]) >= 0
    assert float(row["ratio (est.)"]) == pytest.approx((inner + total) / plain, abs=0.002)


def test_overhead_names_a_missing_checkpoint(tmp_path: Path) -> None:
    out = _run(tmp_path)
    assert out.returncode != 0
    assert "w.bin is missing" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_overhead_refuses_without_the_native_cores(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2)}, tmp_path / "w.bin")
    out = _run(tmp_path, env={"CKPTGUARD_PURE": "1"})
    assert out.returncode != 0
    assert "native cores are not built" in out.stderr
    assert "Traceback" not in out.stderr
