"""With torch's own sparse invariant checking on (``torch.sparse.check_sparse_tensor_
invariants``), torch 2.13's validator reads compressed indices without bounds checks and
dies inside ``torch.load`` (``crow_indices=[0, 3, 0]`` with no column: SIGSEGV). ckptguard's
loaders turn it off for their own ``torch.load`` of a file the fast path did not prove
(one Python thread only; put back after) and check the same invariants themselves right
after the load: a refusal (CKG420), not a crash. Each case runs in a child process; plain
``torch.load`` shows the crash is real.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

#: the file's sparse tensor: (constructor, compressed indices, plain indices, values, shape)
FILES = {
    "csr-030": ("sparse_csr_tensor", [0, 3, 0], [], [], (2, 4)),
    "csc-030": ("sparse_csc_tensor", [0, 3, 0], [], [], (4, 2)),
    "csr-valid": ("sparse_csr_tensor", [0, 1, 2], [1, 3], [1.0, 2.0], (2, 4)),
}
#: the ways in, each printing the outcome and whether torch's flag is on afterwards
WAYS = {
    "torch.load": "torch.load(P, weights_only=True)",
    "safe_load": "ckptguard.safe_load(P)",
    "safe_load-copy": "ckptguard.safe_load(P, copy=True)",
    "gate": "with ckptguard.guard_torch_load():\n        torch.load(P)",
}
_CODE = """import warnings, torch, ckptguard, ckptguard.errors
warnings.simplefilter("ignore")
P = {path!r}
torch.sparse.check_sparse_tensor_invariants.enable()
try:
    {way}
    print("loaded", torch._C._check_sparse_tensor_invariants())
except ckptguard.errors.TensorInvariantError as e:
    print("refused", "CKG420" in str(e), torch._C._check_sparse_tensor_invariants())
"""


def _file(tmp_path: Path, name: str) -> Path:
    ctor, comp, plain, vals, shape = FILES[name]
    t = getattr(torch, ctor)(torch.tensor(comp), torch.tensor(plain, dtype=torch.long),
                             torch.tensor(vals), shape, check_invariants=False)
    p = tmp_path / f"{name}.pt"
    torch.save({"s": t}, p)
    return p


@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("name", list(FILES))
def test_torch_invariant_checks_on_refuse_not_crash(tmp_path: Path, name: str,
                                                    way: str) -> None:
    p = _file(tmp_path, name)
    out = subprocess.run([sys.executable, "-c", _CODE.format(path=str(p), way=WAYS[way])],
                         capture_output=True, text=True, timeout=120, check=False)
    bad = name != "csr-valid"
    if way == "torch.load" and bad:
        assert out.returncode == -signal.SIGSEGV, (out.returncode, out.stderr[-400:])
        return
    assert out.returncode == 0, (out.returncode, out.stderr[-600:])
    # refused by ckptguard's own check, and the caller's flag is back on
    assert out.stdout.strip() == ("refused True True" if bad else "loaded True"), out.stdout
