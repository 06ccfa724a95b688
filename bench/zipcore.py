"""The zip prover's figures (docs/fastpath.md): CKPTGUARD_PURE=1 vs native, same run.

    PYTHONPATH=src python bench/zipcore.py [--rounds 5] [FILE ...]
    (the checkpoints of bench/gen.py: bench/out/ckpts, or CKG_BENCH_CKPTS=DIR)

In-process ``time.process_time()``, best of N, the two paths interleaved round by round:
``read_archive`` alone; ``read_archive`` plus the per-member checks the prover's facts
cover (the numpy-reading pass); and the whole in-process audit (``engine.audit_file``).
Defaults to the bench checkpoints s50000.bin, s1000.bin, big.bin and small.bin.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

from ckptguard.analysis import engine, torchfile
from ckptguard.analysis.zipdefects import record_defects
from ckptguard.context import AuditContext, Source
from ckptguard.policy import DEFAULT_LIMITS, Policy
from ckptguard.readers.zipfile import read_archive

CKPTS = Path(os.environ.get("CKG_BENCH_CKPTS", Path(__file__).resolve().parent / "out" / "ckpts"))
DEFAULT = [CKPTS / n for n in ("s50000.bin", "s1000.bin", "big.bin", "small.bin")]


def _reader(path: str, checks: bool) -> Callable[[], None]:
    def run() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            ctx = AuditContext(path, Source(fd, os.fstat(fd).st_size), Policy())
            a = read_archive(ctx, record_defects(ctx))
            if checks and a is not None:
                torchfile._numpy_reading(ctx, a)
        finally:
            os.close(fd)
    return run


def _audit(path: str) -> Callable[[], None]:
    def run() -> None:
        engine.audit_file(path, policy=Policy(), limits=DEFAULT_LIMITS)
    return run


def _best(fn: Callable[[], None], pure: bool) -> float:
    os.environ["CKPTGUARD_PURE"] = "1" if pure else "0"
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*", type=Path, default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    print("| file | measure | pure (ms) | native (ms) | ratio |")
    print("|---|---|---:|---:|---:|")
    for f in a.files:
        for what, fn in (("read_archive", _reader(str(f), False)),
                         ("read_archive + numpy pass", _reader(str(f), True)),
                         ("whole audit", _audit(str(f)))):
            pure: list[float] = []
            nat: list[float] = []
            for _ in range(a.rounds):
                pure.append(_best(fn, True))
                nat.append(_best(fn, False))
            p, n = min(pure) * 1e3, min(nat) * 1e3
            print(f"| {f.name} | {what} | {p:.1f} | {n:.1f} | {p / n:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
