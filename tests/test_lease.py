"""The read lease (loaders/base.py, primitives.take_read_lease): ``safe_load``,
``load_state_dict`` and the gate take one on the descriptor before the audit reads a byte.
While it is held, a writer's ``open`` for writing waits until the load is over (a
non-blocking one fails with EAGAIN), so the bytes torch parses are the audited ones; the
checks after the load then compare the ``fstat`` only. Where the kernel refuses the lease (a
writer already holds the file, a writable shared mapping, SIGURG taken, a shared torch mmap
that opens the file for writing itself) the re-read and the comparison with the audit run as
before. Writers here are other processes: inside this process they would wait too.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from ckg_loader_helpers import (
    assert_same_state_dict,
    benign_state_dict,
    safetensors_state_dict,
    save_safetensors,
    save_torch,
    save_torch_shards,
)

import ckptguard
from ckptguard.errors import FileChangedError, LoaderError
from ckptguard.loaders import _torch, base, torchfile
from ckptguard.primitives import read_lease_held, take_read_lease

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="read leases are Linux's (F_SETLEASE)")

REAL_LOAD = _torch.ORIGINAL_LOAD


def _lease_works(tmp: Path) -> bool:
    p = tmp / "probe"
    p.write_bytes(b"x")
    fd = os.open(p, os.O_RDONLY)
    try:
        return take_read_lease(fd)
    finally:
        os.close(fd)


@pytest.fixture
def leasable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # the suite's workers may have threads of their own (servers, pools) left by other
    # tests: this process counts as one Python thread here (test_no_lease_with_threads)
    monkeypatch.setattr(base, "_one_python_thread", lambda: True)
    if not _lease_works(tmp_path):
        pytest.skip("this file system or process gets no read lease (NFS, FUSE, not the "
                    "owner without CAP_LEASE)")
    return tmp_path


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the checks that stand in for the lease: the re-read of the audited regions and
    the comparison of what torch built with the audit."""
    seen = {"reread": 0, "structure": 0}
    real_verify, real_structure = base.verify_identity, torchfile.structure_difference

    def verify(*a: Any, **k: Any) -> Any:
        seen["reread"] += 1
        return real_verify(*a, **k)

    def structure(*a: Any, **k: Any) -> Any:
        seen["structure"] += 1
        return real_structure(*a, **k)

    monkeypatch.setattr(base, "verify_identity", verify)
    monkeypatch.setattr(torchfile, "structure_difference", structure)
    return seen


def _gate(p: Path, **kw: Any) -> Any:
    with ckptguard.guard_torch_load():
        return torch.load(p, **kw)


#: the leased entry points, each with how torch itself loads the same file
LEASED: dict[str, Callable[[Path], Any]] = {
    "safe_load": ckptguard.safe_load,
    "safe_load-copy": lambda p: ckptguard.safe_load(p, copy=True),
    "engine-ckptguard": lambda p: ckptguard.safe_load(p, engine="ckptguard"),
    "load_state_dict": ckptguard.load_state_dict,
    "gate": _gate,
    "gate-mmap": lambda p: _gate(p, mmap=True),
}


@pytest.mark.parametrize("api", list(LEASED))
def test_a_leased_load_rereads_nothing(leasable: Path, checks: dict[str, int],
                                       api: str) -> None:
    p = save_torch(leasable / "m.pt", benign_state_dict())
    out = LEASED[api](p)
    assert_same_state_dict(out, REAL_LOAD(p, weights_only=True))
    assert checks == {"reread": 0, "structure": 0}


def test_a_leased_safetensors_load_rereads_nothing(leasable: Path,
                                                   checks: dict[str, int]) -> None:
    sd = safetensors_state_dict()
    p = save_safetensors(leasable / "m.safetensors", sd)
    out = ckptguard.safe_load(p)
    assert_same_state_dict(dict(sorted(out.items())), dict(sorted(sd.items())))
    assert checks["reread"] == 0


