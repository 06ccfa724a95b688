"""Profiles: named, reviewed policies for what real training code saves.

A profile is a set of rows of the BENIGN table (:mod:`.benign`), so it can only ever allow
MEDIUM globals: never an unreviewed (HIGH) or denied (CRITICAL) one. Choose them on
purpose: ``ckptguard scan --profile hf-trainer``, ``scan(path, profiles=["hf-trainer"])``,
``Policy().with_profiles("accelerate")``, ``guard_torch_load(profiles=[...])``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .benign import BENIGN, BENIGN_BY_PATH, BenignRow
from .profile_names import ProfileName


@dataclass(frozen=True)
class Profile:
    name: ProfileName
    description: str  # the files it is for
    globals: tuple[str, ...]

    def rows(self) -> tuple[BenignRow, ...]:
        return tuple(BENIGN_BY_PATH[g] for g in self.globals)


def _group(*groups: str) -> tuple[str, ...]:
    return tuple(r.full_path for r in BENIGN if r.group in groups)


_NUMPY_ARRAYS = tuple(
    r.full_path for r in BENIGN if r.group == "numpy")

_PATHS = tuple(r.full_path for r in BENIGN if r.full_path.startswith("pathlib."))

_STDLIB_DATA = (
    "argparse.Namespace", "types.SimpleNamespace", *_PATHS, "datetime.datetime",
    "datetime.date", "datetime.time", "datetime.timedelta", "datetime.timezone",
    "decimal.Decimal", "fractions.Fraction",
    "uuid.UUID", "uuid.SafeUUID", "collections.defaultdict", "collections.deque",
    "builtins.slice", "builtins.range", "builtins.frozenset", "builtins.list", "builtins.dict",
    "builtins.tuple", "builtins.int", "builtins.float", "builtins.str", "builtins.bytes",
    "builtins.bool", "builtins.Ellipsis", "builtins.NotImplemented",
)

PROFILES: dict[ProfileName, Profile] = {p.name: p for p in (
    Profile(ProfileName.HF_TRAINER,
            "transformers Trainer checkpoints: training_args.bin (TrainingArguments and the "
            "enums/config types it holds) and rng_state.pth (numpy RNG state)",
            (*_group("transformers"), "accelerate.state.PartialState",
             "accelerate.utils.dataclasses.DistributedType",
             "accelerate.utils.dataclasses.PrecisionType",
             "accelerate.utils.dataclasses.DataLoaderConfiguration",
             "accelerate.utils.dataclasses.GradientAccumulationPlugin",
             *_NUMPY_ARRAYS, "torch.torch_version.TorchVersion")),
    Profile(ProfileName.ACCELERATE,
            "accelerate save_state folders: random_states_*.pkl (python, numpy and torch RNG "
            "states) and the accelerate state/config types",
            (*_group("accelerate"), *_NUMPY_ARRAYS)),
    Profile(ProfileName.NUMPY,
            "numpy arrays, scalars and RNG states of plain (non-object) dtypes inside a "
            "checkpoint",
            _NUMPY_ARRAYS),
    Profile(ProfileName.LIGHTNING,
            "Lightning checkpoints: hyper_parameters as AttributeDict / argparse.Namespace, "
            "paths and numpy values in callback state",
            (*_group("lightning"), "argparse.Namespace", "types.SimpleNamespace", *_PATHS,
             "datetime.timedelta", *_NUMPY_ARRAYS)),
    Profile(ProfileName.TORCH_MODULES,
            "torch.save(model): whole nn.Module objects made of torch's own layer classes",
            _group("torch")),
    Profile(ProfileName.STDLIB_DATA,
            "plain Python data types: Namespace/SimpleNamespace, paths, dates, Decimal, "
            "Fraction, UUID, defaultdict, builtin value types",
            _STDLIB_DATA),
)}


def profiles_covering(full_paths: Iterable[str]) -> tuple[ProfileName, ...]:
    """The profiles that each allow every one of ``full_paths`` (smallest first)."""
    wanted = set(full_paths)
    if not wanted:
        return ()
    hits = [p for p in PROFILES.values() if wanted <= set(p.globals)]
    return tuple(p.name for p in sorted(hits, key=lambda p: len(p.globals)))


def profiles_with(full_path: str) -> tuple[ProfileName, ...]:
    """The profiles that allow ``full_path``."""
    return tuple(p.name for p in PROFILES.values() if full_path in p.globals)


for _p in PROFILES.values():  # a profile holds BENIGN rows only (never HIGH/CRITICAL)
    for _g in _p.globals:
        assert _g in BENIGN_BY_PATH, (_p.name, _g)

__all__ = ["PROFILES", "Profile", "ProfileName", "profiles_covering",
           "profiles_with"]
