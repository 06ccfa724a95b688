"""atheris target: the JSON tensor-row encoder (``_native/jsoncore.c``) against json.dumps.

    ASAN_BUILD_DIR=/tmp/asan-json fuzz/native/build_asan.sh fuzz/native/fuzz_jsoncore.py \\
        -runs=200000

Each input seeds a generator (tests/ckg_json_reports.py: tensor lists with hostile strings,
huge ints, every dtype, odd types, unset slots) and also becomes raw strings of its own (the
input decoded as UTF-8, Latin-1 and UTF-32 code points with surrogates): the encoder's text
must be ``json.dumps``' (compact and indented), or it declines; fastjson with it must give
json.dumps' text or raise what json.dumps raises. Built with ASan and UBSan by
build_asan.sh, so an out-of-bounds write, a use-after-free or an overflow aborts the run.
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

from ckg_json_reports import (  # noqa: E402
    fastjson_rows,
    reference_rows,
    same_outcome,
    tensors,
)

from ckptguard._native import native  # noqa: E402
from ckptguard.model import TensorInfo  # noqa: E402
from ckptguard.report import fastjson as fj  # noqa: E402

LEVELS = [None, 1, 2, 3, 64]
STATS = {"runs": 0, "accepted": 0}


def _strings(data: bytes) -> list[str]:
    """The raw input as strings: UTF-8 (surrogateescape: lone surrogates), Latin-1, and
    code points 0..0x10FFFF from 3-byte groups (surrogates included)."""
    cps = [int.from_bytes(data[i:i + 3], "little") % 0x110000 for i in range(0, len(data), 3)]
    return [data.decode("utf-8", "surrogateescape"), data.decode("latin-1"),
            "".join(map(chr, cps))]


def _check(ts: list[TensorInfo], level: int | None) -> None:
    core = native("jsoncore")
    assert core is not None
    want = reference_rows(ts, level)
    got = core.rows(ts, -1 if level is None else level)
    if got is not None:
        STATS["accepted"] += 1
        if got != want:
            raise AssertionError(f"jsoncore differs from json.dumps: {got!r:.300} / {want!r:.300}")
    if not same_outcome(fastjson_rows(ts, level), want):
        raise AssertionError("fastjson differs from json.dumps")


def TestOneInput(data: bytes) -> None:
    rng = random.Random(data)  # noqa: S311 - a seeded generator, not a secret
    level = rng.choice(LEVELS)
    _check(tensors(rng), level)
    strs = _strings(data)
    n = int.from_bytes(data[:8].ljust(8, b"\0"), "little", signed=True)
    _check([TensorInfo(s, s, (n, len(data)), (1, n), s, n, len(s), None, -n, s, True, s)
            for s in strs], level)
    STATS["runs"] += 1
    if STATS["runs"] % 10000 == 0:
        print(f"jsoncore fuzz: {STATS}", file=sys.stderr, flush=True)


def main() -> None:
    core = native("jsoncore")
    assert core is not None, "jsoncore is not built"
    assert fj._core() is core
    print(f"jsoncore: {core.__file__}", file=sys.stderr)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()  # libFuzzer exits the process; the counts print every 10,000 runs


if __name__ == "__main__":
    main()
