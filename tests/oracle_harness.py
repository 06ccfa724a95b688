"""The differential oracle: SAFE must hold for every program that may read the same bytes.

For each case (a file's bytes under one name) ckptguard scans the file; every loader a
user might point at those bytes then reads them in a watched process
(``tests/oracle_worker.py``: a CPython audit hook records ``pickle.find_class`` and payload
events -- exec/compile outside the import machinery, os.system, subprocess, spawn, fork,
opens for writing, sockets, ctypes ...). The parent also looks for files the load created
in its working directory (the inert fixtures' marker). The assertion:

    verdict SAFE  =>  for every loader: every resolved global is on the weights-only
                      allowlist, no payload event fired, no file appeared, the loader did
                      not crash the process, exhaust RLIMIT_AS or hang.

ONE long-lived worker per loader kind takes every file over a pipe; a worker that dies or
hangs past the per-file timeout is killed (with its process group) and restarted.

Cases come from the committed fixtures, renamed under every extension, from generators of
every format (torch zip, legacy torch, raw pickle, safetensors, npy, npz, TorchScript, JSON
index), from structure-aware polyglot builders and from seeded byte/opcode mutators.
Used by tests/test_oracle.py (a short run), tests/test_fixtures.py (payloads really fire)
and fuzz/oracle.py (the long run). Deterministic for a given seed.
"""

from __future__ import annotations

import _compat_pickle
import atexit
import contextlib
import io
import json
import os
import pickle
import random
import runpy
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
WORKER = Path(__file__).resolve().parent / "oracle_worker.py"
MARKER = "ckptguard_marker"

#: classes the oracle finds that another issue is fixing (origin substring -> owner); the
#: short run tolerates exactly these and tests/test_oracle.py pins each with a strict xfail
KNOWN_OPEN: dict[str, str] = {
    # Classes the oracle found, closed since: "safetensors-hop" (issue 10 item 1: the
    # every-reader audit, CKG011), "torch-zip-npy-member" (numpy.load reads any zip as an
    # npz: object-dtype members are audited, CKG602) and "sparse-bad" (issue 10 item 3:
    # safe_load checks sparse invariants, CKG420). Their tests in test_oracle.py now
    # assert they stay closed.
}

#: every loader kind the oracle runs, one worker process each
LOADER_KINDS = ("pickle", "numpy", "torch_wo", "torch_full", "safetensors", "jit", "ckptguard")
#: the manifest's ``fires`` loaders -> the worker kind that runs them
FIRES_KIND = {"pickle.load": "pickle", "numpy.load": "numpy", "torch.load": "torch_full",
              "torch.load_legacy": "torch_full", "torch.export.load": "export",
              "torch.export.load+call": "export_call"}
EXTENSIONS = (".bin", ".pt", ".pth", ".ckpt", ".safetensors", ".npy", ".npz", ".pkl", "")
TORCH_KINDS = frozenset({"torch_wo", "torch_full", "safetensors", "jit", "ckptguard", "export",
                         "export_call"})
#: events about USING what a loader returned (tensor invariants torch skips at load): the
#: scan verdict does not promise them (safe_load checks them before handing tensors out,
#: issue 10 item 3), so they count against the ``ckptguard`` loader only
USE_EVENTS = frozenset({"sparse-invariant"})


# ===================================================================================== cases

@dataclass(frozen=True)
class Case:
    """One file to scan and load: its bytes under a name, plus sibling files (shards of a
    JSON index) written next to it."""

    name: str
    data: bytes
    origin: str
    siblings: tuple[tuple[str, bytes], ...] = ()


@dataclass
class LoadResult:
    ok: bool
    error: str
    globals: list[tuple[str, str]]
    events: list[tuple[str, str]]          # payload events, plus "file-created" / "crash" / ...
    seconds: float = 0.0


@dataclass
class Disagreement:
    case: Case
    loader: str
    why: str
    result: LoadResult

    def describe(self) -> str:
        return (f"{self.case.origin} as {self.case.name!r}: ckptguard SAFE, {self.loader}: "
                f"{self.why} (error={self.result.error[:120]!r}, events={self.result.events[:4]},"
                f" globals={self.result.globals[:6]})")