def test_iterators_take_no_lease(leasable: Path) -> None:
    """An iterator keeps its file open for as long as the caller iterates: no lease, so no
    writer waits on it."""
    p = save_torch(leasable / "m.pt", benign_state_dict())
    with ckptguard.iter_state_dict(p) as it:
        fds = [af.fd for af in it._files]  # type: ignore[attr-defined]
        assert fds and not any(read_lease_held(fd) for fd in fds if fd >= 0)
        dict(it)


# --- writers in another process ------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import os, sys, time
    path, flags, offset, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    t = time.monotonic()
    try:
        fd = os.open(path, flags)
    except OSError as e:
        open(out, "w").write(f"errno {e.errno}")
        sys.exit(0)
    opened = time.monotonic()
    b = os.pread(fd, 1, offset)
    os.pwrite(fd, bytes([b[0] ^ 0xFF]), offset)
    os.close(fd)
    open(out, "w").write(f"opened {opened!r}")
""")


def _data_pkl_offset(p: Path) -> int:
    raw = p.read_bytes()
    return raw.index(b"benign") if b"benign" in raw else raw.index(b"PK\x03\x04") + 64


def _await_break(fd: int) -> None:
    """Return once the lease on ``fd`` is breaking (a writer's open is waiting), bounded."""
    deadline = time.monotonic() + 20
    while read_lease_held(fd):
        if time.monotonic() > deadline:
            raise AssertionError("the writer never reached its open")
        time.sleep(0.005)


def _writer_during_load(monkeypatch: pytest.MonkeyPatch, p: Path, flags: int,
                        out: Path) -> tuple[list[float], list[subprocess.Popen[bytes]]]:
    """Wrap torch.load: start a writer process just before torch reads ``p`` and, for a
    blocking writer, wait until its open is pending on the lease; record when torch
    finished."""
    finished: list[float] = []
    procs: list[subprocess.Popen[bytes]] = []
    offset = _data_pkl_offset(p)

    def racing(f: Any, **kw: Any) -> Any:
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(p), str(flags),
                                 str(offset), str(out)])
        procs.append(proc)
        if flags & os.O_NONBLOCK:
            proc.wait(timeout=60)
        else:
            _await_break(int(str(f).rsplit("/", 1)[1]))
        obj = REAL_LOAD(f, **kw)
        finished.append(time.monotonic())
        return obj

    monkeypatch.setattr(_torch, "ORIGINAL_LOAD", racing)
    return finished, procs


@pytest.mark.parametrize("api", ["safe_load", "gate"])
def test_a_writer_waits_until_the_load_is_over(leasable: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               api: str) -> None:
    sd = benign_state_dict()
    p = save_torch(leasable / "m.pt", sd)
    pristine = p.read_bytes()
    out = leasable / "writer.txt"
    finished, procs = _writer_during_load(monkeypatch, p, os.O_RDWR, out)
    got = LEASED[api](p)
    returned = time.monotonic()
    procs[0].wait(timeout=60)
    assert_same_state_dict(got, sd)
    word, when = out.read_text().split()
    assert word == "opened"
    # the writer's open returned only once the load had returned and the file was closed
    assert float(when) >= finished[0] and float(when) <= returned + 60
    assert p.read_bytes() != pristine  # and then it did write


