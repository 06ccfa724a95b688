"""The symbolic pickle VM: every opcode family, every verdict-changing construct.

Each test builds a pickle program byte by byte and asserts the verdict and the rule ID.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptguard
from ckptguard import Limits, Policy, Severity, Verdict
from ckptguard.model import Report


def scan(tmp_path: Path, data: bytes, name: str = "x.pkl", **kw: object) -> Report:
    p = tmp_path / name
    p.write_bytes(data)
    return ckptguard.scan(p, **kw)  # type: ignore[arg-type]


def u(s: str) -> bytes:  # BINUNICODE
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def su(s: str) -> bytes:  # SHORT_BINUNICODE (protocol 4)
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def assert_verdict(r: Report, verdict: Verdict, *rules: str) -> None:
    got = r.rule_ids()
    assert r.verdict is verdict, (r.verdict, [(f.rule_id, f.message) for f in r.findings])
    for rid in rules:
        assert rid in got, (rid, [(f.rule_id, f.message) for f in r.findings])


# --- benign data -------------------------------------------------------------------------

PLAIN = {"ints": [0, 1, -1, 255, 256, 65535, 65536, -(2**31), 2**31, 2**70, -(2**70)],
         "floats": [0.0, -1.5, float("inf")], "text": ["", "é", "x" * 300],
         "bytes": [b"\x01", b"\x00\xff" * 10], "nested": {"a": (1, (2, (3,))), "b": [[], {}]},
         "flags": (None, True, False), "cplx": complex(1, 2), "ba": bytearray(b"ab"),
         "set": {1, 2, 3}}


@pytest.mark.parametrize("proto", range(6))
def test_plain_data_pickles_are_safe_in_every_protocol(tmp_path: Path, proto: int) -> None:
    r = scan(tmp_path, pickle.dumps(PLAIN, protocol=proto))
    assert_verdict(r, Verdict.SAFE)
    assert not [f for f in r.findings if f.severity >= Severity.MEDIUM]


# --- globals and calls -------------------------------------------------------------------

def test_global_reduce_os_system_is_critical(tmp_path: Path) -> None:
    r = scan(tmp_path, b"\x80\x02cposix\nsystem\n" + u("true") + b"\x85R.")
    assert_verdict(r, Verdict.UNSAFE, "CKG101")
    assert r.max_severity is Severity.CRITICAL
    f = next(f for f in r.findings if f.rule_id == "CKG101")
    assert f.location.offset == 2 and f.evidence_dict["global"] == "posix.system"


def test_stack_global_through_memo(tmp_path: Path) -> None:
    prog = (b"\x80\x04" + su("builtins") + b"\x94" + su("eval") + b"\x94"
            + b"h\x00h\x01\x93" + su("1") + b"\x85R.")
    r = scan(tmp_path, prog)
    assert_verdict(r, Verdict.UNSAFE, "CKG101")


def test_dotted_name_through_allowed_module(tmp_path: Path) -> None:
    prog = b"\x80\x04" + su("torch.serialization") + su("os.system") + b"\x93" + su("x") + b"\x85R."
    r = scan(tmp_path, prog)
    assert_verdict(r, Verdict.UNSAFE, "CKG101")


def test_dunder_attribute_chain(tmp_path: Path) -> None:
    prog = b"\x80\x04" + su("collections") + su("OrderedDict.__class__.__subclasses__") + \
        b"\x93)R."
    assert_verdict(scan(tmp_path, prog), Verdict.UNSAFE, "CKG101")


def test_py2_builtin_name_is_renamed_and_caught(tmp_path: Path) -> None:
    r = scan(tmp_path, b"\x80\x02c__builtin__\neval\n" + u("1") + b"\x85R.")
    assert_verdict(r, Verdict.UNSAFE, "CKG101")


def test_inst_and_obj(tmp_path: Path) -> None:
    assert_verdict(scan(tmp_path, b"(S'true'\nios\nsystem\n."), Verdict.UNSAFE, "CKG101")
    assert_verdict(scan(tmp_path, b"\x80\x02(csubprocess\nPopen\n" + u("true") + b"o."),
                   Verdict.UNSAFE, "CKG101")


def test_newobj_ex_of_unknown_class(tmp_path: Path) -> None:
    prog = b"\x80\x04" + su("argparse") + su("Namespace") + b"\x93)}\x92."
    r = scan(tmp_path, prog)
    assert_verdict(r, Verdict.UNSAFE, "CKG102")
    assert r.max_severity is Severity.MEDIUM


def test_nested_deserializer_is_critical(tmp_path: Path) -> None:
    inner = b"cposix\nsystem\n(S'true'\ntR."
    prog = b"\x80\x02c_pickle\nloads\nC" + bytes([len(inner)]) + inner + b"\x85R."
    assert_verdict(scan(tmp_path, prog), Verdict.UNSAFE, "CKG104")


def test_call_of_a_call_result(tmp_path: Path) -> None:
    # collections.OrderedDict() is allowed; calling its result is not weights-only
    prog = b"\x80\x02ccollections\nOrderedDict\n)R)R."
    assert_verdict(scan(tmp_path, prog), Verdict.UNSAFE, "CKG103")


def test_getattr_gadget(tmp_path: Path) -> None:
    prog = (b"\x80\x02cbuiltins\ngetattr\ncbuiltins\n__import__\n" + u("os") + b"\x85R"
            + u("system") + b"\x86R" + u("true") + b"\x85R.")
    assert_verdict(scan(tmp_path, prog), Verdict.UNSAFE, "CKG101", "CKG103")


def test_extension_registry(tmp_path: Path) -> None:
    assert_verdict(scan(tmp_path, b"\x80\x02\x82\x01)R."), Verdict.UNSAFE, "CKG105")


def test_persistent_id_in_plain_pickle(tmp_path: Path) -> None:
    assert_verdict(scan(tmp_path, b"\x80\x02" + u("x") + b"Q."), Verdict.UNSAFE, "CKG109")
    assert_verdict(scan(tmp_path, b"Pabc\n."), Verdict.UNSAFE, "CKG109")


def test_build_on_unknown_object(tmp_path: Path) -> None:
    prog = b"\x80\x02cargparse\nNamespace\n)R}b."
    assert_verdict(scan(tmp_path, prog), Verdict.UNSAFE, "CKG102", "CKG111")


def test_policy_allows_a_benign_global_on_purpose(tmp_path: Path) -> None:
    prog = b"\x80\x02cargparse\nNamespace\n)\x81."  # NEWOBJ: the form pickle writes
    pol = Policy().allow("argparse", "Namespace", reason="hparams")
    r = scan(tmp_path, prog, policy=pol)
    assert_verdict(r, Verdict.SAFE, "CKG106")


# --- program structure -------------------------------------------------------------------

def test_truncated_is_incomplete(tmp_path: Path) -> None:
    r = scan(tmp_path, pickle.dumps({"a": [1, 2, 3]}, protocol=2)[:-3])
    assert_verdict(r, Verdict.INCOMPLETE, "CKG201")


def test_payload_before_error_still_reported(tmp_path: Path) -> None:
    r = scan(tmp_path, b"\x80\x02cposix\nsystem\n" + u("true") + b"\x85R\xff")
    assert_verdict(r, Verdict.UNSAFE, "CKG101", "CKG202")
    r = scan(tmp_path, b"\x80\x02cposix\nsystem\n" + u("true") + b"\x85R")  # no STOP
    assert_verdict(r, Verdict.UNSAFE, "CKG101", "CKG201")


def test_invalid_opcode_and_underflow(tmp_path: Path) -> None:
    assert_verdict(scan(tmp_path, b"\x80\x02\xff."), Verdict.UNSAFE, "CKG202")
    assert_verdict(scan(tmp_path, b"\x80\x02R."), Verdict.UNSAFE, "CKG202")
    assert_verdict(scan(tmp_path, b"\x80\x02h\x05."), Verdict.UNSAFE, "CKG202")  # memo miss


def test_hidden_second_pickle_after_stop(tmp_path: Path) -> None:
    first = pickle.dumps({"w": 1}, protocol=2)
    second = b"\x80\x02cposix\nsystem\n" + u("true") + b"\x85R."
    r = scan(tmp_path, first + second)
    assert_verdict(r, Verdict.UNSAFE, "CKG203", "CKG101")


def test_non_canonical_int_literals(tmp_path: Path) -> None:
    for lit in (b"+1", b"0x10", b"1_0", b"007"):
        assert_verdict(scan(tmp_path, b"I" + lit + b"\n."), Verdict.UNSAFE, "CKG204")
    assert_verdict(scan(tmp_path, b"I01\n."), Verdict.SAFE)  # True, as pickle writes it


def test_frame_straddle_and_nested_frame(tmp_path: Path) -> None:
    body = su("abc") + b"."
    good = b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body
    assert_verdict(scan(tmp_path, good), Verdict.SAFE)
    short = b"\x80\x04\x95" + struct.pack("<Q", 2) + body  # frame ends inside the string
    assert_verdict(scan(tmp_path, short), Verdict.UNSAFE, "CKG204")


def test_negative_binstring_length(tmp_path: Path) -> None:
    assert_verdict(scan(tmp_path, b"T\xff\xff\xff\xff."), Verdict.UNSAFE, "CKG202")


def test_unhashable_key(tmp_path: Path) -> None:
    assert_verdict(scan(tmp_path, b"\x80\x02}]]s."), Verdict.UNSAFE, "CKG202")


# --- limits ------------------------------------------------------------------------------

def test_mark_depth_limit(tmp_path: Path) -> None:
    r = scan(tmp_path, b"(" * 200 + b".", limits=Limits(max_mark_depth=100))
    assert_verdict(r, Verdict.INCOMPLETE, "CKG901")


def test_long_global_line_limit(tmp_path: Path) -> None:
    r = scan(tmp_path, b"c" + b"a" * 5000 + b"\nb\n.", limits=Limits(max_line_bytes=1024))
    assert_verdict(r, Verdict.INCOMPLETE, "CKG901")


def test_literal_limit(tmp_path: Path) -> None:
    r = scan(tmp_path, b"\x80\x03B" + struct.pack("<I", 10000) + b"x" * 10000 + b".",
             limits=Limits(max_literal_bytes=4096))
    assert_verdict(r, Verdict.INCOMPLETE, "CKG901")


def test_huge_length_claim_is_truncation_not_allocation(tmp_path: Path) -> None:
    r = scan(tmp_path, b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"xx.")
    assert_verdict(r, Verdict.INCOMPLETE, "CKG201")


# --- property: plain data round-trips as SAFE ---------------------------------------------

# (b"" is pickled as builtins.bytes() below protocol 3, outside torch's allowlist)
_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                  st.text(max_size=20), st.binary(min_size=1, max_size=20))
_data = st.recursive(_leaf, lambda c: st.one_of(
    st.lists(c, max_size=5), st.tuples(c, c), st.dictionaries(st.text(max_size=5), c, max_size=5)),
    max_leaves=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_data, proto=st.integers(0, 5))
def test_property_plain_data_is_safe(tmp_path: Path, value: object, proto: int) -> None:
    r = scan(tmp_path, pickle.dumps(value, protocol=proto))
    assert r.verdict is Verdict.SAFE, [(f.rule_id, f.message) for f in r.findings]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=200))
def test_property_any_bytes_give_a_report(tmp_path: Path, blob: bytes) -> None:
    r = scan(tmp_path, b"\x80\x02" + blob)  # must return, never raise
    assert not r.problems, r.problems  # no internal error on any input
    if r.verdict is Verdict.SAFE:
        # SAFE must mean pickle itself loads it without touching any global
        pickle.loads(b"\x80\x02" + blob)


# --- call shapes torch's loader refuses, allocation primitives ----------------------------

def test_calling_a_dtype_constant_is_malformed(tmp_path: Path) -> None:
    assert_verdict(scan(tmp_path, b"\x80\x02ctorch\nfloat32\n)R."), Verdict.UNSAFE, "CKG202")


def test_newobj_on_a_rebuild_function_is_malformed(tmp_path: Path) -> None:
    prog = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)\x81."
    assert_verdict(scan(tmp_path, prog), Verdict.UNSAFE, "CKG202")


def test_legacy_tensor_type_call_is_an_allocation_primitive(tmp_path: Path) -> None:
    prog = b"\x80\x02ctorch\nFloatTensor\nJ\x00\xca\x9a;\x85R."  # FloatTensor(10**9)
    r = scan(tmp_path, prog)
    assert_verdict(r, Verdict.UNSAFE, "CKG112")
    assert r.max_severity is Severity.HIGH


def test_huge_bytearray_is_an_allocation_primitive(tmp_path: Path) -> None:
    prog = b"\x80\x02cbuiltins\nbytearray\nJ\x00\x00\x00@\x85R."  # bytearray(2**30)
    assert_verdict(scan(tmp_path, prog), Verdict.UNSAFE, "CKG112")
    small = pickle.dumps(bytearray(b"abc"), protocol=2)
    assert_verdict(scan(tmp_path, small), Verdict.SAFE)


def _with_data_pkl(src: Path, out: Path, transform: object) -> Path:
    """Copy the torch zip ``src`` to ``out`` with its data.pkl passed through ``transform``."""
    import zipfile

    with zipfile.ZipFile(src) as z, zipfile.ZipFile(out, "w") as zo:
        for n in z.namelist():
            data = z.read(n)
            zo.writestr(n, transform(data) if n.endswith("/data.pkl") else data)  # type: ignore[operator]
    return out


def test_build_on_a_rebuilt_tensor_is_flagged(tmp_path: Path) -> None:
    """torch.load would run tensor.set_(*state), re-pointing the audited tensor."""
    torch = pytest.importorskip("torch")
    src = tmp_path / "src.pt"
    torch.save({"w": torch.zeros(2)}, src)

    def add_build(data: bytes) -> bytes:
        i = data.rindex(b"R")  # the _rebuild_tensor_v2 REDUCE: then EMPTY_TUPLE BUILD
        return data[:i + 1] + b")b" + data[i + 1:]

    r = ckptguard.scan(_with_data_pkl(src, tmp_path / "evil.pt", add_build))
    assert r.verdict is Verdict.UNSAFE and "CKG408" in r.rule_ids(), r.findings


def test_rebuild_state_that_swaps_tensor_data_is_flagged(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    t = torch.zeros(2)
    t.note = "fine"  # a user attribute: torch.save writes _rebuild_from_type_v2 with state
    p = tmp_path / "ok.pt"
    torch.save({"t": t}, p)
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.SAFE, r.findings
    key = b"X\x04\x00\x00\x00note"

    def rename(data: bytes) -> bytes:
        assert key in data
        return data.replace(key, b"X\x04\x00\x00\x00data")  # would swap the tensor

    r = ckptguard.scan(_with_data_pkl(p, tmp_path / "evil.pt", rename))
    assert r.verdict is Verdict.UNSAFE and "CKG408" in r.rule_ids(), r.findings


def test_object_flood_hidden_in_tuples_hits_max_objects(tmp_path: Path) -> None:
    """Rounds of MARK + many EMPTY_DICT + TUPLE keep the stack short and add no container
    items, yet build millions of objects: the live-object bound stops it."""
    # build a tuple of 10,000 new dicts, pin it in the memo, pop it; 50 times
    prog = b"\x80\x02" + b"".join(
        b"(" + b"}" * 10_000 + b"tr" + struct.pack("<I", i) + b"0" for i in range(50)) + b"N."
    r = scan(tmp_path, prog, limits=Limits(max_objects=100_000))
    assert_verdict(r, Verdict.INCOMPLETE, "CKG901")
    assert any(f.evidence_dict.get("limit") == "max_objects" for f in r.findings)
    assert_verdict(scan(tmp_path, prog), Verdict.SAFE)  # 500k objects fit the default


@pytest.mark.parametrize("make", ["tensor", "parameter"])
def test_backward_hooks_filled_after_the_rebuild_are_flagged(make: str) -> None:
    """Every empty OrderedDict torch.save writes (a tensor's backward hooks; a Parameter's
    too) is memoised; a later SETITEMS can fill it, and torch attaches that very dict to the
    tensor. Before the fix the VM checked a tensor's hooks only at the rebuild call and a
    Parameter's never, and the fast path did not look: SAFE. One variant per hooks dict."""
    import io
    import re
    import zipfile

    import torch

    from ckptguard.analysis.engine import audit_bytes
    from ckptguard.policy import DEFAULT_LIMITS, Policy

    obj = torch.zeros(2) if make == "tensor" else torch.nn.Parameter(torch.zeros(2))
    buf = io.BytesIO()
    torch.save({"w": obj}, buf)
    data = buf.getvalue()
    assert audit_bytes(data, "x.pt", policy=Policy(), limits=DEFAULT_LIMITS).verdict.value \
        == "SAFE"
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        members = {n: z.read(n) for n in names}
    pkl_name = next(n for n in names if n.endswith("data.pkl"))
    pkl = members[pkl_name]
    # each OrderedDict() result: EMPTY_TUPLE, REDUCE, BINPUT <i> (after the global or a GET)
    memos = [m.group(1)[0] for m in re.finditer(rb"\)Rq(.)", pkl, flags=re.S)]
    assert len(memos) == (1 if make == "tensor" else 2)
    attached = 0
    for memo in memos:
        # before the final STOP: outer["extra"] = that dict, filled with one entry on the
        # way (GET, MARK, key, value, SETITEMS, SETITEM; the weights-only loader has no POP)
        evil = (pkl[:-1] + b"X\x05\x00\x00\x00extrah" + bytes([memo])
                + b"(X\x01\x00\x00\x00kK\x01us.")
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
            for n in names:
                z.writestr(n, evil if n == pkl_name else members[n])
        r = audit_bytes(out.getvalue(), "x.pt", policy=Policy(), limits=DEFAULT_LIMITS)
        assert r.verdict.value == "UNSAFE" and "CKG408" in r.rule_ids(), r.rule_ids()
        loaded = torch.load(io.BytesIO(out.getvalue()), weights_only=True)
        attached += dict(loaded["w"]._backward_hooks or {}) == {"k": 1}
    # the attack is real: torch attached a filled dict (for a Parameter, its own hooks; the
    # inner tensor's dict is flagged too, conservatively, though torch drops that tensor)
    assert attached == 1
