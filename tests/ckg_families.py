"""The fixture families (fixtures/families/*.py) as the tests use them, and the pickle probe.

``family(name)`` is the namespace of ``fixtures/families/<name>.py``, run with
fixtures/generate.py's helpers in scope, exactly as generate.py runs it when it writes the
fixtures. generate.py itself is loaded once per process, registered in ``sys.modules``
(its dataclasses look their module up). ``reached(data)`` says which global
``pickle.load`` would import first from ``data``, without importing or running anything.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import runpy
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
_NAME = "ckg_fixture_generate"


def generate_module() -> ModuleType:
    """fixtures/generate.py as a module (loaded once; nothing is written)."""
    mod = sys.modules.get(_NAME)
    if mod is None:
        spec = importlib.util.spec_from_file_location(_NAME, FIXTURES / "generate.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[_NAME]
            raise
    return mod


def family(name: str) -> dict[str, Any]:
    """The namespace of fixtures/families/``name``.py."""
    return runpy.run_path(str(FIXTURES / "families" / f"{name}.py"),
                          init_globals=dict(vars(generate_module())))


class Reached(Exception):
    """The probe got to a global."""


class Probe(pickle.Unpickler):
    """Unpickles like pickle.load but stops at the first global it would import."""

    def find_class(self, module: str, name: str) -> Any:
        raise Reached(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent id")


def reached(data: bytes) -> str | None:
    """The first global pickle.load would import from ``data`` (from byte 0), or None."""
    try:
        Probe(io.BytesIO(data)).load()
    except Reached as e:
        return str(e)
    except Exception:
        return None
    return None


# --- the real readers, in a child process ------------------------------------------------------

_LOADER = r"""
import json, os, pickle, sys, warnings
warnings.filterwarnings("ignore")
jobs = json.loads(sys.argv[1])
if any(how != "pickle" for _, how in jobs):
    import torch
out = {}
for path, how in jobs:
    d = os.path.dirname(path)
    os.chdir(d)
    try:
        if how == "pickle":
            with open(path, "rb") as fh:
                pickle.load(fh)
        elif how.startswith("torch-file"):
            with open(path, "rb") as fh:
                torch.load(fh, weights_only=how.endswith("-wo"))
        else:
            torch.load(path, weights_only=how.endswith("-wo"))
        err = ""
    except Exception as e:
        err = type(e).__name__ + ": " + str(e)[:200]
    out[path] = [os.path.exists(os.path.join(d, sys.argv[2])), err]
print(json.dumps(out))
"""

#: how a job's file is read: pickle.load of an open file; torch.load(weights_only=False) of
#: the path or of an open file; the same with weights_only=True ("-wo")
READERS = ("pickle", "torch", "torch-file", "torch-wo", "torch-file-wo")


def load_for_real(jobs: list[tuple[str, str]], marker: str) -> dict[str, tuple[bool, str]]:
    """Run every ``(path, reader)`` job in one child process, each in its file's folder
    (the payloads create ``marker`` in the working directory): path -> (the marker exists
    afterwards, the reader's error or "")."""
    import json
    import os
    import subprocess

    assert all(how in READERS for _, how in jobs), jobs
    out = subprocess.run([sys.executable, "-c", _LOADER, json.dumps(jobs), marker],
                         capture_output=True, text=True, timeout=300, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {p: (bool(f), str(e)) for p, (f, e) in got.items()}
