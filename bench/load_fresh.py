"""safe_load against torch.load(mmap) in fresh processes, trees alternating (issue 13).

    python bench/load_fresh.py --trees /tmp/before/src src [--ckpts bench/out/ckpts]
        [--files small.bin,big.bin] [-n 9]

Each run is a fresh interpreter that imports what bench/child.py's ``safe_load_prep``
imports (torch's for torch.load), then times the one call: wall (perf_counter) and the
thread's CPU time, which a loaded shared machine inflates far less. torch.load runs under
``--torch-python`` (the peers' torch venv), ckptguard under ``--python`` with each tree on
PYTHONPATH; bytecode goes to one shared pycache prefix, as bench/run.py sets it. Prints the
medians, minima and their ratios to torch.load of the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(tool: str, path: str) -> None:
    if tool == "torch":
        import torch

        def op() -> object:
            return torch.load(path, weights_only=True, mmap=True, map_location="cpu")
    else:
        sys.path.insert(0, os.path.join(ROOT, "bench"))
        import child as bench_child  # bench/child.py: the bench's own prep

        cg = bench_child.safe_load_prep()

        def op() -> object:
            return cg.safe_load(path)
    w, c = time.perf_counter(), time.thread_time()
    obj = op()
    c1, w1 = time.thread_time(), time.perf_counter()
    del obj
    print(f"{(w1 - w) * 1e3:.3f} {(c1 - c) * 1e3:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trees", nargs="+", required=True, help="src folders to compare")
    ap.add_argument("--ckpts", default=os.path.join(ROOT, "bench", "out", "ckpts"))
    ap.add_argument("--files", default="small.bin,big.bin")
    ap.add_argument("-n", type=int, default=9)
    ap.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    ap.add_argument("--torch-python",
                    default=os.path.join(ROOT, "bench", ".venvs", "torch", "bin", "python"))
    ap.add_argument("--pycache", default="/tmp/ckptguard-load-fresh-pycache")
    a = ap.parse_args()

    def run(py: str, tool: str, path: str, src: str | None) -> tuple[float, float]:
        env = dict(os.environ, PYTHONPYCACHEPREFIX=a.pycache)
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if src:
            env["PYTHONPATH"] = src
        out = subprocess.run([py, os.path.abspath(__file__), "--child", tool, path], env=env,
                             check=True, capture_output=True, text=True).stdout.split()
        return float(out[0]), float(out[1])

    for name in a.files.split(","):
        path = os.path.join(a.ckpts, name)
        keys: list[tuple[str, str | None]] = [("torch", None)] + [("safe_load", t)
                                                                  for t in a.trees]
        res: dict[tuple[str, str | None], list[tuple[float, float]]] = {k: [] for k in keys}
        for _ in range(a.n):
            for k in keys:
                py = a.torch_python if k[0] == "torch" else a.python
                res[k].append(run(py, k[0], path, k[1]))
        base = res[("torch", None)]
        tw = statistics.median(x[0] for x in base)
        tc = statistics.median(x[1] for x in base)
        for k in keys:
            wm = statistics.median(x[0] for x in res[k])
            cm = statistics.median(x[1] for x in res[k])
            print(f"{name:12s} {k[0]:9s} {k[1] or '':32s} wall median {wm:8.2f} ms "
                  f"({wm / tw:.3f})  cpu median {cm:8.2f} ms ({cm / tc:.3f})  "
                  f"min {min(x[0] for x in res[k]):8.2f} / {min(x[1] for x in res[k]):8.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
