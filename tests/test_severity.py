"""The severity ladder (issue 11): allowlisted -> no finding, reviewed BENIGN -> MEDIUM,
anything else -> HIGH, known primitives -> CRITICAL. Pinned in both directions, with
generated attacks and the refusal advice."""

from __future__ import annotations

import importlib
import inspect
import json
import pickle
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptguard
from ckptguard import Policy, PolicyError, UnsafeCheckpointError
from ckptguard.model import Effect, Severity, Verdict
from ckptguard.policy import (
    BENIGN,
    PROFILES,
    BenignKind,
    GlobalStatus,
    OriginKind,
    ProfileName,
    classify_global,
    denied_by,
    static_status,
)
from ckptguard.policy.defaults import ALLOW, DENY
from ckptguard.policy.policy import STATUS_RULES
from ckptguard.rules import RULES

A, B, U, D = GlobalStatus.ALLOW, GlobalStatus.BENIGN, GlobalStatus.UNREVIEWED, GlobalStatus.DENY

#: name -> class. The issue's named cases first; then the rest of each class.
LADDER: dict[str, GlobalStatus] = {
    # must NOT be CRITICAL (issue 11.1)
    "pathlib.PosixPath": B,
    "pathlib.Path": B,
    "pathlib._local.PosixPath": B,
    "types.SimpleNamespace": B,
    "signal.Signals": B,
    "socket.AddressFamily": B,
    "socket.SocketKind": B,
    "io.BytesIO": B,
    "_io.BytesIO": B,
    "torch.distributed.tensor.placement_types.Shard": B,
    "torch.distributed.tensor.placement_types.Replicate": B,
    "torch.distributed._tensor.placement_types.Partial": B,
    "torch.distributed.fsdp.api.ShardingStrategy": B,
    # reviewed benign data types
    "argparse.Namespace": B,
    "datetime.datetime": B,
    "datetime.date": B,
    "datetime.timedelta": B,
    "decimal.Decimal": B,
    "fractions.Fraction": B,
    "uuid.UUID": B,
    "collections.defaultdict": B,
    "numpy._core.multiarray._reconstruct": B,
    "numpy.core.multiarray._reconstruct": B,
    "numpy.ndarray": B,
    "numpy.dtype": B,
    "numpy.dtypes.UInt32DType": B,
    "numpy.random._pickle.__generator_ctor": B,  # beats the indirect '_pickle' deny match
    "numpy.random._pcg64.PCG64": B,
    "torch.nn.modules.linear.Linear": B,
    "torch.nn.modules.container.Sequential": B,
    "transformers.training_args.TrainingArguments": B,
    "transformers.trainer_utils.IntervalStrategy": B,
    "accelerate.state.PartialState": B,
    "accelerate.utils.dataclasses.DistributedType": B,
    "lightning.fabric.utilities.data.AttributeDict": B,
    # unreviewed: HIGH, never MEDIUM
    "my_project.config.HParams": U,
    "builtins.print": U,
    "omegaconf.dictconfig.DictConfig": U,
    "torch.distributed.device_mesh.DeviceMesh": U,
    "torch.distributed.all_reduce": U,
    "io.TextIOWrapper": U,
    "numpy.dtypes.ObjectDType": U,
    "transformers.modeling_utils.PreTrainedModel": U,
    "collections.namedtuple": U,  # builds a class from source text: not a data type
    # the misses issue 11 names: CRITICAL
    "uuid._get_command_stdout": D,
    "uuid.getnode": D,
    "_osx_support._read_output": D,
    "imaplib.IMAP4_stream": D,
    "torch.utils.collect_env.run": D,
    "torch.utils.collect_env.run_and_read_all": D,
    "logging.FileHandler": D,
    "logging.handlers.RotatingFileHandler": D,
    "logging.handlers.SocketHandler": D,
    "_xxsubinterpreters.run_string": D,
    "_interpreters.run_string": D,
    "torch._weights_only_unpickler.load": D,
    "torch.serialization._load": D,
    "torch.export.load": D,
    "torch.distributed.checkpoint.load": D,
    "torch.distributed.rpc.rpc_sync": D,
    "torch.distributed.distributed_c10d.init_process_group": D,
    # classic ones stay CRITICAL
    "os.system": D,
    "posix.system": D,
    "builtins.eval": D,
    "builtins.exec": D,
    "subprocess.Popen": D,
    "pickle.loads": D,
    "types.FunctionType": D,
    "types.CodeType": D,
    "signal.signal": D,
    "socket.socket": D,
    "socket.create_connection": D,
    "io.open": D,
    "_io.FileIO": D,
    "pathlib.Path.write_text": D,     # method path through a benign class
    "pathlib.PosixPath.unlink": D,
    "torch.serialization.os.system": D,
    "numpy.random._pickle.os.system": D,
    # allowlisted
    "torch._utils._rebuild_tensor_v2": A,
    "collections.OrderedDict": A,
    "torch.float32": A,
}


