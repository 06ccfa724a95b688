"""A nested tensor in a legacy torch stream is CKG431 (fixtures/families/legacy_nested.py).

torch's legacy loader reads storage bytes only after the whole pickle, and the nested
rebuild reads its size, stride and offset tensors while unpickling: torch builds it from
uninitialized memory. Every variant (component shapes x where the tensor sits) is UNSAFE
with exactly CKG431 in the legacy format and SAFE in the zip format; the real torch.load
(in a child process) gets the zip files right and the legacy ones wrong or not at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ckg_families import family

import ckptguard
from ckptguard.model import Verdict

pytest.importorskip("torch")

FAM = family("legacy_nested")
SHAPES: dict[str, tuple[tuple[int, ...], ...]] = FAM["SHAPES"]
WHERE: tuple[str, ...] = FAM["WHERE"]
VARIANTS = [(s, w) for s in SHAPES for w in WHERE]


@pytest.mark.parametrize(("shape", "where"), VARIANTS)
def test_legacy_nested_is_ckg431_and_zip_is_safe(tmp_path: Path, shape: str,
                                                 where: str) -> None:
    leg, zp = tmp_path / "legacy.pt", tmp_path / "zip.pt"
    leg.write_bytes(FAM["legacy_nested"](shape, where))
    zp.write_bytes(FAM["zip_nested"](shape, where))
    r = ckptguard.scan(leg)
    assert r.verdict is Verdict.UNSAFE and r.rule_ids() == {"CKG431"}, sorted(r.rule_ids())
    z = ckptguard.scan(zp)
    assert z.verdict is Verdict.SAFE, sorted(z.rule_ids())


_LOAD = """
import json, sys, warnings
import torch
warnings.simplefilter("ignore")
obj = torch.load(sys.argv[1], weights_only=True)
nt = obj if isinstance(obj, torch.Tensor) else (obj["nt"] if isinstance(obj, dict) else obj[0])
try:
    print(json.dumps([t.flatten().tolist() for t in nt.unbind()]))
except Exception as e:
    print(json.dumps(type(e).__name__))
"""


@pytest.mark.parametrize("shape", list(SHAPES))
def test_torch_reads_uninitialized_memory_only_in_the_legacy_format(tmp_path: Path,
                                                                    shape: str) -> None:
    """The payload fires: the legacy load fails or returns other values than were saved
    (they come from the heap); the zip load returns them exactly."""
    want = FAM["components"](shape)
    got = {}
    for fmt, make in (("legacy", FAM["legacy_nested"]), ("zip", FAM["zip_nested"])):
        p = tmp_path / f"{fmt}.pt"
        p.write_bytes(make(shape, "dict"))
        out = subprocess.run([sys.executable, "-c", _LOAD, str(p)], capture_output=True,
                             text=True, timeout=120, check=False)
        got[fmt] = json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() \
            else f"exit {out.returncode}"
    assert got["zip"] == want
    assert got["legacy"] != want, got["legacy"]
