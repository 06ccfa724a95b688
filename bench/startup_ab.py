"""Start-up A/B (docs/fastpath.md, "Start-up"): the whole-process scan of bench checkpoints by
two ckptguard source trees and picklescan, alternating, best of N: wall and the child's
user+sys CPU (os.wait4).

    python3 bench/startup_ab.py --before /tmp/before/src --after src -n 12

Each tree needs its native modules built and its bytecode compiled (``python -m compileall
-q SRC``): without a pycache every start recompiles ~50 modules.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--ckpts", default=str(ROOT / "bench" / "out" / "ckpts"))
    ap.add_argument("--venv", default=str(ROOT / ".venv"))
    ap.add_argument("--picklescan", default=str(ROOT / "bench" / ".venvs" / "picklescan"))
    a = ap.parse_args()
    py, cg = f"{a.venv}/bin/python", f"{a.venv}/bin/ckptguard"
    tools: dict[str, tuple[list[str], str]] = {}
    for side, src in (("before", a.before), ("after", a.after)):
        tools[f"{side} -m"] = ([py, "-m", "ckptguard", "scan", "FILE", "--format", "json"], src)
        tools[f"{side} console"] = ([cg, "scan", "FILE", "--format", "json"], src)
    tools["picklescan -p"] = ([f"{a.picklescan}/bin/picklescan", "-p", "FILE"], "")
    tools["python -c pass"] = ([py, "-c", "pass"], "")
    for name in ("big.bin", "small.bin"):
        f = str(Path(a.ckpts) / name)
        wall = dict.fromkeys(tools, float("inf"))
        cpu = dict(wall)
        for _ in range(a.n):
            for k, (argv, src) in tools.items():
                env = dict(os.environ, PYTHONPATH=os.path.abspath(src) if src else "")
                t = time.perf_counter()
                p = subprocess.Popen([f if x == "FILE" else x for x in argv], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                _, _, ru = os.wait4(p.pid, 0)
                wall[k] = min(wall[k], time.perf_counter() - t)
                cpu[k] = min(cpu[k], ru.ru_utime + ru.ru_stime)
        print(f"{name}:")
        for k in tools:
            print(f"  {k:16s} wall {wall[k] * 1000:6.1f} ms  cpu {cpu[k] * 1000:6.1f} ms")


if __name__ == "__main__":
    main()
