#!/usr/bin/env python3
"""Scan by URL: bytes transferred and wall time per file, against downloading the file.

    python bench/gen.py --out bench/out/ckpts --series 50000 --sizes ""   # once
    python bench/remote.py [--ckpts bench/out/ckpts] [--repeat 3]

Serves the benchmark checkpoints from a real nginx on 127.0.0.1 (tests/nginx_server.py)
and, for each file, measures in one run:
  - ``ckptguard scan URL`` as a whole process (the CLI, start-up included), median wall;
  - the in-process audit (``ckptguard.scan(url)``): wall, bytes transferred (nginx's own
    access log, body bytes), number of requests;
  - the checkpoints of bench/gen.py plus a 400 MB .npy and a 100-array .npz made here;
  - the peer every other scanner needs first: downloading the whole file (httpx stream to
    nothing), median wall.
Prints a Markdown table; ``--json`` writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from nginx_server import NginxServer  # noqa: E402

import ckptguard  # noqa: E402


def _median(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _download(url: str) -> int:
    import httpx

    n = 0
    with httpx.stream("GET", url, timeout=60) as r:
        for chunk in r.iter_raw(1 << 20):
            n += len(chunk)
    return n


def _numpy_files(ckpts: Path) -> None:
    """A 400 MB .npy and a 100-array .npz beside the torch checkpoints (once)."""
    import numpy as np

    npy = ckpts / "array.npy"
    if not npy.exists():
        np.save(npy, np.zeros((10_000, 10_000), dtype=np.float32))
    npz = ckpts / "arrays.npz"
    if not npz.exists():
        np.savez(npz, **{f"a{i}": np.zeros((256, 1024), dtype=np.float32) for i in range(100)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpts", default=str(HERE / "out" / "ckpts"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    ckpts = Path(a.ckpts)
    _numpy_files(ckpts)
    files = sorted(p for p in ckpts.iterdir()
                   if p.suffix in (".bin", ".safetensors", ".npy", ".npz"))
    if not files:
        sys.exit(f"no checkpoints in {ckpts}: run bench/gen.py first")
    srv = NginxServer(ckpts.parent).start()
    rows = []
    try:
        for p in files:
            url = f"{srv.base}/{ckpts.name}/{p.name}"
            seen = len(srv.log_lines())
            t0 = time.perf_counter()
            report = ckptguard.scan(url)
            audit = time.perf_counter() - t0
            log = srv.log_lines()[seen:]
            sent = sum(r[3] for r in log)
            cli = _median(lambda url=url: subprocess.run(
                [sys.executable, "-m", "ckptguard", "scan", "--no-progress", url],
                capture_output=True, check=False), a.repeat)
            dl = _median(lambda url=url: _download(url), a.repeat)
            rows.append({"file": p.name, "size": p.stat().st_size,
                         "verdict": report.verdict.value, "bytes_transferred": sent,
                         "requests": len(log), "audit_s": audit, "cli_s": cli,
                         "download_s": dl})
    finally:
        srv.stop()
    print("| file | size | verdict | transferred | requests | scan by URL (CLI) | "
          "download whole file | ratio |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['file']} | {r['size'] / 1e6:,.1f} MB | {r['verdict']} | "
              f"{r['bytes_transferred'] / 1e3:,.1f} KB | {r['requests']} | "
              f"{r['cli_s'] * 1e3:,.0f} ms | {r['download_s'] * 1e3:,.0f} ms | "
              f"{r['download_s'] / r['cli_s']:.1f}x |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
