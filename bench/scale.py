#!/usr/bin/env python3
"""Throughput of registry-scale scans: many URLs, one process vs a Dask cluster.

    python bench/scale.py [--copies 10] [--workers 2]

Serves fixtures/ from a real nginx on 127.0.0.1 and scans every fixture URL ``--copies``
times (as distinct URLs, ``?copy=N``) three ways, in one run: ``iter_scan`` in this process
with concurrency 1 and 4, and ``scan_on_dask`` on a LocalCluster of ``--workers``
processes. Prints files/s and bytes transferred per file (from nginx's access log).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from nginx_server import NginxServer  # noqa: E402

from ckptguard.remote.distributed import scan_on_dask  # noqa: E402
from ckptguard.remote.http import RemoteOptions  # noqa: E402
from ckptguard.scan_api import iter_scan  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    www = Path(tempfile.mkdtemp(prefix="ckg-scale-"))
    shutil.copytree(ROOT / "fixtures", www / "files", ignore=shutil.ignore_patterns("*.py", "*.md"))
    files = sorted(p.relative_to(www / "files").as_posix()
                   for p in (www / "files").rglob("*") if p.is_file()
                   and p.parts[len((www / "files").parts)] in ("benign", "hostile", "medium"))
    srv = NginxServer(www).start()
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    try:
        urls = [f"{srv.base}/files/{f}?copy={i}" for i in range(a.copies) for f in files]
        list(scan_on_dask(urls[:64], client=client, batch=8))  # workers warm: imports, pools
        rows = []
        for label, run in (
            ("one process, concurrency 1",
             lambda: list(iter_scan(urls, options=RemoteOptions(concurrency=1)))),
            ("one process, concurrency 4",
             lambda: list(iter_scan(urls, options=RemoteOptions(concurrency=4)))),
            (f"Dask LocalCluster, {a.workers} processes",
             lambda: list(scan_on_dask(urls, client=client, batch=32))),
        ):
            seen = len(srv.log_lines())
            t0 = time.perf_counter()
            got = run()
            dt = time.perf_counter() - t0
            log = srv.log_lines()[seen:]
            assert len(got) == len(urls)
            rows.append((label, len(urls) / dt, sum(r[3] for r in log) / len(urls),
                         len(log) / len(urls), dt))
    finally:
        client.close()
        cluster.close()
        srv.stop()
        shutil.rmtree(www, ignore_errors=True)
    print(f"{len(urls)} URLs ({len(files)} fixtures x {a.copies}), mean file "
          f"{sum((ROOT / 'fixtures' / f).stat().st_size for f in files) / len(files):,.0f} B")
    print("| how | files/s | bytes transferred per file | requests per file | wall |")
    print("|---|---:|---:|---:|---:|")
    for label, fps, bpf, rpf, dt in rows:
        print(f"| {label} | {fps:,.0f} | {bpf:,.0f} | {rpf:.2f} | {dt:.1f} s |")


if __name__ == "__main__":  # the guard matters: Dask's worker processes import this file
    main()
