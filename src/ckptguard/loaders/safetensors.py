"""safetensors, zero-copy: one private memory map of the audited descriptor, and each
tensor a ``torch.frombuffer`` view at the ``data_offset`` the audit validated.

For ``map_location="cpu"`` no tensor byte is copied (the tensors share the file's pages;
the map is copy-on-write, so writing to a tensor never touches the file). For a CUDA
device each tensor is copied from the map straight to the device, one at a time, so no
full host copy is ever made.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterator

from ..model import Format, TensorInfo
from ._torch import MapLocation, dtype_of, single_device, torch
from .base import AuditedFile, LoaderError


def _map(af: AuditedFile) -> mmap.mmap | None:
    size = af.report.identity.size if af.report.identity is not None else 0
    if size == 0:
        return None
    return mmap.mmap(af.fd, size, access=mmap.ACCESS_COPY)


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


def iter_safetensors(af: AuditedFile, map_location: MapLocation = "cpu"
                     ) -> Iterator[tuple[str, torch.Tensor]]:
    """Map the file, check its identity, then yield ``(name, tensor)`` lazily."""
    if af.report.format is not Format.SAFETENSORS:
        raise LoaderError(f"{af.path}: not a safetensors file ({af.report.format.value})")
    device = single_device(map_location)
    plan = [(info, dtype_of(info.dtype)) for info in af.report.tensors]
    counts = [_check(af, info, dt) for info, dt in plan]
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


def load_safetensors(af: AuditedFile, map_location: MapLocation = "cpu"
                     ) -> dict[str, torch.Tensor]:
    out = dict(iter_safetensors(af, map_location))
    af.check_stat()
    return out


__all__ = ["iter_safetensors", "load_safetensors"]
