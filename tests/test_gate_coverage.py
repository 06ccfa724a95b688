"""Issue 17.5: a gate nothing walks around. References to torch.load taken *before* the
gate was enabled (``from torch import load``, default arguments, ``functools.partial``,
wrappers, ``torch.serialization.load``) are audited too, torch's internal loaders refuse
unaudited calls, and worker processes get the gate through the environment + ``.pth``."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import pickle
import subprocess
import sys
import sysconfig
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from ckg_gate_worker import guarded_in_worker, load_in_worker
from ckg_loader_helpers import (
    assert_same_state_dict,
    benign_state_dict,
    hostile_raw_pickle,
    hostile_torch_zip,
    legacy_state_dict,
    save_torch,
)

import ckptguard
from ckptguard import UnsafeCheckpointError
from ckptguard.errors import UnauditedLoadError
from ckptguard.guard import ENV_VAR, PTH_LINE, install_from_env, write_pth
from ckptguard.loaders import _torch, gate

REAL_LOAD = _torch.ORIGINAL_LOAD
Loader = Callable[[Any], Any]


# --- every way of holding on to torch.load, each taken before any guard exists -----------

def _routes() -> dict[str, Loader]:
    from torch import load as from_torch_import_load
    from torch.serialization import load as from_serialization_import_load

    def default_arg(f: Any, loader: Loader = torch.load) -> Any:
        return loader(f, weights_only=False)

    class Holder:
        load = staticmethod(torch.load)

    table = {"loader": torch.load}
    kept_in_dict = table["loader"]
    original = torch.load

    @functools.wraps(original)
    def wrapped(f: Any, **kw: Any) -> Any:  # a library's wrapper, made before the gate
        kw.setdefault("map_location", "cpu")
        return original(f, **kw)

    return {
        "torch.load": lambda f: torch.load(f, weights_only=False),
        "torch.serialization.load": lambda f: torch.serialization.load(f, weights_only=False),
        "from torch import load": lambda f: from_torch_import_load(f, weights_only=False),
        "from torch.serialization import load":
            lambda f: from_serialization_import_load(f, weights_only=False),
        "partial": functools.partial(torch.load, weights_only=False),
        "partial(pickle_module)": functools.partial(torch.load, pickle_module=pickle,
                                                    weights_only=False),
        "nested partial": functools.partial(functools.partial(torch.load), weights_only=False),
        "default argument": default_arg,
        "staticmethod": lambda f: Holder.load(f, weights_only=False),
        "kept in a dict": lambda f: kept_in_dict(f, weights_only=False),
        "third-party wrapper": lambda f: wrapped(f, weights_only=False),
        "getattr": lambda f: getattr(torch, "load")(f, weights_only=False),
        "__call__": lambda f: torch.load.__call__(f, weights_only=False),
        "mmap": lambda f: torch.load(f, mmap=True, weights_only=False),
    }


ROUTES = _routes()  # taken at import, long before any test enables a guard


@pytest.fixture(autouse=True)
def _no_leftover_guard() -> object:
    yield
    assert gate.current() is None, "a test left a guard enabled"
    assert torch.serialization.load.__code__ is _torch.ORIGINAL_CODE


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("make", [hostile_torch_zip, hostile_raw_pickle], ids=["zip", "pickle"])
def test_captured_reference_is_audited(tmp_path: Path, route: str, make: Any) -> None:
    marker = tmp_path / "pwned"
    path = make(tmp_path / "evil.pt", marker)
    with ckptguard.guard_torch_load(), pytest.raises(UnsafeCheckpointError) as ei:
        ROUTES[route](path)
    assert {f.rule_id for f in ei.value.report.all_findings()} >= {"CKG101"}
    assert not marker.exists()


@pytest.mark.parametrize("route", sorted(r for r in ROUTES if r != "mmap"))
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_captured_reference_loads_benign_unchanged(tmp_path: Path, route: str,
                                                   legacy: bool) -> None:
    sd = legacy_state_dict() if legacy else benign_state_dict()
    path = save_torch(tmp_path / "m.pt", sd, legacy=legacy)
    ref = REAL_LOAD(path, weights_only=True)
    with ckptguard.guard_torch_load():
        ours = ROUTES[route](path)
    assert_same_state_dict(ours, ref)


def test_captured_reference_after_gate_is_plain_torch(tmp_path: Path) -> None:
    """Once the last guard ends the same references are torch's own load again."""
    marker = tmp_path / "pwned"
    path = hostile_raw_pickle(tmp_path / "evil.pkl", marker)
    with ckptguard.guard_torch_load(), pytest.raises(UnsafeCheckpointError):
        ROUTES["partial"](path)
    benign = save_torch(tmp_path / "m.pt", benign_state_dict())
    assert_same_state_dict(ROUTES["partial"](benign), REAL_LOAD(benign, weights_only=True))