def test_a_nonblocking_writer_is_refused_during_the_load(leasable: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    sd = benign_state_dict()
    p = save_torch(leasable / "m.pt", sd)
    pristine = p.read_bytes()
    out = leasable / "writer.txt"
    _writer_during_load(monkeypatch, p, os.O_RDWR | os.O_NONBLOCK, out)
    got = ckptguard.safe_load(p)
    assert out.read_text() == f"errno {errno.EAGAIN}"
    assert p.read_bytes() == pristine
    assert_same_state_dict(got, sd)


def test_the_lease_is_released_when_the_load_returns(leasable: Path) -> None:
    p = save_torch(leasable / "m.pt", benign_state_dict())
    ckptguard.safe_load(p)
    fd = os.open(p, os.O_RDWR | os.O_NONBLOCK)  # would fail with EAGAIN under a lease
    os.close(fd)


# --- where there is no lease, the other checks run -------------------------------------------

@pytest.fixture
def writer_open(leasable: Path) -> Iterator[Path]:
    p = save_torch(leasable / "m.pt", benign_state_dict())
    fd = os.open(p, os.O_RDWR)
    try:
        yield p
    finally:
        os.close(fd)


@pytest.fixture
def writable_mapping(leasable: Path) -> Iterator[Path]:
    p = save_torch(leasable / "m.pt", benign_state_dict())
    fd = os.open(p, os.O_RDWR)
    m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    os.close(fd)  # the mapping alone keeps the file open for writing
    try:
        yield p
    finally:
        m.close()


@pytest.mark.parametrize("holder", ["writer_open", "writable_mapping"])
def test_no_lease_while_the_file_is_open_for_writing(request: pytest.FixtureRequest,
                                                     checks: dict[str, int],
                                                     holder: str) -> None:
    p: Path = request.getfixturevalue(holder)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert take_read_lease(fd) is False
    finally:
        os.close(fd)
    out = ckptguard.safe_load(p)
    assert_same_state_dict(out, REAL_LOAD(p, weights_only=True))
    assert checks == {"reread": 1, "structure": 1}


def test_no_lease_when_sigurg_has_a_handler(leasable: Path, checks: dict[str, int]) -> None:
    """The lease break is announced with SIGURG: a program that handles SIGURG would get
    a signal it did not ask for, so no lease is taken there."""
    p = save_torch(leasable / "m.pt", benign_state_dict())
    old = signal.signal(signal.SIGURG, lambda s, f: None)
    try:
        fd = os.open(p, os.O_RDONLY)
        try:
            assert take_read_lease(fd) is False
            assert fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_UNLCK
        finally:
            os.close(fd)
        ckptguard.safe_load(p)
    finally:
        signal.signal(signal.SIGURG, old)
    assert checks == {"reread": 1, "structure": 1}


def test_a_broken_lease_falls_back_to_the_rereads(leasable: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  checks: dict[str, int]) -> None:
    """A writer that opened during the load (and then waited) broke the lease: the checks
    after the load do not rely on it."""
    sd = benign_state_dict()
    p = save_torch(leasable / "m.pt", sd)
    _writer_during_load(monkeypatch, p, os.O_RDWR | os.O_NONBLOCK, leasable / "w.txt")
    assert_same_state_dict(ckptguard.safe_load(p), sd)
    assert checks == {"reread": 1, "structure": 1}


def test_a_shared_torch_mmap_drops_the_lease_first(leasable: Path) -> None:
    """torch opens the file read-write to map it shared: under our own lease that open
    would wait 45 s. The load drops the lease before torch runs (a fresh process, bounded,
    so a regression fails instead of hanging the suite)."""
    p = save_torch(leasable / "m.pt", {"w": torch.arange(12.0).reshape(3, 4),
                                       "b": torch.arange(3, dtype=torch.int64)})
    code = textwrap.dedent(f"""
        import mmap, torch, ckptguard
        from ckptguard.loaders import base, torchfile
        seen = []
        real = torchfile.structure_difference
        torchfile.structure_difference = lambda *a, **k: seen.append(1) or real(*a, **k)
        torch.serialization.set_default_mmap_options(mmap.MAP_SHARED)
        sd = ckptguard.safe_load({str(p)!r})
        ref = torch.load({str(p)!r}, weights_only=True)
        assert list(sd) == list(ref), (list(sd), list(ref))
        assert all(torch.equal(sd[k], ref[k]) for k in sd)
        assert seen == [1], seen
        print("ok")
    """)
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=40, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    assert time.monotonic() - t < 40


def test_a_changed_ctime_still_refuses_under_the_lease(leasable: Path) -> None:
    """The lease stops writers; the fstat check still refuses what a lease does not stop
    (a chmod or utime changes the inode change time)."""
    p = save_torch(leasable / "m.pt", benign_state_dict())
    af = base.open_audited(p, lease=True)
    try:
        assert af.leased and read_lease_held(af.fd)
        deadline = time.monotonic() + 10
        ctime = os.stat(p).st_ctime_ns
        while os.stat(p).st_ctime_ns == ctime and time.monotonic() < deadline:
            os.chmod(p, 0o600 if os.stat(p).st_mode & 0o044 else 0o644)
        with pytest.raises(FileChangedError, match="inode change time"):
            af.verify()
    finally:
        af.close()


def test_the_lease_ends_with_the_load_even_while_tensors_map_the_file(leasable: Path) -> None:
    """The safetensors loader maps the audited descriptor itself: that map keeps the open
    file description (and a lease tied to it) alive after the descriptor is closed. The
    lease is given back explicitly, so the caller's own later write does not wait."""
    sd = safetensors_state_dict()
    p = save_safetensors(leasable / "m.safetensors", sd)
    out = ckptguard.safe_load(p)  # tensors still map the file
    fd = os.open(p, os.O_RDWR | os.O_NONBLOCK)  # EAGAIN while a lease is held
    os.close(fd)
    assert len(out) == len(sd)


@pytest.mark.filterwarnings("ignore:pickle_load_args only works")
def test_another_encoding_is_refused_unless_proven(leasable: Path) -> None:
    """torch.load(encoding="latin1") under the gate reads a Python 2 storage key otherwise
    than the audit (UTF-8, as torch.load decodes by default): the same bytes, another
    record. The lease proves the bytes, not the reading: such a load is refused, unless
    the fast path proved the pickle (no Python 2 string in it)."""
    from ckg_families import family

    fam = family("vm_round8")
    p = leasable / "key.pt"
    p.write_bytes(fam["binstring_variant"]("short_binstring", "é".encode(), "storage_key"))
    assert ckptguard.scan(p).verdict.value == "SAFE"
    assert torch.load(p, weights_only=True, encoding="latin1")["x"].tolist() == [1.0, 2.0]
    plain = save_torch(leasable / "plain.pt", {"w": torch.arange(4.0)})
    with ckptguard.guard_torch_load():
        # what the audit read: the UTF-8 record
        assert torch.load(p, weights_only=True)["x"].tolist() == fam["R8_TORCH_VALUES"]
        assert torch.load(p, weights_only=True, encoding="UTF8")["x"].tolist() == \
            fam["R8_TORCH_VALUES"]
        with pytest.raises(LoaderError, match="encoding='latin1'"):
            torch.load(p, weights_only=True, encoding="latin1")
        out = torch.load(plain, weights_only=True, encoding="latin1")  # proven: no py2 str
        assert torch.equal(out["w"], torch.arange(4.0))
        with open(p, "rb") as fh, pytest.raises(LoaderError, match="encoding='latin1'"):
            torch.load(fh, weights_only=True, encoding="latin1")  # a file object too


def _sharded(d: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = benign_state_dict()
    names = list(sd)
    index = save_torch_shards(d, [{k: sd[k] for k in names[:5]},
                                  {k: sd[k] for k in names[5:]}])
    return index, sd


def test_sharded_safe_load_leases_every_shard(leasable: Path, checks: dict[str, int]) -> None:
    """safe_load of an index: each shard is re-read once when it is reopened after the
    index audit (its lease came after that audit), then the lease stands in for the
    checks after its load."""
    index, sd = _sharded(leasable)
    out = ckptguard.safe_load(index)
    assert list(out) == list(sd)
    for k in sd:
        assert_same_state_dict({k: out[k]}, {k: sd[k]})
    assert checks == {"reread": 2, "structure": 0}
    for shard in leasable.glob("model-*.bin"):  # and every lease ended with the load
        os.close(os.open(shard, os.O_RDWR | os.O_NONBLOCK))


def test_iter_state_dict_over_shards_takes_no_lease(leasable: Path,
                                                   checks: dict[str, int]) -> None:
    index, sd = _sharded(leasable)
    with ckptguard.iter_state_dict(index) as it:
        shard = next(iter(leasable.glob("model-*.bin")))
        os.close(os.open(shard, os.O_RDWR | os.O_NONBLOCK))  # no lease while iterating
        got = dict(it)
    assert list(got) == list(sd)
    assert checks["structure"] == 2


def test_no_lease_while_another_python_thread_runs(tmp_path: Path,
                                                   checks: dict[str, int]) -> None:
    """Another thread that opens the file for writing from C++ holding the GIL
    (torch.save(path)) would wait on the lease while the load waits for the GIL, for the
    kernel's 45 s: with a second Python thread alive, no lease is taken."""
    import threading

    if not _lease_works(tmp_path):
        pytest.skip("no read lease on this file system")
    p = save_torch(tmp_path / "m.pt", benign_state_dict())
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert threading.active_count() > 1
        ckptguard.safe_load(p)
    finally:
        stop.set()
        t.join()
    assert checks == {"reread": 1, "structure": 1}


_FORKING_PARENT = textwrap.dedent("""
    import os, sys, time
    from ckptguard.loaders import base
    af = base.open_audited(sys.argv[1], lease=True)
    assert af.leased
    pid = os.fork()
    if pid == 0:  # the child outlives its parent, without touching the file
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)  # (the pipes the test reads close with the parent)
        time.sleep(60)
        os._exit(0)
    print(pid, flush=True)
    os._exit(0)  # the parent dies mid-load: nothing is closed or released
""")


@pytest.mark.parametrize("forget", [True, False])
def test_a_forked_child_does_not_keep_the_lease(leasable: Path, forget: bool) -> None:
    """A child forked while a load holds the lease shares the open file description that
    the lease belongs to: if the parent dies without closing it, the child alone would keep
    every writer waiting for the kernel's lease-break time. The at-fork hook points the
    child's copies at /dev/null; without it (the control) the writer is refused."""
    p = save_torch(leasable / "m.pt", benign_state_dict())
    script = _FORKING_PARENT if forget else _FORKING_PARENT.replace(
        "import os, sys, time", "import os, sys, time\nimport ckptguard.primitives as pr\n"
        "pr._forget_leases_in_child.__code__ = (lambda: None).__code__")
    out = subprocess.run([sys.executable, "-c", script, str(p)], capture_output=True,
                         text=True, timeout=60, check=True)
    child = int(out.stdout.split()[0])
    try:
        if forget:
            fd = os.open(p, os.O_RDWR | os.O_NONBLOCK)  # EAGAIN while a lease is held
            os.close(fd)
        else:
            with pytest.raises(BlockingIOError):
                os.open(p, os.O_RDWR | os.O_NONBLOCK)
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_forked_child_gets_an_identity_error_not_the_file(leasable: Path) -> None:
    """The child's leased descriptor now reads /dev/null: a child that goes on with the load
    fails the identity check cleanly instead of reading (or leasing) the parent's file."""
    p = save_torch(leasable / "m.pt", benign_state_dict())
    af = base.open_audited(p, lease=True)
    try:
        assert af.leased
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                af.check_stat()
            except FileChangedError:
                code = 0 if os.fstat(af.fd).st_ino != os.stat(p).st_ino else 2
            except BaseException:
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert read_lease_held(af.fd)  # the parent's lease is untouched
        assert af.verify() is True
    finally:
        af.close()
