"""In-process load timings, best of N (CPU time of the load call, imports done before it):
the five load rows of issue 13 and their ratios, for the code on PYTHONPATH.

    PYTHONPATH=src python bench/load_inproc.py [--ckpts bench/out/ckpts] [--reps 5]
        [--files small.bin,big.bin,s50000.bin]

Run it once per tree (before / after) back to back: on a shared machine only same-run
ratios mean anything. bench/run.py measures the same rows in fresh processes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import ckptguard

ROWS: dict[str, Callable[[str], Any]] = {
    "torch.load(mmap)": lambda p: torch.load(p, weights_only=True, mmap=True),
    "safe_load": ckptguard.safe_load,
    "safe_load(engine=ckptguard)": lambda p: ckptguard.safe_load(p, engine="ckptguard"),
    "torch.load(meta)": lambda p: torch.load(p, weights_only=True, mmap=True,
                                             map_location="meta"),
    "safe_load(meta)": lambda p: ckptguard.safe_load(p, map_location="meta"),
    "scan": ckptguard.scan,
}


def best_of(fn: Callable[[str], Any], path: str, reps: int) -> float:
    fn(path)  # warm: page cache, lazy imports
    best = float("inf")
    for _ in range(reps):
        t = time.process_time()
        out = fn(path)
        best = min(best, time.process_time() - t)
        del out
    return best * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpts", default=str(Path(__file__).parent / "out" / "ckpts"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--files", default="small.bin,big.bin,s50000.bin")
    a = ap.parse_args()
    print(f"# {ckptguard.__file__}, best of {a.reps}, CPU ms of the load call")
    for name in a.files.split(","):
        path = str(Path(a.ckpts) / name)
        ms = {row: best_of(fn, path, a.reps) for row, fn in ROWS.items()}
        for row, v in ms.items():
            print(f"{name:12s} {row:28s} {v:10.2f} ms")
        mm = ms["torch.load(mmap)"]
        print(f"{name:12s} safe_load / torch.load(mmap)          {ms['safe_load'] / mm:.3f}"
              " (goal <= 1.05)")
        print(f"{name:12s} engine=ckptguard / torch.load(mmap)   "
              f"{ms['safe_load(engine=ckptguard)'] / mm:.3f} (goal <= 1; 50k: <= 0.333)")
        print(f"{name:12s} safe_load(meta) / torch.load(meta)    "
              f"{ms['safe_load(meta)'] / ms['torch.load(meta)']:.3f} (50k goal <= 0.1)")


if __name__ == "__main__":
    main()
