"""The torch.load gate: route every ``torch.load`` in the process through the audit.

    with ckptguard.guard_torch_load():          # scoped to this thread / async task
        model.load_state_dict(torch.load(path))

    handle = ckptguard.guard_torch_load()       # on for this context until...
    handle.disable()

or set ``CKPTGUARD_GUARD_TORCH_LOAD=1`` in the environment (optionally with
``CKPTGUARD_POLICY=/path/to/policy.toml`` and ``CKPTGUARD_PROFILES=hf-trainer,numpy``) and
``import ckptguard``: the gate turns on for the whole process as soon as torch is imported
(at once if it already is).

Guarded, ``torch.load(path)`` opens the file once, audits it from that descriptor, loads
the same inode with ``weights_only=True`` and re-checks identity; ``torch.load(fileobj)``
reads the object once into memory, audits those bytes and loads from them. A file whose
verdict is not SAFE raises :class:`~ckptguard.UnsafeCheckpointError` (or
:class:`~ckptguard.IncompleteScanError`) and never reaches torch's unpickler. Otherwise
``torch.load`` behaves as usual (``map_location``, ``mmap``, the returned structure);
``pickle_module`` and ``weights_only=False`` are ignored.

What is covered, while any guard is active in the process:

- every call of torch's ``load`` function, however it was reached: ``torch.load``,
  ``torch.serialization.load``, ``from torch import load`` taken before the gate was
  enabled, a reference kept in a default argument, a ``functools.partial``, another
  library's wrapper around it, ``torch.hub.load_state_dict_from_url``. The gate swaps the
  *code* of that one function object (see :mod:`ckptguard.loaders.gate`), so no reference
  to it walks around the audit;
- direct calls of torch's internal loaders ``torch.serialization._load`` and
  ``torch.serialization._legacy_load`` through that module (they raise
  :class:`~ckptguard.errors.UnauditedLoadError`; they cannot be audited because they get
  an already opened reader);
- threads and asyncio tasks: each load runs under the policy its own context entered; a
  context that entered none gets the environment switch's policy, or else the default
  policy ``Policy()``;
- child processes that inherit the environment variable and import ckptguard at start-up:
  install :data:`PTH_LINE` as a ``.pth`` file (:func:`write_pth`) in the interpreter's
  site-packages and set ``CKPTGUARD_GUARD_TORCH_LOAD=1`` before starting them
  (``multiprocessing`` spawn / forkserver workers, subprocesses). Forked children inherit
  the installed gate and the forking context's guards. Or enable a guard in the worker
  yourself (``Pool(initializer=ckptguard.guard.install_from_env)``).

Also covered: DCP's ``FileSystemReader.read_metadata`` (``torch.distributed.checkpoint``)
and ``torch.export.load`` / ``load_pt2``, hooked when the guard is enabled or, if torch has
not imported them yet, right after it does (the gate never imports them itself).

Not covered: other deserializers (``pickle.load``, ``numpy.load(allow_pickle=True)``,
``torch.jit.load`` / TorchScript, ``torch.package``), references to torch's internal
``_load`` taken before the gate was enabled (``torch.distributed._serialization`` imports
it by name), a copy of ``load``'s code made into a new function before the gate was
enabled, processes that neither import ckptguard nor inherit an installed gate, and code
that restores torch's internals itself.

This module never imports torch itself; enabling the gate imports the loaders.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType, TracebackType
from typing import Any

from .errors import CkptGuardError, PolicyError
from .policy import (
    DEFAULT_LIMITS,
    Limits,
    OriginKind,
    Policy,
    PolicyOrigin,
    ProfileName,
    effective_policy,
)
from .primitives import or_default

ENV_VAR = "CKPTGUARD_GUARD_TORCH_LOAD"
POLICY_ENV_VAR = "CKPTGUARD_POLICY"
PROFILES_ENV_VAR = "CKPTGUARD_PROFILES"  # comma-separated profile names
_TRUE = frozenset({"1", "true", "yes", "on"})

#: One line for a ``.pth`` file in site-packages: every Python start-up that sees
#: ``CKPTGUARD_GUARD_TORCH_LOAD`` set imports ckptguard, which enables the gate (costs
#: nothing when the variable is unset). This is how spawned worker processes get the gate.
PTH_LINE = (f"import os; os.environ.get({ENV_VAR!r}, '').strip() and __import__('ckptguard')"
            "\n")
#: The file name :func:`write_pth` uses.
PTH_NAME = "ckptguard-gate.pth"


def write_pth(site_dir: str | os.PathLike[str]) -> str:
    """Write :data:`PTH_LINE` to ``site_dir/ckptguard-gate.pth`` (e.g. the directory from
    ``sysconfig.get_path("purelib")``) and return its path."""
    path = os.path.join(os.fspath(site_dir), PTH_NAME)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(PTH_LINE)
    return path


class TorchLoadGuard:
    """A handle on one activation of the gate. Active from :meth:`enable` (which
    :func:`guard_torch_load` calls) until :meth:`disable` or the end of a ``with`` block.

    The policy applies to loads started in the context that enabled it (its thread or
    asyncio task, and tasks created from it later); guards nest, the innermost active one
    applies. ``everywhere=True`` makes it the fallback for every context that entered no
    guard of its own (the environment switch does that)."""

    def __init__(self, policy: Policy | None = None, limits: Limits | None = None,
                 profiles: Iterable[str | ProfileName] | None = None, *,
                 everywhere: bool = False) -> None:
        self.policy = effective_policy(policy, profiles)
        self.limits = or_default(limits, DEFAULT_LIMITS)
        self.everywhere = everywhere
        self._refusal: CkptGuardError | None = None
        self._cfg: Any = None
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self._cfg is not None

    def enable(self) -> TorchLoadGuard:
        from .loaders import gate

        with self._lock:
            if self._cfg is None:
                cfg = gate.GuardConfig(self.policy, self.limits, self._refusal)
                gate.push(cfg, everywhere=self.everywhere)
                self._cfg = cfg
                _format_gates(True)
        return self

    def disable(self) -> None:
        with self._lock:
            if self._cfg is None:
                return
            cfg, self._cfg = self._cfg, None
        from .loaders import gate

        gate.remove(cfg)
        if gate.current() is None:
            _format_gates(False)

    def __enter__(self) -> TorchLoadGuard:
        return self.enable()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.disable()


#: The loaders that read checkpoints without (only) torch.load: DCP's
#: ``FileSystemReader.read_metadata`` (loaders/dcp.py) and ``torch.export.load`` /
#: ``load_pt2`` (loaders/export.py); each names the modules it hooks (``MODULES``).
_FORMAT_LOADERS = ("dcp", "export")


def _format_gate(loader: str) -> ModuleType:
    return importlib.import_module(f"{__package__}.loaders.{loader}")


def _install_format_gate(loader: str, module: str) -> None:
    with contextlib.suppress(ImportError):  # torch built without that package
        _format_gate(loader).install_gate(module)


def _format_gates(on: bool) -> None:
    """The seam for the loaders of :data:`_FORMAT_LOADERS`. Each hook looks up
    ``gate.current()`` per call and passes through when no guard is active.

    A module torch has not imported yet is hooked right after it is (:class:`_AfterImport`),
    never imported for the gate: ``torch.export.pt2_archive._package`` (torch._dynamo, the
    export serializer) and ``torch.distributed.checkpoint`` cost ~1.3 s of CPU, which every
    gated process (every worker the ``.pth`` line starts) paid when the gate turned on,
    whether or not it ever read such a checkpoint. A reference taken before the gate was
    enabled walks around either way (module docstring).
    """
    for loader in _FORMAT_LOADERS:
        gate_module = _format_gate(loader)
        for module in gate_module.MODULES:
            if not on:
                _AfterImport.cancel(module)
            elif module in sys.modules:
                _install_format_gate(loader, module)
            else:
                _AfterImport.register(module, functools.partial(_install_format_gate, loader,
                                                                module))
        if not on:
            gate_module.uninstall_gate()


def guard_torch_load(*, policy: Policy | None = None, limits: Limits | None = None,
                     profiles: Iterable[str | ProfileName] | None = None,
                     everywhere: bool = False) -> TorchLoadGuard:
    """Turn the gate on now; returns the handle (a context manager that turns it off on
    exit, or call ``.disable()``). ``profiles`` adds shipped profiles to ``policy``
    (``guard_torch_load(profiles=["hf-trainer"])`` to resume a Trainer checkpoint). The
    policy applies to this thread / asyncio task; ``everywhere=True`` also makes it the
    policy of contexts that entered no guard."""
    return TorchLoadGuard(policy, limits, profiles, everywhere=everywhere).enable()


def is_torch_load_guarded() -> bool:
    """Whether ``torch.load`` currently goes through the audit (False if torch is not
    imported)."""
    if "torch" not in sys.modules:
        return False
    from .loaders import gate

    return gate.is_active()


_env_guard: list[TorchLoadGuard] = []  # the one process-wide guard the env switch made


def _enable_from_env(policy: Policy, refusal: CkptGuardError | None) -> None:
    if not _env_guard:
        g = TorchLoadGuard(policy, everywhere=True)
        g._refusal = refusal
        _env_guard.append(g.enable())


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``action`` right after module ``name`` executes (the first time it is imported),
    then leaves ``sys.meta_path``: Python has no post-import hook, so this finder wraps the
    real loader's ``exec_module``.

    It stays on ``sys.meta_path`` until the module really executes: a mere
    ``importlib.util.find_spec(name)`` (transformers and accelerate probe for torch that
    way before importing it) must not use it up."""

    _lock = threading.Lock()

    def __init__(self, name: str, action: Callable[[], None]) -> None:
        self.name = name
        self.action = action
        self._busy = threading.local()

    @classmethod
    def register(cls, name: str, action: Callable[[], None]) -> None:
        """Run ``action`` once ``name`` has been imported (one pending action a module)."""
        with cls._lock:
            if not any(isinstance(h, cls) and h.name == name for h in sys.meta_path):
                sys.meta_path.insert(0, cls(name, action))

    @classmethod
    def cancel(cls, name: str) -> None:
        with cls._lock:
            sys.meta_path[:] = [h for h in sys.meta_path
                                if not (isinstance(h, cls) and h.name == name)]

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name or getattr(self._busy, "on", False):
            return None
        self._busy.on = True  # the look-up below passes through this finder again
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.on = False
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module
        hook = self

        def exec_and_run(module: ModuleType) -> None:
            exec_module(module)
            with _AfterImport._lock:
                if hook not in sys.meta_path:  # cancelled meanwhile
                    return
                sys.meta_path.remove(hook)
            hook.action()

        spec.loader.exec_module = exec_and_run  # type: ignore[method-assign]
        return spec


