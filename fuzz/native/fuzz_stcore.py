"""atheris target: the safetensors header prover (``_native/stcore.c``) against the strict
Python parser.

    ASAN_BUILD_DIR=/tmp/asan-stcore fuzz/native/build_asan.sh fuzz/native/fuzz_stcore.py \\
        -runs=200000 -len_control=0

Each input is audited by ``audit_safetensors`` as it runs (the C prover first, built with
ASan and UBSan by build_asan.sh, so an out-of-bounds read, a use-after-free or an overflow
aborts the run), with ``CKPTGUARD_PURE=1`` and by the strict parser alone: all three must
record the same findings, tensors, metadata and bytes read (or hit the same limit), and a
header the prover accepts must be one the strict parser records nothing for. An input
whose bytes 8.. start with ``{`` is audited as it is (one in three also sent straight to
``prove`` with odd sizes); any other input seeds a generator (tests/ckg_st_headers.py: a
plain header in one of several JSON layouts, then 0-3 hostile edits), so the run stays
meaningful where the ASan preload leaves libFuzzer without coverage.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

with atheris.instrument_imports():
    pass

from ckg_st_headers import audit, mutate, plain, random_limits  # noqa: E402

from ckptguard._native import native  # noqa: E402
from ckptguard.analysis import safetensors as st_audit  # noqa: E402
from ckptguard.policy import DEFAULT_LIMITS  # noqa: E402

STATS = {"runs": 0, "proven": 0, "flagged": 0}


def _derive(data: bytes) -> bytes:
    rng = random.Random(data)  # noqa: S311 - a seeded generator, not a secret
    blob = plain(rng, rng.choice([None, None, 0, 1, 200]))
    for _ in range(rng.randrange(4)):
        blob = mutate(rng, blob)
    return blob


def TestOneInput(data: bytes) -> None:
    raw = data[8:9] == b"{"
    blob = data if raw else _derive(data)
    limits = random_limits(random.Random(blob)) if blob and blob[-1] % 7 == 0 else \
        DEFAULT_LIMITS
    if raw and data[0] % 3 == 0:  # the prover alone, on any sizes
        core = st_audit._stcore()
        for size in (len(data), len(data) + data[1], max(0, len(data) - data[2])):
            core.prove(data[8:], 8, size, data[3])
    nat = audit(blob, "native", limits)
    pure = audit(blob, "pure", limits)
    strict = audit(blob, "strict", limits)
    proven = nat.pop("proven")
    pure.pop("proven")
    strict.pop("proven")
    STATS["runs"] += 1
    STATS["proven"] += proven
    STATS["flagged"] += bool(strict["findings"])
    if STATS["runs"] % 10000 == 0:
        print(f"stcore fuzz: {STATS}", file=sys.stderr, flush=True)
    if not nat == pure == strict:
        raise AssertionError(f"prover and Python paths differ: {nat!r:.300} / {strict!r:.300}")
    if proven and (strict["findings"] or strict["problems"]):
        raise AssertionError(f"prover accepted a header the strict path flags: {strict}")


def main() -> None:
    assert native("stcore") is not None, "stcore is not built"
    print(f"stcore: {native('stcore').__file__}", file=sys.stderr)  # type: ignore[union-attr]
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()  # libFuzzer exits the process; the counts print every 10,000 runs


if __name__ == "__main__":
    main()
