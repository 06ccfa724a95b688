"""``map_location="meta"``: dtypes, shapes and strides only, built from the audit's tensor
records. No tensor byte is read, for every format.

The result is a flat ``{name: tensor}`` dict keyed by the audit's tensor names (the
state-dict key path for torch files), whatever structure ``torch.load`` would return. It
serves safetensors files, legacy torch files and the sharded iterator; a torch zip's meta
load returns torch's own structure instead (``direct.load_meta_direct`` from the audit's
graph, else ``torch.load(map_location="meta")``).
Tensors that share a storage in the file share one meta storage here, with the file's
storage offsets and strides, so tied weights stay tied.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from ..model import TensorInfo
from ._torch import dtype_of, torch
from .base import LoaderError


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride: list[int] = []
    acc = 1
    for dim in reversed(shape):
        stride.append(acc)
        acc *= max(dim, 1)
    return tuple(reversed(stride))


def _extent_bytes(info: TensorInfo, stride: tuple[int, ...], itemsize: int) -> int:
    if math.prod(info.shape) == 0:
        return info.storage_offset * itemsize
    last = info.storage_offset + sum((d - 1) * s for d, s in zip(info.shape, stride, strict=True))
    return (last + 1) * itemsize


def iter_meta(infos: Iterable[TensorInfo]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, meta tensor)`` for every record, sharing storages as the file does."""
    storages: dict[tuple[str | None, str], torch.UntypedStorage] = {}
    for info in infos:
        dt = dtype_of(info.dtype)
        shape = tuple(info.shape)
        stride = tuple(info.stride) if info.stride is not None else contiguous_stride(shape)
        if len(stride) != len(shape) or min(shape, default=0) < 0:
            raise LoaderError(f"tensor {info.name!r}: shape {shape} and stride {stride} "
                              "do not fit together")
        need = max(_extent_bytes(info, stride, dt.itemsize), info.storage_nbytes or 0)
        key = (info.file, info.storage) if info.storage is not None else None
        storage = storages.get(key) if key is not None else None
        if storage is None or storage.nbytes() < need:
            storage = torch.UntypedStorage(need, device="meta")  # type: ignore[no-untyped-call]
            if key is not None:
                storages[key] = storage
        t = torch.empty(0, dtype=dt, device="meta")
        t.set_(storage, info.storage_offset, shape, stride)
        if info.requires_grad and (dt.is_floating_point or dt.is_complex):
            t.requires_grad_(True)
        yield info.name, t


def load_meta(infos: Iterable[TensorInfo]) -> dict[str, torch.Tensor]:
    return dict(iter_meta(infos))


__all__ = ["contiguous_stride", "iter_meta", "load_meta"]