def test_ladder_is_big_enough() -> None:
    assert len(LADDER) >= 40
    for status in (A, B, U, D):
        assert sum(1 for s in LADDER.values() if s is status) >= 3, status


@pytest.mark.parametrize(("name", "status"), sorted(LADDER.items()), ids=sorted(LADDER))
def test_ladder_name_to_class(name: str, status: GlobalStatus) -> None:
    assert static_status(name) is status


def test_ladder_class_to_names() -> None:
    """The other direction: every table row lands in its class."""
    for m, n, _ in ALLOW:
        assert static_status(f"{m}.{n}") is A, f"{m}.{n}"
    for row in BENIGN:
        assert static_status(row.full_path) is B, row.full_path
    for prefix, kind, _ in DENY:
        d = classify_global(prefix + ".x", Policy())
        assert d.status is D and d.rule_id == kind.rule_id, prefix
        # a denied module prefix is never beaten by a benign row
        hit = denied_by(prefix + ".x")
        assert hit is not None and hit.direct


def test_status_rules_carry_the_ladder_severity() -> None:
    want = {GlobalStatus.POLICY: Severity.INFO, GlobalStatus.ACKNOWLEDGED: Severity.LOW,
            GlobalStatus.BENIGN: Severity.MEDIUM, GlobalStatus.UNREVIEWED: Severity.HIGH}
    for status, sev in want.items():
        rid = STATUS_RULES[status]
        assert rid is not None and RULES[rid].severity is sev, status
    assert STATUS_RULES[GlobalStatus.ALLOW] is None and STATUS_RULES[GlobalStatus.DENY] is None
    assert {RULES[k.rule_id].severity for _, k, _ in DENY} == {Severity.CRITICAL}
    assert RULES["CKG102"].effect is Effect.BLOCKS and RULES["CKG120"].effect is Effect.BLOCKS


def test_benign_rows_are_not_directly_denied_and_have_reasons() -> None:
    for row in BENIGN:
        hit = denied_by(row.full_path)
        assert hit is None or not hit.direct, row.full_path
        assert row.reason.strip() and row.group.strip()


def _resolve(full: str) -> object | None:
    parts = full.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for p in parts[cut:]:
                obj = getattr(obj, p)
        except AttributeError:
            return None
        return obj
    return None


_OPTIONAL = ("lightning", "lightning_fabric", "pytorch_lightning", "_pydecimal",
             "pathlib._local", "numpy.core", "torch.distributed._tensor",
             "transformers.training_args_seq2seq")


@pytest.mark.parametrize("row", BENIGN, ids=[r.full_path for r in BENIGN])
def test_benign_row_is_what_its_kind_says(row: object) -> None:
    """Rows of installed libraries resolve to a type of the stated kind with no pickling
    hooks of its own (beyond nn.Module's documented __setstate__)."""
    import enum

    from ckptguard.policy.benign import BenignRow

    assert isinstance(row, BenignRow)
    if row.full_path.startswith(("torch.", "transformers.", "accelerate.")):
        pytest.importorskip(row.full_path.split(".")[0])
    obj = _resolve(row.full_path)
    if obj is None:
        assert row.full_path.startswith(_OPTIONAL), f"{row.full_path} does not resolve"
        return
    if row.kind is BenignKind.ENUM:
        assert isinstance(obj, type) and issubclass(obj, enum.Enum), row.full_path
        assert "_missing_" not in vars(obj) or obj.__module__.startswith(("signal", "socket"))
    elif row.kind is BenignKind.MODULE:
        import torch

        assert isinstance(obj, type) and issubclass(obj, torch.nn.Module)
    elif row.kind is BenignKind.DATACLASS:
        assert isinstance(obj, type)
        own = vars(obj)
        assert "__reduce__" not in own and "__reduce_ex__" not in own, row.full_path
    elif row.kind is BenignKind.RECONSTRUCTOR:
        assert callable(obj)
    else:
        assert isinstance(obj, type) or obj in (Ellipsis, NotImplemented)


