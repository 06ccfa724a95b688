"""Tensor invariants torch's loaders skip, checked on every tensor a load rebuilt before
anything is handed out.

torch rebuilds sparse tensors without checking their indices (unless sparse invariant
checking happens to be on, a process-wide switch that is not thread-safe), quantized
tensors without checking scales and zero points, and nested tensors with only a partial
check of their component offsets. A file that breaks these invariants loads fine and then
writes or reads out of bounds on first use. The audit sees only the records (the index
*values* are tensor data), so this module checks the loaded tensors themselves:

========================  ===============================================================
layout / kind             check (rule)
========================  ===============================================================
strided                   view inside its storage (torch's ``set_`` and the audit's
                          CKG404/405 already ensure it; re-checked here, CKG404)
strided, quantized        scale(s) finite and > 0, zero point(s) in the dtype's range,
                          per-channel axis in range and one scale/zero point per channel
                          (CKG421)
strided, nested           every component: offset >= 0, sizes >= 0, strides >= 0, no zero
                          stride on a dimension longer than 1, last element inside the
                          buffer (CKG422)
sparse_coo                torch's ``_validate_sparse_coo_tensor_args`` (CKG420)
sparse_csr/csc/bsr/bsc    torch's ``_validate_sparse_compressed_tensor_args`` (CKG420)
anything else (mkldnn..)  refused (CKG423)
========================  ===============================================================

Tensors on the meta device hold no data and are not checked. The walk visits dicts,
lists, tuples, sets and the attributes of other objects the load returned, once each.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import TensorInvariantError
from ..model import Location, Report, Verdict
from ..primitives import clip
from ..rules import make_finding
from ._torch import torch


class Check(enum.Enum):
    """What :func:`check_tensor` does for a layout."""

    STRIDED = "strided"            # torch's own storage bounds; quantized / nested checked
    SPARSE_COO = "sparse-coo"
    SPARSE_COMPRESSED = "sparse-compressed"


#: layout name -> check. A layout missing here is refused (CKG423).
LAYOUT_CHECKS: dict[str, Check] = {
    "torch.strided": Check.STRIDED,
    "torch.sparse_coo": Check.SPARSE_COO,
    "torch.sparse_csr": Check.SPARSE_COMPRESSED,
    "torch.sparse_csc": Check.SPARSE_COMPRESSED,
    "torch.sparse_bsr": Check.SPARSE_COMPRESSED,
    "torch.sparse_bsc": Check.SPARSE_COMPRESSED,
}

#: quantized dtype name -> inclusive range of its integer zero points.
QUANTIZED_RANGES: dict[str, tuple[int, int]] = {
    "torch.quint8": (0, 255),
    "torch.qint8": (-128, 127),
    "torch.qint32": (-(1 << 31), (1 << 31) - 1),
    "torch.quint4x2": (0, 15),
    "torch.quint2x4": (0, 3),
}

_PER_TENSOR = ("torch.per_tensor_affine", "torch.per_tensor_symmetric")
_PER_CHANNEL = ("torch.per_channel_affine", "torch.per_channel_symmetric",
                "torch.per_channel_affine_float_qparams")
_FLOAT_QPARAMS = "torch.per_channel_affine_float_qparams"


class Violation(Exception):
    """Internal: one broken invariant (rule ID and what)."""

    def __init__(self, rule_id: str, what: str) -> None:
        super().__init__(what)
        self.rule_id = rule_id
        self.what = what


def _scales_ok(values: list[float]) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def _check_quantized(t: torch.Tensor) -> None:
    dtype = str(t.dtype)
    lo, hi = QUANTIZED_RANGES.get(dtype, (None, None))
    if lo is None or hi is None:
        raise Violation("CKG421", f"quantized dtype {dtype} is not one ckptguard can check")
    try:
        scheme = str(t.qscheme())
    except RuntimeError as e:  # a quantized tensor without a quantizer: torch asserts
        raise Violation("CKG421", f"quantized {dtype} tensor without a usable quantizer "
                        f"({clip(str(e))})") from None
    if scheme in _PER_TENSOR:
        scale, zp = float(t.q_scale()), int(t.q_zero_point())
        if not _scales_ok([scale]):
            raise Violation("CKG421", f"quantization scale {scale!r} is not finite and > 0")
        if not lo <= zp <= hi:
            raise Violation("CKG421", f"zero point {zp} outside {dtype}'s range {lo}..{hi}")
        return
    if scheme not in _PER_CHANNEL:
        raise Violation("CKG421", f"quantization scheme {scheme} is not one ckptguard can check")
    axis = int(t.q_per_channel_axis())
    if not 0 <= axis < t.dim():
        raise Violation("CKG421", f"per-channel axis {axis} outside a {t.dim()}-d tensor")
    scales = t.q_per_channel_scales().detach().cpu().double().tolist()
    zps_t = t.q_per_channel_zero_points().detach().cpu()
    channels = int(t.shape[axis])
    if len(scales) != channels or zps_t.numel() != channels:
        raise Violation("CKG421", f"{len(scales)} scales and {zps_t.numel()} zero points for "
                        f"{channels} channels")
    if not _scales_ok(scales):
        raise Violation("CKG421", "a per-channel scale is not finite and > 0")
    if scheme == _FLOAT_QPARAMS:
        if not all(math.isfinite(z) for z in zps_t.double().tolist()):
            raise Violation("CKG421", "a per-channel zero point is not finite")
        return
    zps = zps_t.long().tolist()
    if any(not lo <= z <= hi for z in zps):
        raise Violation("CKG421", f"a per-channel zero point lies outside {dtype}'s range "
                        f"{lo}..{hi}")


def _check_nested(t: torch.Tensor) -> None:
    meta = (t._nested_tensor_size(), t._nested_tensor_strides(),
            t._nested_tensor_storage_offsets())
    if not all(m.is_contiguous() and m.storage_offset() == 0 for m in meta):
        # torch's NestedTensorImpl reads these as plain contiguous int64 arrays from their
        # data pointer (a stride-0 offsets tensor over one element makes it read past the
        # storage); .tolist() below would follow the strides and see something else
        raise Violation("CKG422", "nested sizes, strides or offsets are not a contiguous "
                        "array (torch reads them as one)")
    sizes, strides, offsets = (m.tolist() for m in meta)
    buffer_numel = t.untyped_storage().nbytes() // max(t.element_size(), 1)
    if not len(sizes) == len(strides) == len(offsets):
        raise Violation("CKG422", "nested sizes, strides and offsets disagree in count")
    for i, (size, stride, off) in enumerate(zip(sizes, strides, offsets, strict=True)):
        if off < 0 or any(s < 0 for s in size) or any(st < 0 for st in stride):
            raise Violation("CKG422", f"component {i} has a negative offset, size or stride")
        if any(st == 0 and s > 1 for s, st in zip(size, stride, strict=True)):
            raise Violation("CKG422", f"component {i} repeats elements (a zero stride)")
        if math.prod(size) == 0:
            continue
        last = off + sum((s - 1) * st for s, st in zip(size, stride, strict=True))
        if last >= buffer_numel:
            raise Violation("CKG422", f"component {i} reaches element {last} of a buffer of "
                            f"{buffer_numel}")


def _check_sparse_coo(t: torch.Tensor) -> None:
    try:
        torch._validate_sparse_coo_tensor_args(t._indices(), t._values(), t.size(),
                                               t.is_coalesced(), check_pinning=False)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        raise Violation("CKG420", f"sparse COO tensor: {e}") from None


def _compressed_shape_problem(t: torch.Tensor, compressed: torch.Tensor,
                              plain: torch.Tensor) -> str | None:
    """What torch's own validator must not meet: it reads the plain indices at the offsets
    the compressed indices give, so compressed indices outside ``[0, nnz]``, not starting at
    0, not ending at nnz or going down make it read out of bounds (a crash seen with torch
    2.13 on ``crow=[0, 3, 0]``, no column). Checked here with plain tensor arithmetic."""
    if compressed.dtype not in (torch.int32, torch.int64) or plain.dtype != compressed.dtype:
        return "compressed and plain indices must be int32 or int64 of one dtype"
    if compressed.dim() < 1 or plain.dim() != compressed.dim() or \
            compressed.shape[:-1] != plain.shape[:-1] or compressed.shape[-1] < 1:
        return "compressed and plain indices have incompatible shapes"
    size = t.size()
    row_major = t.layout in (torch.sparse_csr, torch.sparse_bsr)
    b = compressed.dim() - 1  # batch dimensions; then the two sparse ones, then dense ones
    if len(size) < b + 2:
        return "a compressed sparse tensor needs two sparse dimensions after its batch ones"
    srows, scols = size[b], size[b + 1]
    dim = srows if row_major else scols
    if t.layout in (torch.sparse_bsr, torch.sparse_bsc):
        values = t.values()
        # values: (*batch, nnz, block rows, block columns, *dense); torch divides both sparse
        # dimensions by both block sizes (to_dense of a 2x0 block: SIGFPE)
        if values.dim() < b + 3:
            return "block values need a block shape"
        rows, cols = values.shape[b + 1], values.shape[b + 2]
        if rows <= 0 or cols <= 0 or srows % rows or scols % cols:
            return "the block size does not divide the sparse dimensions"
        dim //= rows if row_major else cols
    if compressed.shape[-1] != dim + 1:
        return f"{compressed.shape[-1]} compressed indices for {dim} compressed rows/columns"
    nnz = plain.shape[-1]
    c = compressed.reshape(-1, compressed.shape[-1])
    if c.numel() and not (bool((c[:, 0] == 0).all()) and bool((c[:, -1] == nnz).all())
                          and bool((c[:, 1:] >= c[:, :-1]).all())):
        return f"compressed indices do not run from 0 up to nnz={nnz} without going down"
    return None


def _check_sparse_compressed(t: torch.Tensor) -> None:
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        compressed, plain = t.crow_indices(), t.col_indices()
    else:
        compressed, plain = t.ccol_indices(), t.row_indices()
    problem = _compressed_shape_problem(t, compressed, plain)
    if problem is not None:
        raise Violation("CKG420", f"sparse {str(t.layout).removeprefix('torch.')} tensor: "
                        f"{problem}")
    try:
        torch._validate_sparse_compressed_tensor_args(compressed, plain, t.values(), t.size(),
                                                      t.layout, check_pinning=False)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        raise Violation("CKG420", f"sparse {str(t.layout).removeprefix('torch.')} tensor: {e}") \
            from None


def check_tensor(t: torch.Tensor) -> None:
    """Raise :class:`Violation` if ``t`` breaks an invariant (see the module table)."""
    if t.device.type == "meta":
        return
    check = LAYOUT_CHECKS.get(str(t.layout))
    if check is None:
        raise Violation("CKG423", f"tensor layout {t.layout} cannot be checked")
    if check is Check.SPARSE_COO:
        _check_sparse_coo(t)
    elif check is Check.SPARSE_COMPRESSED:
        _check_sparse_compressed(t)
    elif t.is_nested:
        _check_nested(t)
    else:
        _check_view(t)
        if t.is_quantized:
            _check_quantized(t)


def _check_view(t: torch.Tensor) -> None:
    if t.numel() == 0:
        return
    stride = t.stride()
    if any(st < 0 for st in stride) or t.storage_offset() < 0:
        raise Violation("CKG404", "negative stride or storage offset")
    last = t.storage_offset() + sum((s - 1) * st for s, st in zip(t.shape, stride, strict=True))
    elems = t.untyped_storage().nbytes() // max(t.element_size(), 1)
    if last >= elems:
        raise Violation("CKG404", f"view reaches element {last} of a storage of {elems}")


def _walk(obj: Any) -> Iterator[tuple[str, torch.Tensor]]:
    stack: list[tuple[str, Any]] = [("", obj)]
    seen: set[int] = set()
    while stack:
        name, o = stack.pop()
        if id(o) in seen or isinstance(o, (str, bytes, int, float, bool, type(None))):
            continue
        seen.add(id(o))
        if isinstance(o, torch.Tensor):
            yield name, o
            extra = getattr(o, "__dict__", None)  # attributes of a tensor subclass
            if extra:
                stack.extend((f"{name}.{k}", v) for k, v in extra.items())
        elif isinstance(o, Mapping):
            stack.extend((f"{name}.{k}" if name else str(k), v) for k, v in o.items())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend((f"{name}[{i}]", v) for i, v in enumerate(o))
        elif not isinstance(o, type) and isinstance(getattr(o, "__dict__", None), dict):
            stack.extend((f"{name}.{k}", v) for k, v in vars(o).items())


def check_loaded(obj: Any, report: Report) -> None:
    """Check every tensor in what a load returned; raise :class:`TensorInvariantError`
    (its report: ``report`` plus the finding, verdict UNSAFE) at the first violation."""
    for name, t in _walk(obj):
        try:
            check_tensor(t)
        except Violation as v:
            finding = make_finding(
                v.rule_id, f"tensor {name!r}: {v.what}", Location(report.path),
                evidence={"tensor": name[:200], "layout": str(t.layout),
                          "dtype": str(t.dtype)})
            bad = dataclasses.replace(report, verdict=Verdict.UNSAFE,
                                      findings=(*report.findings, finding))
            raise TensorInvariantError(bad) from None


__all__ = ["LAYOUT_CHECKS", "QUANTIZED_RANGES", "Check", "Violation", "check_loaded",
           "check_tensor"]
