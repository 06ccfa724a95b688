#!/usr/bin/env python3
# ruff: noqa: PLW1510 - bench scripts: long report strings, return codes checked by hand
"""Create one virtual environment per peer under bench/.venvs/<name>.

    python bench/setup_peers.py            # create the missing ones
    python bench/setup_peers.py --force    # recreate all

Every install uses ``-c bench/constraints.txt`` (torch==2.13.0, the CPU wheel), so no
peer can drag in a CUDA build. A peer whose install fails is recorded in
bench/.venvs/status.json with the error tail and skipped by run.py with that note.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VENVS = BENCH / ".venvs"
CONSTRAINTS = BENCH / "constraints.txt"

# name -> (packages, import check)
PEERS: dict[str, tuple[list[str], str]] = {
    # matplotlib/numpy for the plot and the fits, py-spy for profiles
    "tools": (["matplotlib", "numpy", "py-spy"], "import matplotlib, numpy"),
    "picklescan": (["picklescan"], "import picklescan.scanner"),
    "modelscan": (["modelscan"], "import modelscan.modelscan"),
    "modelaudit": (["modelaudit"], "import modelaudit"),
    # fickling 0.1.12 imports typing_extensions without declaring it
    "fickling": (["fickling", "typing_extensions"], "import fickling"),
    # torch.load, get_unsafe_globals_in_checkpoint, safetensors, transformers
    "torch": (
        ["torch==2.13.0", "safetensors", "numpy", "transformers"],
        "import torch, safetensors, transformers.modeling_utils",
    ),
}


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def status_path() -> Path:
    return VENVS / "status.json"


def load_status() -> dict[str, dict[str, str]]:
    try:
        return json.loads(status_path().read_text())
    except (OSError, ValueError):
        return {}


def setup_one(name: str, force: bool = False) -> dict[str, str]:
    pkgs, check = PEERS[name]
    py = venv_python(name)
    if (
        not force
        and py.exists()
        and load_status().get(name, {}).get("ok")
        and (VENVS / name / "freeze.txt").exists()
    ):
        return {"ok": "1", "note": "present"}
    if not force and py.exists():
        r = subprocess.run([str(py), "-c", check], capture_output=True, text=True)
        if r.returncode == 0:
            return {"ok": "1", "note": "present"}
    t0 = time.time()
    d = VENVS / name
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(d)], check=True)
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    r = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS), *pkgs],
        capture_output=True,
        text=True,
        env=env,
    )
    if r.returncode != 0:
        return {
            "ok": "",
            "note": f"pip install {' '.join(pkgs)} failed: " + (r.stderr or r.stdout)[-600:],
        }
    r = subprocess.run([str(py), "-c", check], capture_output=True, text=True)
    if r.returncode != 0:
        return {"ok": "", "note": f"import check failed: {r.stderr[-600:]}"}
    fr = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True)
    (d / "freeze.txt").write_text(fr.stdout)
    return {"ok": "1", "note": f"installed in {time.time() - t0:.0f}s"}


def ensure(names: list[str] | None = None, force: bool = False, log=print) -> dict:
    VENVS.mkdir(parents=True, exist_ok=True)
    status = load_status()
    for name in names or list(PEERS):
        log(f"[setup] {name} ...")
        try:
            st = setup_one(name, force)
        except Exception as e:  # keep going: a peer that fails is skipped with a note
            st = {"ok": "", "note": f"setup error: {e}"}
        status[name] = st
        log(f"[setup] {name}: {'ok' if st['ok'] else 'FAILED'} ({st['note'][:200]})")
        status_path().write_text(json.dumps(status, indent=1))
    return status


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("peers", nargs="*", choices=[*PEERS, []])
    a = ap.parse_args()
    st = ensure(a.peers or None, a.force)
    sys.exit(0 if all(v["ok"] for v in st.values()) else 1)


if __name__ == "__main__":
    main()
