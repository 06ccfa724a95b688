#!/usr/bin/env python3
"""Where ``safe_load``'s own time goes (issue 13's last row), first call in a fresh process.

    python bench/overhead.py [--ckpts bench/out/ckpts] [--files small.bin,big.bin] [-n 5]
        [--python .venv/bin/python] [--torch-python bench/.venvs/torch/bin/python]
        [--no-lease]

``safe_load`` = the audit + ``torch.load(weights_only=True, mmap=True)`` + the same-bytes
check. *ours* is what ``safe_load`` costs with ``torch.load`` replaced by a stub. Each run
is a fresh interpreter that imports what bench/child.py's ``safe_load_prep`` imports, then
calls ``safe_load`` three times on the same file (call 1 is the one bench/run.py times; call
3 is warm). The native calls are wrapped to split call 1: ``zipcore.prove_fd`` (the zip
proof, one pread per local header), ``picklecore.split_records``, ``picklecore.scan``
(data.pkl), ``zipcore.same_bytes`` (the re-read after the load) and ``structure`` (the
comparison of what torch built with the audit, loaders/structure.py, on the object a real
``torch.load`` built once before the timed calls); *glue* is the rest (the Python around
them). ``faults`` are the minor page faults of call 1 (``ru_minflt``): first touches of
fresh memory, which cost ~1-2 us each on a VM. *lease*: whether call 1 held the read lease
(loaders/base.py): under an unbroken lease ``same_bytes`` and ``structure`` do not run (0);
``--no-lease`` measures the path without one (another owner, NFS, a writer holding the
file). ``torch.load(mmap)`` runs in its own fresh interpreters (``--torch-python``), plain
and with torch's ``calculate_storage_offsets`` on (what safe_load sets where the audit
proved torch's computed offsets exact, loaders/offsets.py; *safe_load computes* says whether
it did). *budget* is the room a 1.05 ratio leaves for *ours*: 1.05 x torch.load(mmap) minus
the torch.load safe_load makes; the estimated ratio is (that torch.load + ours) /
torch.load(mmap). Prints a markdown table of medians (min-max over the runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("prove_fd", "split_records", "scan", "same_bytes", "structure")


def _child_ours(path: str, lease: bool) -> dict:
    import resource

    from ckptguard._native import native

    zc, pc = native("zipcore"), native("picklecore")
    if zc is None or pc is None:
        raise SystemExit("overhead.py: the native cores are not built (python setup.py "
                         "build_ext --inplace)")
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import child  # the bench's own prep, so both sides measure the same imports

    cg = child.safe_load_prep()
    import ckptguard.loaders._torch as lt
    import ckptguard.loaders.base as lb
    import ckptguard.loaders.torchfile as ltf

    leases: list[bool] = []
    take = lb.take_read_lease

    def take_recorded(fd: int) -> bool:
        got = take(fd) if lease else False
        leases.append(got)
        return got

    lb.take_read_lease = take_recorded

    # what torch.load costs is measured on its own: the stub hands back what it built, once,
    # before the timed calls (the comparison after the load walks the real object)
    built = lt.ORIGINAL_LOAD(path, weights_only=True, mmap=True, map_location="cpu")
    from torch.utils.serialization import config

    computed: list[bool] = []

    def stub(*a, **k):
        # whether safe_load let torch compute the storage offsets (loaders/offsets.py)
        computed.append(bool(config.load.calculate_storage_offsets))
        return built

    lt.ORIGINAL_LOAD = stub
    import gc

    gc.collect()
    gc.freeze()  # what that load left behind is never scanned by the timed calls' collections
    spent = dict.fromkeys(PARTS, 0.0)

    def wrap(mod, name, part=None):
        fn = getattr(mod, name)
        part = part or name

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[part] += time.perf_counter() - t

        setattr(mod, name, timed)

    for mod, name in ((zc, "prove_fd"), (zc, "same_bytes"), (pc, "split_records"),
                      (pc, "scan")):
        wrap(mod, name)
    wrap(ltf, "structure_difference", "structure")  # what torch built against the audit
    calls = []
    for _ in range(3):
        for k in spent:
            spent[k] = 0.0
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        cg.safe_load(path)
        dt = time.perf_counter() - t
        f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        calls.append({"total": dt, "faults": f1 - f0, "lease": leases[-1],
                      "offsets": computed[-1], **spent})
    return {"calls": calls}


def _child_torch(path: str, offsets: bool = False) -> dict:
    import torch

    if offsets:  # what safe_load sets where the audit proved torch's computation exact
        from torch.utils.serialization import config

        config.load.calculate_storage_offsets = True
    t = time.perf_counter()
    torch.load(path, weights_only=True, mmap=True, map_location="cpu")
    return {"first": time.perf_counter() - t}


def _run(py: str, mode: str, path: str, lease: bool = True) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "src"),
                                           os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    out = subprocess.run([py, os.path.abspath(__file__), "--child", mode, path]
                         + ([] if lease else ["--no-lease"]),
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    if out.returncode != 0:
        raise SystemExit(f"overhead.py: {mode} child failed on {path}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mmm(xs: list[float], scale: float = 1e3, digits: int = 3) -> str:
    return (f"{statistics.median(xs) * scale:.{digits}f} "
            f"({min(xs) * scale:.{digits}f}-{max(xs) * scale:.{digits}f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpts", default=os.path.join(ROOT, "bench", "out", "ckpts"))
    ap.add_argument("--files", default="small.bin,big.bin")
    ap.add_argument("-n", type=int, default=5, help="fresh processes per file and side")
    ap.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    ap.add_argument("--torch-python",
                    default=os.path.join(ROOT, "bench", ".venvs", "torch", "bin", "python"))
    ap.add_argument("--no-lease", action="store_true",
                    help="measure safe_load without the read lease (its re-read and "
                         "comparison after the load)")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "FILE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        mode, path = a.child
        print(json.dumps(_child_ours(path, not a.no_lease) if mode == "ours"
                         else _child_torch(path, mode == "torch-offsets")))
        return
    rows = []
    for name in a.files.split(","):
        path = os.path.join(a.ckpts, name)
        if not os.path.exists(path):
            raise SystemExit(f"overhead.py: {path} is missing (python bench/gen.py, or "
                             "python bench/run.py --only load, generates it)")
        ours, torch_first, torch_offsets = [], [], []
        for _ in range(a.n):  # alternating, so a noise burst hits both sides alike
            ours.append(_run(a.python, "ours", path, not a.no_lease)["calls"])
            torch_first.append(_run(a.torch_python, "torch", path)["first"])
            torch_offsets.append(_run(a.torch_python, "torch-offsets", path)["first"])
        first = [c[0] for c in ours]
        warm = [c[2] for c in ours]
        glue = [c["total"] - sum(c[k] for k in PARTS) for c in first]
        tl = statistics.median(torch_first)
        computes = all(c["offsets"] for c in first)
        # what the torch.load inside safe_load costs: torch's own, with computed offsets
        # where safe_load let torch compute them
        inner = statistics.median(torch_offsets) if computes else tl
        rows.append(
            f"| {name} | {_mmm(torch_first)} | {_mmm(torch_offsets)} | "
            f"{'yes' if computes else 'no'} | {(tl * 1.05 - inner) * 1e3:.3f} | "
            f"{_mmm([c['total'] for c in first])} | "
            + " | ".join(_mmm([c[k] for c in first]) for k in PARTS)
            + f" | {_mmm(glue)} | {statistics.median(c['faults'] for c in first):.0f} | "
            f"{'yes' if all(c['lease'] for c in first) else 'no'} | "
            f"{_mmm([c['total'] for c in warm])} | "
            f"{(inner + statistics.median(c['total'] for c in first)) / tl:.3f} |")
    print(f"`python bench/overhead.py --files {a.files} -n {a.n}"
          f"{' --no-lease' if a.no_lease else ''}` "
          f"({time.strftime('%Y-%m-%d %H:%M')}, load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}); ms, median (min-max) of "
          f"{a.n} fresh processes:\n")
    print("| file | torch.load(mmap) | torch.load(mmap), computed offsets | safe_load computes "
          "| budget | ours, call 1 | " + " | ".join(PARTS)
          + " | glue | faults | lease | ours, call 3 | ratio (est.) |")
    print("|---" * (11 + len(PARTS)) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
