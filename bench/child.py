"""One measurement in a fresh process: ``python child.py TOOL FILE [--touch]``.

Stdlib only at the top: it runs under each peer's own venv. Phases, timed with
perf_counter from the first line of this file (so interpreter start is excluded):
``imp`` (import the tool), ``op`` (the scan or load), ``t_touch`` (read every tensor byte,
load tools with --touch only). Bytes read come from /proc/self/io (``rchar``: every byte
returned by read()/pread(), page cache hits included; mmap page faults are not counted)
taken around ``op``. Peak RSS is getrusage(RUSAGE_SELF).ru_maxrss at exit. The result is
one JSON object written to the file named by $BENCH_RESULT; the tool's own stdout/stderr
go to /dev/null.
"""

import os
import sys
import time

T0 = time.perf_counter()


def _io() -> dict:
    try:
        with open("/proc/self/io") as f:
            return {k: int(v) for k, v in (ln.split(":") for ln in f if ":" in ln)}
    except OSError:
        return {}


def _silence() -> None:
    dn = os.open(os.devnull, os.O_WRONLY)
    os.dup2(dn, 1)
    os.dup2(dn, 2)


def _call_cli(fn, argv):
    """Run a console-script main in-process; return its exit code."""
    sys.argv = argv
    try:
        r = fn()
    except SystemExit as e:
        r = e.code
    return r if isinstance(r, int) or r is None else 1


