"""The safetensors header prover (``_native/stcore.c``) against the Python path, in process.

    PYTHONPATH=src python bench/stcore.py [--ckpts /work/main/bench/out/ckpts] [-n 9]
    python bench/stcore.py --whole [--python /work/main/.venv/bin/python] \
        [--peer-python /work/main/bench/.venvs/torch/bin/python] [-n 9]

For each ``s*.safetensors`` of ``--ckpts``: ``ckptguard.scan(P)`` with the C prover and with
``CKPTGUARD_PURE=1`` (the Python fast path, ``_fast_header``), interleaved within each
repetition; best of ``n`` wall (``perf_counter``) and CPU (``process_time``). Then the C
pass alone on the header bytes: parse and checks only (declined by a size one byte off) and
the full ``prove`` (records built).

``--whole``: whole processes on ``s50000.safetensors``, alternating, each a fresh
interpreter running ``bench/child.py`` (as ``bench/run.py`` runs them): tool ``ckptguard``
(``scan FILE --format json``, this tree's ``src``) with ``CKPTGUARD_PURE=0`` and ``=1``, and
tool ``safetensors.header`` under the peer's venv; best of ``n`` wall, the child's user+sys
CPU (``os.wait4``), the in-process ``op`` and ``imp`` phases and peak RSS. Bytecode is
written to a pycache prefix in /tmp (a start that recompiles every module measures the
compiler).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path

import ckptguard
from ckptguard.analysis import safetensors as st_audit


def _best(fn: object, n: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(n):
        w, c = time.perf_counter(), time.process_time()
        r = fn()  # type: ignore[operator]
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
        del r
    return min(walls) * 1e3, min(cpus) * 1e3


def whole(args: argparse.Namespace) -> None:
    root = Path(__file__).resolve().parents[1]
    child = str(root / "bench" / "child.py")
    path = str(args.ckpts / "s50000.safetensors")
    runs = {
        "ckptguard CKPTGUARD_PURE=1": ([args.python, child, "ckptguard", path],
                                       {"PYTHONPATH": str(root / "src"), "CKPTGUARD_PURE": "1"}),
        "ckptguard (stcore)": ([args.python, child, "ckptguard", path],
                               {"PYTHONPATH": str(root / "src"), "CKPTGUARD_PURE": "0"}),
        "safetensors.header": ([args.peer_python, child, "safetensors.header", path], {}),
    }
    res: dict[str, list[tuple[float, ...]]] = {k: [] for k in runs}
    for _ in range(args.n):
        for k, (cmd, extra) in runs.items():
            fd, out = tempfile.mkstemp()
            os.close(fd)
            env = {k2: v for k2, v in os.environ.items()
                   if k2 not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
            env.update(extra, BENCH_RESULT=out, PYTHONPYCACHEPREFIX="/tmp/stcore-bench-pycache")
            t = time.perf_counter()
            proc = subprocess.Popen(cmd, env=env)
            _, _, ru = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t
            r = json.loads(Path(out).read_text())
            os.unlink(out)
            if not r.get("ok"):
                raise SystemExit(f"{k}: {r}")
            res[k].append((wall, ru.ru_utime + ru.ru_stime, r["op"], r["imp"],
                           ru.ru_maxrss / 1024))
    for k, v in res.items():
        best = [min(x[i] for x in v) for i in range(5)]
        print(f"{k:28s} wall {best[0] * 1e3:6.1f} ms  cpu {best[1] * 1e3:6.1f} ms  "
              f"op {best[2] * 1e3:6.1f} ms  imp {best[3] * 1e3:5.1f} ms  rss {best[4]:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpts", type=Path, default=Path("/work/main/bench/out/ckpts"))
    ap.add_argument("-n", type=int, default=9)
    ap.add_argument("--whole", action="store_true")
    ap.add_argument("--python", default="/work/main/.venv/bin/python")
    ap.add_argument("--peer-python", default="/work/main/bench/.venvs/torch/bin/python")
    args = ap.parse_args()
    if args.whole:
        whole(args)
        return
    for p in sorted(args.ckpts.glob("*.safetensors")):
        res: dict[str, list[tuple[float, float]]] = {"native": [], "pure": []}
        for _ in range(args.n):
            for mode in ("pure", "native"):
                os.environ["CKPTGUARD_PURE"] = "1" if mode == "pure" else "0"
                res[mode].append(_best(partial(ckptguard.scan, p), 1))
        os.environ["CKPTGUARD_PURE"] = "0"
        nat = min(w for w, _ in res["native"]), min(c for _, c in res["native"])
        pure = min(w for w, _ in res["pure"]), min(c for _, c in res["pure"])
        data = p.read_bytes()
        n = struct.unpack("<Q", data[:8])[0]
        header = data[8:8 + n]
        core = st_audit._stcore()
        parse = _best(partial(core.prove, header, 8 + n, len(data) + 1, 1 << 40), args.n)
        prove = _best(partial(core.prove, header, 8 + n, len(data), 1 << 40), args.n)
        print(f"{p.name}: scan native {nat[0]:.1f} ms wall / {nat[1]:.1f} ms CPU, "
              f"pure {pure[0]:.1f} / {pure[1]:.1f} ms (x{pure[1] / max(nat[1], 1e-6):.1f} CPU); "
              f"C pass: parse+checks {parse[1]:.2f} ms, prove with records {prove[1]:.2f} ms "
              f"({n:,} header bytes)")


if __name__ == "__main__":
    main()
