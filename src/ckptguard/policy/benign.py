"""THE reviewed BENIGN table: globals outside the weights-only allowlist whose unpickling
does no I/O and calls no user code (data classes, enums, value types).

The severity ladder (SECURITY.md "Severity"):

- on the weights-only allowlist (:mod:`.defaults` ``ALLOW``)      -> no finding;
- a row of this table                                            -> MEDIUM (CKG102), allowable
  by a policy entry or a shipped profile, with a reason;
- anything else                                                  -> HIGH (CKG120), allowable
  only with an explicit acknowledgement, never suggested by ckptguard;
- a known code-execution / I/O primitive (:mod:`.defaults` ``DENY``) -> CRITICAL, never
  allowable.

A row names one exact global (``module.qualname`` as pickle writes it); there are no
prefixes here. A test checks that no row is matched by the denylist and that every row
whose library is installed resolves to a class, an enum or a reconstruction function.

How to add rows from another table file (e.g. a format's metadata dataclasses): put the
file in this package (``policy/benign_<topic>.py``) with a ``ROWS: tuple[BenignRow, ...]``
built with :func:`rows`, and add that tuple to ``_CONTRIBUTIONS`` at the bottom of this
module. Every row needs a reason a reviewer can check; the table tests pick new rows up.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BenignKind(enum.Enum):
    """What unpickling the global does, in the words a reviewer checks."""

    VALUE_TYPE = "value type"      # class whose constructor only stores plain values
    DATACLASS = "data class"       # NEWOBJ + BUILD: __new__ and a __dict__ update, no hooks
    ENUM = "enum"                  # EnumClass(value): a member lookup
    RECONSTRUCTOR = "reconstructor"  # a library function that rebuilds one data object
    MODULE = "torch module"        # torch.nn module class: __setstate__ updates __dict__


@dataclass(frozen=True, slots=True)
class BenignRow:
    """One reviewed benign global."""

    full_path: str
    kind: BenignKind
    reason: str
    group: str  # the library it belongs to (stdlib, numpy, torch, transformers, ...)


def rows(group: str, kind: BenignKind, reason: str, *full_paths: str) -> tuple[BenignRow, ...]:
    """Rows sharing one group, kind and reason."""
    return tuple(BenignRow(p, kind, reason, group) for p in full_paths)


V, D, E, R, M = (BenignKind.VALUE_TYPE, BenignKind.DATACLASS, BenignKind.ENUM,
                 BenignKind.RECONSTRUCTOR, BenignKind.MODULE)

_PATH = ("path object: the constructor only parses the string; no file is touched until a "
         "method is called")
_ENUM = "enum member lookup by value; no code of the caller runs"

_STDLIB: tuple[BenignRow, ...] = (
    *rows("stdlib", V, _PATH, "pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath",
          "pathlib.PurePath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath",
          "pathlib._local.Path", "pathlib._local.PosixPath", "pathlib._local.WindowsPath",
          "pathlib._local.PurePath", "pathlib._local.PurePosixPath",
          "pathlib._local.PureWindowsPath"),
    *rows("stdlib", D, "attribute bag (hparams, CLI arguments): __dict__ update only",
          "argparse.Namespace"),
    *rows("stdlib", V, "attribute bag: its C __reduce__ rebuilds it from a plain dict",
          "types.SimpleNamespace"),
    *rows("stdlib", V, "date/time value: the constructor validates numbers only",
          "datetime.datetime", "datetime.date", "datetime.time", "datetime.timedelta",
          "datetime.timezone"),
    *rows("stdlib", V, "exact number type built from a string or integers",
          "decimal.Decimal", "fractions.Fraction", "_pydecimal.Decimal"),
    *rows("stdlib", V, "UUID value: 128-bit integer, no node lookup on construction",
          "uuid.UUID", "uuid.SafeUUID"),
    *rows("stdlib", V, "in-memory buffer built from bytes or a string; no file",
          "_io.BytesIO", "_io.StringIO", "io.BytesIO", "io.StringIO"),
    *rows("stdlib", V, "builtin value type: builds a plain value from plain arguments",
          "builtins.slice", "builtins.range", "builtins.frozenset", "builtins.list",
          "builtins.dict", "builtins.tuple", "builtins.int", "builtins.float", "builtins.str",
          "builtins.bytes", "builtins.bool", "builtins.Ellipsis", "builtins.NotImplemented"),
    *rows("stdlib", V, "dict subclass; its default factory is a separate global judged on "
          "its own and runs only on a later missing-key lookup",
          "collections.defaultdict"),
    *rows("stdlib", V, "double-ended queue of plain items", "collections.deque"),
    *rows("stdlib", E, _ENUM, "signal.Signals", "signal.Handlers", "signal.Sigmasks",
          "socket.AddressFamily", "socket.SocketKind", "socket.MsgFlag", "socket.AddressInfo",
          "re.RegexFlag"),
)

_NUMPY: tuple[BenignRow, ...] = (
    *rows("numpy", R, "numpy array reconstruction: allocates an empty array of the pickled "
          "shape; the data comes from the pickle's own bytes (non-object dtypes)",
          "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"),
    *rows("numpy", R, "numpy scalar from a dtype and its raw bytes",
          "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"),
    *rows("numpy", V, "numpy array / dtype type used by array reconstruction",
          "numpy.ndarray", "numpy.dtype", "numpy.core.multiarray.ndarray",
          "numpy._core.multiarray.ndarray"),
    *rows("numpy", V, "numpy dtype class (numpy.dtypes.*DType) for plain numeric dtypes",
          *(f"numpy.dtypes.{n}DType" for n in (
              "Bool", "Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
              "Float16", "Float32", "Float64", "LongDouble", "Complex64", "Complex128",
              "CLongDouble", "Byte", "UByte", "Short", "UShort", "Int", "UInt", "Long",
              "ULong", "LongLong", "ULongLong"))),
    *rows("numpy", R, "numpy random-generator state constructor: rebuilds a bit generator "
          "of a named numpy algorithm from integer state",
          "numpy.random._pickle.__generator_ctor", "numpy.random._pickle.__bit_generator_ctor",
          "numpy.random._pickle.__randomstate_ctor",
          "numpy.random.bit_generator.__pyx_unpickle_SeedSequence"),
    *rows("numpy", V, "numpy random state container: integer state only",
          "numpy.random._generator.Generator", "numpy.random.mtrand.RandomState",
          "numpy.random._mt19937.MT19937", "numpy.random._pcg64.PCG64",
          "numpy.random._pcg64.PCG64DXSM", "numpy.random._philox.Philox",
          "numpy.random._sfc64.SFC64", "numpy.random.bit_generator.SeedSequence"),
)

_NN_MODULES: dict[str, str] = {
    "activation": "CELU ELU GELU GLU Hardshrink Hardsigmoid Hardswish Hardtanh LeakyReLU "
                  "LogSigmoid LogSoftmax Mish MultiheadAttention PReLU RReLU ReLU ReLU6 SELU "
                  "SiLU Sigmoid Softmax Softmax2d Softmin Softplus Softshrink Softsign Tanh "
                  "Tanhshrink Threshold",
    "adaptive": "AdaptiveLogSoftmaxWithLoss",
    "batchnorm": "BatchNorm1d BatchNorm2d BatchNorm3d LazyBatchNorm1d LazyBatchNorm2d "
                 "LazyBatchNorm3d SyncBatchNorm",
    "channelshuffle": "ChannelShuffle",
    "container": "Container ModuleDict ModuleList ParameterDict ParameterList Sequential",
    "conv": "Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d ConvTranspose3d LazyConv1d "
            "LazyConv2d LazyConv3d LazyConvTranspose1d LazyConvTranspose2d LazyConvTranspose3d",
    "distance": "CosineSimilarity PairwiseDistance",
    "dropout": "AlphaDropout Dropout Dropout1d Dropout2d Dropout3d FeatureAlphaDropout",
    "flatten": "Flatten Unflatten",
    "fold": "Fold Unfold",
    "instancenorm": "InstanceNorm1d InstanceNorm2d InstanceNorm3d LazyInstanceNorm1d "
                    "LazyInstanceNorm2d LazyInstanceNorm3d",
    "linear": "Bilinear Identity LazyLinear Linear",
    "loss": "BCELoss BCEWithLogitsLoss CTCLoss CosineEmbeddingLoss CrossEntropyLoss "
            "GaussianNLLLoss HingeEmbeddingLoss HuberLoss KLDivLoss L1Loss MSELoss "
            "MarginRankingLoss MultiLabelMarginLoss MultiLabelSoftMarginLoss MultiMarginLoss "
            "NLLLoss NLLLoss2d PoissonNLLLoss SmoothL1Loss SoftMarginLoss TripletMarginLoss",
    "module": "Module",
    "normalization": "CrossMapLRN2d GroupNorm LayerNorm LocalResponseNorm RMSNorm",
    "padding": "CircularPad1d CircularPad2d CircularPad3d ConstantPad1d ConstantPad2d "
               "ConstantPad3d ReflectionPad1d ReflectionPad2d ReflectionPad3d ReplicationPad1d "
               "ReplicationPad2d ReplicationPad3d ZeroPad1d ZeroPad2d ZeroPad3d",
    "pixelshuffle": "PixelShuffle PixelUnshuffle",
    "pooling": "AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d AdaptiveMaxPool1d "
               "AdaptiveMaxPool2d AdaptiveMaxPool3d AvgPool1d AvgPool2d AvgPool3d "
               "FractionalMaxPool2d FractionalMaxPool3d LPPool1d LPPool2d LPPool3d MaxPool1d "
               "MaxPool2d MaxPool3d MaxUnpool1d MaxUnpool2d MaxUnpool3d",
    "rnn": "GRU GRUCell LSTM LSTMCell RNN RNNBase RNNCell RNNCellBase",
    "sparse": "Embedding EmbeddingBag",
    "transformer": "Transformer TransformerDecoder TransformerDecoderLayer TransformerEncoder "
                   "TransformerEncoderLayer",
    "upsampling": "Upsample UpsamplingBilinear2d UpsamplingNearest2d",
}

_TORCH: tuple[BenignRow, ...] = (
    *rows("torch", M, "torch's own nn.Module class (torch.save(model)): unpickling runs "
          "Module.__setstate__, a __dict__ update; no user code",
          *(f"torch.nn.modules.{mod}.{cls}" for mod, names in _NN_MODULES.items()
            for cls in names.split())),
    *rows("torch", V, "torch version string (str subclass)", "torch.torch_version.TorchVersion"),
    *rows("torch", E, _ENUM + " (torch.distributed configuration enum)",
          "torch.distributed.fsdp.api.ShardingStrategy",
          "torch.distributed.fsdp.api.BackwardPrefetch",
          "torch.distributed.fsdp.api.StateDictType",
          "torch.distributed.fsdp.fully_sharded_data_parallel.ShardingStrategy",
          "torch.distributed.fsdp.fully_sharded_data_parallel.StateDictType"),
    *rows("torch", D, "DTensor placement / layout description: plain data, no process group "
          "is touched on construction",
          "torch.distributed.tensor.placement_types.Shard",
          "torch.distributed.tensor.placement_types.Replicate",
          "torch.distributed.tensor.placement_types.Partial",
          "torch.distributed.tensor.placement_types._StridedShard",
          "torch.distributed._tensor.placement_types.Shard",
          "torch.distributed._tensor.placement_types.Replicate",
          "torch.distributed._tensor.placement_types.Partial",
          "torch.distributed.tensor._dtensor_spec.TensorMeta",
          "torch.distributed.fsdp.api.MixedPrecision",
          "torch.distributed.fsdp.api.CPUOffload"),
)

_TRANSFORMERS: tuple[BenignRow, ...] = (
    *rows("transformers", D, "transformers TrainingArguments (training_args.bin): a dataclass "
          "restored by __new__ + __dict__ update; __post_init__ does not run",
          "transformers.training_args.TrainingArguments",
          "transformers.training_args_seq2seq.Seq2SeqTrainingArguments"),
    *rows("transformers", D, "configuration dataclass held by TrainingArguments",
          "transformers.trainer_pt_utils.AcceleratorConfig",
          "transformers.trainer_pt_utils.LabelSmoother"),
    *rows("transformers", E, _ENUM + " (a TrainingArguments option)",
          "transformers.training_args.OptimizerNames",
          "transformers.training_args.ParallelMode",
          "transformers.trainer_utils.IntervalStrategy",
          "transformers.trainer_utils.SaveStrategy",
          "transformers.trainer_utils.HubStrategy",
          "transformers.trainer_utils.SchedulerType",
          "transformers.trainer_utils.FSDPOption",
          "transformers.trainer_utils.HPSearchBackend",
          "transformers.debug_utils.DebugOption"),
)

_ACCELERATE: tuple[BenignRow, ...] = (
    *rows("accelerate", D, "accelerate PartialState snapshot held by TrainingArguments: "
          "restored by __new__ + __dict__ update (no process group is created)",
          "accelerate.state.PartialState"),
    *rows("accelerate", E, _ENUM + " (an accelerate option)",
          "accelerate.utils.dataclasses.DistributedType",
          "accelerate.utils.dataclasses.PrecisionType",
          "accelerate.utils.dataclasses.RNGType",
          "accelerate.utils.dataclasses.ComputeEnvironment",
          "accelerate.utils.dataclasses.DynamoBackend",
          "accelerate.utils.dataclasses.LoggerType",
          "accelerate.utils.dataclasses.SageMakerDistributedType",
          "accelerate.utils.dataclasses.DDPCommunicationHookType",
          "accelerate.utils.dataclasses.CustomDtype"),
    *rows("accelerate", D, "accelerate configuration dataclass (plain fields)",
          "accelerate.utils.dataclasses.DataLoaderConfiguration",
          "accelerate.utils.dataclasses.ProjectConfiguration",
          "accelerate.utils.dataclasses.GradientAccumulationPlugin",
          "accelerate.utils.dataclasses.AutocastKwargs",
          "accelerate.utils.dataclasses.GradScalerKwargs",
          "accelerate.utils.dataclasses.DistributedDataParallelKwargs"),
)

_LIGHTNING: tuple[BenignRow, ...] = (
    *rows("lightning", V, "Lightning AttributeDict (hyper_parameters): a dict subclass with "
          "attribute access",
          "lightning.fabric.utilities.data.AttributeDict",
          "lightning_fabric.utilities.data.AttributeDict",
          "pytorch_lightning.utilities.parsing.AttributeDict",
          "lightning.pytorch.utilities.parsing.AttributeDict"),
)

#: Row tuples contributed by other table files in this package (see the module docstring).
_CONTRIBUTIONS: tuple[tuple[BenignRow, ...], ...] = ()

BENIGN: tuple[BenignRow, ...] = (
    *_STDLIB, *_NUMPY, *_TORCH, *_TRANSFORMERS, *_ACCELERATE, *_LIGHTNING,
    *(r for group in _CONTRIBUTIONS for r in group),
)

#: Classes whose instances a row's call returns and the pickle then BUILDs: torch's
#: weights-only unpickler must know them too (numpy.dtype('f4') is a Float32DType).
COMPANIONS: dict[str, tuple[str, ...]] = {
    "numpy.dtype": tuple(r.full_path for r in _NUMPY
                         if r.full_path.startswith("numpy.dtypes.")),
}

#: full path -> row, for the lookup the ladder does per global.
BENIGN_BY_PATH: dict[str, BenignRow] = {r.full_path: r for r in BENIGN}
assert len(BENIGN_BY_PATH) == len(BENIGN), "duplicate BENIGN row"


def benign_row(full_path: str) -> BenignRow | None:
    return BENIGN_BY_PATH.get(full_path)


__all__ = ["BENIGN", "BENIGN_BY_PATH", "COMPANIONS", "BenignKind", "BenignRow", "benign_row",
           "rows"]