@dataclass
class Totals:
    files: int = 0                         # cases scanned
    loads: int = 0                         # files x loaders actually run
    safe: int = 0                          # SAFE verdicts
    verdicts: Counter[str] = field(default_factory=Counter)
    events: int = 0                        # payload events seen (all verdicts)
    loads_with_events: int = 0
    outside_globals: int = 0               # globals outside the allowlist resolved (all)
    restarts: int = 0
    by_origin: Counter[str] = field(default_factory=Counter)
    disagreements: list[Disagreement] = field(default_factory=list)
    slowest: list[tuple[float, str, str, str]] = field(default_factory=list)
    #: (case, loader kind, verdict, result) of every load, when check(keep_results=True)
    results: list[tuple[Case, str, str, LoadResult]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        v = ", ".join(f"{k} {n}" for k, n in sorted(self.verdicts.items()))
        return (f"oracle: {self.files} files x loaders = {self.loads} loads; verdicts: {v}; "
                f"payload events {self.events} in {self.loads_with_events} loads; "
                f"{self.outside_globals} non-allowlisted globals resolved; SAFE verdicts "
                f"{self.safe}; disagreements {len(self.disagreements)}; worker restarts "
                f"{self.restarts}; {self.seconds:.1f} s")


# ==================================================================================== zygote

#: the zygote: import torch once, then fork one child per torch-kind worker that runs
#: tests/oracle_worker.py exactly as ``python -c`` would (own session, environment, cwd,
#: sys.path and argv; SIGCHLD back to default). Requests are one datagram each with the
#: child's stdin, stdout and stderr as SCM_RIGHTS descriptors; the reply is its pid.
_ZYGOTE_SRC = r"""
import json, os, runpy, signal, socket, sys, traceback
sock = socket.socket(fileno=int(sys.argv[1]))
import torch  # what every torch-kind worker imports first: the forks share it
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the forks
sock.sendall(b"ready")
while True:
    msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 3)
    if not msg:
        break
    req = json.loads(msg)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setsid()
            sock.close()
            for i, fd in enumerate(fds):
                os.dup2(fd, i)
                os.close(fd)
            os.environ.clear()
            os.environ.update(req["env"])
            os.chdir(req["cwd"])
            extra = [p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
            sys.path[0:1] = ["", *extra]
            sys.dont_write_bytecode = bool(req["env"].get("PYTHONDONTWRITEBYTECODE"))
            sys.argv = [req["worker"], req["kind"]]
            runpy.run_path(req["worker"], run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            for f in (sys.stdout, sys.stderr):
                try:
                    f.flush()
                except Exception:
                    pass
            os._exit(code)
    for fd in fds:
        os.close(fd)
    sock.sendall(str(pid).encode())
"""


class Forked:
    """A worker forked by the zygote, with the part of ``Popen``'s interface Worker uses.
    It is the zygote's child, not ours: ``poll`` sees it gone once the kernel reaped it
    (its exit status is not ours to read: -1)."""

    def __init__(self, pid: int, stdin: io.BufferedWriter, stdout: io.BufferedReader) -> None:
        self.pid, self.stdin, self.stdout = pid, stdin, stdout

    def poll(self) -> int | None:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return -1
        except PermissionError:   # the pid was reused by another user's process
            return -1
        return None

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.001)
        return -1


class Zygote:
    """One per test process (started on first use, ended at exit): saves each torch-kind
    worker its own interpreter start and ``import torch`` (~0.9 s of CPU a worker).
    ``CKG_ORACLE_FORK=0`` turns it off (every worker is a fresh ``python -c`` again)."""

    _instance: Zygote | None = None
    _failed = False

    @classmethod
    def get(cls) -> Zygote | None:
        if cls._failed or os.environ.get("CKG_ORACLE_FORK", "1") == "0" or \
                not hasattr(socket, "send_fds") or not sys.platform.startswith("linux"):
            return None
        if cls._instance is None or cls._instance.p.poll() is not None:
            try:
                cls._instance = cls()
            except (OSError, RuntimeError):
                cls._failed = True
                return None
        return cls._instance

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CKPTGUARD")}
        env.pop("PYTHONPATH", None)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.p = subprocess.Popen([sys.executable, "-c", _ZYGOTE_SRC, str(theirs.fileno())],
                                  pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=env, start_new_session=True, cwd=tempfile.gettempdir())
        theirs.close()
        ours.settimeout(120.0)
        if ours.recv(64) != b"ready":
            self.close()
            raise RuntimeError("oracle zygote did not start")
        atexit.register(self.close)

    def start(self, kind: str, env: dict[str, str], err: Any) -> Forked:
        """Fork a worker of ``kind``; returns it with the parent's ends of its pipes."""
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_fd = os.open(os.devnull, os.O_WRONLY) if err is subprocess.DEVNULL else \
            os.dup(err.fileno())
        try:
            msg = json.dumps({"kind": kind, "env": env, "cwd": tempfile.gettempdir(),
                              "worker": str(WORKER)}).encode()
            socket.send_fds(self.sock, [msg], [in_r, out_w, err_fd])
            pid = int(self.sock.recv(64))
        finally:
            for fd in (in_r, out_w, err_fd):
                os.close(fd)
        return Forked(pid, os.fdopen(in_w, "wb"), os.fdopen(out_r, "rb"))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()


# ==================================================================================== worker

class Worker:
    """One long-lived loader process (tests/oracle_worker.py KIND)."""

    def __init__(self, kind: str, *, timeout: float = 20.0, as_mb: int = 1024,
                 log: Path | None = None) -> None:
        self.kind, self.timeout, self.as_mb, self.log = kind, timeout, as_mb, log
        self.restarts = 0
        self.p: subprocess.Popen[bytes] | Forked | None = None
        self._buf = b""
        self._start()

    def _start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CKPTGUARD")}
        env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
                   CKG_ORACLE_AS_MB=str(self.as_mb), PYTHONDONTWRITEBYTECODE="1")
        if self.kind != "ckptguard":
            env.pop("PYTHONPATH", None)    # only safe_load's worker needs ckptguard
        err = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        zygote = Zygote.get() if self.kind in TORCH_KINDS else None
        if zygote is not None:
            self.p = zygote.start(self.kind, env, err)
        else:
            # run like ``python -c``: sys.path[0] is '' (the load's cwd), not tests/
            boot = ("import runpy, sys; sys.argv = [sys.argv[1], sys.argv[2]]; "
                    "runpy.run_path(sys.argv[0], run_name='__main__')")
            self.p = subprocess.Popen([sys.executable, "-c", boot, str(WORKER), self.kind],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=err, env=env, start_new_session=True,
                                      cwd=tempfile.gettempdir())
        if err is not subprocess.DEVNULL:
            err.close()
        self._buf = b""
        line = self._readline(max(120.0, self.timeout))
        if line is None or b"ready" not in line:
            self.close()
            raise RuntimeError(f"oracle worker {self.kind} did not start")

    def _readline(self, timeout: float) -> bytes | None:
        assert self.p is not None and self.p.stdout is not None
        fd = self.p.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _kill(self) -> None:
        if self.p is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.p.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.p.pid, signal.SIGKILL)   # a fork killed before its setsid()
        self.p.wait()
        for s in (self.p.stdin, self.p.stdout):
            if s is not None:
                s.close()
        self.p = None

    def load(self, path: Path, cwd: Path, timeout: float | None = None) -> LoadResult:
        assert self.p is not None and self.p.stdin is not None
        t0 = time.monotonic()
        req = json.dumps({"path": str(path), "cwd": str(cwd)}).encode() + b"\n"
        try:
            self.p.stdin.write(req)
            self.p.stdin.flush()
            line = self._readline(self.timeout if timeout is None else timeout)
        except (BrokenPipeError, OSError):
            line = None
        dt = time.monotonic() - t0
        if line is None:
            rc = self.p.poll()
            why = "timeout" if rc is None else f"crash (exit {rc})"
            self._kill()
            self.restarts += 1
            self._start()
            return LoadResult(False, why, [], [(why.split(maxsplit=1)[0], f"{dt:.1f} s")], dt)
        try:
            d = json.loads(line)
        except ValueError:
            self._kill()
            self.restarts += 1
            self._start()
            return LoadResult(False, "garbled reply", [], [("garbled", line[:80].decode(
                "latin-1"))], dt)
        events = [(str(e), str(x)) for e, x in d["events"]]
        if d["error"].startswith("MemoryError") or "can't allocate memory" in d["error"]:
            events.append(("memory", d["error"][:120]))
        return LoadResult(bool(d["ok"]), str(d["error"]),
                          [(str(m), str(n)) for m, n in d["globals"]], events, dt)

    def close(self) -> None:
        """End the worker now: every reply has been read, and an interpreter that imported
        torch spends ~0.35 s of CPU (and the caller's wall time) tearing itself down on a
        graceful exit, for nothing the oracle reads (its process group is killed)."""
        self._kill()


