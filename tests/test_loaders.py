"""The loader layer on its own: audited files with synthetic SAFE reports (so these tests
do not depend on the audit), compared bit for bit with torch.load / safetensors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from ckg_loader_helpers import (
    HAS_CUDA,
    assert_same_state_dict,
    assert_same_tensor,
    benign_state_dict,
    infos_from,
    io_chars,
    legacy_state_dict,
    safetensors_report,
    safetensors_state_dict,
    save_safetensors,
    save_torch,
    sharing,
    torch_report,
)
from safetensors.torch import load_file, save_file

from ckptguard import scan
from ckptguard.errors import FileChangedError, IncompleteScanError, UnsafeCheckpointError
from ckptguard.loaders import (
    AuditedFile,
    LoaderError,
    UnsupportedFormatError,
    _torch,
    load_audited,
    open_audited,
)
from ckptguard.loaders.base import fd_path
from ckptguard.loaders.sharded import _valid_shard_name
from ckptguard.model import Format, Verdict
from ckptguard.policy import Policy

#: writers inside this process during a load: the lease would make them wait (conftest)
pytestmark = pytest.mark.usefixtures("no_lease")

REAL_LOAD = _torch.ORIGINAL_LOAD


def _open(path: Path) -> int:
    return os.open(path, os.O_RDONLY)


def st_file(path: Path, sd: dict[str, torch.Tensor] | None = None) -> AuditedFile:
    save_safetensors(path, sd if sd is not None else safetensors_state_dict())
    fd = _open(path)
    return AuditedFile(str(path), fd, safetensors_report(path, fd))


def pt_file(path: Path, obj: object = None, *, legacy: bool = False,
            with_infos: bool = False) -> AuditedFile:
    if obj is None:
        obj = legacy_state_dict() if legacy else benign_state_dict()
    sd = obj
    save_torch(path, sd, legacy=legacy)
    fd = _open(path)
    # the tensors as the audit names them (whatever its verdict): torch.load's result is
    # compared with them after every torch load (loaders/structure.py)
    infos = infos_from(sd) if with_infos and isinstance(sd, dict) else scan(path).tensors
    return AuditedFile(str(path), fd, torch_report(path, fd, legacy=legacy, tensors=infos))


@pytest.fixture
def no_torch_load(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    calls: list[object] = []

    def fail(*args: object, **kwargs: object) -> object:
        calls.append(args)
        pytest.fail("torch.load was reached")

    monkeypatch.setattr(_torch, "ORIGINAL_LOAD", fail)
    return calls


# --- safetensors ---------------------------------------------------------------------------

def test_safetensors_bit_exact(tmp_path: Path) -> None:
    with st_file(tmp_path / "m.safetensors") as af:
        ours = load_audited(af, "cpu")
    ref = load_file(str(tmp_path / "m.safetensors"))
    assert set(ours) == set(ref)
    for k in ref:
        assert_same_tensor(ours[k], ref[k], k)


def test_safetensors_is_zero_copy(tmp_path: Path) -> None:
    big = {"a": torch.randn(1 << 20), "b": torch.randn(512, 1024), "c": torch.arange(7)}
    with st_file(tmp_path / "big.safetensors", big) as af:
        infos = {t.name: t for t in af.report.tensors}
        r0, _ = io_chars()
        ours = load_audited(af, "cpu")
        r1, _ = io_chars()
    # every tensor is a view of one map of the file: pointers keep the file's layout
    first = min(infos.values(), key=lambda t: t.data_offset or 0)
    for name, t in ours.items():
        delta = (infos[name].data_offset or 0) - (first.data_offset or 0)
        assert t.data_ptr() - ours[first.name].data_ptr() == delta, name
    # and no tensor byte went through read(): only the audited header is re-read
    assert r1 - r0 < 64 * 1024, r1 - r0
    for k, v in load_file(str(tmp_path / "big.safetensors")).items():
        assert_same_tensor(ours[k], v, k)


def test_safetensors_writes_do_not_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    with st_file(path, {"x": torch.zeros(16)}) as af:
        before = path.read_bytes()
        ours = load_audited(af)
    ours["x"].add_(1)
    assert path.read_bytes() == before


@pytest.mark.parametrize("loc", ["cpu", torch.device("cpu"), {"cpu": "cpu"}, None])
def test_safetensors_map_locations(tmp_path: Path, loc: object) -> None:
    with st_file(tmp_path / "m.safetensors") as af:
        ours = load_audited(af, loc)
    assert all(t.device.type == "cpu" for t in ours.values())


def test_safetensors_callable_map_location_refused(tmp_path: Path) -> None:
    with st_file(tmp_path / "m.safetensors") as af, pytest.raises(LoaderError):
        load_audited(af, lambda s, loc: s)


def test_safetensors_meta_reads_no_tensor_bytes(tmp_path: Path) -> None:
    with st_file(tmp_path / "big.safetensors", {"w": torch.randn(4 << 20)}) as af:
        r0, b0 = io_chars()
        ours = load_audited(af, "meta")
        r1, b1 = io_chars()
    assert ours["w"].device.type == "meta"
    assert ours["w"].shape == (4 << 20,) and ours["w"].dtype == torch.float32
    assert r1 - r0 < 64 * 1024 and b1 - b0 < 64 * 1024


def test_safetensors_record_outside_file_refused(tmp_path: Path) -> None:
    import dataclasses

    with st_file(tmp_path / "m.safetensors", {"w": torch.ones(4)}) as af:
        bad = dataclasses.replace(af.report.tensors[0], data_offset=10**9)
        af.report = dataclasses.replace(af.report, tensors=(bad,))
        with pytest.raises(LoaderError):
            load_audited(af)


# --- torch files ---------------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_bit_exact(tmp_path: Path, legacy: bool) -> None:
    path = tmp_path / "m.pt"
    with pt_file(path, legacy=legacy) as af:
        ours = load_audited(af, "cpu")
    ref = torch.load(path, weights_only=True)
    assert_same_state_dict(ours, ref)
    assert frozenset({"embed.weight", "lm_head.weight"}) in sharing(ours)
    assert frozenset({"view", "base"}) in sharing(ours)


def test_torch_nested_structure_kept(tmp_path: Path) -> None:
    obj = {"state_dict": benign_state_dict(), "epoch": 3, "names": ["a", "b"]}
    path = tmp_path / "ckpt.pt"
    with pt_file(path, obj) as af:
        ours = load_audited(af)
    ref = torch.load(path, weights_only=True)
    assert ours["epoch"] == 3 and ours["names"] == ["a", "b"]
    assert_same_state_dict(ours["state_dict"], ref["state_dict"])


def test_torch_zip_uses_mmap_and_the_fd_path(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[object, dict[str, object]]] = []

    def spy(f: object, **kw: object) -> object:
        seen.append((f, kw))
        return REAL_LOAD(f, **kw)

    monkeypatch.setattr(_torch, "ORIGINAL_LOAD", spy)
    with pt_file(tmp_path / "m.pt") as af:
        load_audited(af)
        expected = fd_path(af.fd)
    (f, kw), = seen
    assert f == expected and str(f).startswith("/proc/self/fd/")
    assert kw["weights_only"] is True and kw["mmap"] is True


@pytest.mark.parametrize("obj", [{"a": 1}, [], 5, {"a": 1, "b": "x" * 40}, (1.5, None),
                                 {"e": torch.zeros(0)}, {"w": torch.ones(2)}],
                         ids=lambda o: type(o).__name__ + str(len(str(o))))
def test_legacy_file_whose_last_pickle_is_short_is_safe(tmp_path: Path, obj: object) -> None:
    """A legacy stream ends with the storage keys pickle: for a checkpoint without storages
    it is a few bytes, and the extent scan wanted 16 bytes of read-ahead past each opcode
    (INCOMPLETE, CKG201). torch.save(_use_new_zipfile_serialization=False) writes these."""
    import ckptguard

    p = tmp_path / "legacy.pt"
    torch.save(obj, p, _use_new_zipfile_serialization=False)
    r = scan(p)
    assert r.verdict is Verdict.SAFE and r.format is Format.TORCH_LEGACY, sorted(r.rule_ids())
    want = REAL_LOAD(p, weights_only=True)
    got = ckptguard.safe_load(p)
    assert type(got) is type(want) and repr(got) == repr(want)


def test_legacy_loads_without_mmap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, object]] = []

    def spy(f: object, **kw: object) -> object:
        seen.append(kw)
        return REAL_LOAD(f, **kw)

    monkeypatch.setattr(_torch, "ORIGINAL_LOAD", spy)
    with pt_file(tmp_path / "m.pt", legacy=True) as af:
        load_audited(af, mmap=True)
    assert seen[0]["mmap"] is False and seen[0]["weights_only"] is True


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-records", "zip-graph"])
def test_torch_meta_without_torch_load(tmp_path: Path, no_torch_load: list[object],
                                       legacy: bool) -> None:
    """Legacy files on meta: a flat dict from the audit's records, tied weights sharing one
    meta storage. Torch zips the fast path proved: torch.load(map_location="meta")'s object
    built from the audit's graph (tests/test_meta_loader.py compares it in full). Neither
    calls torch.load nor reads tensor bytes."""
    path = tmp_path / "m.pt"
    if legacy:
        af = pt_file(path, legacy=True, with_infos=True)
    else:
        save_torch(path, legacy_state_dict())
        af = open_audited(path, keep_graph=True)
    with af:
        r0, _ = io_chars()
        ours = load_audited(af, "meta")
        r1, _ = io_chars()
    assert r1 - r0 < 64 * 1024
    ref = REAL_LOAD(path, weights_only=True)
    assert list(ours) == list(ref)
    for k, v in ref.items():
        t = ours[k]
        assert t.device.type == "meta"
        assert (t.dtype, tuple(t.shape), t.stride(), t.storage_offset()) == (
            v.dtype, tuple(v.shape), v.stride(), v.storage_offset()), k
    assert ours["embed.weight"].untyped_storage() is not None
    assert ours["embed.weight"].untyped_storage()._cdata == \
        ours["lm_head.weight"].untyped_storage()._cdata


def test_policy_globals_go_to_safe_globals(tmp_path: Path) -> None:
    import argparse

    obj = {"w": torch.ones(2), "args": argparse.Namespace(lr=0.5)}
    path = tmp_path / "ns.pt"
    with pt_file(path, obj) as af:
        with pytest.raises(pickle.UnpicklingError, match="Namespace"):
            load_audited(af)  # torch's own weights-only unpickler refuses it
        af.policy = Policy().allow("argparse", "Namespace", reason="trainer hparams")
        ours = load_audited(af)
    assert ours["args"].lr == 0.5
    assert torch.equal(ours["w"], torch.ones(2))
    # the policy's extras are removed again after the load
    assert all("Namespace" not in repr(g) for g in torch.serialization.get_safe_globals())


def test_resolve_global() -> None:
    import collections

    assert _torch.resolve_global("collections.OrderedDict") is collections.OrderedDict
    assert _torch.resolve_global("os.path.join") is os.path.join
    with pytest.raises(LoaderError):
        _torch.resolve_global("no_such_module_xyz.thing")


def test_dtype_names() -> None:
    assert _torch.dtype_of("F8_E4M3") is torch.float8_e4m3fn
    assert _torch.dtype_of("BF16") is torch.bfloat16
    assert _torch.dtype_of("torch.float16") is torch.float16
    assert _torch.dtype_of("int64") is torch.int64
    with pytest.raises(LoaderError):
        _torch.dtype_of("Tensor")


# --- verdicts and identity --------------------------------------------------------------------

@pytest.mark.parametrize("verdict, exc", [(Verdict.UNSAFE, UnsafeCheckpointError),
                                           (Verdict.INCOMPLETE, IncompleteScanError)])
def test_not_safe_never_reaches_torch_load(tmp_path: Path, verdict: Verdict,
                                           exc: type[Exception],
                                           no_torch_load: list[object]) -> None:
    import dataclasses

    with pt_file(tmp_path / "m.pt") as af:
        af.report = dataclasses.replace(af.report, verdict=verdict)
        for loc in ("cpu", "meta"):
            with pytest.raises(exc) as ei:
                load_audited(af, loc)
            assert ei.value.report is af.report
    assert no_torch_load == []


def test_unsupported_format(tmp_path: Path) -> None:
    import dataclasses

    with pt_file(tmp_path / "m.pt") as af:
        af.report = dataclasses.replace(af.report, format=Format.PICKLE)
        with pytest.raises(UnsupportedFormatError):
            load_audited(af)


def _append(path: Path) -> None:
    with open(path, "ab") as fh:
        fh.write(b"\0" * 16)


def _rewrite_same_size_same_mtime(path: Path) -> None:
    st = os.stat(path)
    with open(path, "r+b") as fh:
        head = bytearray(fh.read(32))
        head[20] ^= 0xFF
        fh.seek(0)
        fh.write(head)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _replace(path: Path) -> None:
    other = path.with_suffix(".new")
    other.write_bytes(path.read_bytes())
    os.replace(other, path)


def _touch(path: Path) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


CHANGES = {"append": _append, "digest": _rewrite_same_size_same_mtime,
           "replace": _replace, "mtime": _touch}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("kind", ["zip", "safetensors"])
def test_change_between_audit_and_load(tmp_path: Path, change: str, kind: str) -> None:
    path = tmp_path / ("m.pt" if kind == "zip" else "m.safetensors")
    af = pt_file(path) if kind == "zip" else st_file(path)
    with af:
        CHANGES[change](path)
        with pytest.raises(FileChangedError) as ei:
            load_audited(af)
    assert str(path) in str(ei.value)


@pytest.mark.parametrize("change", list(CHANGES))
def test_change_during_torch_load(tmp_path: Path, change: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.pt"

    def racing(f: object, **kw: object) -> object:
        out = REAL_LOAD(f, **kw)
        CHANGES[change](path)
        return out

    monkeypatch.setattr(_torch, "ORIGINAL_LOAD", racing)
    with pt_file(path) as af, pytest.raises(FileChangedError):
        load_audited(af)


def test_change_is_caught_for_meta(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    with st_file(path) as af:
        _rewrite_same_size_same_mtime(path)
        with pytest.raises(FileChangedError):
            load_audited(af, "meta")


def test_shard_names() -> None:
    assert _valid_shard_name("model-00001-of-00002.safetensors")
    assert _valid_shard_name("sub/model.bin")
    for bad in ("", "/etc/passwd", "../x.bin", "a/../../x", "a\\b", "C:x", "a//b", "./x",
                "x\x00y"):
        assert not _valid_shard_name(bad), bad


# --- CUDA --------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("loc", ["cuda", "cuda:0", torch.device("cuda", 0), {"cpu": "cuda:0"}])
def test_cuda_safetensors_and_torch(tmp_path: Path, loc: object) -> None:
    with st_file(tmp_path / "m.safetensors") as af:
        ours = load_audited(af, loc)
    ref = load_file(str(tmp_path / "m.safetensors"), device="cuda:0")
    for k, v in ref.items():
        assert ours[k].device == v.device
        assert_same_tensor(ours[k], v, k)
    path = tmp_path / "m.pt"
    with pt_file(path) as af:
        ours_pt = load_audited(af, loc)
    ref_pt = torch.load(path, map_location=loc, weights_only=True)
    assert_same_state_dict(ours_pt, ref_pt)
    assert all(t.is_cuda for t in ours_pt.values())


@pytest.mark.parametrize(("name", "walked"), [
    ("linear.pt", False), ("views.pt", False), ("parameters.pt", False),  # fast path proved
    ("sparse.pt", True), ("quantized.pt", True), ("all_dtypes.pt", True),  # the VM's files
    ("legacy_format.pt", True),
])
def test_invariant_walk_only_where_the_fast_path_did_not_prove(
        monkeypatch: pytest.MonkeyPatch, name: str, walked: bool) -> None:
    """A torch zip whose data.pkl the audit's fast path proved holds only dense strided
    rebuilds with checked views: the invariant walk is skipped there (and only there)."""
    from ckptguard.loaders import torchfile

    calls: list[object] = []
    real = torchfile.check_loaded
    monkeypatch.setattr(torchfile, "check_loaded",
                        lambda obj, rep: (calls.append(obj), real(obj, rep)))
    path = Path(__file__).resolve().parent.parent / "fixtures" / "benign" / name
    with open_audited(path) as af:
        assert af.proven is not walked
        obj = load_audited(af)
    assert bool(calls) is walked
    if name not in ("sparse.pt", "quantized.pt"):  # (those: tests/test_tensor_invariants.py)
        assert_same_state_dict(obj, REAL_LOAD(path, weights_only=True))


def test_more_shards_than_the_open_file_limit_is_a_clear_error(tmp_path: Path) -> None:
    """Not 'the file changed' (nothing did): a LoaderError naming the limit."""
    import json
    import resource

    import ckptguard
    from ckptguard.errors import LoaderError

    d = tmp_path / "m"
    d.mkdir()
    wm = {}
    for i in range(40):
        save_file({f"w{i}": torch.ones(1)}, str(d / f"s{i}.safetensors"))
        wm[f"w{i}"] = f"s{i}.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 20, hard))
    try:
        with pytest.raises(LoaderError, match="open-file limit") as e:
            ckptguard.safe_load(d / "model.safetensors.index.json")
        assert not isinstance(e.value, FileChangedError)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_iter_state_dict_of_a_dict_that_holds_itself(tmp_path: Path) -> None:
    """torch.load returns the cycle as it is; iter_state_dict's walk recursed forever
    (a raw RecursionError). Names and order are the nested walk's."""
    import ckptguard

    d: dict[str, object] = {"w": torch.ones(2), "sub": {"b": torch.zeros(1)}}
    d["me"] = d
    p = tmp_path / "cycle.pt"
    torch.save(d, p)
    with ckptguard.iter_state_dict(p) as it:
        got = [(k, v.tolist()) for k, v in it]
    assert got == [("w", [1.0, 1.0]), ("sub.b", [0.0])]


