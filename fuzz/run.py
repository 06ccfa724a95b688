"""Run every atheris target for N seconds each, seeded from the committed fixtures.

    python fuzz/run.py --seconds 15          # CI-sized
    python fuzz/run.py --seconds 3600 -j 2   # the long run (see fuzz/README.md)

Crashes are written to fuzz/crashes/<target>/ (libFuzzer's crash-* files); the script exits
non-zero when any target crashed, and prints the number of inputs each target tried.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGETS = {
    "vm": ["*.pkl", "*.pt"],
    "zip": ["*.pt", "*.zip", "*.npz"],
    "safetensors": ["*.safetensors"],
    "npy": ["*.npy"],
}
MAX_SEED = 64 * 1024


def seed(target: str, corpus: Path) -> int:
    corpus.mkdir(parents=True, exist_ok=True)
    n = 0
    for sub in ("benign", "hostile", "medium", "robustness"):
        for pat in TARGETS[target]:
            for p in sorted((ROOT / "fixtures" / sub).glob(pat)):
                if p.is_file() and p.stat().st_size <= MAX_SEED:
                    shutil.copyfile(p, corpus / f"{sub}_{p.name}")
                    n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=15, help="per target")
    ap.add_argument("--targets", nargs="*", default=list(TARGETS))
    ap.add_argument("--work", type=Path, default=HERE / "corpus")
    args = ap.parse_args()
    failed = []
    for t in args.targets:
        corpus = args.work / t
        seeds = seed(t, corpus)
        crashes = HERE / "crashes" / t
        crashes.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(HERE / f"fuzz_{t}.py"), str(corpus),
               f"-max_total_time={args.seconds}", "-rss_limit_mb=2048", "-timeout=10",
               f"-artifact_prefix={crashes}/", "-print_final_stats=1", "-max_len=65536"]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(HERE), check=False)
        log = p.stdout + p.stderr
        m = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
        runs = int(m[-1]) if m else -1
        print(f"{t}: {runs} inputs in {args.seconds} s, {seeds} seeds, exit {p.returncode}")
        if p.returncode != 0:
            failed.append(t)
            print(log[-3000:])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
