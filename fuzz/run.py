"""Run every atheris target for N seconds (or exactly N inputs) each, seeded from the
committed fixtures.

    python fuzz/run.py --seconds 15          # CI-sized
    python fuzz/run.py --seconds 3600 -j 2   # the long run (see fuzz/README.md)
    python fuzz/run.py --runs 10000 -j 4     # exactly 10,000 inputs each, seed 1 (the tests)

Crashes are written to fuzz/crashes/<target>/ (libFuzzer's crash-* files); the script exits
non-zero when any target crashed, and prints the number of inputs each target tried.
``-j`` runs that many targets at once.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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


def run_target(t: str, args: argparse.Namespace) -> tuple[str, int]:
    """Fuzz one target; returns the line to print and libFuzzer's exit status."""
    corpus = args.work / t
    seeds = seed(t, corpus)
    crashes = HERE / "crashes" / t
    crashes.mkdir(parents=True, exist_ok=True)
    budget = ([f"-runs={args.runs}", f"-seed={args.seed}"] if args.runs
              else [f"-max_total_time={args.seconds}"])
    cmd = [sys.executable, str(HERE / f"fuzz_{t}.py"), str(corpus), *budget,
           "-rss_limit_mb=2048", "-timeout=10", f"-artifact_prefix={crashes}/",
           "-print_final_stats=1", "-max_len=65536"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(HERE), check=False)
    log = p.stdout + p.stderr
    m = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    runs = int(m[-1]) if m else -1
    spent = f"{args.runs} runs" if args.runs else f"{args.seconds} s"
    line = f"{t}: {runs} inputs in {spent}, {seeds} seeds, exit {p.returncode}"
    return (line if p.returncode == 0 else line + "\n" + log[-3000:]), p.returncode


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=15, help="per target")
    ap.add_argument("--runs", type=int, default=0,
                    help="inputs per target instead of --seconds (with --seed: deterministic)")
    ap.add_argument("--seed", type=int, default=1, help="libFuzzer's -seed with --runs")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="targets run at once")
    ap.add_argument("--targets", nargs="*", default=list(TARGETS))
    ap.add_argument("--work", type=Path, default=HERE / "corpus")
    args = ap.parse_args()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        done = list(pool.map(lambda t: run_target(t, args), args.targets))
    for line, _rc in done:
        print(line)
    return 1 if any(rc != 0 for _line, rc in done) else 0


if __name__ == "__main__":
    raise SystemExit(main())
