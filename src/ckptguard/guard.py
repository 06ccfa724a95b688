"""The torch.load gate: route every ``torch.load`` in the process through the audit.

    with ckptguard.guard_torch_load():          # scoped
        model.load_state_dict(torch.load(path))

    handle = ckptguard.guard_torch_load()       # process-wide switch, until...
    handle.disable()

or set ``CKPTGUARD_GUARD_TORCH_LOAD=1`` in the environment (optionally with
``CKPTGUARD_POLICY=/path/to/policy.toml`` and ``CKPTGUARD_PROFILES=hf-trainer,numpy``):
:func:`install_from_env` then turns the gate
on as soon as torch is imported (at once if it already is).

Guarded, ``torch.load(path)`` opens the file once, audits it from that descriptor, loads
the same inode with ``weights_only=True`` and re-checks identity; ``torch.load(fileobj)``
reads the object once into memory, audits those bytes and loads from them. A file whose
verdict is not SAFE raises :class:`~ckptguard.UnsafeCheckpointError` (or
:class:`~ckptguard.IncompleteScanError`) and never reaches torch's unpickler. Otherwise
``torch.load`` behaves as usual (``map_location``, ``mmap``, the returned structure);
``pickle_module`` and ``weights_only=False`` are ignored.

This module never imports torch itself; enabling the gate imports the loaders.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType, TracebackType
from typing import Any

from .policy import (
    DEFAULT_LIMITS,
    Limits,
    OriginKind,
    Policy,
    PolicyOrigin,
    ProfileName,
    effective_policy,
)

ENV_VAR = "CKPTGUARD_GUARD_TORCH_LOAD"
POLICY_ENV_VAR = "CKPTGUARD_POLICY"
PROFILES_ENV_VAR = "CKPTGUARD_PROFILES"  # comma-separated profile names
_TRUE = frozenset({"1", "true", "yes", "on"})


class TorchLoadGuard:
    """A handle on one activation of the gate. Active from :meth:`enable` (which
    :func:`guard_torch_load` calls) until :meth:`disable` or the end of a ``with`` block.
    Guards nest; the innermost active one's policy applies."""

    def __init__(self, policy: Policy | None = None, limits: Limits | None = None,
                 profiles: Iterable[str | ProfileName] | None = None) -> None:
        self.policy = effective_policy(policy, profiles)
        self.limits = limits if limits is not None else DEFAULT_LIMITS
        self._cfg: Any = None
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self._cfg is not None

    def enable(self) -> TorchLoadGuard:
        from .loaders import gate

        with self._lock:
            if self._cfg is None:
                self._cfg = gate.GuardConfig(self.policy, self.limits)
                gate.push(self._cfg)
        return self

    def disable(self) -> None:
        with self._lock:
            if self._cfg is None:
                return
            cfg, self._cfg = self._cfg, None
        from .loaders import gate

        gate.remove(cfg)

    def __enter__(self) -> TorchLoadGuard:
        return self.enable()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.disable()


def guard_torch_load(*, policy: Policy | None = None, limits: Limits | None = None,
                     profiles: Iterable[str | ProfileName] | None = None) -> TorchLoadGuard:
    """Turn the gate on now; returns the handle (a context manager that turns it off on
    exit, or call ``.disable()``). ``profiles`` adds shipped profiles to ``policy``
    (``guard_torch_load(profiles=["hf-trainer"])`` to resume a Trainer checkpoint)."""
    return TorchLoadGuard(policy, limits, profiles).enable()


def is_torch_load_guarded() -> bool:
    """Whether ``torch.load`` currently goes through the audit (False if torch is not
    imported)."""
    if "torch" not in sys.modules:
        return False
    from .loaders import gate

    return gate.is_active()


_env_guard: list[TorchLoadGuard] = []  # the one process-wide guard the env switch made


def _enable_from_env(policy: Policy) -> None:
    if not _env_guard:
        _env_guard.append(guard_torch_load(policy=policy))


class _TorchImportHook(importlib.abc.MetaPathFinder):
    """Enables the gate right after ``import torch`` finishes."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torch":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module
        policy = self.policy

        def exec_and_guard(module: ModuleType) -> None:
            exec_module(module)
            _enable_from_env(policy)

        loader.exec_module = exec_and_guard  # type: ignore[method-assign]
        return spec


def install_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Honour ``CKPTGUARD_GUARD_TORCH_LOAD``: if it is set to 1/true/yes/on, enable the
    gate process-wide (now if torch is imported, else right after torch is imported).
    ``CKPTGUARD_POLICY`` names an optional policy TOML file. Returns whether it is on."""
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR, "").strip().lower() not in _TRUE:
        return False
    policy_file = env.get(POLICY_ENV_VAR, "").strip()
    policy = Policy.from_file(policy_file, origin=PolicyOrigin(
        OriginKind.ENVIRONMENT, f"{POLICY_ENV_VAR}={policy_file}")) if policy_file else Policy()
    names = [n for n in env.get(PROFILES_ENV_VAR, "").split(",") if n.strip()]
    policy = effective_policy(policy, names, origin=PolicyOrigin(
        OriginKind.ENVIRONMENT, PROFILES_ENV_VAR))
    if "torch" in sys.modules:
        _enable_from_env(policy)
    elif not any(isinstance(h, _TorchImportHook) for h in sys.meta_path):
        sys.meta_path.insert(0, _TorchImportHook(policy))
    return True


__all__ = [
    "ENV_VAR",
    "POLICY_ENV_VAR",
    "PROFILES_ENV_VAR",
    "TorchLoadGuard",
    "guard_torch_load",
    "install_from_env",
    "is_torch_load_guarded",
]
