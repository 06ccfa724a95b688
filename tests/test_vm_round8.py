"""VM review round 8 (fixtures/families/vm_round8.py): every variant of six findings gets a
specific verdict and rule id, the native path and ``CKPTGUARD_PURE=1`` agree on it, and a
child process proves the payload does what the finding says under the real reader.

- F1 NEWOBJ_EX keyword arguments reach ``cls.__new__``: refused by the global's call model
  (CKG112 for allocating constructors, CKG114 data constructors, CKG408 Parameter, CKG202
  functions and constants, CKG123 a profile's row); an empty mapping stays as SAFE as the
  positional form. ``torch.Tensor.__new__(cdata=...)`` segfaults pickle.load.
- F2 a tensor state given as any mapping (OrderedDict by REDUCE, SETITEM(S), memo, pairs):
  CKG408; a state the audit cannot see into: CKG408.
- F3 BUILD on a Parameter / torch.Tensor() / legacy tensor: CKG408 (torch runs set_).
- F4 SHORT_BINSTRING / BINSTRING / STRING decoded as torch.load decodes them (UTF-8,
  strict): the audit's storage key and tensor name are torch's; undecodable: CKG202.
- F5 backward hooks built any way but empty: CKG408.
- F6 bytearray(str, codec) with a codec pickle never writes: CKG117.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from ckg_families import family

import ckptguard
from ckptguard.analysis import vm as vm_mod
from ckptguard.analysis.callmodels import CALL_MODELS, Effect
from ckptguard.model import Verdict
from ckptguard.policy.defaults import ALLOW, ALLOW_KINDS

FAM = family("vm_round8")
KWARG_SHAPES: dict[str, Any] = FAM["KWARG_SHAPES"]
EMPTY_KWARGS: frozenset[str] = FAM["EMPTY_KWARGS"]
STATE_FORMS: tuple[str, ...] = FAM["STATE_FORMS"]
STATE_KEYS: dict[str, Any] = FAM["STATE_KEYS"]
OPAQUE_STATES: dict[str, bytes] = FAM["OPAQUE_STATES"]
STATE_REBUILDS: tuple[str, ...] = FAM["STATE_REBUILDS"]
BUILD_TARGETS: dict[str, bytes] = FAM["BUILD_TARGETS"]
BUILD_STATES: dict[str, Any] = FAM["BUILD_STATES"]
PY2_OPCODES: tuple[str, ...] = FAM["PY2_OPCODES"]
PY2_TEXTS: dict[str, bytes] = FAM["PY2_TEXTS"]
PY2_INVALID: dict[str, bytes] = FAM["PY2_INVALID"]
HOOK_FORMS: dict[str, Any] = FAM["HOOK_FORMS"]
HOOK_CONTROLS: frozenset[str] = FAM["HOOK_CONTROLS"]
HOOK_REBUILDS: tuple[str, ...] = FAM["HOOK_REBUILDS"]
BYTEARRAY_FORMS: dict[str, Any] = FAM["BYTEARRAY_FORMS"]

#: what a keyword argument on an allowlisted class is, by its call model's effect
KEYWORD_RULE = {Effect.ALLOCATE: "CKG112", Effect.DATA: "CKG114", Effect.LOOKUP: "CKG114",
                Effect.WRAP: "CKG408"}
ALLOWLISTED = sorted(f"{m}.{n}" for m, n, _ in ALLOW)


def _scan(tmp_path: Path, name: str, data: bytes, monkeypatch: pytest.MonkeyPatch,
          **kw: Any) -> ckptguard.Report:
    """Scan ``data`` natively and pure; both must say the same."""
    p = tmp_path / name
    p.write_bytes(data)
    monkeypatch.delenv("CKPTGUARD_PURE", raising=False)
    native = ckptguard.scan(p, **kw)
    monkeypatch.setenv("CKPTGUARD_PURE", "1")
    pure = ckptguard.scan(p, **kw)
    monkeypatch.delenv("CKPTGUARD_PURE")
    assert (native.verdict, native.rule_ids()) == (pure.verdict, pure.rule_ids()), name
    assert [(t.name, t.storage, t.shape) for t in native.tensors] == \
        [(t.name, t.storage, t.shape) for t in pure.tensors], name
    return native


def _refused(r: ckptguard.Report, rule: str) -> None:
    assert r.verdict is Verdict.UNSAFE and rule in r.rule_ids(), sorted(r.rule_ids())


def _split(full: str) -> tuple[str, str]:
    module, _, name = full.rpartition(".")
    return module, name


def _child(code: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          check=False)


# --- F1: NEWOBJ_EX keyword arguments ---------------------------------------------------------

def test_every_effect_has_a_keyword_rule_and_no_model_takes_keywords() -> None:
    """The closed set: every Effect maps to a rule; no allowlisted global takes a keyword
    (torch.save never writes one), so every keyword is refused."""
    assert set(vm_mod._KEYWORD_RULES) == set(Effect)
    for eff, rule in KEYWORD_RULE.items():
        assert vm_mod._KEYWORD_RULES[eff] == rule
    assert all(not m.keywords for m in CALL_MODELS.values())


@pytest.mark.parametrize("full", ALLOWLISTED)
def test_newobj_ex_keywords_on_every_allowlisted_global(full: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    module, name = _split(full)
    kind = ALLOW_KINDS[full]
    positional = _scan(tmp_path, "pos.pkl", FAM["newobj_positional"](module, name), monkeypatch)
    for shape in KWARG_SHAPES:
        r = _scan(tmp_path, f"{shape}.pkl", FAM["newobj_ex"](module, name, shape), monkeypatch)
        if kind in ("function", "value"):
            # NEWOBJ(_EX) needs a class with __new__: every loader refuses
            _refused(r, "CKG202")
        elif shape in EMPTY_KWARGS:
            # no keyword: exactly what the positional form gets
            assert (r.verdict, r.rule_ids()) == (positional.verdict, positional.rule_ids()), \
                (full, shape, sorted(r.rule_ids()))
        else:
            _refused(r, KEYWORD_RULE[CALL_MODELS[full].effect])
    if kind in ("class", "allocator"):
        assert positional.verdict is Verdict.SAFE, (full, sorted(positional.rule_ids()))


@pytest.mark.parametrize("shape", sorted(set(KWARG_SHAPES) - EMPTY_KWARGS))
def test_newobj_ex_keywords_inside_a_torch_zip(shape: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    r = _scan(tmp_path, "kw.pt", FAM["newobj_ex_zip"](shape), monkeypatch)
    _refused(r, "CKG112")
    assert "CKG110" in r.rule_ids()  # and torch's weights-only unpickler refuses NEWOBJ_EX


def test_newobj_ex_computed_keywords(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A persistent id as the kwargs: the loading application decides what it is."""
    prog = FAM["P"](FAM["op"].PROTO(4), FAM["sg"]("torch", "Tensor"), FAM["op"].EMPTY_TUPLE,
                    FAM["op"].MARK, FAM["S"]("kw"), FAM["op"].TUPLE, FAM["op"].BINPERSID,
                    FAM["op"].NEWOBJ_EX, FAM["op"].STOP)
    r = _scan(tmp_path, "pid.pkl", prog, monkeypatch)
    _refused(r, "CKG103")


