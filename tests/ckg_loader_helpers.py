"""Shared builders for the loader tests: benign checkpoints made with torch.save /
safetensors, hostile ones made opcode by opcode (inert payloads: they create a marker
file), and bit-exact comparisons."""

from __future__ import annotations

import hashlib
import io
import json
import random
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ckptguard.context import identity_of
from ckptguard.model import Format, Region, Report, TensorInfo, Verdict

HAS_CUDA = torch.cuda.is_available()


# --- benign content ------------------------------------------------------------------------

def benign_state_dict() -> OrderedDict[str, torch.Tensor]:
    """Several dtypes, tied weights, a view with an offset, a non-contiguous tensor,
    a 0-dim and an empty tensor."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=g)
    tied = torch.randn(3, 5, generator=g)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd["f32"] = torch.randn(4, 3, generator=g)
    sd["f16"] = torch.randn(7, generator=g).half()
    sd["bf16"] = torch.randn(2, 3, 2, generator=g).bfloat16()
    sd["f8_e4m3"] = torch.randn(8, generator=g).to(torch.float8_e4m3fn)
    sd["f8_e5m2"] = torch.randn(5, generator=g).to(torch.float8_e5m2)
    sd["f64"] = torch.randn(3, generator=g).double()
    sd["i64"] = torch.arange(10, dtype=torch.int64)
    sd["i8"] = torch.arange(-4, 4, dtype=torch.int8)
    sd["u8"] = torch.arange(0, 250, 25, dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["c64"] = torch.randn(3, generator=g, dtype=torch.complex64)
    sd["nan"] = torch.tensor([float("nan"), float("inf"), -0.0])
    sd["embed.weight"] = tied
    sd["lm_head.weight"] = tied                   # tied: same tensor
    sd["view"] = base[2:5]                        # shares base's storage, offset 8
    sd["base"] = base
    sd["transposed"] = torch.randn(3, 4, generator=g).t()   # non-contiguous
    sd["strided"] = torch.arange(20.0)[::3]                 # step > 1
    sd["scalar"] = torch.tensor(3.5)                         # 0-dim
    sd["empty"] = torch.empty(0, 3)
    return sd


def random_checkpoint(rng: random.Random, depth: int, pool: list[Any],
                      tensor: Callable[[random.Random], torch.Tensor]) -> Any:
    """A random torch.save-able object the way training code nests things: tensors from
    ``tensor`` (``pool`` collects them; one in six leaves re-uses one, sharing storage),
    scalars, lists, tuples, dicts with str and int keys, OrderedDicts with ``_metadata``.
    The fast-path and direct-loader differentials draw their checkpoints from here."""
    r = rng.random()
    if depth <= 0 or r < 0.35:
        if pool and rng.random() < 0.15:
            return rng.choice(pool)
        t = tensor(rng)
        pool.append(t)
        return t
    if r < 0.5:
        return rng.choice([1, -3, 2**40, 10**20, 0.5, 1.5, True, None, "adam",
                           (0.9, 0.999)])
    if r < 0.63:
        return [random_checkpoint(rng, depth - 1, pool, tensor)
                for _ in range(rng.randint(0, 3))]
    if r < 0.71:
        return tuple(random_checkpoint(rng, depth - 1, pool, tensor)
                     for _ in range(rng.randint(0, 3)))
    if r < 0.86:
        od: Any = OrderedDict((f"k{i}", random_checkpoint(rng, depth - 1, pool, tensor))
                              for i in range(rng.randint(0, 4)))
        if rng.random() < 0.5:
            od._metadata = OrderedDict({"": {"version": 1}, f"k{depth}": {"version": 2}})
        return od
    return {(i if rng.random() < 0.3 else f"p{i}"): random_checkpoint(rng, depth - 1, pool,
                                                                      tensor)
            for i in range(rng.randint(0, 4))}


def legacy_state_dict() -> OrderedDict[str, torch.Tensor]:
    """The legacy format cannot round-trip float8 storages (torch saves them untyped)."""
    sd = benign_state_dict()
    for k in ("f8_e4m3", "f8_e5m2"):
        del sd[k]
    return sd


def safetensors_state_dict() -> dict[str, torch.Tensor]:
    """safetensors needs contiguous, non-shared tensors."""
    out: dict[str, torch.Tensor] = {}
    for k, v in benign_state_dict().items():
        if k in ("lm_head.weight", "view", "transposed", "strided", "c64"):
            continue
        out[k] = v.contiguous().clone()
    return out


def save_torch(path: Path, obj: Any, *, legacy: bool = False) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def save_torch_shards(folder: Path, parts: list[dict[str, torch.Tensor]]) -> Path:
    """``parts`` saved as torch shards ``model-0000i-of-0000n.bin`` in ``folder``, with the
    ``pytorch_model.bin.index.json`` that maps every name to its shard; returns the index."""
    import json

    weight_map: dict[str, str] = {}
    for i, part in enumerate(parts, 1):
        shard = f"model-{i:05d}-of-{len(parts):05d}.bin"
        save_torch(folder / shard, part)
        weight_map.update({k: shard for k in part})
    index = folder / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


def save_safetensors(path: Path, sd: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    save_file(sd, str(path))
    return path


# --- hostile content -----------------------------------------------------------------------

def _unicode(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def exec_pickle(marker: Path) -> bytes:
    """protocol 2: builtins.exec("open(marker,'w').write('pwned')") then STOP."""
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    return b"\x80\x02cbuiltins\nexec\n" + _unicode(code) + b"\x85R."


def system_pickle(marker: Path) -> bytes:
    """protocol 2: posix.system("touch marker") then an empty dict."""
    return b"\x80\x02cposix\nsystem\n" + _unicode(f"touch '{marker}'") + b"\x85R0}."


def hostile_torch_zip(path: Path, marker: Path) -> Path:
    """A torch zip laid out like torch.save's, whose data.pkl calls builtins.exec."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", exec_pickle(marker))
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        z.writestr("archive/.data/serialization_id", "0" * 40)
    return path


