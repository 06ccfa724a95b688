"""The allow table is torch's weights-only allowlist, row for row; user policy rules."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from ckptguard import Policy, PolicyError
from ckptguard.analysis import _torch_names
from ckptguard.policy import GlobalStatus, OriginKind, PolicyOrigin, classify_global, denied_by
from ckptguard.policy.defaults import ALLOW, DENY

torch = pytest.importorskip("torch")


def _resolve(full: str) -> object:
    module, _, name = full.rpartition(".")
    # torch's keys like "torch.float32" name attributes of a module
    while module:
        try:
            obj: object = importlib.import_module(module)
            break
        except ImportError:
            module, _, head = module.rpartition(".")
            name = f"{head}.{name}"
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def test_allow_table_equals_torch_weights_only_allowlist() -> None:
    from torch._weights_only_unpickler import _get_allowed_globals

    ours = {f"{m}.{n}" for m, n, _ in ALLOW}
    theirs = set(_get_allowed_globals())
    assert ours == theirs, (sorted(ours - theirs), sorted(theirs - ours))


@pytest.mark.parametrize(("module", "name", "reason"), ALLOW, ids=[f"{m}.{n}" for m, n, _ in ALLOW])
def test_every_allow_row_resolves_in_installed_torch(module: str, name: str, reason: str) -> None:
    assert reason.strip()
    from torch._weights_only_unpickler import _get_allowed_globals

    expected = _get_allowed_globals()[f"{module}.{name}"]
    try:
        obj = _resolve(f"{module}.{name}")
    except AttributeError:
        # torch wraps legacy storage classes (torch.FloatStorage) in StorageType objects
        assert type(expected).__name__ == "StorageType"
        return
    if type(expected).__name__ != "StorageType":
        assert obj is expected


def test_torch_rename_tables_match_installed_torch() -> None:
    import torch._utils as tu

    assert tu.IMPORT_MAPPING == _torch_names.IMPORT_MAPPING
    assert tu.NAME_MAPPING == _torch_names.NAME_MAPPING


def test_no_allow_row_is_denied() -> None:
    for m, n, _ in ALLOW:
        assert denied_by(f"{m}.{n}") is None, f"{m}.{n}"


def test_deny_rows_have_known_rules_and_reasons() -> None:
    prefixes = [p for p, _, _ in DENY]
    assert len(prefixes) == len(set(prefixes))
    for _prefix, kind, reason in DENY:
        assert kind.rule_id in ("CKG101", "CKG104") and reason


@pytest.mark.parametrize(("full", "status"), [
    ("torch._utils._rebuild_tensor_v2", GlobalStatus.ALLOW),
    ("collections.OrderedDict", GlobalStatus.ALLOW),
    ("posix.system", GlobalStatus.DENY),
    ("torch.serialization.os.system", GlobalStatus.DENY),  # dotted path through a module attr
    ("collections.OrderedDict.__class__", GlobalStatus.DENY),  # dunder attribute chain
    ("builtins.getattr", GlobalStatus.DENY),
    ("pip.main", GlobalStatus.DENY),
    ("runpy._run_code", GlobalStatus.DENY),
    ("argparse.Namespace", GlobalStatus.BENIGN),
    ("numpy.core.multiarray._reconstruct", GlobalStatus.BENIGN),
    ("my_project.config.HParams", GlobalStatus.UNREVIEWED),
])
def test_classify(full: str, status: GlobalStatus) -> None:
    assert classify_global(full, Policy()).status is status


def test_policy_from_toml_and_refusal_of_critical(tmp_path: Path) -> None:
    ok = tmp_path / "p.toml"
    ok.write_text('allow = [{ global = "argparse.Namespace", reason = "trainer hparams" }]\n')
    pol = Policy.from_file(ok)
    d = classify_global("argparse.Namespace", pol)
    assert d.status is GlobalStatus.POLICY and d.reason == "trainer hparams"
    assert d.entry is not None and d.entry.origin == PolicyOrigin(OriginKind.FILE, str(ok))
    bad = tmp_path / "bad.toml"
    bad.write_text('allow = [{ global = "os.system", reason = "why not" }]\n')
    with pytest.raises(PolicyError, match="can never allow"):
        Policy.from_file(bad)
    noreason = tmp_path / "nr.toml"
    noreason.write_text('allow = [{ global = "argparse.Namespace" }]\n')
    with pytest.raises(PolicyError, match="reason"):
        Policy.from_file(noreason)
    with pytest.raises(PolicyError, match="can never allow"):
        Policy().allow("builtins", "eval", reason="x")


def test_policy_discovered_from_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.ckptguard]\nallow = [{ global = "argparse.Namespace", reason = "r" }]\n')
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    pol = Policy.discover(sub)
    assert pol.user_entry("argparse.Namespace") is not None
    assert pol.origin == PolicyOrigin(OriginKind.DISCOVERED, str(tmp_path / "pyproject.toml"))