#: a meta load of a big-endian archive, by each way into it (run in a child process)
_BIG_ENDIAN_META = {
    "torch.load": "torch.load(P, weights_only=True, map_location='meta')",
    "safe_load": "ckptguard.safe_load(P, map_location='meta')",
    "gate": "with ckptguard.guard_torch_load():\n        torch.load(P, map_location='meta')",
    "gate-device": ("with ckptguard.guard_torch_load():\n"
                    "        torch.load(P, map_location=torch.device('meta'))"),
    "gate-fake-mode": ("from torch._subclasses.fake_tensor import FakeTensorMode\n"
                       "    with ckptguard.guard_torch_load(), FakeTensorMode():\n"
                       "        torch.load(P)"),
}


@pytest.mark.parametrize("way", list(_BIG_ENDIAN_META))
def test_meta_load_of_a_big_endian_checkpoint_is_refused_not_a_crash(tmp_path: Path,
                                                                    way: str) -> None:
    """torch.load(map_location='meta') of a big-endian archive dies with SIGSEGV (torch
    byte-swaps storages that hold no data; under a fake-tensor mode too). The archive is
    SAFE (every other load works); safe_load and the gate refuse this load instead. Each
    way runs in a child process; plain torch.load shows the crash is real."""
    import signal
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "le.pt"
    torch.save({"w": torch.arange(4.0)}, src)
    p = tmp_path / "be.pt"
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(p, "w") as zo:
        for n in z.namelist():
            zo.writestr(n, b"big" if n.endswith("/byteorder") else z.read(n))
    assert scan(p).verdict is Verdict.SAFE
    code = ("import torch, ckptguard, ckptguard.errors\n"
            f"P = {str(p)!r}\n"
            "try:\n"
            f"    {_BIG_ENDIAN_META[way]}\n"
            "except ckptguard.errors.LoaderError as e:\n"
            "    print('refused', 'other byte order' in str(e))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, check=False)
    if way == "torch.load":
        assert r.returncode == -signal.SIGSEGV, (r.returncode, r.stderr[-500:])
    else:
        assert r.returncode == 0 and r.stdout.strip() == "refused True", (r.returncode,
                                                                           r.stderr[-800:])


def test_iter_state_dict_names_lists_as_the_audit_does(tmp_path: Path) -> None:
    """On the CPU only dict keys were walked, on meta (names from the audit) list and
    tuple positions too: the same file yielded different tensors."""
    import ckptguard

    t1, t2, t3 = torch.ones(2), torch.zeros(3), torch.arange(4.0)
    p = tmp_path / "lists.pt"
    torch.save({"layers": [t1, t2], "pair": (t3,), "w": t1, "n": 5}, p)
    with ckptguard.iter_state_dict(p) as it:
        cpu = [(k, v.shape) for k, v in it]
    with ckptguard.iter_state_dict(p, map_location="meta") as it:
        meta = [(k, v.shape) for k, v in it]
    assert [k for k, _ in cpu] == ["layers.0", "layers.1", "pair.0", "w"]
    assert cpu == meta
    assert sorted(k for k, _ in cpu) == sorted(t.name for t in scan(p).tensors)