def hostile_raw_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(system_pickle(marker))
    return path


def hostile_zip_bytes(marker: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", exec_pickle(marker))
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


# --- synthetic SAFE reports (loader-layer tests, independent of the audit) -------------------

def safetensors_report(path: Path, fd: int) -> Report:
    """A SAFE report for a safetensors file, with header parsed here and its region hashed."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    tensors = []
    for name, rec in header.items():
        if name == "__metadata__":
            continue
        start, end = rec["data_offsets"]
        tensors.append(TensorInfo(name=name, dtype=rec["dtype"], shape=tuple(rec["shape"]),
                                  storage=name, nbytes=end - start, data_offset=base + start))
    region = Region(0, base, hashlib.sha256(raw[:base]).hexdigest())
    return Report(path=str(path), format=Format.SAFETENSORS, verdict=Verdict.SAFE,
                  tensors=tuple(tensors), identity=identity_of(fd, (region,)))


def torch_report(path: Path, fd: int, *, legacy: bool = False,
                 tensors: tuple[TensorInfo, ...] = ()) -> Report:
    """A SAFE report for a torch file; its first 64 bytes stand in for the audited region."""
    head = path.read_bytes()[:64]
    region = Region(0, len(head), hashlib.sha256(head).hexdigest())
    return Report(path=str(path), format=Format.TORCH_LEGACY if legacy else Format.TORCH_ZIP,
                  verdict=Verdict.SAFE, tensors=tensors, identity=identity_of(fd, (region,)))


def infos_from(sd: dict[str, torch.Tensor]) -> tuple[TensorInfo, ...]:
    """TensorInfo records like the VM reconstructs, from a reference state dict."""
    keys: dict[int, str] = {}
    out = []
    for name, t in sd.items():
        st = t.untyped_storage()
        key = keys.setdefault(st.data_ptr() if st.nbytes() else id(st), f"data/{len(keys)}")
        out.append(TensorInfo(name=name, dtype=str(t.dtype).removeprefix("torch."),
                              shape=tuple(t.shape), stride=tuple(t.stride()), storage=key,
                              storage_offset=t.storage_offset(),
                              nbytes=t.numel() * t.element_size(), storage_nbytes=st.nbytes(),
                              requires_grad=t.requires_grad))
    return tuple(out)


# --- comparisons -------------------------------------------------------------------------

def bits(t: torch.Tensor) -> bytes:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return bytes(flat.view(torch.uint8).numpy().tobytes()) if flat.numel() else b""


def assert_same_tensor(a: torch.Tensor, b: torch.Tensor, name: str = "") -> None:
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), name
    assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
    assert tuple(a.shape) == tuple(b.shape), (name, a.shape, b.shape)
    assert tuple(a.stride()) == tuple(b.stride()), (name, a.stride(), b.stride())
    assert a.storage_offset() == b.storage_offset(), (name, a.storage_offset(), b.storage_offset())
    assert a.requires_grad == b.requires_grad, name
    assert type(a) is type(b), (name, type(a), type(b))
    assert bits(a) == bits(b), f"{name}: values differ"


def sharing(sd: dict[str, torch.Tensor]) -> set[frozenset[str]]:
    """Groups of names whose tensors share one storage (only groups of two or more)."""
    groups: dict[int, set[str]] = {}
    for k, v in sd.items():
        if isinstance(v, torch.Tensor) and v.untyped_storage().nbytes():
            groups.setdefault(v.untyped_storage().data_ptr(), set()).add(k)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def assert_same_state_dict(ours: Any, ref: Any) -> None:
    assert type(ours) is type(ref), (type(ours), type(ref))
    if isinstance(ref, torch.Tensor):
        assert_same_tensor(ours, ref)
        return
    assert list(ours.keys()) == list(ref.keys())
    for k in ref:
        if isinstance(ref[k], torch.Tensor):
            assert_same_tensor(ours[k], ref[k], k)
        elif isinstance(ref[k], dict):
            assert_same_state_dict(ours[k], ref[k])
        else:
            assert ours[k] == ref[k], k
    assert sharing(ours) == sharing(ref)


def io_chars() -> tuple[int, int]:
    """(rchar, read_bytes) of this process from /proc/self/io."""
    fields: dict[str, int] = {}
    with open("/proc/self/io") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            fields[k.strip()] = int(v)
    return fields["rchar"], fields.get("read_bytes", 0)


__all__ = [name for name in dir() if not name.startswith("_")]


def spy_torch_load(monkeypatch: Any) -> list[int]:
    """Count ckptguard's calls of the real ``torch.load`` from now until ``monkeypatch``
    is undone (``monkeypatch.undo()`` or the test's end): one item per call."""
    from ckptguard.loaders import _torch as torch_mod

    calls: list[int] = []
    real = torch_mod.ORIGINAL_LOAD

    def spy(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(torch_mod, "ORIGINAL_LOAD", spy)
    return calls


def random_tensor(rng: random.Random, dtypes: list[torch.dtype]) -> torch.Tensor:
    """A small tensor of one of ``dtypes``, sometimes a view (transposed, with a storage
    offset, empty, or a 1-dim view of a 2-dim storage), sometimes a Parameter or requiring
    gradients: the leaves of the loader differentials' ``random_checkpoint``."""
    dt = rng.choice(dtypes)
    t = (torch.rand(rng.randint(1, 5), rng.randint(1, 5)) * 100).to(dt)
    k = rng.random()
    if k < 0.2:
        t = t.transpose(0, 1)
    elif k < 0.4 and t.numel() > 2:
        t = t.reshape(-1)[1:]          # a view with a storage offset
    elif k < 0.5:
        t = t[:0]
    elif k < 0.6:
        t = t[0]                        # 1-dim view of a 2-dim storage
    if dt.is_floating_point and rng.random() < 0.4:
        t = torch.nn.Parameter(t.detach(), requires_grad=rng.random() < 0.5) \
            if rng.random() < 0.5 else t.detach().requires_grad_(True)
    return t
