"""What every allowlisted callable does when a pickle calls it: what it calls, what it
allocates, which arguments must be audited tensor records.

The weights-only allowlist (``policy/defaults.py``) says which globals a checkpoint may
name; this table says what calling each of them costs. The VM checks every call of an
allowlisted global against its row: a load may only allocate memory backed by storage
bytes in the file (tensor views and copies are bounded by their storage record), may only
call a tensor rebuild function through ``_rebuild_from_type_v2``, and hands only audited
tensor records to functions that take tensors. ``tests/test_callmodels.py`` pins the table
against the allowlist in both directions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..policy.defaults import ALLOW, DTYPE, LEGACY_STORAGE, LEGACY_TENSOR, QSCHEME


class Effect(enum.Enum):
    """What a call of the global does (under torch's weights-only loader and pickle.load)."""

    CONSTANT = "constant"        # a value (dtype, qscheme, legacy storage tag): not callable
    DATA = "data"                # builds plain data from its (literal) arguments
    ENCODE = "encode"            # _codecs.encode: bytes from a str literal
    LOOKUP = "lookup"            # looks a constant up by name (torch.device, _get_layout)
    ALLOCATE = "allocate"        # allocates memory sized by an argument (legacy constructors)
    VIEW = "view"                # a tensor view over a storage record of the file
    QUANTIZED = "quantized"      # allocates ``size`` elements, then views the storage
    COPY = "copy"                # copies a tensor record (device rebuilds): touches memory
    WRAP = "wrap"                # wraps a tensor record (Parameter)
    CALLS_ARGUMENT = "calls-argument"  # calls its first argument (_rebuild_from_type_v2)
    META = "meta"                # a meta tensor: shape only, no memory
    NO_DATA = "no-data"          # a tensor without storage bytes (wrapper subclasses)
    COMPOSITE = "composite"      # built from tensor records (sparse, nested)


class Alloc(enum.Enum):
    """What a call allocates."""

    NONE = "none"                # nothing beyond a small object
    LITERAL = "literal"          # proportional to literal arguments (bytes in the file)
    ARGUMENT = "argument"        # sized by an integer argument: not backed by the file
    TENSOR = "tensor"            # numel x itemsize of a tensor argument or ``size``


@dataclass(frozen=True)
class CallModel:
    effect: Effect
    alloc: Alloc
    #: positions of arguments that must be audited tensor records (None allowed where the
    #: callable accepts it)
    tensor_args: tuple[int, ...] = ()
    #: arguments are iterated, hashed or converted: they must be literals
    literal_args: bool = False
    #: returns a tensor (a valid function for _rebuild_from_type_v2 to call)
    makes_tensor: bool = False
    note: str = ""
    #: keyword arguments the call may take (NEWOBJ_EX's kwargs reach ``cls.__new__``):
    #: allow, don't deny -- a keyword not named here is refused (analysis/vm.py
    #: ``_keywords``). torch.save never writes one for an allowlisted global, so none is.
    keywords: frozenset[str] = frozenset()
    #: the call reads the *values* of its tensor arguments while unpickling (not only
    #: references them): a legacy stream has not read any storage bytes yet (CKG431)
    reads_tensor_values: bool = False


_CONSTANT = CallModel(Effect.CONSTANT, Alloc.NONE, note="a constant; calling it fails")
_LEGACY_CTOR = CallModel(Effect.ALLOCATE, Alloc.ARGUMENT, makes_tensor=True,
                         note="legacy constructor: T(n) allocates n elements")
_STORAGE_CTOR = CallModel(Effect.ALLOCATE, Alloc.ARGUMENT,
                          note="Storage(n) allocates n elements")

#: Rows for every allowlisted global that is not a constant or a legacy tensor type.
_EXPLICIT: dict[str, CallModel] = {
    "_codecs.encode": CallModel(Effect.ENCODE, Alloc.LITERAL, literal_args=True,
                                note="encode(str, 'latin1'): how protocol 2 writes bytes"),
    "builtins.bytearray": CallModel(Effect.DATA, Alloc.LITERAL, literal_args=True,
                                    note="bytearray(bytes); bytearray(n) allocates n zeros"),
    "builtins.complex": CallModel(Effect.DATA, Alloc.NONE, literal_args=True),
    "builtins.set": CallModel(Effect.DATA, Alloc.LITERAL, literal_args=True,
                              note="iterates and hashes its argument"),
    "collections.Counter": CallModel(Effect.DATA, Alloc.LITERAL, literal_args=True,
                                     note="iterates and hashes its argument"),
    "collections.OrderedDict": CallModel(Effect.DATA, Alloc.LITERAL, literal_args=True,
                                         note="iterates its argument"),
    "torch.Size": CallModel(Effect.DATA, Alloc.LITERAL, literal_args=True,
                            note="iterates its argument"),
    "torch.device": CallModel(Effect.LOOKUP, Alloc.NONE, literal_args=True),
    "torch.serialization._get_layout": CallModel(Effect.LOOKUP, Alloc.NONE, literal_args=True),
    "torch.Tensor": CallModel(Effect.ALLOCATE, Alloc.ARGUMENT, makes_tensor=True,
                              note="torch.Tensor(n) is the legacy allocating constructor"),
    "torch.storage.TypedStorage": _STORAGE_CTOR,
    "torch.storage.UntypedStorage": _STORAGE_CTOR,
    "torch.nn.parameter.Parameter": CallModel(Effect.WRAP, Alloc.NONE, tensor_args=(0,),
                                              makes_tensor=True),
    "torch._utils._rebuild_tensor": CallModel(Effect.VIEW, Alloc.NONE, makes_tensor=True),
    "torch._utils._rebuild_tensor_v2": CallModel(Effect.VIEW, Alloc.NONE, makes_tensor=True),
    "torch._utils._rebuild_tensor_v3": CallModel(Effect.VIEW, Alloc.NONE, makes_tensor=True),
    "torch._utils._rebuild_qtensor": CallModel(
        Effect.QUANTIZED, Alloc.TENSOR, makes_tensor=True,
        note="_empty_affine_quantized(size) allocates numel(size) before set_"),
    "torch._utils._rebuild_parameter": CallModel(Effect.WRAP, Alloc.NONE, tensor_args=(0,),
                                                 makes_tensor=True),
    "torch._utils._rebuild_parameter_with_state": CallModel(
        Effect.WRAP, Alloc.NONE, tensor_args=(0,), makes_tensor=True),
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": CallModel(
        Effect.COPY, Alloc.TENSOR, tensor_args=(0,), makes_tensor=True,
        note="data.to(dtype, device) copies the tensor"),
    "torch._utils._rebuild_device_tensor_from_numpy": CallModel(
        Effect.COPY, Alloc.TENSOR, tensor_args=(0,), makes_tensor=True,
        note="torch.from_numpy(data).to(...) copies a numpy array"),
    "torch._utils._rebuild_meta_tensor_no_storage": CallModel(Effect.META, Alloc.NONE,
                                                              makes_tensor=True),
    "torch._utils._rebuild_wrapper_subclass": CallModel(
        Effect.NO_DATA, Alloc.NONE, makes_tensor=True,
        note="_make_wrapper_subclass: a tensor with no storage bytes"),
    "torch._utils._rebuild_sparse_tensor": CallModel(Effect.COMPOSITE, Alloc.NONE,
                                                     tensor_args=(1,), makes_tensor=True),
    "torch._utils._rebuild_nested_tensor": CallModel(Effect.COMPOSITE, Alloc.NONE,
                                                     tensor_args=(0, 1, 2, 3),
                                                     makes_tensor=True,
                                                     reads_tensor_values=True),
    "torch._tensor._rebuild_from_type_v2": CallModel(
        Effect.CALLS_ARGUMENT, Alloc.NONE, makes_tensor=True,
        note="ret = func(*args); ret.as_subclass(new_type); set state"),
}


def _row(module: str, name: str, reason: str) -> CallModel | None:
    full = f"{module}.{name}"
    if full in _EXPLICIT:
        return _EXPLICIT[full]
    if reason in (DTYPE, QSCHEME, LEGACY_STORAGE):
        return _CONSTANT
    if reason == LEGACY_TENSOR:
        return _LEGACY_CTOR
    return None  # a new allowlist row without a model: the table test fails


#: full global path -> its call model, for every allowlisted global.
CALL_MODELS: dict[str, CallModel] = {
    f"{m}.{n}": row for m, n, r in ALLOW if (row := _row(m, n, r)) is not None}

#: globals _rebuild_from_type_v2 may be handed as ``new_type``
TENSOR_TYPES = frozenset({"torch.Tensor", "torch.nn.parameter.Parameter"})
#: calling these builds a tensor record (analysis/tensors.py models the call)
TENSOR_BUILDERS = frozenset({
    "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
    "torch._tensor._rebuild_from_type_v2", "torch._utils._rebuild_meta_tensor_no_storage",
})

__all__ = ["CALL_MODELS", "TENSOR_BUILDERS", "TENSOR_TYPES", "Alloc", "CallModel", "Effect"]
