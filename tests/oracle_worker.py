"""One long-lived loader process of the differential oracle (see tests/oracle_harness.py).

    python tests/oracle_worker.py KIND

KIND is one loader (``pickle``, ``numpy``, ``torch_wo``, ``torch_full``, ``safetensors``,
``jit``, or ``ckptguard``: ``ckptguard.safe_load`` itself). The worker imports what the loader needs, warms the loader up on benign files it
writes itself (so lazy imports happen before anything is watched), installs a CPython audit
hook, then answers one JSON request per line::

    {"path": "/abs/file", "cwd": "/abs/dir"}   ->   {"ok": bool, "error": str,
                                                     "globals": [[module, name], ...],
                                                     "events": [[event, detail], ...]}

The request and reply travel over private duplicates of stdin/stdout; fds 0 and 1 point at
/dev/null while a file loads, so a payload can neither read requests nor forge replies.
A loader runs with the working directory set to the request's ``cwd`` (the inert payloads
create their marker there). RLIMIT_AS caps the address space; the parent enforces a
per-file timeout and restarts a worker that died or hung.

Only plain Python here: this file runs hostile programs; it imports ckptguard only in the
``ckptguard`` kind (whose loader is safe_load).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import warnings

KIND = sys.argv[1]
EXTRA_AS = int(os.environ.get("CKG_ORACLE_AS_MB", "1024")) * 1024 * 1024
#: peak RSS growth during one load that counts as an allocation event
ALLOC_EVENT = int(os.environ.get("CKG_ORACLE_ALLOC_MB", "256")) * 1024 * 1024

# Events that mean "code other than the loader ran, or the file system / network / process
# table was touched". ``exec``/``compile``/``import`` raised by the import machinery itself
# (a module imported while resolving a global) are not payloads: the resolved global
# (``pickle.find_class``) is what the oracle checks for those.
PAYLOAD_EXACT = {
    "exec", "compile", "os.system", "subprocess.Popen", "pty.spawn", "os.startfile",
    "os.fork", "os.forkpty", "os.posix_spawn", "os.kill", "os.killpg", "os.remove",
    "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink", "os.link",
    "os.truncate", "os.putenv", "os.unsetenv", "os.chdir", "os.utime", "shutil.rmtree",
    "shutil.copyfile", "shutil.move", "shutil.make_archive", "shutil.unpack_archive",
    "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
    "urllib.Request", "http.client.connect", "webbrowser.open", "builtins.input",
    "code.__new__", "function.__new__", "marshal.loads", "marshal.load", "ctypes.dlopen",
    "ctypes.dlsym", "ctypes.call_function", "ctypes.string_at", "ctypes.PyObj_FromPtr",
    "sys.settrace", "sys.setprofile", "cpython.run_command",
    "cpython.run_file", "cpython.run_module", "cpython.run_startup", "sys.addaudithook",
    "tempfile.mkstemp", "tempfile.mkdtemp",
}
PAYLOAD_PREFIX = ("os.exec", "os.spawn", "os.posix_spawn", "ctypes.", "winreg.", "_winapi.")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

_state = {"armed": False}
_globals: list[list[str]] = []
_events: list[list[str]] = []


def _benign_origin(event: str) -> bool:
    """An event raised inside the import machinery (a module imported while a global is
    resolved: importing torch for ``torch._utils._rebuild_tensor_v2`` dlopens, lists
    folders, execs module code), or a compile to an AST only (``ast.parse`` /
    ``ast.literal_eval``: numpy reads .npy headers that way). Neither runs code of the
    file; the global that caused an import is checked through ``pickle.find_class``."""
    f = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename
        if fn.startswith("<frozen importlib"):
            return True
        if event == "compile" and f.f_code.co_name == "parse" and fn.endswith("ast.py"):
            return True
        f = f.f_back
    return False


def _short(x: object) -> str:
    try:
        s = repr(x)
    except BaseException:
        s = f"<{type(x).__name__}>"
    return s[:200]


def _hook(event: str, args: tuple[object, ...]) -> None:
    if not _state["armed"]:
        return
    _state["armed"] = False           # no recursion while recording
    try:
        if event == "pickle.find_class":
            _globals.append([str(args[0]), str(args[1])])
        elif event == "open":
            path, mode, flags = ((*tuple(args), None, None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS != 0)
            if writing and not _benign_origin(event):
                _events.append(["open-write", _short(path)])
        elif (event in PAYLOAD_EXACT or event.startswith(PAYLOAD_PREFIX)) and \
                not _benign_origin(event):
            _events.append([event, _short(args[:2])])
    finally:
        _state["armed"] = True


# --------------------------------------------------------------------------------- loaders

def _load_pickle(path: str) -> None:
    import pickle

    with open(path, "rb") as fh:          # a reader that loops, like torch's legacy format
        for _ in range(64):
            try:
                pickle.load(fh)
            except EOFError:
                return


def _load_numpy(path: str) -> None:
    import numpy

    obj = numpy.load(path, allow_pickle=True)
    if hasattr(obj, "files"):             # .npz: a user reads every member
        with obj:
            for k in obj.files:
                obj[k]


def _check_tensors(obj: object) -> None:
    """What a user does next: use the tensors. Sparse tensors are checked against the
    invariants torch skips at load (indices inside the shape, ordered compressed indices):
    a violation writes out of bounds on first use, so it is an event here."""
    seen: set[int] = set()
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, torch.Tensor):
            _check_tensor(o)
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)


def _check_tensor(t: torch.Tensor) -> None:
    try:
        if t.layout == torch.sparse_coo:
            torch._validate_sparse_coo_tensor_args(t._indices(), t._values(), t.size())
        elif t.layout in (torch.sparse_csr, torch.sparse_bsr):
            torch._validate_sparse_compressed_tensor_args(
                t.crow_indices(), t.col_indices(), t.values(), t.size(), t.layout)
        elif t.layout in (torch.sparse_csc, torch.sparse_bsc):
            torch._validate_sparse_compressed_tensor_args(
                t.ccol_indices(), t.row_indices(), t.values(), t.size(), t.layout)
    except RuntimeError as e:
        _events.append(["sparse-invariant", str(e)[:200]])


def _shards(path: str) -> list[str]:
    """A sharded checkpoint's index json read the way transformers reads it (Python's
    json: the last of duplicate keys wins): the shard files, in order."""
    with open(path, encoding="utf-8") as fh:
        index = json.load(fh)
    folder = os.path.dirname(path)
    return [os.path.join(folder, s) for s in dict.fromkeys(index["weight_map"].values())]


def _torch_load(path: str, weights_only: bool) -> None:
    if path.endswith(".safetensors"):
        # torch.load hands a PATH ending in .safetensors to safetensors; the same bytes as
        # an open file go through its own readers (tar, then pickle): both are loads
        try:
            with open(path, "rb") as fh:
                _check_tensors(torch.load(fh, weights_only=weights_only, map_location="cpu"))
        finally:
            _check_tensors(torch.load(path, weights_only=weights_only, map_location="cpu"))
        return
    if not path.endswith(".index.json"):
        _check_tensors(torch.load(path, weights_only=weights_only, map_location="cpu"))
        return
    from safetensors.torch import load_file

    for shard in _shards(path):
        if shard.endswith(".safetensors"):
            load_file(shard)
        else:
            _check_tensors(torch.load(shard, weights_only=weights_only, map_location="cpu"))


def _load_torch_wo(path: str) -> None:
    _torch_load(path, True)


def _load_torch_full(path: str) -> None:
    _torch_load(path, False)


def _load_safetensors(path: str) -> None:
    from safetensors.torch import load_file

    load_file(path)


def _load_jit(path: str) -> None:
    torch.jit.load(path, map_location="cpu")


def _load_export(path: str) -> None:
    torch.export.load(path)


def _load_export_call(path: str) -> None:
    ep = torch.export.load(path)
    ep.module()(*ep.example_inputs[0])


def _load_ckptguard(path: str) -> None:
    import ckptguard

    _check_tensors(ckptguard.safe_load(path, map_location="cpu"))


LOADERS = {"ckptguard": _load_ckptguard, "pickle": _load_pickle, "numpy": _load_numpy,
           "torch_wo": _load_torch_wo, "torch_full": _load_torch_full,
           "safetensors": _load_safetensors, "jit": _load_jit, "export": _load_export,
           "export_call": _load_export_call}
LOAD = LOADERS[KIND]

if KIND in ("torch_wo", "torch_full", "safetensors", "jit", "ckptguard", "export",
            "export_call"):
    import torch
if KIND == "numpy":
    import numpy  # noqa: F401


def _warm_up() -> None:
    """Run the loader once on each benign format it may meet, so that imports it does
    lazily happen now and not while a hostile file is watched."""
    import pickle

    import numpy as np

    d = tempfile.mkdtemp(prefix="ckg-oracle-warm-")
    files = []
    p = os.path.join(d, "x.pkl")
    with open(p, "wb") as fh:
        pickle.dump({"a": [1, 2.0, "s", b"b", (None, True)], "c": {1, 2}}, fh, protocol=2)
    files.append(p)
    p = os.path.join(d, "x.npy")
    np.save(p, np.arange(6, dtype=np.float32))
    files.append(p)
    p = os.path.join(d, "x.npz")
    np.savez(p, a=np.zeros(3), b=np.array([{"k": 1}], dtype=object))
    files.append(p)
    try:
        if KIND in ("pickle", "numpy"):    # never import torch where the loader does not
            raise ImportError
        import torch as t

        sd = {"w": t.arange(6, dtype=t.float32).reshape(2, 3), "n": t.tensor(3)}
        p = os.path.join(d, "x.pt")
        t.save(sd, p)
        files.append(p)
        p = os.path.join(d, "legacy.pt")
        t.save(sd, p, _use_new_zipfile_serialization=False)
        files.append(p)
        from safetensors.torch import save_file

        p = os.path.join(d, "x.safetensors")
        save_file({"w": sd["w"]}, p)
        files.append(p)
        p = os.path.join(d, "x.ts")
        t.jit.save(t.jit.script(t.nn.Linear(2, 2)), p)
        files.append(p)
    except ImportError:
        pass
    for f in files:
        try:
            LOAD(f)
        except BaseException:
            continue


def main() -> None:
    warnings.filterwarnings("ignore")
    proto_in = os.fdopen(os.dup(0), "r", encoding="utf-8")
    proto_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    _warm_up()
    home = os.getcwd()
    with open("/proc/self/status", encoding="ascii") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + EXTRA_AS, resource.RLIM_INFINITY))
    sys.addaudithook(_hook)
    proto_out.write(json.dumps({"ready": KIND}) + "\n")
    proto_out.flush()
    for line in proto_in:
        req = json.loads(line)
        _globals.clear()
        _events.clear()
        ok, error = True, ""
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        try:
            os.chdir(req["cwd"])
            _state["armed"] = True
            LOAD(req["path"])
        except MemoryError as e:
            ok, error = False, f"MemoryError: {e}"[:300]
        except BaseException as e:
            ok, error = False, f"{type(e).__name__}: {e}"[:300]
        finally:
            _state["armed"] = False
            os.chdir(home)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak
        if grown > ALLOC_EVENT:
            _events.append(["alloc", f"peak RSS grew by {grown >> 20} MiB"])
        proto_out.write(json.dumps({"ok": ok, "error": error, "globals": _globals,
                                    "events": _events}) + "\n")
        proto_out.flush()


if __name__ == "__main__":
    main()
