"""CLI benchmark: `scan --workers` throughput, the cost of the text report, Ctrl-C outcomes.

    python bench/cli.py                  # ~2-4 min on a 2-core box
    python bench/cli.py --files 3000 --reps 5 --tries 20 --out bench/out/cli.json

Stdlib only, runs `python -m ckptguard` of this checkout (PYTHONPATH=src). Three parts:

1. **workers**: a folder of FILES small model files (copies of fixtures/benign: torch zip,
   legacy, plus safetensors and plain pickles), scanned whole-process with `--workers 1`
   and `--workers 2` (and 4), interleaved, REPS times; files/s per run and the ratio to
   `--workers 1` of the same repetition, next to the *ceiling*: the speedup a perfectly
   parallel CPU-bound task gets from the same number of processes in the same repetition
   (on a shared, loaded box this is near 1.0 and no pool can beat it).
2. **render**: in-process, the time to scan 20,000 small files (sequential) and to render
   the text report in each layout (piped lines, terminal), and rendering's share of the
   whole.
3. **ctrl-c**: TRIES runs per worker count on a folder of slow pickles; SIGINT to the
   process group after a random delay (seeded); per try: seconds from the signal to the
   exit, the exit code, whether the JSON report is valid and agrees with the exit code
   (interrupted true <-> exit 2), and whether any worker outlived the parent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import platform
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def safetensors_bytes(i: int) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "__metadata__": {"i": str(i)}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + struct.pack("<2f", 1.0, 2.0)


def small_folder(root: Path, n: int) -> Path:
    folder = root / "small"
    folder.mkdir()
    benign = sorted((ROOT / "fixtures" / "benign").glob("*.pt"))
    for i in range(n):
        kind = i % 4
        if kind < 2:
            src = benign[i % len(benign)]
            (folder / f"f{i:05d}.pt").write_bytes(src.read_bytes())
        elif kind == 2:
            (folder / f"f{i:05d}.safetensors").write_bytes(safetensors_bytes(i))
        else:
            (folder / f"f{i:05d}.pkl").write_bytes(
                pickle.dumps({"step": i, "lr": 0.1, "w": list(range(64))}, protocol=4))
    return folder


def slow_folder(root: Path, n: int) -> Path:
    folder = root / "slow"
    folder.mkdir()
    data = pickle.dumps([list(range(1000)) for _ in range(200)], protocol=4)
    for i in range(n):
        (folder / f"s{i:04d}.pkl").write_bytes(data)
    return folder


def scan_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ckptguard", "scan", *args]


# --- 1. workers -------------------------------------------------------------------------------

def _spin(n: int) -> int:
    s = 0
    for i in range(n):
        s += i * i
    return s


def parallel_ceiling(workers: int, n: int = 3_000_000) -> float:
    """The speedup this machine gives right now to a perfectly parallel CPU-bound task on
    ``workers`` processes (1.0: no spare core -- a shared box under load)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    t0 = time.perf_counter()
    _spin(n * workers)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_spin, args=(n,)) for _ in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return one / (time.perf_counter() - t0)


def bench_workers(folder: Path, n: int, reps: int, worker_counts: list[int]) -> dict:
    runs: dict[int, list[float]] = {w: [] for w in worker_counts}
    ratios: dict[int, list[float]] = {w: [] for w in worker_counts}
    ceilings: dict[int, list[float]] = {w: [] for w in worker_counts}
    for _ in range(reps):
        for w in worker_counts:
            ceilings[w].append(1.0 if w == 1 else parallel_ceiling(w))
        walls = {}
        for w in worker_counts:
            t0 = time.perf_counter()
            res = subprocess.run(scan_cmd(str(folder), "--workers", str(w), "--format", "json",
                                      "-o", os.devnull), env=ENV, capture_output=True,
                                 text=True, check=False)
            walls[w] = time.perf_counter() - t0
            assert res.returncode == 0, res.stderr
            runs[w].append(walls[w])
        for w in worker_counts:
            ratios[w].append(walls[1] / walls[w])
    return {str(w): {"wall_median_s": statistics.median(runs[w]),
                     "files_per_s": n / statistics.median(runs[w]),
                     "speedup_vs_1_median": statistics.median(ratios[w]),
                     "ceiling_median": statistics.median(ceilings[w]),
                     "walls_s": runs[w], "speedups": ratios[w], "ceilings": ceilings[w]}
            for w in worker_counts}