def test_every_profile_is_benign_rows_only() -> None:
    names = {r.full_path for r in BENIGN}
    assert {p.value for p in ProfileName} == {"hf-trainer", "accelerate", "numpy", "lightning",
                                              "torch-modules", "stdlib-data"}
    for p in PROFILES.values():
        assert p.globals and set(p.globals) <= names, p.name
        assert p.description


# --- generated attacks ---------------------------------------------------------------------

def _pickle_call(module: str, name: str, arg: str = "x", proto: int = 2) -> bytes:
    a = arg.encode()
    return (b"\x80" + bytes([proto]) + b"c" + module.encode() + b"\n" + name.encode() + b"\n"
            + b"X" + struct.pack("<I", len(a)) + a + b"\x85R.")


def _scan(tmp_path: Path, data: bytes, **kw: object) -> ckptguard.Report:
    p = tmp_path / "x.pkl"
    p.write_bytes(data)
    return ckptguard.scan(p, **kw)  # type: ignore[arg-type]


def _blocking_max(r: ckptguard.Report) -> Severity:
    return max((f.severity for f in r.all_findings() if f.effect is Effect.BLOCKS),
               default=Severity.INFO)


@pytest.mark.parametrize(("prefix", "kind", "reason"), DENY, ids=[p for p, _, _ in DENY])
def test_every_deny_row_is_critical_in_a_real_pickle(tmp_path: Path, prefix: str, kind: object,
                                                     reason: str) -> None:
    module, _, name = prefix.rpartition(".")
    if not module:  # a whole module: any name in it
        module, name = prefix, "anything"
    r = _scan(tmp_path, _pickle_call(module, name, proto=4))  # no Python 2 renames
    assert r.verdict is Verdict.UNSAFE
    assert kind.rule_id in r.rule_ids()  # type: ignore[attr-defined]
    assert _blocking_max(r) is Severity.CRITICAL


_ident = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(mod=st.lists(_ident, min_size=1, max_size=3), name=_ident)
def test_unknown_names_are_high_never_medium(tmp_path_factory: pytest.TempPathFactory,
                                             mod: list[str], name: str) -> None:
    full = ".".join([*mod, name])
    status = static_status(full)
    assert status in (U, D, B)
    if status is B:  # a generated name that happens to be a reviewed row
        return
    r = _scan(tmp_path_factory.mktemp("u"), _pickle_call(".".join(mod), name.capitalize()))
    assert r.verdict is Verdict.UNSAFE
    assert _blocking_max(r) >= Severity.HIGH
    assert "CKG102" not in r.rule_ids()


_DANGEROUS_ATTRS = ("write_text", "unlink", "__globals__", "__subclasses__", "open", "system",
                    "from_file", "__reduce_ex__", "register_forward_hook", "apply")


@settings(max_examples=60, deadline=None)
@given(row=st.sampled_from([r for r in BENIGN if "." in r.full_path]),
       attr=st.sampled_from(_DANGEROUS_ATTRS))
def test_method_paths_through_benign_types_are_not_medium(
        tmp_path_factory: pytest.TempPathFactory, row: object, attr: str) -> None:
    full = f"{row.full_path}.{attr}"  # type: ignore[attr-defined]
    module, _, cls = row.full_path.rpartition(".")  # type: ignore[attr-defined]
    r = _scan(tmp_path_factory.mktemp("m"), _pickle_call(module, f"{cls}.{attr}", proto=4))
    assert static_status(full) in (U, D)
    assert r.verdict is Verdict.UNSAFE and _blocking_max(r) >= Severity.HIGH


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]


@pytest.mark.parametrize("entry", [e for e in MANIFEST if e["fires"]], ids=lambda e: e["path"])
def test_every_fixture_that_runs_code_has_a_blocking_high_or_critical(entry: dict) -> None:
    r = ckptguard.scan(FIXTURES / entry["path"])
    assert r.verdict is Verdict.UNSAFE
    assert _blocking_max(r) >= Severity.HIGH, entry["path"]


@pytest.mark.parametrize("entry", [e for e in MANIFEST if e["path"].startswith(("benign/",
                                                                                 "medium/"))],
                         ids=lambda e: e["path"])
def test_no_benign_fixture_is_above_medium(entry: dict) -> None:
    r = ckptguard.scan(FIXTURES / entry["path"])
    assert r.max_severity is None or r.max_severity <= Severity.MEDIUM, entry["path"]


# --- policy entries on the ladder ------------------------------------------------------------

