"""The gate's hooks on DCP's ``FileSystemReader.read_metadata`` and ``torch.export.load`` /
``load_pt2`` are installed when the guard is enabled if torch has imported those modules,
else right after it imports them: enabling the gate never imports them (~1.3 s of CPU in
every gated process), and a module imported later is gated all the same. Each case runs in
a fresh interpreter, where neither module has been imported yet."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ckptguard.guard import ENV_VAR

DCP = "torch.distributed.checkpoint.filesystem"
EXPORT = "torch.export"

PKG = "torch.export.pt2_archive._package"

_PROBE = f"import json, sys\nDCP, EXPORT, PKG = {DCP!r}, {EXPORT!r}, {PKG!r}\n" + """
def state():
    # looks only at what is imported: importing a module here would trigger its hook
    out = {"dcp_imported": DCP in sys.modules, "export_imported": EXPORT in sys.modules,
           "pkg_imported": PKG in sys.modules}
    if out["dcp_imported"]:
        from ckptguard.loaders import dcp
        reader = sys.modules[DCP].FileSystemReader
        out["dcp_gated"] = reader.read_metadata is dcp._gated_read_metadata
    if out["export_imported"]:
        out["export_gated"] = "ckptguard" in (sys.modules[EXPORT].load.__doc__ or "")
    if out["pkg_imported"]:
        out["load_pt2_gated"] = "ckptguard" in (sys.modules[PKG].load_pt2.__doc__ or "")
    return out
"""

_GUARD_THEN_IMPORT = _PROBE + """
import torch, ckptguard
steps = {}
off = ckptguard.guard_torch_load()
off.disable()                       # enabled and disabled before the import: nothing pending
import torch.export.pt2_archive._package
steps["disabled_before_import"] = state()
g = ckptguard.guard_torch_load()
steps["enabled"] = state()          # imported modules are hooked at once; DCP is not imported
import torch.distributed.checkpoint
steps["after_import"] = state()     # DCP hooked right after its import
g.disable()
steps["disabled"] = state()
print(json.dumps(steps))
"""

_ENV_GATE = _PROBE + """
import ckptguard, torch
steps = {"after_import_torch": state()}
import torch.distributed.checkpoint, torch.export.pt2_archive._package
steps["after_import_formats"] = state()
print(json.dumps(steps))
"""


def _run(code: str, env: dict[str, str] | None = None) -> dict[str, dict[str, bool]]:
    r = subprocess.run([sys.executable, "-c", "import warnings; warnings.simplefilter('ignore')\n"
                        + code], capture_output=True, text=True, env=env, timeout=300,
                       stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out: dict[str, dict[str, bool]] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.slow
def test_the_guard_hooks_a_format_loader_when_torch_imports_it() -> None:
    steps = _run(_GUARD_THEN_IMPORT)
    everything = {"export_imported": True, "pkg_imported": True}
    assert steps["disabled_before_import"] == {
        **everything, "dcp_imported": False, "export_gated": False, "load_pt2_gated": False}
    assert steps["enabled"] == {
        **everything, "dcp_imported": False, "export_gated": True, "load_pt2_gated": True}
    assert steps["after_import"] == {
        **everything, "dcp_imported": True, "dcp_gated": True, "export_gated": True,
        "load_pt2_gated": True}
    assert steps["disabled"] == {
        **everything, "dcp_imported": True, "dcp_gated": False, "export_gated": False,
        "load_pt2_gated": False}


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="environment gate test uses POSIX env")
def test_the_environment_gate_imports_no_format_loader_and_hooks_them_later() -> None:
    env = {**os.environ, ENV_VAR: "1"}
    env.pop("CKPTGUARD_POLICY", None)
    steps = _run(_ENV_GATE, env)
    first = steps["after_import_torch"]
    # the gate imported neither DCP nor the .pt2 package (torch._dynamo: ~1.3 s with DCP)
    assert first["dcp_imported"] is False and first["pkg_imported"] is False
    if first["export_imported"]:  # torch 2.13's own ``import torch`` imports torch.export
        assert first["export_gated"] is True
    assert steps["after_import_formats"] == {
        "dcp_imported": True, "dcp_gated": True, "export_imported": True,
        "export_gated": True, "pkg_imported": True, "load_pt2_gated": True}
