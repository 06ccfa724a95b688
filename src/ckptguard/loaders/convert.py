"""Convert an audited checkpoint to safetensors, and prove the result holds the same tensors.

    result = convert_to_safetensors("model.bin", "model.safetensors")

1. the source is audited and loaded through :func:`ckptguard.safe_load` (raises unless SAFE);
2. nested state dicts are flattened to dotted names; non-tensor entries are listed in
   ``ConvertResult.skipped`` (safetensors holds tensors only);
3. shared tensors are handled as ``safetensors.torch.save_model`` does: names that are the
   same view of one storage (tied weights) are written once and the dropped names recorded
   (``ConvertResult.aliases`` and the ``ckptguard.aliases`` metadata entry); other tensors
   sharing memory, and non-contiguous ones, are written as contiguous copies;
4. the file is written next to ``dst`` under a temporary name, re-audited (must be SAFE),
   reloaded and compared tensor by tensor (dtype, shape, bytes) before it replaces ``dst``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import CkptGuardError
from ..model import Report, Verdict
from ..policy import DEFAULT_LIMITS, DEFAULT_POLICY, Limits, Policy
from ..primitives import escape_untrusted, or_default


class ConversionError(CkptGuardError, RuntimeError):
    """The conversion failed or its result did not verify; ``dst`` was not written."""


@dataclass(frozen=True)
class ConvertResult:
    source: Report
    output: Report
    tensors: int
    aliases: dict[str, str] = field(default_factory=dict)   # dropped name -> kept name
    skipped: tuple[str, ...] = ()                           # non-tensor entries
    copied: tuple[str, ...] = ()                            # written as contiguous copies


def flatten_state(obj: Any, prefix: str = "") -> tuple[dict[str, Any], list[str]]:
    """``{dotted.name: tensor}`` and the names of non-tensor leaves. Raises
    ConversionError when two tensors flatten to one name ({"m.a": x, "m": {"a": y}}, or
    keys 1 and "1"): one of them would be dropped without a word."""
    import torch

    tensors: dict[str, Any] = {}
    skipped: list[str] = []

    def walk(value: Any, name: str) -> None:
        if isinstance(value, torch.Tensor):
            if name in tensors:
                raise ConversionError(
                    f"two tensors flatten to the name {escape_untrusted(name, 200)!r} (nested "
                    "keys with dots, or keys like 1 and '1'): safetensors has one name per "
                    "tensor, so one would be lost")
            tensors[name] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{name}.{i}" if name else str(i))
        else:
            skipped.append(name or "<root>")

    walk(obj, prefix)
    return tensors, skipped


def _view_key(t: Any) -> tuple[Any, ...]:
    return (t.device.type, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))


def prepare_shared(tensors: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Make ``tensors`` writable by safetensors: drop duplicate views (tied weights),
    copy tensors that share memory with others or are not contiguous."""
    kept: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    copied: list[str] = []
    first_of_view: dict[tuple[Any, ...], str] = {}
    storage_users: dict[tuple[str, int], int] = {}
    for name in sorted(tensors):
        t = tensors[name]
        if t.numel() > 0:
            key = _view_key(t)
            if key in first_of_view:
                aliases[name] = first_of_view[key]
                continue
            first_of_view[key] = name
            skey = (t.device.type, t.untyped_storage().data_ptr())
            storage_users[skey] = storage_users.get(skey, 0) + 1
        kept[name] = t
    out: dict[str, Any] = {}
    for name, t in kept.items():
        shared = t.numel() > 0 and (
            storage_users[(t.device.type, t.untyped_storage().data_ptr())] > 1
            or t.untyped_storage().nbytes() != t.numel() * t.element_size())
        if shared or not t.is_contiguous() or t.device.type != "cpu":
            out[name] = t.detach().to("cpu").contiguous().clone()
            copied.append(name)
        else:
            out[name] = t.detach()
    return out, aliases, copied


def _same_bytes(a: Any, b: Any) -> bool:
    import torch

    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    if a.numel() == 0:
        return True
    try:
        return bool(torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                                b.contiguous().reshape(-1).view(torch.uint8)))
    except (RuntimeError, TypeError):
        return bool(torch.equal(a, b))


def convert_to_safetensors(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                           policy: Policy | None = None, limits: Limits | None = None,
                           overwrite: bool = False) -> ConvertResult:
    """Audit and load ``src`` (must be SAFE), write ``dst`` as safetensors, verify it."""
    from ..api import safe_load
    from ..scan_api import scan

    try:
        from safetensors.torch import save_file
    except ImportError as e:  # pragma: no cover - part of the torch extra
        from ..errors import LoaderUnavailableError

        raise LoaderUnavailableError(
            "convert needs safetensors: pip install 'ckptguard[torch]'") from e
    pol = or_default(policy, DEFAULT_POLICY)
    lim = or_default(limits, DEFAULT_LIMITS)
    src_s, dst_s = os.fspath(src), os.fspath(dst)
    if os.path.exists(dst_s) and not overwrite:
        raise ConversionError(f"{dst_s} exists (pass overwrite=True to replace it)")
    source_report = scan(src_s, policy=pol, limits=lim)
    obj = safe_load(src_s, "cpu", policy=pol, limits=lim)
    flat, skipped = flatten_state(obj)
    if not flat:
        raise ConversionError(f"{src_s}: no tensors to write")
    import torch

    for name, t in flat.items():  # safetensors holds dense strided tensors only
        if t.layout is not torch.strided or t.is_nested or t.is_quantized:
            kind = "nested" if t.is_nested else "quantized" if t.is_quantized else \
                str(t.layout).removeprefix("torch.")
            raise ConversionError(f"tensor {escape_untrusted(name, 200)!r} is {kind}: "
                                  "safetensors stores dense tensors only")
    prepared, aliases, copied = prepare_shared(flat)
    metadata = {"format": "pt"}
    if aliases:
        metadata["ckptguard.aliases"] = json.dumps(aliases, sort_keys=True)
    folder = os.path.dirname(os.path.abspath(dst_s))
    tmp = os.path.join(folder, f".{os.path.basename(dst_s)}.ckptguard-{os.getpid()}.tmp")
    try:
        try:
            save_file(prepared, tmp, metadata=metadata)
        except Exception as e:
            raise ConversionError(f"writing safetensors failed: {e}") from e
        check = scan(tmp, policy=pol, limits=lim)
        if check.verdict is not Verdict.SAFE:
            raise ConversionError(f"the written file is {check.verdict.value} on re-audit")
        reloaded = safe_load(tmp, "cpu", policy=pol, limits=lim)
        expected = set(prepared)
        if set(reloaded) != expected:
            missing = sorted(expected - set(reloaded))[:5]
            extra = sorted(set(reloaded) - expected)[:5]
            raise ConversionError(f"tensor names differ after writing (missing {missing}, "
                                  f"unexpected {extra})")
        for name, tensor in flat.items():
            stored = reloaded[aliases.get(name, name)]
            if not _same_bytes(stored, tensor.detach().to("cpu")):
                raise ConversionError(f"tensor {name!r} differs after writing")
        del reloaded
        os.replace(tmp, dst_s)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    output_report = scan(dst_s, policy=pol, limits=lim)
    return ConvertResult(source_report, output_report, len(prepared), aliases,
                         tuple(skipped), tuple(copied))


__all__ = ["ConversionError", "ConvertResult", "convert_to_safetensors", "flatten_state",
           "prepare_shared"]
