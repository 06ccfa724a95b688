"""The differential oracle, long run: SAFE must hold for every loader of the same bytes.

    python fuzz/oracle.py                              # one round, seed 0 (~5 min here)
    python fuzz/oracle.py --rounds 5 --seed 100        # seeds 100..104
    python fuzz/oracle.py --loads-for all              # also load every non-SAFE file
    python fuzz/oracle.py --json out.json              # totals and disagreements as JSON

Each round builds a corpus (tests/oracle_harness.py: every fixture under every extension,
generated files of every format and polyglot kind, seeded mutants), scans each file with
ckptguard, then runs every loader kind -- ONE worker process each, an audit hook,
RLIMIT_AS, a per-file timeout -- over the SAFE files (``--loads-for all``: every file).
Prints the totals (files x loaders, events seen, SAFE verdicts, disagreements) and every
disagreement; exits 1 when a disagreement falls outside the known open classes
(KNOWN_OPEN in tests/oracle_harness.py), 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from oracle_harness import KNOWN_OPEN, Totals, check, corpus  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--generated", type=int, default=30, help="files per format and polyglot")
    ap.add_argument("--mutants", type=int, default=2000)
    ap.add_argument("--renames", type=int, default=None,
                    help="other extensions per fixture (default: all)")
    ap.add_argument("--loads-for", choices=("safe", "all"), default="safe")
    ap.add_argument("--timeout", type=float, default=30.0, help="per SAFE file and loader")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    grand = Totals()
    for r in range(args.rounds):
        seed = args.seed + r
        cases = corpus(seed, generated_per_kind=args.generated, mutants=args.mutants,
                       renames=args.renames)
        print(f"round {r + 1}/{args.rounds}: seed {seed}, {len(cases)} files", flush=True)
        tot = check(cases, loads_for=args.loads_for, timeout=args.timeout,
                    progress=lambda m: print("  " + m, flush=True))
        print("  " + tot.summary(), flush=True)
        grand.files += tot.files
        grand.loads += tot.loads
        grand.safe += tot.safe
        grand.verdicts += tot.verdicts
        grand.events += tot.events
        grand.loads_with_events += tot.loads_with_events
        grand.outside_globals += tot.outside_globals
        grand.restarts += tot.restarts
        grand.by_origin += tot.by_origin
        grand.disagreements += tot.disagreements
        grand.seconds += tot.seconds
    print(grand.summary())
    known = Counter(next((k for k in KNOWN_OPEN if k in d.case.origin), "NEW")
                    for d in grand.disagreements)
    print(f"disagreements by class: {dict(known)}")
    new = [d for d in grand.disagreements
           if not any(k in d.case.origin for k in KNOWN_OPEN)]
    for d in new[:50]:
        print("NEW " + d.describe())
    if args.json:
        args.json.write_text(json.dumps({
            "files": grand.files, "loads": grand.loads, "safe": grand.safe,
            "verdicts": dict(grand.verdicts), "events": grand.events,
            "loads_with_events": grand.loads_with_events,
            "outside_globals": grand.outside_globals, "by_origin": dict(grand.by_origin),
            "disagreements": [{"origin": d.case.origin, "name": d.case.name,
                               "loader": d.loader, "why": d.why,
                               "data_hex": d.case.data.hex()} for d in grand.disagreements],
        }, indent=1))
    return 1 if new else 0


if __name__ == "__main__":
    raise SystemExit(main())