# --- 2. rendering -----------------------------------------------------------------------------

def bench_render(root: Path, n: int) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    from ckptguard.cli.discover import discover
    from ckptguard.cli.runner import run_targets
    from ckptguard.policy import DEFAULT_LIMITS, Policy
    from ckptguard.report import FormatOptions, ScanResult, render
    from ckptguard.report.options import TextLayout

    folder = root / "render"
    folder.mkdir()
    for i in range(n):
        (folder / f"r{i:05d}.safetensors").write_bytes(safetensors_bytes(i))
    found = discover([str(folder)])
    t0 = time.perf_counter()
    outcome = run_targets(found.targets, policy=Policy(), limits=DEFAULT_LIMITS)
    scan_s = time.perf_counter() - t0
    result = ScanResult(reports=tuple(outcome.reports))
    out = {"files": n, "scan_s": scan_s}
    for layout in TextLayout:
        t0 = time.perf_counter()
        render("text", result, FormatOptions(width=80, layout=layout))
        took = time.perf_counter() - t0
        out[f"render_{layout.value}_s"] = took
        out[f"render_{layout.value}_share"] = took / (scan_s + took)
    t0 = time.perf_counter()
    render("json", result)
    out["render_json_s"] = time.perf_counter() - t0
    return out


# --- 3. Ctrl-C --------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "Z" not in next(ln for ln in status.splitlines() if ln.startswith("State:"))