def _tensors(obj):
    """Yield every tensor in a (possibly nested) state dict."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _touch(obj) -> int:
    import torch

    n = 0
    for t in _tensors(obj):
        if t.device.type == "meta":
            continue
        # reading every element reads every byte (mmap'd pages are faulted in)
        if t.numel():
            t.sum(dtype=torch.float32) if t.is_floating_point() else t.sum()
        n += t.numel() * t.element_size()
    return n


# ---------------------------------------------------------------- tools
# each: prep() -> ctx (imports only), op(ctx, path) -> (result summary, loaded object|None)


def ckptguard_cli_prep():
    from ckptguard.cli import main

    return main


def ckptguard_cli_op(main, path):
    rc = _call_cli(main, ["ckptguard", "scan", path, "--format", "json"])
    return {"rc": rc, "safe": rc == 0}, None


def ckptguard_lib_prep():
    import ckptguard

    return ckptguard


def ckptguard_lib_op(cg, path):
    r = cg.scan(path)
    v = getattr(r.verdict, "name", str(r.verdict))
    return {
        "verdict": v,
        "safe": v == "SAFE",
        "tensors": len(getattr(r, "tensors", ()) or ()),
    }, None


def picklescan_prep():
    from picklescan.scanner import scan_file_path

    return scan_file_path


def picklescan_op(fn, path):
    r = fn(path)
    return {
        "scanned": r.scanned_files,
        "issues": r.issues_count,
        "infected": r.infected_files,
        "errors": getattr(r, "scan_err", None),
        "safe": r.issues_count == 0 and not getattr(r, "scan_err", False),
    }, None


def modelscan_prep():
    from modelscan.cli import main

    return main


def modelscan_op(main, path):
    rc = _call_cli(main, ["modelscan", "-p", path])
    return {"rc": rc, "safe": rc == 0}, None


def modelaudit_prep():
    from modelaudit.__main__ import _run

    return _run


def modelaudit_op(run, path):
    # JSON to stdout (/dev/null here): modelaudit refuses ``-o /dev/null`` (exit 2)
    rc = _call_cli(run, ["modelaudit", "scan", path, "--no-cache", "-f", "json"])
    return {"rc": rc, "safe": rc == 0}, None


def fickling_prep():
    import zipfile

    import fickling

    return fickling, zipfile


def fickling_op(ctx, path):
    fickling, zipfile = ctx
    if zipfile.is_zipfile(path):
        res = fickling.scan_zip_archive(path)
        return {
            "members": len(res),
            "safe": all(bool(r) for r in res.values()),
            "severity": max((r.severity.name for r in res.values()), default=""),
        }, None
    r = fickling.scan_file(path)
    return {"safe": bool(r), "severity": r.severity.name}, None


def unsafe_globals_prep():
    import torch.serialization

    return torch.serialization


def unsafe_globals_op(ser, path):
    g = ser.get_unsafe_globals_in_checkpoint(path)
    return {"unsafe_globals": len(g), "safe": not g}, None


def safe_load_prep():
    import ckptguard
    import ckptguard.analysis.engine  # the auditors (imported lazily by the first call),
    import ckptguard.analysis.torchfile  # like torch's modules in torch_prep: not in the op
    import ckptguard.loaders  # imports torch: keep it out of the op
    import ckptguard.loaders.direct
    import ckptguard.readers.safetensors

    return ckptguard


def safe_load_op(cg, path):
    sd = cg.safe_load(path)
    return {"n": len(sd)}, sd


def safe_load_engine_op(cg, path):
    sd = cg.safe_load(path, engine="ckptguard")
    return {"n": len(sd)}, sd


def safe_load_meta_op(cg, path):
    sd = cg.safe_load(path, map_location="meta")
    return {"n": len(sd)}, sd


def torch_prep():
    import torch

    return torch


def torch_load_op(torch, path):
    sd = torch.load(path, weights_only=True, map_location="cpu")
    return {"n": len(sd)}, sd


def torch_load_meta_op(torch, path):
    sd = torch.load(path, weights_only=True, map_location="meta")
    return {"n": len(sd)}, sd


def torch_load_mmap_op(torch, path):
    sd = torch.load(path, weights_only=True, mmap=True, map_location="cpu")
    return {"n": len(sd)}, sd


def torch_offsets_prep():
    """torch with ``config.load.calculate_storage_offsets`` on (what safe_load sets where
    the audit proved torch's computed offsets exact): the fastest plain torch.load(mmap)."""
    import torch
    from torch.utils.serialization import config

    config.load.calculate_storage_offsets = True
    return torch


def st_prep():
    import safetensors
    import safetensors.torch
    import torch  # noqa: F401

    return safetensors


def load_file_op(st, path):
    sd = st.torch.load_file(path)
    return {"n": len(sd)}, sd


def st_header_prep():
    import safetensors

    return safetensors


def st_header_op(st, path):
    # safetensors' own header parse (no torch, no tensor bytes): names, dtypes, shapes
    with st.safe_open(path, framework="numpy") as f:
        n = len(f.keys())
        f.metadata()
    return {"n": n, "safe": True}, None


def safe_open_op(st, path):
    with st.safe_open(path, framework="pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return {"n": len(sd)}, sd


def transformers_prep():
    from transformers.modeling_utils import load_state_dict

    return load_state_dict


def transformers_op(fn, path):
    sd = fn(path)
    return {"n": len(sd)}, sd


TOOLS = {
    "ckptguard": (ckptguard_cli_prep, ckptguard_cli_op),
    "ckptguard.scan": (ckptguard_lib_prep, ckptguard_lib_op),
    "picklescan": (picklescan_prep, picklescan_op),
    "modelscan": (modelscan_prep, modelscan_op),
    "modelaudit": (modelaudit_prep, modelaudit_op),
    "fickling": (fickling_prep, fickling_op),
    "torch.unsafe_globals": (unsafe_globals_prep, unsafe_globals_op),
    "safe_load": (safe_load_prep, safe_load_op),
    "safe_load(meta)": (safe_load_prep, safe_load_meta_op),
    "safe_load(engine=ckptguard)": (safe_load_prep, safe_load_engine_op),
    "torch.load(meta)": (torch_prep, torch_load_meta_op),
    "safetensors.header": (st_header_prep, st_header_op),
    "torch.load": (torch_prep, torch_load_op),
    "torch.load(mmap)": (torch_prep, torch_load_mmap_op),
    "torch.load(mmap,offsets)": (torch_offsets_prep, torch_load_mmap_op),
    "load_file": (st_prep, load_file_op),
    "safe_open": (st_prep, safe_open_op),
    "transformers": (transformers_prep, transformers_op),
}


def main() -> None:
    import json
    import resource

    tool, path = sys.argv[1], sys.argv[2]
    touch = "--touch" in sys.argv[3:]
    out = os.environ["BENCH_RESULT"]
    _silence()
    prep, op = TOOLS[tool]
    res: dict = {"tool": tool, "file": path}
    try:
        ctx = prep()
        if touch:  # first reduction pays torch's one-off kernel/thread-pool set-up: not timed
            import torch

            torch.ones(8).sum()
        t1 = time.perf_counter()
        io0 = _io()
        summary, obj = op(ctx, path)
        t2 = time.perf_counter()
        io1 = _io()
        res.update(summary)
        t3 = t2
        if touch and obj is not None:
            res["touched_bytes"] = _touch(obj)
            t3 = time.perf_counter()
        res.update(
            ok=True,
            imp=t1 - T0,
            op=t2 - t1,
            t_touch=t3 - t2,
            inproc=t3 - T0,
            rchar=io1.get("rchar", 0) - io0.get("rchar", 0),
            read_bytes=io1.get("read_bytes", 0) - io0.get("read_bytes", 0),
        )
    except BaseException as e:  # a peer failing on a file is a result, not a crash
        res.update(ok=False, error=f"{type(e).__name__}: {str(e)[:300]}")
    res["torch_imported"] = "torch" in sys.modules
    res["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(out, "w") as f:
        json.dump(res, f)
    # normal exit: interpreter teardown is part of the whole-process wall, as for a CLI


if __name__ == "__main__":
    main()
