"""safetensors, zero-copy: one private memory map of the audited descriptor, and each
tensor a ``torch.frombuffer`` view at the ``data_offset`` the audit validated.

For ``map_location="cpu"`` no tensor byte is copied (the tensors share the file's pages;
the map is copy-on-write, so writing to a tensor never touches the file -- but pages not
yet written still follow the file: rewriting it changes the tensors, truncating it makes
a read die with SIGBUS). For a CUDA device each tensor is copied from the map straight to
the device, one at a time, so no full host copy is ever made.

``copy=True`` maps nothing: each tensor is read with ``pread`` into memory it owns, so a
later rewrite or truncation of the file cannot reach it (a file that shrinks while being
read raises :class:`FileChangedError`).
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterator
from typing import Any

from ..errors import FileChangedError
from ..model import Format, TensorInfo
from ._torch import MapLocation, dtype_of, single_device, torch
from .base import AuditedFile, LoaderError


def _map(af: AuditedFile) -> mmap.mmap | None:
    size = af.report.identity.size if af.report.identity is not None else 0
    if size == 0:
        return None
    try:
        return mmap.mmap(af.fd, size, access=mmap.ACCESS_COPY)
    except (ValueError, OSError) as e:  # e.g. the file shrank below the audited size
        af.check_stat()
        raise LoaderError(f"{af.path}: cannot map the file ({e})") from e


def _read_owned(af: AuditedFile, info: TensorInfo, dt: torch.dtype, numel: int) -> torch.Tensor:
    """A tensor that owns its memory, filled with ``pread`` from the audited descriptor."""
    t = torch.empty(tuple(info.shape), dtype=dt)
    if numel == 0 or info.data_offset is None:
        return t
    flat: Any = t.view(-1).view(torch.uint8).numpy()  # the tensor's own bytes
    view = memoryview(flat)
    got, total = 0, len(view)
    while got < total:
        n = os.preadv(af.fd, [view[got:]], info.data_offset + got)
        if n <= 0:
            raise FileChangedError(af.path, f"the file ended while reading tensor {info.name!r}"
                                   f" ({got} of {total} bytes)")
        got += n
    af.check_stat()  # a rewrite while reading changes the mtime
    return t


def _check(af: AuditedFile, info: TensorInfo, dt: torch.dtype) -> int:
    numel = math.prod(info.shape)
    nbytes = numel * dt.itemsize
    size = af.report.identity.size if af.report.identity is not None else 0
    if info.nbytes and info.nbytes != nbytes:
        raise LoaderError(f"{af.path}: tensor {info.name!r} records {info.nbytes} bytes, its "
                          f"dtype and shape need {nbytes}")
    if nbytes and (info.data_offset is None or info.data_offset < 0
                   or info.data_offset + nbytes > size):
        raise LoaderError(f"{af.path}: tensor {info.name!r} lies outside the file")
    return numel


def iter_safetensors(af: AuditedFile, map_location: MapLocation = "cpu", *, copy: bool = False
                     ) -> Iterator[tuple[str, torch.Tensor]]:
    """Map the file (or, with ``copy``, read each tensor into its own memory), check its
    identity, then yield ``(name, tensor)`` lazily."""
    if af.report.format is not Format.SAFETENSORS:
        raise LoaderError(f"{af.path}: not a safetensors file ({af.report.format.value})")
    device = single_device(map_location)
    plan = [(info, dtype_of(info.dtype)) for info in af.report.tensors]
    counts = [_check(af, info, dt) for info, dt in plan]
    if copy:
        af.verify()
        for (info, dt), numel in zip(plan, counts, strict=True):
            t = _read_owned(af, info, dt, numel)
            yield info.name, (t if device.type == "cpu" else t.to(device))
        return
    mm = _map(af)
    af.verify()
    for (info, dt), numel in zip(plan, counts, strict=True):
        shape = tuple(info.shape)
        if numel == 0 or mm is None or info.data_offset is None:
            t = torch.empty(shape, dtype=dt, device=device)
        else:
            t = torch.frombuffer(mm, dtype=dt, count=numel, offset=info.data_offset).view(shape)
            if device.type != "cpu":
                t = t.to(device)
        yield info.name, t
    del mm


def load_safetensors(af: AuditedFile, map_location: MapLocation = "cpu", *, copy: bool = False
                     ) -> dict[str, torch.Tensor]:
    out = dict(iter_safetensors(af, map_location, copy=copy))
    af.check_stat()
    return out


__all__ = ["iter_safetensors", "load_safetensors"]