def bench_ctrl_c(folder: Path, tries: int, workers: int, rng: random.Random) -> dict:
    outcomes = []
    for _ in range(tries):
        delay = rng.uniform(0.05, 3.0)
        proc = subprocess.Popen(scan_cmd(str(folder), "--workers", str(workers), "--format",
                                         "json"), env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        time.sleep(delay)
        pool = set(_children(proc.pid))
        t0 = time.perf_counter()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=20)
            hung = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            hung = True
        exit_s = time.perf_counter() - t0
        time.sleep(0.3)
        orphans = [p for p in pool if _alive(p)]
        try:
            doc = json.loads(out)
            interrupted = doc["summary"]["interrupted"]
            valid = True
        except (ValueError, KeyError):
            interrupted, valid = None, False
        # before the scan command's own handler is in place (click parsing arguments,
        # importing the command): the CLI says "interrupted" and exits 2; no report exists.
        # (-2: CPython 3.11 marks a KeyboardInterrupt raised inside eval/exec of a string --
        # dataclass and typing internals while a module is imported -- as unhandled and
        # exits by SIGINT after our sys.exit(2); the message is the same)
        early = (not valid and not out and proc.returncode in (2, -signal.SIGINT)
                 and err.strip() == "interrupted")
        agree = early or (valid and ((interrupted and proc.returncode == 2)
                                     or (not interrupted and proc.returncode == 0)))
        # a signal before the CLI's own code runs (interpreter start-up, imports) meets
        # Python's default handler: no report, a KeyboardInterrupt traceback, exit -2
        startup = (not valid and not out and "KeyboardInterrupt" in err
                   and "ckptguard/cli/scan_cmd.py" not in err)
        outcomes.append({"delay_s": round(delay, 3), "exit_s": round(exit_s, 3),
                         "code": proc.returncode, "valid_report": valid,
                         "interrupted": interrupted, "agree": agree, "hung": hung,
                         "startup": startup, "early": early, "orphans": len(orphans),
                         "traceback": "Traceback" in err and not startup,
                         "stderr_tail": err[-300:],
                         "files": doc["summary"]["files"] if valid else None})
    exits = [o["exit_s"] for o in outcomes]
    return {
        "tries": tries,
        "partial_reports": sum(1 for o in outcomes if o["interrupted"]),
        "finished_before_signal": sum(1 for o in outcomes if o["interrupted"] is False),
        "valid_and_agreeing": sum(1 for o in outcomes if o["agree"]),
        "at_startup": sum(1 for o in outcomes if o["startup"]),
        "before_scan": sum(1 for o in outcomes if o["early"]),
        "hung": sum(1 for o in outcomes if o["hung"]),
        "orphan_workers": sum(o["orphans"] for o in outcomes),
        "tracebacks": sum(1 for o in outcomes if o["traceback"]),
        "exit_s_median": statistics.median(exits),
        "exit_s_max": max(exits),
        "runs": outcomes,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--render-files", type=int, default=20000)
    ap.add_argument("--tries", type=int, default=20)
    ap.add_argument("--slow-files", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", choices=["workers", "render", "ctrl-c"])
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "cli.json"))
    args = ap.parse_args()
    result: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform(),
                                "load_before": os.getloadavg()}}
    tmp = Path(tempfile.mkdtemp(prefix="ckg-bench-cli-"))
    try:
        if args.only in (None, "workers"):
            counts = [int(w) for w in args.workers.split(",")]
            result["workers"] = bench_workers(small_folder(tmp, args.files), args.files,
                                              args.reps, counts)
            print(f"\n--workers on {args.files} small files (whole process, median of "
                  f"{args.reps}; speedup = workers-1 wall / this wall, same repetition)")
            print("| workers | wall | files/s | speedup | ceiling (same run) |\n"
                  "|---:|---:|---:|---:|---:|")
            for w, r in result["workers"].items():
                print(f"| {w} | {r['wall_median_s']:.2f} s | {r['files_per_s']:.0f} | "
                      f"{r['speedup_vs_1_median']:.2f} | {r['ceiling_median']:.2f} |")
        if args.only in (None, "render"):
            r = result["render"] = bench_render(tmp, args.render_files)
            print(f"\ntext report of {r['files']} files: scan {r['scan_s']:.2f} s; render "
                  f"lines {r['render_lines_s']:.3f} s ({r['render_lines_share']:.1%} of "
                  f"scan+render), terminal {r['render_terminal_s']:.3f} s "
                  f"({r['render_terminal_share']:.1%}), json {r['render_json_s']:.3f} s")
        if args.only in (None, "ctrl-c"):
            slow = slow_folder(tmp, args.slow_files)
            rng = random.Random(args.seed)
            result["ctrl_c"] = {}
            print(f"\nCtrl-C (SIGINT to the process group) after a random 0.05-3 s, "
                  f"{args.tries} tries per row, {args.slow_files} slow pickles")
            print("| workers | partial report | finished first | before the scan (exit 2, "
                  "no report) | Python start-up (no report) | report/exit agree | hung | "
                  "orphan workers | tracebacks | exit after signal (median / max) |\n"
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for w in (1, 2):
                c = result["ctrl_c"][str(w)] = bench_ctrl_c(slow, args.tries, w, rng)
                print(f"| {w} | {c['partial_reports']} | {c['finished_before_signal']} | "
                      f"{c['before_scan']} | {c['at_startup']} | "
                      f"{c['valid_and_agreeing']}/{c['tries']} | {c['hung']} | "
                      f"{c['orphan_workers']} | {c['tracebacks']} | "
                      f"{c['exit_s_median']:.2f} s / {c['exit_s_max']:.2f} s |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["machine"]["load_after"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nload average before/after: {result['machine']['load_before']} / "
          f"{result['machine']['load_after']}; details in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
