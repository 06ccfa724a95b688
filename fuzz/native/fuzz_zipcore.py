"""atheris target: the zip prover (``_native/zipcore.c``) against the Python zip reader.

    ASAN_BUILD_DIR=/tmp/asan-zip fuzz/native/build_asan.sh fuzz/native/fuzz_zipcore.py \\
        /tmp/asan-zip-corpus -runs=200000 -max_len=65536

Each input is audited by ``read_archive`` twice, through the prover (built with ASan and
UBSan by build_asan.sh, so an out-of-bounds read, a leak of a use-after-free or an
overflow aborts the run) and with ``CKPTGUARD_PURE=1``. The two must agree on the entries,
findings, recorded regions and bytes read (or raise the same limit), and an archive the
prover accepts must be one the Python reader records no finding for. An input starting
with ``PK`` is audited as it is; any other input seeds a generator (a zip fixture or a
torch-like archive of tests/ckg_zip_archives.py with layout knobs, then byte mutations),
so the run stays meaningful where the ASan preload leaves libFuzzer without coverage.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

with atheris.instrument_imports():
    pass

import ckg_zip_archives  # noqa: E402
from ckg_zip_archives import archive, mutate, read_outcome  # noqa: E402

from ckptguard._native import native  # noqa: E402
from ckptguard.policy import DEFAULT_LIMITS, Policy  # noqa: E402

ckg_zip_archives.USE_TORCH = False
POLICY = Policy()
SMALL = DEFAULT_LIMITS.replace(max_members=64, max_central_directory_bytes=1 << 14)
STATS = {"runs": 0, "proven": 0, "flagged": 0}


def _read(data: bytes, pure: bool, small: bool, fd: bool = False) -> tuple[object, bool]:
    os.environ["CKPTGUARD_PURE"] = "1" if pure else "0"
    return read_outcome(data, SMALL if small else DEFAULT_LIMITS, fd=fd)


def _fixture_seeds() -> list[bytes]:
    out = []
    for sub in ("benign", "hostile", "medium", "robustness"):
        for p in sorted((ROOT / "fixtures" / sub).rglob("*")):
            if p.is_file() and p.stat().st_size <= 65536 and p.read_bytes()[:2] == b"PK":
                out.append(p.read_bytes())
    return out


SEEDS = _fixture_seeds()


def _derive(data: bytes) -> bytes:
    """An archive from a non-zip input: the input seeds a generator (a fixture or a
    generated archive, then 0-3 byte mutations), so every execution audits a meaningful
    archive even where libFuzzer's coverage feedback is missing (under the ASan preload
    atheris reports no Python coverage, and libFuzzer keeps mutating tiny inputs)."""
    rng = random.Random(data)  # noqa: S311 - a seeded generator, not a secret
    if SEEDS and rng.random() < 0.3:
        base = rng.choice(SEEDS)
    else:
        _, base = archive(rng)
    for _ in range(rng.randrange(4)):
        base = mutate(rng, base)
    return base


def TestOneInput(data: bytes) -> None:
    if data[:2] != b"PK":
        data = _derive(data)
    small = bool(data) and data[-1] % 7 == 0
    slow, _ = _read(data, True, small)
    fast, proven = _read(data, False, small)
    STATS["runs"] += 1
    STATS["proven"] += proven
    STATS["flagged"] += bool(slow[1])  # type: ignore[index]
    if STATS["runs"] % 10000 == 0:
        print(f"zipcore fuzz: {STATS}", file=sys.stderr, flush=True)
    if slow != fast:
        raise AssertionError(f"prover and Python reader differ: {slow!r:.300} / {fast!r:.300}")
    if proven and slow[1]:  # type: ignore[index]
        raise AssertionError(f"prover accepted an archive the Python reader flags: {slow[1]}")
    # the same bytes as a local file (a memfd): prove_fd, pread in C
    slow_fd, _ = _read(data, True, small, fd=True)
    fast_fd, proven_fd = _read(data, False, small, fd=True)
    if slow_fd != fast_fd or proven_fd != proven:
        raise AssertionError(f"prove_fd and Python reader differ: {slow_fd!r:.300} / "
                             f"{fast_fd!r:.300}")


def _seed(corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(SEEDS):
        (corpus / f"fixture_{i}").write_bytes(d)


def main() -> None:
    assert native("zipcore") is not None, "zipcore is not built"
    print(f"zipcore: {native('zipcore').__file__}", file=sys.stderr)  # type: ignore[union-attr]
    corpora = [a for a in sys.argv[1:] if not a.startswith("-")]
    for c in corpora:
        _seed(Path(c))
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()  # libFuzzer exits the process; the counts print every 10,000 runs


if __name__ == "__main__":
    main()