def run_loads(kind: str, jobs: Iterable[tuple[Path, Path, float]], *, log: Path | None = None,
              ) -> Iterator[tuple[Path, LoadResult, int]]:
    """Run one loader kind over many (file, cwd, timeout) jobs in ONE worker; yields each result
    with the files the load added to cwd as a ``file-created`` event,
    and the worker's restart count so far."""
    w = Worker(kind, log=log)
    try:
        for path, cwd, timeout in jobs:
            before = set(os.listdir(cwd))
            res = w.load(path, cwd, timeout)
            for extra in sorted(set(os.listdir(cwd)) - before):
                res.events.append(("file-created", extra))
            yield path, res, w.restarts
    finally:
        w.close()


# ================================================================================ allowlist

def _canonical(module: str, name: str) -> str:
    """The name find_class resolves (protocol < 3 maps Python 2 names first)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def outside_allowlist(globals_: Iterable[tuple[str, str]]) -> list[str]:
    from ckptguard.policy import Policy

    pol = Policy()
    return [g for g in (_canonical(m, n) for m, n in globals_) if not pol.is_allowed(g)]


# ============================================================================== the checker

def _write_case(case: Case, d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for sib, data in case.siblings:
        (d / sib).write_bytes(data)
    p = d / (case.name or "noname")
    p.write_bytes(case.data)
    return p


def scan_verdict(case: Case, work: Path) -> str:
    import ckptguard
    from ckptguard.policy import DEFAULT_LIMITS

    d = work / "scan"
    shutil.rmtree(d, ignore_errors=True)
    p = _write_case(case, d)
    r = ckptguard.scan(p, limits=DEFAULT_LIMITS.replace(max_seconds=20.0))
    return r.verdict.value


def check(cases: Iterable[Case], *, kinds: tuple[str, ...] = LOADER_KINDS,
          loads_for: str | Callable[[Case, str], bool] = "safe", timeout: float = 30.0,
          timeout_unsafe: float = 3.0, work: Path | None = None, keep_results: bool = False,
          progress: Callable[[str], None] | None = None) -> Totals:
    """Scan every case, then run each loader kind (one worker) over the cases selected by
    ``loads_for`` ("safe": SAFE verdicts only; "all": every case; or a predicate of the
    case and its verdict). Non-SAFE cases load with the shorter ``timeout_unsafe``: hostile
    files that hang a loader are not the question.
    Returns the totals with every disagreement (SAFE while a loader resolved a
    non-allowlisted global, fired a payload event, crashed, ran out of memory or hung)."""
    t0 = time.monotonic()
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="ckg-oracle-")) if work is None else work
    tot = Totals()
    try:
        scanned: list[tuple[Case, str]] = []
        for case in cases:
            v = scan_verdict(case, work)
            tot.files += 1
            tot.verdicts[v] += 1
            tot.by_origin[case.origin.split(":")[0]] += 1
            tot.safe += v == "SAFE"
            scanned.append((case, v))
        if progress:
            progress(f"scanned {tot.files} files: {dict(tot.verdicts)}")
        want: Callable[[Case, str], bool] = (
            loads_for if callable(loads_for) else
            (lambda c, v: True) if loads_for == "all" else (lambda c, v: v == "SAFE"))
        chosen = [(i, c, v) for i, (c, v) in enumerate(scanned) if v == "SAFE" or want(c, v)]
        for kind in kinds:
            base = work / kind
            jobs = []
            for i, c, v in chosen:
                jobs.append((_write_case(c, base / str(i)), base / str(i),
                             timeout if v == "SAFE" else timeout_unsafe))
            index = {str(p): (c, v) for (p, _, _), (_i, c, v) in zip(jobs, chosen, strict=True)}
            restarts = 0
            for path, res, restarts in run_loads(kind, jobs, log=work / f"{kind}.log"):
                case, verdict = index[str(path)]
                tot.loads += 1
                if keep_results:
                    tot.results.append((case, kind, verdict, res))
                tot.slowest.append((res.seconds, kind, case.origin, res.error[:60]))
                tot.slowest = sorted(tot.slowest, reverse=True)[:10]
                outside = outside_allowlist(res.globals)
                tot.outside_globals += len(outside)
                if res.events:
                    tot.events += len(res.events)
                    tot.loads_with_events += 1
                if verdict == "SAFE" or kind == "ckptguard":
                    # safe_load decides by itself: whatever it returns must be usable
                    why = _why(outside, res, use_events=kind == "ckptguard")
                    if why:
                        tot.disagreements.append(Disagreement(case, kind, why, res))
                shutil.rmtree(path.parent, ignore_errors=True)
            tot.restarts += restarts
            if progress:
                progress(f"{kind}: {tot.loads} loads so far, {tot.events} events, "
                         f"{len(tot.disagreements)} disagreements")
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    tot.seconds = time.monotonic() - t0
    return tot


def _why(outside: list[str], res: LoadResult, *, use_events: bool) -> str:
    parts = []
    if outside:
        parts.append("resolved non-allowlisted " + ", ".join(sorted(set(outside))[:5]))
    events = {e for e, _ in res.events if use_events or e not in USE_EVENTS}
    if events:
        parts.append("events " + ", ".join(sorted(events)))
    return "; ".join(parts)


# ============================================================================ the generators

_GEN: dict[str, Any] = {}


def gen() -> dict[str, Any]:
    """fixtures/generate.py's helpers (op, raw, call, torch_zip, build_zip, legacy_file,
    npy_object, ...), loaded once without writing anything."""
    if not _GEN:
        _GEN.update(runpy.run_path(str(FIXTURES / "generate.py"), run_name="ckg_oracle_gen"))
    return _GEN


FIXTURE_FOLDERS = ("benign", "medium", "hostile", "robustness")


def fixture_cases(max_size: int = 1 << 20,
                  folders: tuple[str, ...] = FIXTURE_FOLDERS) -> list[Case]:
    """Every committed fixture (of ``folders``) under its own name."""
    out = []
    for sub in folders:
        for p in sorted((FIXTURES / sub).rglob("*")):
            if p.is_file() and p.stat().st_size <= max_size:
                out.append(Case(p.name, p.read_bytes(), f"fixture:{sub}/{p.name}"))
    return out


def _stem(name: str) -> str:
    for ext in sorted((e for e in EXTENSIONS if e), key=len, reverse=True):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name.rsplit(".", 1)[0] if "." in name else name


def renamed(cases: Iterable[Case], rng: random.Random, per_case: int | None = None) -> list[Case]:
    """Each case under other extensions (all of them, or ``per_case`` picked at random)."""
    out = []
    for c in cases:
        if c.siblings:
            continue
        exts = list(EXTENSIONS) if per_case is None else rng.sample(EXTENSIONS, per_case)
        for ext in exts:
            name = _stem(c.name) + ext
            if name != c.name:
                out.append(Case(name, c.data, c.origin.replace("fixture:", "renamed:", 1)
                                if c.origin.startswith("fixture:") else "renamed:" + c.origin))
    return out


# --- values ---------------------------------------------------------------------------------

def _plain(rng: random.Random, depth: int = 0) -> Any:
    k = rng.randrange(10 if depth < 3 else 6)
    if k == 0:
        return rng.randrange(-(2**40), 2**40)
    if k == 1:
        return rng.random() * 100
    if k == 2:
        return "".join(rng.choice("abcé_.0") for _ in range(rng.randrange(8)))
    if k == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(6)))
    if k == 4:
        return rng.choice([None, True, False])
    if k == 5:
        return rng.randrange(256)
    if k == 6:
        return [_plain(rng, depth + 1) for _ in range(rng.randrange(4))]
    if k == 7:
        return tuple(_plain(rng, depth + 1) for _ in range(rng.randrange(4)))
    if k == 8:
        return {str(i): _plain(rng, depth + 1) for i in range(rng.randrange(4))}
    return {rng.randrange(9) for _ in range(rng.randrange(3))}


_DT = [("FloatStorage", "F32", 4), ("LongStorage", "I64", 8), ("HalfStorage", "F16", 2),
       ("ByteStorage", "U8", 1), ("BoolStorage", "BOOL", 1), ("IntStorage", "I32", 4),
       ("DoubleStorage", "F64", 8), ("BFloat16Storage", "BF16", 2)]


def _shape(rng: random.Random) -> tuple[int, ...]:
    return tuple(rng.randrange(1, 4) for _ in range(rng.randrange(0, 3)))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _contig(shape: tuple[int, ...]) -> tuple[int, ...]:
    st, acc = [], 1
    for s in reversed(shape):
        st.append(acc)
        acc *= s
    return tuple(reversed(st))


def _blob(rng: random.Random, n: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(n)) if rng.random() < 0.5 else bytes(n)


def torch_zip_case(rng: random.Random, i: int) -> Case:
    g = gen()
    items, storages = [], []
    for k in range(rng.randrange(1, 4)):
        cls, _, size = rng.choice(_DT)
        shape = _shape(rng)
        n = _numel(shape)
        key = str(k)
        storages.append((key, _blob(rng, n * size) if cls != "BoolStorage" else bytes(n)))
        items.append((f"layer{k}.weight", g["tensor"](key, cls, n, 0, shape, _contig(shape))))
    pkl = g["state_dict"](items)
    name = rng.choice(["pytorch_model.bin", "model.pt", "x.pth", "last.ckpt", "w.bin"])
    return Case(name, g["torch_zip"](pkl, storages, seed=f"oracle{i}"), "gen:torch-zip")


def legacy_case(rng: random.Random, i: int) -> Case:
    g = gen()
    main = g["state_dict"]([("w", g["rebuild_v2"](g["legacy_storage_pid"]("0")))])
    return Case(rng.choice(["old.pt", "old.bin", "old.pth"]), g["legacy_file"](main),
                "gen:legacy")


def raw_pickle_case(rng: random.Random, i: int) -> Case:
    obj = {f"k{j}": _plain(rng) for j in range(rng.randrange(1, 5))}
    data = pickle.dumps(obj, protocol=rng.randrange(0, 6))
    return Case(rng.choice(["data.pkl", "x.bin", "state.pt", "blob"]), data, "gen:raw-pickle")


def safetensors_bytes(rng: random.Random, meta: dict[str, str] | None = None) -> bytes:
    header: dict[str, Any] = {}
    blobs, off = [], 0
    for k in range(rng.randrange(1, 4)):
        _, dt, size = rng.choice(_DT)
        shape = _shape(rng)
        n = _numel(shape) * size
        blob = bytes(n) if dt == "BOOL" else _blob(rng, n)
        header[f"t{k}"] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        blobs.append(blob)
        off += n
    if meta or rng.random() < 0.5:
        header["__metadata__"] = meta or {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def safetensors_case(rng: random.Random, i: int) -> Case:
    return Case(rng.choice(["model.safetensors", "x.safetensors", "model.bin"]),
                safetensors_bytes(rng), "gen:safetensors")


def _np() -> Any:
    import numpy

    return numpy


def npy_case(rng: random.Random, i: int) -> Case:
    np = _np()
    dt = rng.choice(["<f4", "<i8", "|u1", "<f2", "|b1"])
    shape = _shape(rng)
    a = (np.arange(_numel(shape)) % 3).astype(dt).reshape(shape)
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return Case(rng.choice(["a.npy", "a.bin", "a"]), buf.getvalue(), "gen:npy")


def npz_case(rng: random.Random, i: int) -> Case:
    np = _np()
    arrays = {f"a{k}": np.arange(rng.randrange(1, 6), dtype="<f4") for k in range(2)}
    buf = io.BytesIO()
    (np.savez_compressed if rng.random() < 0.5 else np.savez)(buf, **arrays)
    return Case(rng.choice(["a.npz", "arrays.bin", "a.pt"]), buf.getvalue(), "gen:npz")


_TS: list[bytes] = []


def torchscript_case(rng: random.Random, i: int) -> Case:
    if not _TS:
        # scripted in a child: torch.jit.script in this process would mangle the class
        # names of every later script of the same module (other tests pin those names)
        with tempfile.TemporaryDirectory() as d:
            subprocess.run([sys.executable, "-c", (
                "import os, sys, warnings, torch; warnings.filterwarnings('ignore')\n"
                "for i, m in enumerate((torch.nn.Linear(2, 3), "
                "torch.nn.Sequential(torch.nn.ReLU()))):\n"
                "    torch.jit.save(torch.jit.script(m), f'{sys.argv[1]}/{i}.ts')\n"
                "os._exit(0)\n"), d],   # files written; skip torch's ~0.3 s teardown
                check=True, capture_output=True, timeout=300)
            _TS.extend(p.read_bytes() for p in sorted(Path(d).glob("*.ts")))
    return Case(rng.choice(["model.pt", "scripted.ts", "m.bin"]), rng.choice(_TS),
                "gen:torchscript")


def json_index_case(rng: random.Random, i: int) -> Case:
    """A sharded checkpoint's index json with its shards as siblings: safetensors shards,
    sometimes a torch zip ``.bin`` shard, sometimes a payload pickle shard that only a
    second ``weight_map`` (duplicate key: Python's json keeps the last) or an unlisted
    file names."""
    shard = safetensors_bytes(rng)
    names = [n for n in json.loads(shard[8:8 + struct.unpack("<Q", shard[:8])[0]])
             if n != "__metadata__"]
    sibs = [("model-00001-of-00002.safetensors", shard)]
    wm = {n: sibs[0][0] for n in names}
    if rng.random() < 0.5:
        sibs.append(("pytorch_model-00002-of-00002.bin", torch_zip_case(rng, i).data))
        wm["extra.weight"] = sibs[-1][0]
    text = json.dumps({"metadata": {"total_size": sum(len(d) for _, d in sibs)},
                       "weight_map": wm}, indent=2)
    k = rng.randrange(4)
    if k == 0:             # a payload shard named by a second weight_map (last one wins)
        g = gen()
        evil = ("evil-00002.bin", g["op"].PROTO(2) + _payload(rng) + g["op"].STOP)
        sibs.append(evil)
        second = json.dumps({"x.weight": evil[0], **wm})
        text = text.rstrip().rstrip("}") + f', "weight_map": {second}\n}}'
    elif k == 1:           # a payload pickle beside the index that no weight_map names
        g = gen()
        sibs.append(("pytorch_model-00003-of-00003.bin",
                     g["op"].PROTO(2) + _payload(rng) + g["op"].STOP))
    return Case("model.safetensors.index.json", text.encode(), "gen:json-index",
                tuple(sibs))


FORMATS: dict[str, Callable[[random.Random, int], Case]] = {
    "torch-zip": torch_zip_case, "legacy": legacy_case, "raw-pickle": raw_pickle_case,
    "safetensors": safetensors_case, "npy": npy_case, "npz": npz_case,
    "torchscript": torchscript_case, "json-index": json_index_case,
}


# --- polyglots (structure-aware: one byte string, two readers) --------------------------

def _payload(rng: random.Random) -> bytes:
    g = gen()
    return rng.choice([
        g["call"]("builtins", "exec", g["S"](g["CODE"])),
        g["call"]("posix", "system", g["S"](g["SHELL"])),
        g["call"]("builtins", "open", g["S"](MARKER), g["S"]("w")),
    ])


_JSON_OK = frozenset(range(0x20, 0x7F)) - {0x22, 0x5C}   # raw bytes a JSON string may hold


def safetensors_hop_polyglot(rng: random.Random, i: int) -> Case:
    """A valid safetensors file whose first bytes are also a pickle program: the header
    length's low bytes are SHORT_BINSTRING ('U', h), so a pickle reader skips into a
    metadata string made of further 'U'<h> hops, and the last hop lands on the tensor
    bytes, which hold a complete payload pickle. safetensors reads weights; a pickle reader
    (torch.load of a legacy file, numpy.load, pickle.load) runs the payload."""
    g = gen()
    payload = g["op"].PROTO(2) + _payload(rng) + g["op"].STOP
    pre = b'{"__metadata__":{"p":"'
    post = b'"},"t":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]}}' % (
        len(payload), len(payload))
    hops = sorted(_JSON_OK - set(range(0x20, 0x40)))
    rng.shuffle(hops)
    for h in hops:
        for b2 in (0, 1):
            n = 0x55 | (h << 8) | (b2 << 16)               # header length: b'U', h, b2, 0...
            end = 8 + n                                    # first byte after the header
            meta_start, meta_end = 8 + len(pre), end - len(post)
            if meta_end - meta_start < 4:
                continue
            meta = bytearray(b"a" * (meta_end - meta_start))
            pos = 2 + h                                    # where the first hop lands
            while meta_start <= pos and pos + 1 < meta_end:
                r = end - (pos + 2)
                if r in _JSON_OK:                          # the last hop reaches the data
                    meta[pos - meta_start:pos - meta_start + 2] = bytes([0x55, r])
                    header = pre + bytes(meta) + post
                    assert len(header) == n
                    data = struct.pack("<Q", n) + header + payload
                    name = rng.choice(["model.bin", "model.safetensors", "x.pt", "x",
                                       "x.npy", "x.pkl"])
                    return Case(name, data, "polyglot:safetensors-hop")
                meta[pos - meta_start:pos - meta_start + 2] = bytes([0x55, h])
                pos += 2 + h
    raise AssertionError("no hop layout found")


def pickle_prefix_polyglot(rng: random.Random, i: int) -> Case:
    """A benign-looking file of another format with a payload pickle in front (the zip and
    npz readers find their directory from the end; pickle readers start at byte 0)."""
    fmt = rng.choice(["torch-zip", "npz", "torchscript", "safetensors", "npy"])
    inner = FORMATS[fmt](rng, i)
    g = gen()
    data = g["op"].PROTO(2) + _payload(rng) + g["op"].STOP + inner.data
    return Case(inner.name, data, f"polyglot:pickle-prefix-{fmt}")


def pickle_suffix_polyglot(rng: random.Random, i: int) -> Case:
    """A benign file with a payload pickle after its end."""
    fmt = rng.choice(list(FORMATS))
    inner = FORMATS[fmt](rng, i)
    g = gen()
    data = inner.data + g["op"].PROTO(2) + _payload(rng) + g["op"].STOP
    return Case(inner.name, data, f"polyglot:pickle-suffix-{fmt}", inner.siblings)


def npz_object_member(rng: random.Random, i: int) -> Case:
    """An .npz whose member is an object-dtype .npy: numpy.load unpickles it on access."""
    g = gen()
    inner = g["npy_object"](g["op"].PROTO(3) + g["op"].EMPTY_LIST + _payload(rng)
                            + g["op"].APPEND + g["op"].STOP)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ok.npy", npy_case(rng, i).data)
        z.writestr("evil.npy", inner)
    return Case(rng.choice(["a.npz", "a.bin", "a.pt"]), buf.getvalue(), "polyglot:npz-object")


# --- allowlisted callables with hostile arguments (issue 10 items 2 and 3) -----------------

_INTS = [0, 1, 3, 7, 255, 2**16, 2**20, 2**26, 2**28, 2**30, 2**31 - 1, 2**31, 2**33, 10**10,
         -1, -(2**31)]
_STRS = ["x", "cpu", "meta", "latin1", "torch.sparse_coo", "torch.strided", "float32"]


def _int(v: int) -> bytes:
    g = gen()
    return g["op"].BININT(v) if 0 <= v < 2**31 else g["op"].LONG1(v)


def _allowlisted() -> list[tuple[str, str]]:
    from ckptguard.policy.defaults import ALLOW

    return [(m, n) for m, n, _ in ALLOW]


def _arg(rng: random.Random, depth: int) -> bytes:
    g = gen()
    op = g["op"]
    k = rng.randrange(9 if depth < 2 else 6)
    if k == 0:
        return _int(rng.choice(_INTS))
    if k == 1:
        return g["S"](rng.choice(_STRS) if rng.random() < 0.8 else "a" * rng.randrange(64))
    if k == 2:
        vals = [rng.choice(_INTS) for _ in range(rng.randrange(4))]
        return op.MARK + b"".join(_int(v) for v in vals) + op.TUPLE
    if k == 3:
        return rng.choice([op.NONE, op.NEWTRUE, op.NEWFALSE, op.EMPTY_DICT, op.EMPTY_LIST])
    if k == 4:
        return g["call"]("collections", "OrderedDict")
    if k == 5:
        m, n = rng.choice(_allowlisted())
        return op.GLOBAL(m, n)
    if k == 6:
        return g["tensor"]("0")
    return _allowlisted_call(rng, depth + 1)


def _allowlisted_call(rng: random.Random, depth: int = 0) -> bytes:
    m, n = rng.choice(_allowlisted())
    return gen()["call"](m, n, *(_arg(rng, depth) for _ in range(rng.randrange(5))))


def allowlist_calls(rng: random.Random, i: int) -> Case:
    """A state dict whose extra entry calls allowlisted callables (rebuild helpers,
    torch.Tensor, bytearray, Counter, ...) with hostile arguments: huge sizes, wrong
    types, nested calls. SAFE must still mean: no allocation the file does not back, no
    call the allowlist does not model."""
    g = gen()
    pkl = g["state_dict"]([("w", g["tensor"]()), ("x", _allowlisted_call(rng))])
    if rng.random() < 0.8:
        return Case(rng.choice(["model.pt", "x.bin", "x.ckpt"]),
                    g["torch_zip"](pkl, None, seed=f"calls{i}"), "gen:allowlist-calls")
    return Case(rng.choice(["x.pkl", "x.bin"]), pkl, "gen:allowlist-calls")


def _long_tensor(key: str, vals: list[int], shape: tuple[int, ...]) -> tuple[bytes, bytes]:
    g = gen()
    rec = g["tensor"](key, "LongStorage", len(vals), 0, shape, _contig(shape))
    return rec, struct.pack(f"<{len(vals)}q", *vals)


def sparse_tensors(rng: random.Random, i: int) -> Case:
    """A sparse COO or CSR tensor through torch._utils._rebuild_sparse_tensor whose index
    data is in bounds or (about half the time) points outside its shape: torch loads it
    without checking, and the first use writes out of bounds."""
    g = gen()
    op = g["op"]
    rows, cols = rng.randrange(1, 5), rng.randrange(1, 5)
    nnz = rng.randrange(1, 5)
    bad = rng.random() < 0.5

    def idx(limit: int) -> int:
        if bad and rng.random() < 0.4:
            return rng.choice([limit, limit + 1, -1, 2**40, -(2**40)])
        return rng.randrange(limit)

    storages: list[tuple[str, bytes]] = []
    vals = struct.pack(f"<{nnz}f", *(float(k + 1) for k in range(nnz)))
    values = g["tensor"]("1", "FloatStorage", nnz, 0, (nnz,), (1,))
    if rng.random() < 0.5:
        layout = "torch.sparse_coo"
        ind = [idx(rows) for _ in range(nnz)] + [idx(cols) for _ in range(nnz)]
        ind_rec, ind_blob = _long_tensor("0", ind, (2, nnz))
        data = op.MARK + ind_rec + values + g["call"]("torch", "Size", int_tuple(rows, cols)) \
            + op.TUPLE
        storages = [("0", ind_blob), ("1", vals)]
    else:
        layout = "torch.sparse_csr"
        per_row = [rng.randrange(cols + 1) for _ in range(rows)]   # valid: sorted, distinct
        nnz = max(1, sum(per_row))
        if sum(per_row) == 0:
            per_row[0] = 1
        crow = [0]
        col = []
        for n_r in per_row:
            crow.append(crow[-1] + n_r)
            col += sorted(rng.sample(range(cols), n_r))
        vals = struct.pack(f"<{nnz}f", *(float(k + 1) for k in range(nnz)))
        values = g["tensor"]("1", "FloatStorage", nnz, 0, (nnz,), (1,))
        if bad and rng.random() < 0.5:
            crow[rng.randrange(len(crow))] = rng.choice([nnz + 1, -1, 2**40])
        elif bad:
            col[rng.randrange(nnz)] = idx(cols)
        crow_rec, crow_blob = _long_tensor("0", crow, (rows + 1,))
        col_rec, col_blob = _long_tensor("2", col, (nnz,))
        data = op.MARK + crow_rec + col_rec + values + g["call"](
            "torch", "Size", int_tuple(rows, cols)) + op.TUPLE
        storages = [("0", crow_blob), ("1", vals), ("2", col_blob)]
    sparse = g["call"]("torch._utils", "_rebuild_sparse_tensor",
                       g["call"]("torch.serialization", "_get_layout", g["S"](layout)), data)
    pkl = g["state_dict"]([("s", sparse)])
    return Case(rng.choice(["sparse.pt", "s.bin"]), g["torch_zip"](pkl, storages,
                                                                    seed=f"sparse{i}"),
                "gen:sparse-" + ("bad" if bad else "ok"))


def int_tuple(*vals: int) -> bytes:
    g = gen()
    return g["op"].MARK + b"".join(_int(v) for v in vals) + g["op"].TUPLE


FORMATS["allowlist-calls"] = allowlist_calls
FORMATS["sparse"] = sparse_tensors


def torch_zip_npy_member(rng: random.Random, i: int) -> Case:
    """A torch zip that is also an .npz: one member is an object-dtype .npy whose data
    pickle is a payload -- an extra member torch never reads, an unreferenced tensor
    record, or the very tensor record the state dict's uint8 tensor is built from (its
    bytes are the weights). torch.load is fine; numpy.load(allow_pickle=True) opens the zip
    as an .npz and unpickles that member when it is read."""
    g = gen()
    inner = g["npy_object"](g["op"].PROTO(3) + g["op"].EMPTY_LIST + _payload(rng)
                            + g["op"].APPEND + g["op"].STOP)
    where = rng.choice(["extra", "unreferenced", "tensor"])
    if where == "tensor":
        n = len(inner)
        pkl = g["state_dict"]([("w", g["tensor"]("0", "ByteStorage", n, 0, (n,), (1,)))])
        ents = g["torch_entries"](pkl, [("0", inner)], seed=f"npymember{i}")
    else:
        member = rng.choice(["archive/extra.npy", "archive/x", "archive/a/b.npy"]) \
            if where == "extra" else rng.choice(["archive/data/1", "archive/data/1.npy"])
        ents = g["torch_entries"](g["benign_sd_pkl"](), seed=f"npymember{i}",
                                  extra=[g["ZipEntry"](member, inner)])
    return Case(rng.choice(["model.pt", "x.bin", "x.npz"]), g["build_zip"](ents),
                f"polyglot:torch-zip-npy-member-{where}")


_OBJECT_DESCRS = ["'|O'", "'O'", "'<O'", "'=O'", "'>O'", "'O8'", "'|O8'", "'|O4'", "'object'",
                  "[('a', '|O')]", "[('a', 'O', (1,))]", "[('a', '<f4'), ('b', '|O')]",
                  "('|O', (1,))", "[('a', [('b', '|O')])]", "[(('t', 'a'), '|O')]"]


def npy_object_descr(rng: random.Random, i: int) -> Case:
    """An .npy whose dtype holds an object field under one of its many spellings (plain,
    sized, byte-ordered, structured, nested, subarray, titled): its data is a pickle."""
    g = gen()
    descr = rng.choice(_OBJECT_DESCRS)
    header = "{'descr': " + descr + ", 'fortran_order': False, 'shape': (1,), }"
    header += " " * ((-(11 + len(header))) % 64) + "\n"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + \
        g["op"].PROTO(3) + _payload(rng) + g["op"].STOP
    return Case(rng.choice(["a.npy", "a.bin", "a"]), data, "polyglot:npy-object-descr")


POLYGLOTS: dict[str, Callable[[random.Random, int], Case]] = {
    "safetensors-hop": safetensors_hop_polyglot, "pickle-prefix": pickle_prefix_polyglot,
    "pickle-suffix": pickle_suffix_polyglot, "npz-object": npz_object_member,
    "torch-zip-npy-member": torch_zip_npy_member, "npy-object-descr": npy_object_descr,
}


# --- mutators -------------------------------------------------------------------------------

# Opcode snippets spliced into pickles: the opcode and global tables of
# tests/test_fuzz_properties.py (one source), plus inert globals on both sides of the
# allowlist for STACK_GLOBAL, and text/memo/frame forms.
_MORE_NAMES = [("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict"),
               ("argparse", "Namespace"), ("copy_reg", "_reconstructor"),
               ("builtins", "getattr"), ("fractions", "Fraction"),
               ("torch._tensor", "_rebuild_from_type_v2"), ("_codecs", "encode")]
_TEXT_SNIPPETS = [b"I01\n", b"I1\x00\n", b"L12L\n", b"p0\n", b"g0\n", b"S'x'\n", b"V\\u0041\n",
                  b"F1.5\n", b"I0x10\n", b"\x95\x08\x00\x00\x00\x00\x00\x00\x00",
                  b"X\x03\x00\x00\x00abc", b"\x8c\x01a", b"\x80\x02", b"\x80\x05"]


def _fuzz_tables() -> tuple[dict[bytes, int], list[bytes]]:
    import test_fuzz_properties as tfp

    return tfp._OPS_FIXED, tfp._NAMES


def _snippet(rng: random.Random) -> bytes:
    ops, names = _fuzz_tables()
    k = rng.random()
    if k < 0.15:
        return b"c" + rng.choice(names)
    if k < 0.3:
        m, n = rng.choice(_MORE_NAMES)
        return (b"\x8c" + bytes([len(m)]) + m.encode() + b"\x8c" + bytes([len(n)]) + n.encode()
                + b"\x93")
    if k < 0.45:
        return rng.choice(_TEXT_SNIPPETS)
    op = rng.choice(sorted(ops))
    return op + bytes(rng.randrange(256) for _ in range(ops[op]))


def mutate(data: bytes, rng: random.Random) -> bytes:
    """1-6 byte-level or opcode-level edits: set/delete/insert bytes, boundary values,
    splice an opcode snippet, duplicate or truncate a region."""
    b = bytearray(data)
    for _ in range(rng.randrange(1, 7)):
        if not b:
            b += _snippet(rng)
            continue
        i = rng.randrange(len(b))
        k = rng.randrange(7)
        if k == 0:
            b[i] = rng.randrange(256)
        elif k == 1:
            del b[i:i + rng.randrange(1, 17)]
        elif k == 2:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif k == 3:
            w = rng.choice([1, 2, 4, 8])
            b[i:i + w] = rng.choice([b"\xff" * w, b"\x00" * w, b"\x7f" + b"\xff" * (w - 1)])
        elif k == 4:
            b[i:i] = _snippet(rng)
        elif k == 5:
            j = rng.randrange(i, min(len(b), i + 64) + 1)
            b[j:j] = b[i:j]
        else:
            del b[rng.randrange(len(b) // 2, len(b)):]
    return bytes(b)


def generated(rng: random.Random, n: int) -> Iterator[Case]:
    """``n`` fresh cases per format and per polyglot kind."""
    i = 0
    for _ in range(n):
        for make in (*FORMATS.values(), *POLYGLOTS.values()):
            i += 1
            yield make(rng, i)


def mutated(seeds: list[Case], rng: random.Random, n: int) -> Iterator[Case]:
    for _ in range(n):
        c = rng.choice(seeds)
        name = c.name if rng.random() < 0.7 else _stem(c.name) + rng.choice(EXTENSIONS)
        yield Case(name, mutate(c.data, rng), "mutated:" + c.origin.split(":", 1)[-1],
                   c.siblings)


def corpus(seed: int, *, generated_per_kind: int, mutants: int, renames: int | None,
           folders: tuple[str, ...] = FIXTURE_FOLDERS) -> list[Case]:
    """The oracle's corpus for one seed: fixtures of ``folders`` (own name and ``renames``
    other extensions each, None = all), generated files of every format and polyglot
    kind, and mutants of all of those."""
    rng = random.Random(seed)
    fx = fixture_cases(folders=folders)
    gens = list(generated(rng, generated_per_kind))
    out = fx + renamed(fx, rng, renames) + gens + renamed(gens, rng, 1)
    out += list(mutated(fx + gens, rng, mutants))
    return out