@pytest.mark.parametrize("n", [0, 5, 1 << 30])
def test_newobj_ex_list_arguments(n: int, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """pickle.py unpacks a list of arguments, the C unpickler refuses it: the call pickle.py
    makes is audited (CKG204, and torch.Tensor(n) allocates: CKG112)."""
    r = _scan(tmp_path, "list.pkl", FAM["newobj_ex_list_args"]("torch", "Tensor", n),
              monkeypatch)
    _refused(r, "CKG204")
    if n:
        assert "CKG112" in r.rule_ids()


@pytest.mark.parametrize("full", ["torch.Tensor", "builtins.set", "collections.OrderedDict"])
@pytest.mark.parametrize("form", sorted(FAM["NOT_TUPLE_ARGS"]))
def test_newobj_ex_arguments_that_are_not_a_tuple(full: str, form: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    r = _scan(tmp_path, "nt.pkl", FAM["newobj_ex_not_tuple"](*_split(full), form), monkeypatch)
    _refused(r, FAM["NOT_TUPLE_ARGS"][form][1])


def test_newobj_ex_keywords_on_a_profile_row(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A reviewed data class takes NEWOBJ + BUILD; keywords are outside its review."""
    for shape in ("unknown", "memo", "odict"):
        r = _scan(tmp_path, "ns.pkl", FAM["newobj_ex"]("argparse", "Namespace", shape),
                  monkeypatch, profiles=["stdlib-data"])
        _refused(r, "CKG123")
    for shape in sorted(EMPTY_KWARGS):
        r = _scan(tmp_path, "ns.pkl", FAM["newobj_ex"]("argparse", "Namespace", shape),
                  monkeypatch, profiles=["stdlib-data"])
        assert r.verdict is Verdict.SAFE, sorted(r.rule_ids())


_F1_CHILD = r"""
import json, pickle, sys, torch
out = {}
for name in sys.argv[2:]:
    data = open(f"{sys.argv[1]}/{name}.pkl", "rb").read()
    try:
        v = pickle.loads(data)
        out[name] = ["ok", list(v.shape) if isinstance(v, torch.Tensor) else repr(v)]
    except Exception as e:
        out[name] = ["error", type(e).__name__]
    try:
        v = pickle._loads(data)  # pickle.py
        out[name + "/py"] = ["ok", list(v.shape) if isinstance(v, torch.Tensor) else repr(v)]
    except Exception as e:
        out[name + "/py"] = ["error", type(e).__name__]
print(json.dumps(out))
"""


def test_newobj_ex_keywords_reach_the_real_unpickler(tmp_path: Path) -> None:
    """cdata= makes pickle.load dereference the integer (SIGSEGV); size= allocates what it
    says; a list of arguments is unpacked by pickle.py; no keyword builds an empty tensor."""
    pytest.importorskip("torch")
    (tmp_path / "cdata.pkl").write_bytes(FAM["newobj_ex"]("torch", "Tensor", "cdata"))
    crash = _child("import pickle, sys, torch; pickle.loads(open(sys.argv[1], 'rb').read())",
                   str(tmp_path / "cdata.pkl"))
    assert crash.returncode in (-11, 139), (crash.returncode, crash.stderr[-500:])
    (tmp_path / "size.pkl").write_bytes(FAM["newobj_ex"]("torch", "Tensor", "size"))
    (tmp_path / "empty.pkl").write_bytes(FAM["newobj_ex"]("torch", "Tensor", "empty"))
    (tmp_path / "list.pkl").write_bytes(FAM["newobj_ex_list_args"]("torch", "Tensor", 5))
    got = _child(_F1_CHILD, str(tmp_path), "size", "empty", "list")
    assert got.returncode == 0, got.stderr[-2000:]
    out = json.loads(got.stdout.strip().splitlines()[-1])
    assert out["size"] == ["ok", [3, 4]]          # an uninitialised 3 x 4 tensor
    assert out["empty"] == ["ok", [0]]
    assert out["list"][0] == "error"              # the C unpickler refuses the list
    assert out["list/py"] == ["ok", [5]]          # pickle.py allocates torch.Tensor(5)


# --- F2: tensor state as any mapping ---------------------------------------------------------

_STATE_CASES = [(rb, form, key) for rb in STATE_REBUILDS for form in STATE_FORMS
                for key in STATE_KEYS]


@pytest.mark.parametrize("case", _STATE_CASES, ids="-".join)
def test_tensor_state_as_any_mapping(case: tuple[str, str, str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rebuild, form, key = case
    r = _scan(tmp_path, "s.pt", FAM["state_variant"](rebuild, form, key), monkeypatch)
    if STATE_KEYS[key][1] is None:  # a user attribute: what torch.save writes
        assert r.verdict is Verdict.SAFE, sorted(r.rule_ids())
    else:
        _refused(r, "CKG408")


@pytest.mark.parametrize("rebuild", STATE_REBUILDS)
@pytest.mark.parametrize("form", sorted(OPAQUE_STATES))
def test_tensor_state_the_audit_cannot_see_into(rebuild: str, form: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    r = _scan(tmp_path, "s.pt", FAM["state_variant"](rebuild, form), monkeypatch)
    _refused(r, "CKG408")


# --- F3: BUILD on a tensor -------------------------------------------------------------------

_BUILD_CASES = [(t, s) for t in BUILD_TARGETS for s in BUILD_STATES
                if FAM["build_applies"](t, s)]


@pytest.mark.parametrize("case", _BUILD_CASES, ids="-".join)
def test_build_on_a_tensor(case: tuple[str, str], tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    r = _scan(tmp_path, "b.pt", FAM["build_variant"](*case), monkeypatch)
    _refused(r, "CKG408")


# --- F4: Python 2 strings, read as torch.load reads them -------------------------------------

_PY2_VALID = [(o, t) for o in PY2_OPCODES for t in PY2_TEXTS]
_PY2_BAD = [(o, t) for o in PY2_OPCODES for t in PY2_INVALID]


@pytest.mark.parametrize("case", _PY2_VALID, ids="-".join)
def test_py2_string_read_as_utf8(case: tuple[str, str], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    opcode, text = case
    raw = PY2_TEXTS[text]
    r = _scan(tmp_path, "k.pt", FAM["binstring_variant"](opcode, raw, "storage_key"),
              monkeypatch)
    (storage,) = [t.storage for t in r.tensors]
    assert storage == "data/" + raw.decode("utf-8"), storage  # torch's record
    r2 = _scan(tmp_path, "n.pt", FAM["binstring_variant"](opcode, raw, "tensor_name"),
               monkeypatch)
    assert [t.name for t in r2.tensors] == [raw.decode("utf-8")]
    if opcode == "short_binstring":  # in torch's weights-only set: SAFE, read right
        assert r.verdict is Verdict.SAFE, sorted(r.rule_ids())
        assert r2.verdict is Verdict.SAFE and not r2.rule_ids(), sorted(r2.rule_ids())
        # the latin-1 reading's record is the unused one
        assert "CKG312" in r.rule_ids()
    else:  # BINSTRING / STRING: outside it
        _refused(r, "CKG110")
        _refused(r2, "CKG110")
    if opcode == "binstring":
        r3 = _scan(tmp_path, "v.pt", FAM["binstring_variant"](opcode, raw, "big_value"),
                   monkeypatch)
        assert r3.rule_ids() == {"CKG110"}, sorted(r3.rule_ids())


@pytest.mark.parametrize("case", _PY2_BAD, ids="-".join)
def test_py2_string_torch_cannot_decode(case: tuple[str, str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    opcode, text = case
    raw = PY2_INVALID[text]
    wheres = ("storage_key", "tensor_name") + (("big_value",) if opcode == "binstring" else ())
    for where in wheres:
        r = _scan(tmp_path, f"{where}.pt", FAM["binstring_variant"](opcode, raw, where),
                  monkeypatch)
        _refused(r, "CKG202")


def _fast_paths(blob: bytes) -> list[bool]:
    """Does each fast path (the native core where built, the Python one) accept the torch
    zip's data.pkl? Its storage catalog is built from the archive as the engine builds it."""
    import io

    from ckptguard.analysis import fastpath
    from ckptguard.analysis.tensors import StorageCatalog
    from ckptguard.context import AuditContext, Source
    from ckptguard.policy import DEFAULT_LIMITS, Policy

    records: dict[str, tuple[str, int, int]] = {}
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        data = b""
        for info in z.infolist():
            rel = info.filename.split("/", 1)[1]
            if rel == "data.pkl":
                data = z.read(info)
            elif rel.startswith("data/"):
                records[rel[5:]] = (info.filename, info.header_offset + 64, info.file_size)

    def run(fn: Any, *pre: Any) -> bool:
        ctx = AuditContext("<r8>", Source.from_bytes(b""), Policy(), DEFAULT_LIMITS)
        return fn(*pre, ctx, data, StorageCatalog(records=dict(records))) is not None

    core = fastpath._core()
    return ([run(fastpath._try_native, core)] if core is not None else []) + \
        [run(fastpath._try_python)]


def test_fast_paths_decline_every_refused_variant() -> None:
    """Neither fast path proves any of these SAFE (Python 2 strings, hooks, states, BUILD,
    bytearray are not in their grammar): the VM decides. The control -- a plain rebuild
    with OrderedDict() hooks -- is accepted by both, so the catalogs here are real."""
    assert all(_fast_paths(FAM["hooks_variant"]("tensor_v2", "odict_empty")))
    blobs = [FAM["binstring_variant"](o, PY2_TEXTS["e_acute"], w)
             for o in PY2_OPCODES for w in ("storage_key", "tensor_name")]
    blobs += [FAM["hooks_variant"](rb, f) for rb in HOOK_REBUILDS for f in HOOK_FORMS
              if f not in HOOK_CONTROLS]
    blobs += [FAM["state_variant"](rb, f, "data") for rb in STATE_REBUILDS
              for f in STATE_FORMS]
    blobs += [FAM["build_variant"](*c) for c in _BUILD_CASES]
    blobs += [FAM["bytearray_variant"](f, "zip") for f in BYTEARRAY_FORMS]
    blobs += [FAM["newobj_ex_zip"](s) for s in KWARG_SHAPES]
    for blob in blobs:
        assert not any(_fast_paths(blob))


# --- F5: backward hooks built any way --------------------------------------------------------

@pytest.mark.parametrize("rebuild", HOOK_REBUILDS)
@pytest.mark.parametrize("form", sorted(HOOK_FORMS))
def test_backward_hooks_any_mapping(rebuild: str, form: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    r = _scan(tmp_path, "h.pt", FAM["hooks_variant"](rebuild, form), monkeypatch)
    if form in HOOK_CONTROLS:
        assert r.verdict is Verdict.SAFE and not r.rule_ids(), sorted(r.rule_ids())
    else:
        _refused(r, "CKG408")


# --- F6: bytearray(str, codec) ---------------------------------------------------------------

@pytest.mark.parametrize("container", ["pkl", "zip"])
@pytest.mark.parametrize("form", sorted(BYTEARRAY_FORMS))
def test_bytearray_codecs(form: str, container: str, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = FAM["bytearray_variant"](form, container)
    r = _scan(tmp_path, "b.pkl" if container == "pkl" else "b.pt", data, monkeypatch)
    if BYTEARRAY_FORMS[form][1]:
        _refused(r, "CKG117")
    else:
        assert r.verdict is Verdict.SAFE and not r.rule_ids(), sorted(r.rule_ids())


_F6_CHILD = r"""
import json, pickle, sys
out = {}
for form, module in zip(sys.argv[2::2], sys.argv[3::2]):
    before = module in sys.modules
    try:
        pickle.loads(open(f"{sys.argv[1]}/{form}.pkl", "rb").read())
        err = ""
    except Exception as e:
        err = type(e).__name__
    out[form] = [before, module in sys.modules, err]
print(json.dumps(out))
"""


def test_bytearray_codec_imports_its_module(tmp_path: Path) -> None:
    """pickle.load of bytearray(str, codec) looks the codec up: its encodings module is
    imported (punycode's encoder is then quadratic in the text)."""
    mods = {"punycode": "encodings.punycode", "idna": "encodings.idna",
            "hex": "encodings.hex_codec", "rot13": "encodings.rot_13"}
    for form in mods:
        (tmp_path / f"{form}.pkl").write_bytes(FAM["bytearray_variant"](form, "pkl"))
    got = _child(_F6_CHILD, str(tmp_path), *[x for kv in mods.items() for x in kv])
    assert got.returncode == 0, got.stderr[-2000:]
    out = json.loads(got.stdout.strip().splitlines()[-1])
    for form in mods:
        before, after, _ = out[form]
        assert not before and after, (form, out[form])
    assert out["punycode"][2] == "" and out["idna"][2] == ""  # and they load


# --- F2, F3, F4, F5 under torch.load(weights_only=True) ---------------------------------------

_TORCH_CHILD = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
out = {}
for path in sys.argv[1:]:
    try:
        x = torch.load(path, weights_only=True)["x"]
        out[path] = [list(x.shape), None if x.is_quantized else x.flatten().tolist(),
                     bool(x.requires_grad), len(x._backward_hooks or ())]
    except Exception as e:
        out[path] = type(e).__name__
print(json.dumps(out))
"""


def _torch_builds(paths: list[Path]) -> dict[str, Any]:
    got = _child(_TORCH_CHILD, *map(str, paths), timeout=600)
    assert got.returncode == 0, got.stderr[-2000:]
    out: dict[str, Any] = json.loads(got.stdout.strip().splitlines()[-1])
    return out


def _holds(built: Any, want: tuple[str, Any]) -> bool:
    kind, v = want
    if not isinstance(built, list):
        return False
    _shape, values, rg, hooks = built
    return bool({"values": values == v, "requires_grad": rg is v, "hooks": hooks == v}[kind])


def test_torch_load_builds_what_the_findings_say(tmp_path: Path) -> None:
    """What torch.load(weights_only=True) holds for every refused variant that loads: not
    the tensor the audit recorded ([1, 2], no grad, no hooks); the controls hold it."""
    pytest.importorskip("torch")
    audited = [[2], [1.0, 2.0], False, 0]
    jobs: dict[Path, tuple[str, Any]] = {}
    controls: list[Path] = []
    for i, (rebuild, form, key) in enumerate(_STATE_CASES):
        p = tmp_path / f"state{i}.pt"
        p.write_bytes(FAM["state_variant"](rebuild, form, key))
        want = STATE_KEYS[key][1]
        if want is None:
            controls.append(p)
        else:
            jobs[p] = want
    for i, (target, state) in enumerate(_BUILD_CASES):
        want = BUILD_STATES[state][2]
        if want is not None:
            p = tmp_path / f"build{i}.pt"
            p.write_bytes(FAM["build_variant"](target, state))
            jobs[p] = want
    for rebuild in ("tensor_v2", "tensor_v3", "parameter"):
        for form, (_, attached) in HOOK_FORMS.items():
            p = tmp_path / f"hooks-{rebuild}-{form}.pt"
            p.write_bytes(FAM["hooks_variant"](rebuild, form))
            if form in HOOK_CONTROLS:
                controls.append(p)
            else:
                assert attached, form
                jobs[p] = ("hooks", 1)
    for text, raw in PY2_TEXTS.items():
        p = tmp_path / f"py2-{text}.pt"
        p.write_bytes(FAM["binstring_variant"]("short_binstring", raw, "storage_key"))
        jobs[p] = ("values", FAM["R8_TORCH_VALUES"])
    built = _torch_builds([*jobs, *controls])
    for p, want in jobs.items():
        assert _holds(built[str(p)], want), (p.name, built[str(p)], want)
        assert built[str(p)] != audited, p.name
    for p in controls:
        assert built[str(p)] == audited, (p.name, built[str(p)])