@pytest.mark.parametrize("internal", gate.BACKSTOPPED)
def test_internal_loaders_refuse_unaudited_calls(tmp_path: Path, internal: str) -> None:
    marker = tmp_path / "pwned"
    path = hostile_raw_pickle(tmp_path / "evil.pkl", marker)
    fn = getattr(torch.serialization, internal)
    with ckptguard.guard_torch_load():
        assert getattr(torch.serialization, internal) is not fn  # backstop installed
        with open(path, "rb") as fh, pytest.raises(UnauditedLoadError, match=internal):
            getattr(torch.serialization, internal)(fh, None, pickle)
    assert not marker.exists()
    assert getattr(torch.serialization, internal) is fn  # and put back


def test_internal_legacy_loader_still_works_without_guard(tmp_path: Path) -> None:
    """Control: the backstop only exists while a guard is active."""
    path = save_torch(tmp_path / "m.pt", legacy_state_dict(), legacy=True)
    with open(path, "rb") as fh:
        out = torch.serialization._legacy_load(fh, None, pickle, encoding="utf-8")
    assert_same_state_dict(out, REAL_LOAD(path, weights_only=True))


def test_gate_refuses_a_foreign_code_swap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed: if something else replaced load's code the gate cannot vouch for it."""
    def other(f: Any, map_location: Any = None, pickle_module: Any = None, *,
              weights_only: Any = None, mmap: Any = None, **kw: Any) -> Any:
        return None

    monkeypatch.setattr(torch.serialization.load, "__code__", other.__code__)
    with pytest.raises(UnauditedLoadError, match="replaced"):
        ckptguard.guard_torch_load()
    monkeypatch.undo()
    assert gate.current() is None


# --- torch.hub.load_state_dict_from_url (weights_only=False by default) -------------------
#
# After its download hub reads the cached file in one of two ways: a zip that Python's
# zipfile sees as exactly one member (torchvision's old "legacy zip" checkpoints) is
# extracted and the member torch.load'ed; anything else is torch.load'ed as it is. The file
# is put in hub's cache folder first, so nothing is downloaded (the URL is never opened).


def _hub(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # hub's legacy-zip deprecation note
        return torch.hub.load_state_dict_from_url(f"http://127.0.0.1:9/{path.name}",
                                                  model_dir=str(path.parent), progress=False)


def _one_member_zip(path: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(member, data)
    return path


def _hostile_for_hub(tmp_path: Path, form: str, marker: Path) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    if form == "torch zip":
        return hostile_torch_zip(cache / "evil.pth", marker)
    return _one_member_zip(cache / "evil.pth", "evil.pt",
                           hostile_raw_pickle(tmp_path / "evil.pkl", marker).read_bytes())


@pytest.mark.parametrize("form", ["torch zip", "legacy zip"])
def test_hub_load_fires_without_the_gate(tmp_path: Path, form: str) -> None:
    """Control: each file really runs its payload through hub's default load."""
    marker = tmp_path / "pwned"
    path = _hostile_for_hub(tmp_path, form, marker)
    with contextlib.suppress(Exception):  # the payload's return value is no state dict
        _hub(path)
    assert marker.exists()


@pytest.mark.parametrize("form", ["torch zip", "legacy zip"])
def test_hub_load_is_gated(tmp_path: Path, form: str) -> None:
    marker = tmp_path / "pwned"
    path = _hostile_for_hub(tmp_path, form, marker)
    with ckptguard.guard_torch_load(), pytest.raises(UnsafeCheckpointError) as ei:
        _hub(path)
    assert {f.rule_id for f in ei.value.report.all_findings()} >= {"CKG101"}
    assert not marker.exists()
    # and the downloaded file itself is not SAFE for a scan either (hub's extraction is one
    # more program reading its bytes)
    report = ckptguard.scan(path)
    assert report.verdict is ckptguard.Verdict.UNSAFE
    assert "CKG101" in {f.rule_id for f in report.all_findings()}
    assert not marker.exists()


@pytest.mark.parametrize("form", ["torch zip", "legacy zip"])
def test_hub_load_benign_unchanged(tmp_path: Path, form: str) -> None:
    cache = tmp_path / "hub"
    cache.mkdir()
    if form == "torch zip":
        path = save_torch(cache / "m.pth", benign_state_dict())
        ref = REAL_LOAD(path, weights_only=True)
    else:
        inner = save_torch(tmp_path / "m.pt", legacy_state_dict(), legacy=True)
        path = _one_member_zip(cache / "m.pth", "m.pt", inner.read_bytes())
        ref = REAL_LOAD(inner, weights_only=True)
    with ckptguard.guard_torch_load():
        ours = _hub(path)
    assert_same_state_dict(ours, ref)


# --- worker processes -------------------------------------------------------------------

def _importable_path() -> str:
    """PYTHONPATH that makes ckptguard importable while site.py runs the user site's .pth
    files, as it is when ckptguard is installed into site-packages (an editable install's
    own .pth in the global site-packages runs only after the user site's)."""
    pkg_root = str(Path(ckptguard.__file__).resolve().parents[1])
    return os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH", "")) if p)


def _user_site(base: Path) -> Path:
    site = Path(sysconfig.get_path("purelib", f"{os.name}_user", {"userbase": str(base)}))
    site.mkdir(parents=True, exist_ok=True)
    return site


@pytest.mark.slow
@pytest.mark.parametrize("how", ["env+pth", "initializer"])
def test_spawned_worker_is_gated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 how: str) -> None:
    marker = tmp_path / "pwned"
    path = hostile_torch_zip(tmp_path / "evil.pt", marker)
    monkeypatch.setenv(ENV_VAR, "1")
    initializer = None
    if how == "env+pth":
        base = tmp_path / "userbase"
        pth = write_pth(_user_site(base))
        assert Path(pth).read_text() == PTH_LINE
        monkeypatch.setenv("PYTHONUSERBASE", str(base))
        monkeypatch.setenv("PYTHONPATH", _importable_path())
    else:
        initializer = install_from_env
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, initializer=initializer) as pool:
        assert pool.apply(load_in_worker, (str(path),)) == "UnsafeCheckpointError CKG101"
        assert pool.apply(guarded_in_worker) is True
    assert not marker.exists()