def test_unreviewed_entry_needs_an_acknowledgement(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="acknowledge_unreviewed"):
        Policy().allow("my_project", "Config", reason="ours")
    pol = Policy().allow("my_project", "Config", reason="ours", acknowledge_unreviewed=True)
    r = _scan(tmp_path, _pickle_call("my_project", "Config"), policy=pol)
    assert r.verdict is Verdict.SAFE and "CKG121" in r.rule_ids()
    f = next(f for f in r.findings if f.rule_id == "CKG121")
    assert f.severity is Severity.LOW and f.effect is Effect.NOTE
    toml = tmp_path / "p.toml"
    toml.write_text('allow = [{ global = "my_project.Config", reason = "ours" }]\n')
    with pytest.raises(PolicyError, match="acknowledge_unreviewed"):
        Policy.from_file(toml)
    toml.write_text('allow = [{ global = "my_project.Config", reason = "ours", '
                    'acknowledge_unreviewed = true }]\nprofiles = ["numpy"]\n')
    pol = Policy.from_file(toml)
    assert pol.user_entry("my_project.Config") is not None
    assert pol.profile_names == (ProfileName.NUMPY,)
    assert pol.origin.kind is OriginKind.FILE


@pytest.mark.parametrize("name", ["uuid._get_command_stdout", "logging.FileHandler",
                                  "imaplib.IMAP4_stream", "torch.utils.collect_env.run"])
def test_acknowledgement_never_allows_critical(name: str) -> None:
    module, _, n = name.rpartition(".")
    with pytest.raises(PolicyError, match="can never allow"):
        Policy().allow(module, n, reason="trust me", acknowledge_unreviewed=True)


def test_benign_then_policy_is_safe_with_ckg106(tmp_path: Path) -> None:
    data = pickle.dumps({"p": Path("/x")}, protocol=2)
    r = _scan(tmp_path, data)
    assert r.verdict is Verdict.UNSAFE and "CKG102" in r.rule_ids()
    assert r.max_severity is Severity.MEDIUM
    r = _scan(tmp_path, data, profiles=["stdlib-data"])
    assert r.verdict is Verdict.SAFE and "CKG106" in r.rule_ids()