def install_from_env(environ: Mapping[str, str] | None = None, *, strict: bool = True) -> bool:
    """Honour ``CKPTGUARD_GUARD_TORCH_LOAD``: if it is set to 1/true/yes/on, enable the
    gate process-wide (now if torch is imported, else right after torch is imported).
    ``CKPTGUARD_POLICY`` names an optional policy TOML file. Returns whether it is on.

    Fails closed: if the policy file cannot be used, the gate is still enabled and refuses
    every ``torch.load`` with that error; with ``strict`` (the default) the error is raised
    here too (``import ckptguard`` passes ``strict=False``: the import must succeed so that
    the refusing gate is in place)."""
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR, "").strip().lower() not in _TRUE:
        return False
    policy_file = env.get(POLICY_ENV_VAR, "").strip()
    refusal: CkptGuardError | None = None
    policy = Policy()
    try:
        if policy_file:
            policy = Policy.from_file(policy_file, origin=PolicyOrigin(
                OriginKind.ENVIRONMENT, f"{POLICY_ENV_VAR}={policy_file}"))
        names = [n for n in env.get(PROFILES_ENV_VAR, "").split(",") if n.strip()]
        policy = effective_policy(policy, names, origin=PolicyOrigin(
            OriginKind.ENVIRONMENT, PROFILES_ENV_VAR))
    except Exception as e:  # noqa: BLE001 - whatever it is, the gate must not stay off
        # fail closed: the gate goes on and refuses every load with this error
        refusal = e if isinstance(e, CkptGuardError) else PolicyError(
            f"cannot use the gate's policy: {e}", source=policy_file or PROFILES_ENV_VAR)
    if "torch" in sys.modules:
        _enable_from_env(policy, refusal)
    else:  # right after ``import torch`` finishes
        _AfterImport.register("torch", lambda: _enable_from_env(policy, refusal))
    if refusal is not None and strict:
        raise refusal
    return True


__all__ = [
    "ENV_VAR",
    "POLICY_ENV_VAR",
    "PROFILES_ENV_VAR",
    "PTH_LINE",
    "PTH_NAME",
    "TorchLoadGuard",
    "guard_torch_load",
    "install_from_env",
    "is_torch_load_guarded",
    "write_pth",
]