def test_spawned_worker_without_pth_is_not_gated(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Control (the ``fires`` side): the environment variable alone does not reach a worker
    that never imports ckptguard, and the payload really runs there."""
    marker = tmp_path / "pwned"
    path = hostile_torch_zip(tmp_path / "evil.pt", marker)
    monkeypatch.setenv(ENV_VAR, "1")
    monkeypatch.setenv("PYTHONUSERBASE", str(tmp_path / "empty-userbase"))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        assert pool.apply(load_in_worker, (str(path),)) == "loaded"
    assert marker.exists()


def test_forked_worker_inherits_the_gate(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = hostile_torch_zip(tmp_path / "evil.pt", marker)
    ctx = multiprocessing.get_context("fork")
    with ckptguard.guard_torch_load(), ctx.Pool(1) as pool:
        assert pool.apply(load_in_worker, (str(path),)) == "UnsafeCheckpointError CKG101"
    assert not marker.exists()


def _child_env(tmp_path: Path, *, pth: bool, policy: Path | None = None) -> dict[str, str]:
    base = tmp_path / "userbase"
    if pth:
        write_pth(_user_site(base))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTGUARD")}
    env.update({ENV_VAR: "1", "PYTHONUSERBASE": str(base), "PYTHONPATH": _importable_path()})
    if policy is not None:
        env["CKPTGUARD_POLICY"] = str(policy)
    return env


_PLAIN_CHILD = """
import torch  # this program never imports ckptguard itself
try:
    torch.load({path!r}, weights_only=False)
    print("loaded")
except Exception as e:
    print(type(e).__name__)
"""


@pytest.mark.slow
@pytest.mark.parametrize("pth", [True, False])
def test_subprocess_with_pth_is_gated(tmp_path: Path, pth: bool) -> None:
    marker = tmp_path / "pwned"
    path = hostile_torch_zip(tmp_path / "evil.pt", marker)
    r = subprocess.run([sys.executable, "-c", _PLAIN_CHILD.format(path=str(path))],
                       capture_output=True, text=True, env=_child_env(tmp_path, pth=pth),
                       timeout=180, check=False)
    if pth:
        assert r.stdout.strip() == "UnsafeCheckpointError", r.stderr[-2000:]
        assert not marker.exists()
    else:  # control: without the hook the variable alone does nothing, the payload runs
        assert r.stdout.strip() == "loaded", r.stderr[-2000:]
        assert marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["missing", "deep", "invalid"])
def test_unusable_policy_file_fails_closed(tmp_path: Path, policy: str) -> None:
    """CKPTGUARD_POLICY names a file that cannot be used: the gate still turns on and
    refuses every load (the start-up hook cannot stop the interpreter, so it must not
    silently leave torch.load unguarded). A TOML nested 5,000 deep made tomllib raise
    RecursionError, which escaped `import ckptguard`: the gate stayed off and a hostile
    pickle ran."""
    marker = tmp_path / "pwned"
    path = hostile_torch_zip(tmp_path / "evil.pt", marker)
    pol = tmp_path / f"{policy}.toml"
    if policy == "deep":
        pol.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    elif policy == "invalid":
        pol.write_text("allow = [\n")
    r = subprocess.run([sys.executable, "-c", _PLAIN_CHILD.format(path=str(path))],
                       capture_output=True, text=True,
                       env=_child_env(tmp_path, pth=True, policy=pol),
                       timeout=180, check=False)
    assert r.stdout.strip() == "PolicyError", (r.stdout, r.stderr[-2000:])
    assert not marker.exists()


def test_deeply_nested_policy_is_a_clear_error(tmp_path: Path) -> None:
    from ckptguard.errors import PolicyError
    from ckptguard.policy import Policy

    pol = tmp_path / "deep.toml"
    pol.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(PolicyError, match="nested too deep"):
        Policy.from_file(pol)
