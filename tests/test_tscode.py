"""TorchScript archives are graded by their code (issue 17 point 4).

- ``fixtures/families/torchscript_code.py`` generates archives whose ``__setstate__`` or
  ``forward`` calls file operators (torch.from_file, ops.aten.from_file, torchvision's
  read/write_file, torch.save), a foreign operator namespace, or names aten::from_file in a
  string; each is UNSAFE with its rule (CKG020 CRITICAL / CKG021 HIGH / CKG008 HIGH);
- torch.jit.load of the firing variants really creates the marker file;
- a real ``torch.jit.script`` module whose ``__setstate__`` calls torch.from_file, saved with
  torch.jit.save, is CKG020 in __setstate__ and creates its file under torch.jit.load;
- the scanner is tolerant (broken strings, comments, odd spacing) and never executes code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from ckg_families import family

import ckptguard
from ckptguard import Severity
from ckptguard.analysis.tscode import OpKind, scan_code

ROOT = Path(__file__).resolve().parents[1]


def _family() -> dict[str, Any]:
    return family("torchscript_code")


VARIANTS: dict[str, tuple[bytes, str, bool]] = _family()["torchscript_variants"]()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_torchscript_variant_is_graded_by_its_code(tmp_path: Path, name: str) -> None:
    data, rule, _ = VARIANTS[name]
    p = tmp_path / f"{name}.pt"
    p.write_bytes(data)
    r = ckptguard.scan(p)
    rules = set(r.rule_ids())
    assert r.verdict.name == "UNSAFE"
    assert {"CKG008", rule} <= rules, [(f.rule_id, f.message) for f in r.findings]
    if rule == "CKG020":
        assert r.max_severity is Severity.CRITICAL
        f = next(f for f in r.findings if f.rule_id == "CKG020")
        want = "forward" if name.startswith("forward") else "__setstate__"
        assert f.evidence_dict["function"] == want
        assert f.location.member == "m/code/__torch__.py"
    else:
        assert "CKG020" not in rules
        assert r.max_severity is Severity.HIGH


#: ONE torch process jit-loads and runs every variant, each from a working directory of its
#: own, and says right after each one whether its marker exists (before the next one runs)
_JIT_RUN_ALL = (
    "import gc, json, os, sys, torch\n"
    "for name, path, cwd in json.loads(sys.argv[1]):\n"
    "    os.chdir(cwd)\n"
    "    try:\n"
    "        m = torch.jit.load(path)\n"
    "        m(torch.zeros(2))\n"
    "        del m\n"
    "        gc.collect()\n"
    "        print('RAN', name, os.path.exists('ckptguard_marker'), flush=True)\n"
    "    except Exception as e:\n"
    "        print('FAILED', name, type(e).__name__, str(e)[:300].replace(chr(10), ' '),\n"
    "              flush=True)\n")
JIT_NAMES = ["plain_module", *sorted(k for k, v in VARIANTS.items() if v[2])]


@pytest.fixture(scope="module")
def jit_loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """Every firing variant (and a plain module, first) loaded by torch.jit.load."""
    pytest.importorskip("torch")
    base = tmp_path_factory.mktemp("jit")
    jobs = []
    for name in JIT_NAMES:
        (base / name / "cwd").mkdir(parents=True)
        p = base / name / f"{name}.pt"
        p.write_bytes(VARIANTS[name][0])
        jobs.append((name, str(p), str(base / name / "cwd")))
    proc = subprocess.run([sys.executable, "-c", _JIT_RUN_ALL, json.dumps(jobs)],
                          capture_output=True, text=True, timeout=300, check=False)
    return base, proc.stdout, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", JIT_NAMES)
def test_firing_variants_really_touch_files_under_jit_load(
        jit_loaded: tuple[Path, str, str], name: str) -> None:
    base, out, err = jit_loaded
    fires = VARIANTS[name][2]
    assert f"RAN {name} {fires}\n" in out, (out[-2000:], err[-2000:])
    assert (base / name / "cwd" / "ckptguard_marker").exists() is fires


_MODULE = textwrap.dedent('''
    import sys
    from typing import Tuple
    import torch

    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.path = "ckptguard_marker"
            self.w = torch.zeros(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.w

        @torch.jit.export
        def __getstate__(self) -> Tuple[str, torch.Tensor, bool]:
            return (self.path, self.w, self.training)

        @torch.jit.export
        def __setstate__(self, state: Tuple[str, torch.Tensor, bool]) -> None:
            self.path = state[0]
            self.w = state[1]
            self.training = state[2]
            t = torch.from_file(self.path, shared=True, size=16, dtype=torch.uint8)
            self.w = self.w + t[:2].float()

    torch.jit.save(torch.jit.script(M()), sys.argv[1])
''')


@pytest.mark.slow
def test_real_jit_script_module_with_from_file_in_setstate(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    src = tmp_path / "mod.py"
    src.write_text(_MODULE)
    out = tmp_path / "scripted.pt"
    save_dir = tmp_path / "save"
    save_dir.mkdir()
    proc = subprocess.run([sys.executable, str(src), str(out)], cwd=save_dir,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (save_dir / "ckptguard_marker").exists()  # saving does not run __setstate__
    r = ckptguard.scan(out)
    assert r.verdict.name == "UNSAFE" and r.max_severity is Severity.CRITICAL
    f = next(f for f in r.findings if f.rule_id == "CKG020")
    assert f.evidence_dict["function"] == "__setstate__", f
    assert "from_file" in f.evidence_dict["operator"]
    load_dir = tmp_path / "load"
    load_dir.mkdir()
    proc = subprocess.run([sys.executable, "-c",
                           f"import torch; torch.jit.load({str(out)!r}); print('LOADED')"],
                          cwd=load_dir, capture_output=True, text=True, timeout=300,
                          check=False)
    assert "LOADED" in proc.stdout, proc.stderr[-2000:]
    marker = load_dir / "ckptguard_marker"
    assert marker.exists() and marker.stat().st_size == 16  # created by torch.jit.load


# --- the scanner ---------------------------------------------------------------------------

SPELLINGS = ["torch.from_file(p)", "torch . from_file(p)", "torch.\\\nfrom_file(p)",
             "(torch\n   .from_file)(p)", "torch.UntypedStorage.from_file(p)",
             "ops.aten.from_file(p)", "torch.ops.aten.from_file(p)", "x = from_file",
             'getattr(torch, "from_file")', "ops.image.read_file(p)",
             "torch.ops.image.write_file(p, t)", "torch.save(t, p)", "torch.jit.load(p)"]


@pytest.mark.parametrize("code", SPELLINGS)
def test_every_spelling_of_a_file_operator_is_named(code: str) -> None:
    text = f"class M(Module):\n  def __setstate__(self, s: int) -> None:\n    {code}\n"
    hits = [h for h in scan_code(text) if h.op is not None]
    assert hits and hits[0].function == "__setstate__", (code, hits)
    assert hits[0].op.kind in (OpKind.FILE, OpKind.NESTED_LOAD)  # type: ignore[union-attr]


@pytest.mark.parametrize("code", [
    "# torch.from_file(p)", "x = 'from_fil' + 'e'", "self.save(p)", "self.load(p)",
    "torch.add(x, y)", "ops.aten.add(x, y)", "ops.prim.unchecked_cast(x)",
    "s = 'it\\'s torch.add'", 'd = """torch.add(x)"""',
])
def test_benign_or_quoted_code_names_nothing_dangerous(code: str) -> None:
    assert scan_code(f"def forward(self):\n    {code}\n") == []


def test_broken_literals_are_tolerated_and_scanning_goes_on() -> None:
    text = "def f(self):\n    x = 'unterminated\n    torch.save(x, p)\n"
    assert [h.name for h in scan_code(text)] == ["torch.save"]
    # an unterminated triple quote swallows the rest (torch.jit.load cannot compile it)
    assert scan_code('def f(self):\n    x = """open\n    y = 1\n') == []


def test_foreign_namespaces_are_named_separately() -> None:
    hits = scan_code("def f(self):\n    ops.mylib.run(x)\n    torch.ops.quantized.add(x)\n")
    assert [(h.name, h.op) for h in hits] == [("ops.mylib.run", None)]


def test_scanner_is_linear_on_hostile_text() -> None:
    """Many unterminated quotes and long dotted chains: one pass, no backtracking blowup."""
    text = ("'" + "a" * 50 + "\n") * 20_000 + "a." * 200_000 + "from_file"
    hits = scan_code(text)
    assert hits and hits[-1].name.endswith("from_file")


def test_scan_never_executes_the_code(tmp_path: Path) -> None:
    data, _, _ = VARIANTS["setstate_from_file"]
    p = tmp_path / "x.pt"
    p.write_bytes(data)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        ckptguard.scan(p)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "ckptguard_marker").exists()
