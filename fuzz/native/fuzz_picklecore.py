"""atheris target: the native data.pkl core (src/ckptguard/_native/picklecore.c), under
ASan/UBSan, cross-checked against the Python fast path and the VM.

    ASAN_BUILD_DIR=/tmp/asan-pkl fuzz/native/build_asan.sh fuzz/native/fuzz_picklecore.py \\
        /tmp/pkl-corpus -runs=200000 -len_control=0

gcc's ASan runtime leaves libFuzzer without coverage, so the target mutates for itself:
the input picks one of the real data.pkl streams of the torch zips under fixtures/ (with
its storage catalog) and says how to mutate it (byte flips, spliced hostile tokens and
opcodes, deletions, truncations, copied slices for memo and key reuse, storage records of
another size); with flag bit 2 it is instead ``<catalog> \\0CAT\\0 <data.pkl>`` taken raw
(``key:size`` lines). Bit 0 keeps the graph (engine="ckptguard"), bit 1 uses small limits.
The corpus folder is seeded with the same streams when empty. Per input:

- the core never crashes (ASan/UBSan abort on any bad access) and returns None or a result;
- when it accepts, the VM (same limits) records nothing and names the same tensors with
  the same records, and the Python fast path, when it accepts too, gives the same result.
"""

from __future__ import annotations

import io
import math
import os
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports():
    from ckptguard.analysis import fastpath
    from ckptguard.analysis.tensors import StorageCatalog
    from ckptguard.analysis.vm import PickleMode, audit_pickle
    from ckptguard.context import AuditContext, Source
    from ckptguard.policy import DEFAULT_LIMITS, Policy

ROOT = Path(__file__).resolve().parents[2]
SPLIT = b"\0CAT\0"
POLICY = Policy()
LIMITS = [DEFAULT_LIMITS.replace(max_seconds=5.0),
          DEFAULT_LIMITS.replace(max_seconds=5.0, max_mark_depth=12, max_tensors=3,
                                 max_container_items=200, max_stack=200, max_memo=40)]
CORE = fastpath._core()
if CORE is None:
    raise SystemExit("the native picklecore is not built (or CKPTGUARD_PURE=1)")


def split(data: bytes) -> tuple[int, StorageCatalog, bytes]:
    flags = data[0] if data else 0
    body = data[1:]
    cat = StorageCatalog()
    head, sep, pkl = body.partition(SPLIT)
    if not sep:
        return flags, cat, body
    for line in head.split(b"\n"):
        k, _, v = line.partition(b":")
        if v.isdigit() and len(v) < 12:
            cat.records[k.decode("utf-8", "replace")] = (f"a/data/{k!r}", 64, int(v))
    return flags, cat, pkl


def _ctx(limits: object, keep: bool) -> AuditContext:
    c = AuditContext("<fuzz>", Source.from_bytes(b""), POLICY, limits)  # type: ignore[arg-type]
    c.keep_graph = keep
    return c


def _rec(r: object) -> tuple[object, ...]:
    st = r.storage  # type: ignore[attr-defined]
    return (st and (st.key, st.dtype, st.numel, st.location, st.record_size),
            r.storage_offset, r.shape, r.stride, r.dtype,  # type: ignore[attr-defined]
            r.requires_grad, r.kind)  # type: ignore[attr-defined]


#: tokens spliced into seeds: hostile globals, every opcode, memo tricks, bad literals
TOKENS = [
    b"cos\nsystem\n", b"ctorch._utils\n_rebuild_tensor\n", b"ctorch\nUntypedStorage\n",
    b"ccollections\nOrderedDict\n", b"ctorch._utils\n_rebuild_parameter\n",
    b"ctorch\nFloatStorage\n", b"X\x07\x00\x00\x00storage", b"X\x03\x00\x00\x00cpu",
    b"X\x01\x00\x00\x000", b"X\xff\xff\xff\x7f", b"X\x02\x00\x00\x00\xed\xa0",
    b"\x8a\x08" + b"\xff" * 8, b"\x8a\x09", b"J\xff\xff\xff\xff", b"G" + b"\x7f" * 8,
    b"h\x00", b"h\x05", b"j\x00\x00\x00\x00", b"q\x00", b"r\xff\xff\x3f\x00",
    b"(" * 40, b"\x85" * 40, b"]" * 20 + b"a" * 19, b"N(u", b"K\x01Nb", b"}(K\x01Nu",
    *[bytes([op]) for op in b"()tsuaebRQN}]\x85\x86\x87\x88\x89\x94\x95\x8c0212."],
]
SEEDS: list[tuple[StorageCatalog, bytes]] = []
STATS = [0, 0]  # declined, accepted


