"""The names of the shipped profiles (:mod:`.profiles` holds their rows, imported when a
profile is chosen or looked up: a scan with the default policy never builds them)."""

from __future__ import annotations

import enum


class ProfileName(str, enum.Enum):
    """The shipped profiles."""

    HF_TRAINER = "hf-trainer"
    ACCELERATE = "accelerate"
    NUMPY = "numpy"
    LIGHTNING = "lightning"
    TORCH_MODULES = "torch-modules"
    STDLIB_DATA = "stdlib-data"

    def __str__(self) -> str:
        return self.value


__all__ = ["ProfileName"]
