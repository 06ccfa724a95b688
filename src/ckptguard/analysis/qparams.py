"""Static checks of a quantized tensor's parameters, as the pickle spells them.

``torch._utils._rebuild_qtensor(storage, offset, size, stride, params, ...)`` takes its
quantizer parameters from the pickle: ``(per_tensor_affine, scale, zero_point)`` as
literals, or ``(per_channel_affine[_float_qparams], scales, zero_points, axis)`` with the
scales and zero points as tensors. What the literals and records show is checked here
(scale finite and > 0, zero point in the dtype's range, a scheme torch can rebuild, axis
in range, one scale and zero point per channel); per-channel scale and zero point *values*
are tensor data, checked by the loader (:mod:`ckptguard.loaders.invariants`). Never
imports torch; used by the pickle VM (rule CKG421).
"""

from __future__ import annotations

import math
from typing import Any

#: quantized dtype name -> inclusive zero-point range (same table as the loader's, by name).
ZERO_POINT_RANGES: dict[str, tuple[int, int]] = {
    "quint8": (0, 255),
    "qint8": (-128, 127),
    "qint32": (-(1 << 31), (1 << 31) - 1),
    "quint4x2": (0, 15),
    "quint2x4": (0, 3),
}
#: the schemes torch's ``_rebuild_qtensor`` rebuilds (it raises for every other one).
PER_TENSOR = "torch.per_tensor_affine"
PER_CHANNEL = frozenset({"torch.per_channel_affine", "torch.per_channel_affine_float_qparams"})


def _count(value: Any) -> int | None:
    """Element count of a list literal or of a tensor record (a rebuilt tensor's Call)."""
    if isinstance(value, list):
        return len(value)
    record = getattr(value, "tensor", None)
    shape = getattr(record, "shape", None)
    if isinstance(shape, tuple) and all(isinstance(d, int) for d in shape):
        return math.prod(shape)
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def qparams_problem(params: Any, size: tuple[int, ...], dtype: str) -> str | None:
    """Why ``params`` cannot be a valid quantizer for a ``dtype`` tensor of ``size``, or
    None. Values the pickle does not spell as literals or records are left to the loader."""
    if not isinstance(params, tuple) or not params:
        return "quantizer parameters are not a tuple"
    scheme = getattr(params[0], "full", None)
    if scheme == PER_TENSOR:
        if len(params) != 3:
            return f"per-tensor quantizer with {len(params)} parameters (torch needs 3)"
        _, scale, zp = params
        if isinstance(scale, (int, float)) and not isinstance(scale, bool) and \
                not (math.isfinite(scale) and scale > 0):
            return f"quantization scale {scale!r} is not finite and > 0"
        lo_hi = ZERO_POINT_RANGES.get(dtype)
        if _is_int(zp) and lo_hi is not None and not lo_hi[0] <= zp <= lo_hi[1]:
            return f"zero point {zp} outside {dtype}'s range {lo_hi[0]}..{lo_hi[1]}"
        return None
    if scheme in PER_CHANNEL:
        if len(params) != 4:
            return f"per-channel quantizer with {len(params)} parameters (torch needs 4)"
        _, scales, zps, axis = params
        if not _is_int(axis):
            return None
        if not 0 <= axis < len(size):
            return f"per-channel axis {axis} outside a {len(size)}-d tensor"
        channels = size[axis]
        for what, v in (("scales", scales), ("zero points", zps)):
            n = _count(v)
            if n is not None and n != channels:
                return f"{n} {what} for {channels} channels on axis {axis}"
        return None
    if scheme is not None:
        return f"quantization scheme {scheme} cannot be rebuilt by torch"
    return None


__all__ = ["PER_CHANNEL", "PER_TENSOR", "ZERO_POINT_RANGES", "qparams_problem"]