def mutate(fdp: atheris.FuzzedDataProvider) -> tuple[StorageCatalog, bytes]:
    """A real data.pkl stream (chosen by the input) mutated as the input says."""
    cat, pkl = SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)]
    b = bytearray(pkl)
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        kind = fdp.ConsumeIntInRange(0, 6)
        i = fdp.ConsumeIntInRange(0, max(0, len(b) - 1))
        if kind == 0 and b:
            b[i] = fdp.ConsumeInt(1) & 0xFF
        elif kind == 1:
            b[i:i] = TOKENS[fdp.ConsumeIntInRange(0, len(TOKENS) - 1)]
        elif kind == 2:
            b[i:i] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 8))
        elif kind == 3:
            del b[i : i + fdp.ConsumeIntInRange(1, 16)]
        elif kind == 4:
            del b[i:]
        elif kind == 5:  # a slice copied elsewhere (memo reuse, repeated keys)
            j = fdp.ConsumeIntInRange(0, max(0, len(b) - 1))
            b[j:j] = b[i : i + fdp.ConsumeIntInRange(1, 64)]
        elif cat.records:  # a storage record of another size
            k = sorted(cat.records)[fdp.ConsumeIntInRange(0, len(cat.records) - 1)]
            m, off, size = cat.records[k]
            cat = StorageCatalog(records={**cat.records,
                                          k: (m, off, size + fdp.ConsumeIntInRange(-8, 8))})
    return cat, bytes(b)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    flags = fdp.ConsumeInt(1) & 0xFF
    if flags & 4 or not SEEDS:
        flags, cat, pkl = split(fdp.ConsumeBytes(1 << 16))
    else:
        cat, pkl = mutate(fdp)
    limits = LIMITS[(flags >> 1) & 1]
    keep = bool(flags & 1)
    ncat = StorageCatalog(records=dict(cat.records))
    nat = fastpath._try_native(CORE, _ctx(limits, keep), pkl, ncat)
    STATS[nat is not None] += 1
    if sum(STATS) % 20000 == 0:
        print(f"picklecore: {sum(STATS)} inputs, {STATS[1]} accepted", file=sys.stderr,
              flush=True)
    if nat is None:
        if ncat.seen:
            raise AssertionError("declined but changed the catalog")
        return
    vctx = _ctx(limits, False)
    res = audit_pickle(vctx, pkl, member="a/data.pkl", mode=PickleMode.TORCH_ZIP,
                       storages=StorageCatalog(records=dict(cat.records)))
    if vctx.findings:
        raise AssertionError(f"native accepted what the VM flags: "
                             f"{[f.rule_id for f in vctx.findings]}")
    if [(n, _rec(r)) for n, r in res.tensors] != [(n, _rec(r)) for n, r in nat.result.tensors]:
        raise AssertionError("native and VM name different tensors")
    pcat = StorageCatalog(records=dict(cat.records))
    py = fastpath._try_python(_ctx(limits, keep), pkl, pcat)
    if py is not None and (py.result.tensors != nat.result.tensors or pcat.seen != ncat.seen):
        raise AssertionError("native and Python fast paths differ")
    if keep and nat.root is not None:
        # the loaded object built inside the core (meta loads: set_maker), with a maker
        # that returns the record, or fails on one in eight inputs: the object the graph
        # gives (direct._build's walk), or None
        fail = flags & 0x38 == 0x38
        prev = fastpath.set_maker(_failing_maker if fail else _record)
        try:
            built = fastpath._try_native(CORE, _ctx(limits, True), pkl,
                                         StorageCatalog(records=dict(cat.records)))
        finally:
            fastpath.set_maker(prev)
        if built is None or built.root is not None:
            raise AssertionError("the build with a maker changed the proof")
        if fail:
            if built.built is not None and nat.result.tensors:
                raise AssertionError("a failing maker gave an object")
        elif built.built is None:
            raise AssertionError("the core built no object")
        else:
            try:
                same = _same(_plain(nat.root, {}), built.built[0])
            except RecursionError:  # nesting deeper than this harness walks
                same = True
            if not same:
                raise AssertionError("the core's object differs from the graph's")