def test_numpy_object_dtype_is_high_even_under_the_numpy_profile(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    data = pickle.dumps(np.array([1, "a"], dtype=object), protocol=2)
    r = _scan(tmp_path, data, profiles=["numpy"])
    assert r.verdict is Verdict.UNSAFE and "CKG122" in r.rule_ids()
    ok = _scan(tmp_path, pickle.dumps(np.arange(4, dtype=np.int16), protocol=2),
               profiles=["numpy"])
    assert ok.verdict is Verdict.SAFE


def test_unknown_profile_is_a_policy_error(tmp_path: Path) -> None:
    (tmp_path / "x.pkl").write_bytes(pickle.dumps(1))
    with pytest.raises(PolicyError, match="unknown profile"):
        ckptguard.scan(tmp_path / "x.pkl", profiles=["nope"])


# --- refusal messages ------------------------------------------------------------------------

def _refusal(report: ckptguard.Report) -> str:
    return str(UnsafeCheckpointError(report))


def test_refusal_for_medium_offers_the_profile_not_safetensors(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    r = _scan(tmp_path, pickle.dumps({"rng": np.random.get_state()}, protocol=2))
    text = _refusal(r)
    assert "profiles=[" in text and "--profile" in text
    assert "safetensors" not in text


def test_refusal_for_medium_without_profile_offers_a_snippet(tmp_path: Path) -> None:
    import signal

    r = _scan(tmp_path, pickle.dumps({"s": signal.Signals.SIGINT,
                                      "r": __import__("datetime").date(2020, 1, 1)}, protocol=2))
    text = _refusal(r)
    assert "allow = [" in text and "signal.Signals" in text and "datetime.date" in text
    assert "profiles=[" not in text


@pytest.mark.parametrize(("module", "name"), [("my_project", "Config"),
                                              ("uuid", "_get_command_stdout"),
                                              ("os", "system")])
def test_refusal_never_offers_a_policy_for_high_or_critical(tmp_path: Path, module: str,
                                                            name: str) -> None:
    # a benign global next to the dangerous one must not earn a snippet either
    data = pickle.dumps(Path("/x"), protocol=2)[:-1] + _pickle_call(module, name)[2:-1] \
        + b"\x86."
    r = _scan(tmp_path, data)
    assert r.verdict is Verdict.UNSAFE and _blocking_max(r) >= Severity.HIGH
    text = _refusal(r)
    assert "allow = [" not in text and "profiles=[" not in text and "--profile" not in text
    assert "global =" not in text


def test_policy_error_message_for_unreviewed_never_lists_a_snippet() -> None:
    with pytest.raises(PolicyError) as ei:
        Policy().allow("evil", "Gadget", reason="x")
    assert "allow = [" not in str(ei.value)


def test_suggest_policy_never_contains_high_or_critical(tmp_path: Path) -> None:
    from ckptguard.policy.suggest import suggest_policy_toml

    data = pickle.dumps(Path("/x"), protocol=2)[:-1] + _pickle_call("my_project", "X")[2:-1] \
        + b"\x86."
    r = _scan(tmp_path, data)
    text = suggest_policy_toml([r])
    assert "my_project" not in text.split("allow = [", 1)[1]
    assert "pathlib" in text
    if sys.version_info >= (3, 11):
        import tomllib

        doc = tomllib.loads(text)
        Policy.from_mapping(doc, source="suggested")  # valid, and allowed by the ladder


def test_gate_and_ladder_share_one_decision_type() -> None:
    d = classify_global("os.system", Policy())
    assert d.deny is not None and d.rule_id == "CKG101" and d.status is D
    assert not inspect.isclass(d.rule_id)


# --- policy provenance (issue 10.6) -------------------------------------------------------------

def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    from click.testing import CliRunner

    from ckptguard.cli import cli

    res = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return res.exit_code, res.stdout


_PAYLOAD_GLOBAL = ("evilpkg.gadgets", "Runner")


def _hostile_repo(root: Path) -> Path:
    """A cloned 'model repository' whose pyproject.toml allows its own payload (an
    unreviewed gadget, acknowledged) and a benign-looking type next to it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.pkl").write_bytes(_pickle_call(*_PAYLOAD_GLOBAL, arg="touch pwned"))
    (root / "pyproject.toml").write_text(
        "[project]\nname = 'innocent-model'\n[tool.ckptguard]\nallow = [\n"
        '  { global = "evilpkg.gadgets.Runner", reason = "our trainer", '
        "acknowledge_unreviewed = true },\n]\nprofiles = [\"hf-trainer\"]\n")
    return root


@pytest.mark.parametrize("cwd_inside", [True, False])
def test_hostile_repo_pyproject_never_applies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              cwd_inside: bool) -> None:
    repo = _hostile_repo(tmp_path / "repo")
    monkeypatch.delenv("CKPTGUARD_POLICY", raising=False)
    monkeypatch.chdir(repo if cwd_inside else tmp_path)
    target = "." if cwd_inside else "repo"
    code, out = _cli("scan", "--format", "json", target)
    doc = json.loads(out)
    assert code == 1
    rep = doc["reports"][0]
    assert rep["verdict"] == "UNSAFE"
    ids = {f["rule_id"] for c in [rep, *rep["children"]] for f in c["findings"]}
    assert "CKG120" in ids and "CKG121" not in ids and "CKG106" not in ids
    assert doc["policy_source"] == {"origin": {"kind": "default", "location": None},
                                    "profiles": []}
    # the API never discovers either
    assert ckptguard.scan(repo).verdict is Verdict.UNSAFE


def test_discovery_is_an_explicit_opt_in_and_reported(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _hostile_repo(tmp_path / "repo")
    monkeypatch.delenv("CKPTGUARD_POLICY", raising=False)
    monkeypatch.chdir(repo)
    code, out = _cli("scan", "--format", "json", "--discover-policy", "model.pkl")
    doc = json.loads(out)
    assert code == 0  # the user asked for it, and every format says so
    assert doc["policy_source"]["origin"] == {"kind": "discovered",
                                              "location": str(repo / "pyproject.toml")}
    assert doc["policy_source"]["profiles"][0]["name"] == "hf-trainer"
    code, out = _cli("scan", "--format", "sarif", "--discover-policy", "model.pkl")
    props = json.loads(out)["runs"][0]["properties"]["policySource"]
    assert props["origin"]["kind"] == "discovered"
    code, out = _cli("scan", "--discover-policy", "model.pkl")
    assert f"policy: discovered:{repo / 'pyproject.toml'}" in out


def test_policy_from_environment_is_reported(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ns.pkl").write_bytes(pickle.dumps(__import__("argparse").Namespace(a=1),
                                                   protocol=2))
    pol = tmp_path / "p.toml"
    pol.write_text('allow = [{ global = "argparse.Namespace", reason = "hp" }]\n')
    code, out = _cli("scan", "--format", "json", "ns.pkl",
                     env={"CKPTGUARD_POLICY": str(pol)})
    doc = json.loads(out)
    assert code == 0
    assert doc["policy_source"]["origin"] == {"kind": "environment",
                                              "location": f"CKPTGUARD_POLICY={pol}"}
    code, _ = _cli("scan", "ns.pkl", env={"CKPTGUARD_POLICY": ""})
    assert code == 1


def test_profile_flag_and_suggest_policy_round_trip(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CKPTGUARD_POLICY", raising=False)
    (tmp_path / "a.pkl").write_bytes(pickle.dumps(
        {"when": datetime.date(2020, 1, 2), "where": Path("/data")}, protocol=2))
    (tmp_path / "evil.pkl").write_bytes(_pickle_call("uuid", "_get_command_stdout"))
    assert _cli("scan", "a.pkl")[0] == 1
    code, out = _cli("scan", "--format", "json", "--profile", "stdlib-data", "a.pkl")
    assert code == 0
    assert json.loads(out)["policy_source"]["profiles"] == [
        {"name": "stdlib-data", "origin": {"kind": "flag", "location": "--profile"}}]
    code, toml = _cli("scan", "--suggest-policy", "a.pkl", "evil.pkl")
    assert "uuid" not in toml.split("allow = [", 1)[1] and "evil.pkl" in toml
    assert "datetime.date" in toml and "pathlib.PosixPath" in toml
    (tmp_path / "suggested.toml").write_text(toml)
    assert _cli("scan", "--policy", "suggested.toml", "a.pkl")[0] == 0
    assert _cli("scan", "--policy", "suggested.toml", "evil.pkl")[0] == 1
    assert _cli("scan", "--policy", "suggested.toml", "--discover-policy", "a.pkl")[0] == 2


@pytest.mark.parametrize(("profiles", "expect"), [("numpy", "LOADED"),
                                                  ("", "UnsafeCheckpointError")])
@pytest.mark.slow
def test_environment_gate_takes_profiles(tmp_path: Path, profiles: str, expect: str) -> None:
    import os
    import subprocess

    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    path = tmp_path / "arrays.pt"
    torch.save({"mean": np.arange(3, dtype=np.float32)}, path)
    code = ("import ckptguard.guard as g\nassert g.install_from_env()\nimport torch\n"
            f"try:\n    out = torch.load({str(path)!r})\n"
            "    print('LOADED', out['mean'].tolist())\n"
            "except Exception as e:\n    print(type(e).__name__)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTGUARD")}
    env.update({"CKPTGUARD_GUARD_TORCH_LOAD": "1", "CKPTGUARD_PROFILES": profiles})
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=180, check=False)
    assert expect in proc.stdout, proc.stderr[-2000:]
    if expect == "LOADED":
        assert "[0.0, 1.0, 2.0]" in proc.stdout


@pytest.mark.parametrize(("fixture", "profile"), [
    ("medium/lightning_hparams.pt", "lightning"),
    ("medium/argparse_namespace.pt", "stdlib-data"),
    ("medium/numpy_arrays.pt", "numpy"),
    ("medium/whole_module.pt", "torch-modules"),
])
def test_medium_fixture_loads_under_its_profile_bit_for_bit(fixture: str, profile: str) -> None:
    torch = pytest.importorskip("torch")
    path = FIXTURES / fixture
    assert ckptguard.scan(path).verdict is Verdict.UNSAFE
    r = ckptguard.scan(path, profiles=[profile])
    assert r.verdict is Verdict.SAFE and "CKG106" in r.rule_ids()
    ours = ckptguard.safe_load(path, profiles=[profile])
    ref = torch.load(path, weights_only=False, map_location="cpu")
    if isinstance(ref, torch.nn.Module):
        ours, ref = ours.state_dict(), ref.state_dict()
    flat_ours = {k: v for k, v in ours.items() if isinstance(v, torch.Tensor)}
    flat_ref = {k: v for k, v in ref.items() if isinstance(v, torch.Tensor)}
    for k in ("state_dict",):
        if k in ref:
            flat_ours.update(ours[k])
            flat_ref.update(ref[k])
    assert flat_ref and flat_ours.keys() == flat_ref.keys()
    for k, v in flat_ref.items():
        a, b = flat_ours[k], v
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.view(torch.uint8).tolist() == b.view(torch.uint8).tolist()
