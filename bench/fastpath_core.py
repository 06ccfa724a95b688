#!/usr/bin/env python3
"""The data.pkl fast path in-process: native core vs ``CKPTGUARD_PURE=1``, same run.

    PYTHONPATH=src python bench/fastpath_core.py [FILE ...]
    # default: $CKPTS (bench/out/ckpts) s50000.bin s1000.bin small.bin big.bin

For each file, alternating the two modes inside every repetition (noise hits both alike),
best of 5 ``time.process_time()``: the whole in-process scan (``engine.audit_file``) and
the data.pkl part (``torchfile.try_fast`` plus ``torchfile._emit_tensors``, which the
native core makes unnecessary by building the report's tensor records itself).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ckptguard.analysis import engine, torchfile
from ckptguard.policy import DEFAULT_LIMITS, Policy

HERE = Path(__file__).resolve().parent
CKPTS = Path(os.environ.get("CKPTS", HERE / "out" / "ckpts"))
DEFAULT = [CKPTS / f for f in ("s50000.bin", "s1000.bin", "small.bin", "big.bin")]
REPS = 5

_spent = [0.0]
_fast, _emit = torchfile.try_fast, torchfile._emit_tensors


def _timed(f):  # type: ignore[no-untyped-def]
    def run(*a, **k):  # type: ignore[no-untyped-def]
        t = time.process_time()
        try:
            return f(*a, **k)
        finally:
            _spent[0] += time.process_time() - t
    return run


torchfile.try_fast = _timed(_fast)
torchfile._emit_tensors = _timed(_emit)  # type: ignore[assignment]


def once(path: Path, pure: bool) -> tuple[float, float]:
    if pure:
        os.environ["CKPTGUARD_PURE"] = "1"
    else:
        os.environ.pop("CKPTGUARD_PURE", None)
    _spent[0] = 0.0
    t = time.process_time()
    r = engine.audit_file(str(path), policy=Policy(), limits=DEFAULT_LIMITS)
    total = time.process_time() - t
    assert r.verdict.value == "SAFE", (path, r.verdict)
    return total, _spent[0]


def main() -> None:
    files = [Path(a) for a in sys.argv[1:]] or DEFAULT
    print("| file | scan native | scan pure | ratio | data.pkl native | data.pkl pure | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for p in files:
        once(p, False)
        once(p, True)  # warm the page cache and imports
        best = {False: [9e9, 9e9], True: [9e9, 9e9]}
        for _ in range(REPS):
            for pure in (False, True):
                total, part = once(p, pure)
                best[pure] = [min(best[pure][0], total), min(best[pure][1], part)]
        n, q = best[False], best[True]
        print(f"| {p.name} | {n[0] * 1e3:.1f} ms | {q[0] * 1e3:.1f} ms | {n[0] / q[0]:.2f} | "
              f"{n[1] * 1e3:.1f} ms | {q[1] * 1e3:.1f} ms | {n[1] / q[1]:.3f} |", flush=True)
    os.environ.pop("CKPTGUARD_PURE", None)


if __name__ == "__main__":
    main()