def _record(rec: object) -> object:
    return rec


def _failing_maker(rec: object) -> object:
    raise ValueError("maker failed")


def _plain(v: object, memo: dict[int, object]) -> object:
    """loaders/direct._build's object with the records as tensors (shared stays shared)."""
    t = type(v)
    if t in (str, int, float, bool, type(None)):
        return v
    if id(v) in memo:
        return memo[id(v)]
    out: Any
    if t is fastpath.FastTensor:
        out = memo[id(v)] = v.tensor  # type: ignore[attr-defined]
    elif t is fastpath.FastDict or t is fastpath.FastOrderedDict:
        out = memo[id(v)] = {} if t is fastpath.FastDict else OrderedDict()
        for k, x in v.items():  # type: ignore[attr-defined]
            out[k] = _plain(x, memo)
        if t is fastpath.FastOrderedDict and v.state is not None:  # type: ignore[attr-defined]
            out.__dict__.update(_plain(v.state, memo))  # type: ignore[attr-defined]
    elif t is fastpath.FastList:
        out = memo[id(v)] = [_plain(x, memo) for x in v]  # type: ignore[attr-defined]
    elif t is tuple:
        out = memo[id(v)] = tuple(_plain(x, memo) for x in v)  # type: ignore[attr-defined]
    else:
        raise AssertionError(f"unexpected {t.__name__} in the graph")
    return out


def _same(a: object, b: object) -> bool:
    """Equal types, keys in order, values, OrderedDict attributes; tensors as records."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and \
            getattr(a, "__dict__", {}) == getattr(b, "__dict__", {}) and \
            all(_same(a[k], b[k]) for k in a)  # type: ignore[index]
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(  # type: ignore[arg-type]
            _same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[call-overload]
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))  # type: ignore[arg-type]


def _torch_zip(p: Path) -> tuple[list[bytes], bytes | None]:
    """(catalog lines, data.pkl) of a torch zip; data.pkl None for anything else."""
    cat: list[bytes] = []
    pkl = None
    try:
        with zipfile.ZipFile(io.BytesIO(p.read_bytes())) as z:
            for info in z.infolist():
                rel = info.filename.split("/", 1)[-1]
                if rel == "data.pkl":
                    pkl = z.read(info)
                elif rel.startswith("data/"):
                    cat.append(f"{rel[5:]}:{info.file_size}".encode())
    except Exception:  # noqa: BLE001 - not a zip, a broken or encrypted one: no seed
        return [], None
    return cat, pkl


def seed(corpus: Path | None) -> int:
    """The data.pkl of every torch zip under fixtures/, with its catalog (written into
    ``corpus`` too, when given)."""
    if corpus is not None:
        corpus.mkdir(parents=True, exist_ok=True)
    n = 0
    for p in sorted((ROOT / "fixtures").rglob("*")):
        if not p.is_file() or p.stat().st_size > 4 << 20:
            continue
        cat, pkl = _torch_zip(p)
        if pkl is None or len(pkl) > 1 << 16:
            continue
        SEEDS.append((StorageCatalog(records={
            k.decode(): ("a/data/" + k.decode(), 64, int(v))
            for k, _, v in (c.partition(b":") for c in cat)}), pkl))
        for flags in (0, 1) if corpus is not None else ():
            (corpus / f"{p.stem}-{n}-{flags}").write_bytes(
                bytes([flags]) + b"\n".join(cat) + SPLIT + pkl)
        n += 1
    return n


if __name__ == "__main__":
    dirs = [a for a in sys.argv[1:] if not a.startswith("-")]
    corpus = Path(dirs[0]) if dirs else None
    fresh = corpus is not None and (not corpus.is_dir() or not os.listdir(corpus))
    print(f"{seed(corpus if fresh else None)} data.pkl seeds", flush=True)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
