"""atheris target: the safetensors header prover (``_native/stcore.c``) against the strict
Python parser.

    ASAN_BUILD_DIR=/tmp/asan-stcore fuzz/native/build_asan.sh fuzz/native/fuzz_stcore.py \\
        -runs=200000 -len_control=0

Each input is audited by ``audit_safetensors`` as it runs (the C prover first, built with
ASan and UBSan by build_asan.sh, so an out-of-bounds read, a use-after-free or an overflow
aborts the run), with ``CKPTGUARD_PURE=1`` and by the strict parser alone: all three must
record the same findings, tensors, metadata and bytes read (or hit the same limit), and a
header the prover accepts must be one the strict parser records nothing for. An input
whose bytes 8.. start with ``{`` is audited as it is; any other input seeds a generator
(tests/ckg_st_headers.py: a plain header in one of several JSON layouts, then 0-3 hostile
edits, and one in ten gets the input's own bytes spliced into its header), so the run stays
meaningful where the ASan preload leaves libFuzzer without coverage. One file in three is
also sent straight to ``prove`` with wrong file sizes and small tensor limits.
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

from ckg_st_headers import join, mutate, plain, random_limits, split, three_ways  # noqa: E402

from ckptguard._native import native  # noqa: E402
from ckptguard.analysis import safetensors as st_audit  # noqa: E402
from ckptguard.policy import DEFAULT_LIMITS  # noqa: E402

STATS = {"runs": 0, "proven": 0, "flagged": 0}


def _derive(data: bytes) -> bytes:
    rng = random.Random(data)  # noqa: S311 - a seeded generator, not a secret
    blob = plain(rng, rng.choice([None, None, 0, 1, 200]))
    for _ in range(rng.randrange(4)):
        blob = mutate(rng, blob)
    if rng.random() < 0.1:  # the input's own bytes spliced into the header
        header, rest = split(blob)
        i = rng.randrange(len(header) + 1)
        blob = join(header[:i] + data + header[i + len(data):], rest)
    return blob


def TestOneInput(data: bytes) -> None:
    raw = data[8:9] == b"{"
    blob = data if raw else _derive(data)
    small = bool(blob) and blob[-1] % 7 == 0
    limits = random_limits(random.Random(blob)) if small else DEFAULT_LIMITS  # noqa: S311
    if len(blob) >= 8 and blob[-1] % 3 == 0:  # the prover alone: odd sizes and limits
        core = st_audit._stcore()
        header, rest = split(blob)
        start = 8 + len(header)
        for size in (start + len(rest), start + len(rest) + 1, start, start - 1, 0):
            got = core.prove(header, start, size, blob[3])
            # a proven layout ends exactly at the end of the file it was given
            assert got is None or sum(t.nbytes for t in got[0]) == size - start
    proven, nat, pure, strict = three_ways(blob, limits)
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
