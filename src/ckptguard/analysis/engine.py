"""The engine: readers + pickle VM + rules -> Report + Verdict.

The engine audits exactly ONE file (folders, indexes and DCP folders are dispatched above
it, in ``scan_api``). ``audit_file`` opens the file once and audits it from that descriptor
(``audit_fd``), so a loader can audit and load through the same inode. Every format
handler runs under one per-stream guard: a ``LimitExceeded`` becomes CKG901 and any
other exception becomes a Problem (CKG902); both make the verdict INCOMPLETE unless
something blocks already.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from .._version import __version__ as _version
from ..context import AuditContext, LimitExceeded, Source, SourceError, identity_of
from ..detect import (
    CODE_BEARING,
    DATA_ONLY_EXTENSIONS,
    DCP_METADATA_RE,
    ZIP_END_RECORD_MAX,
    Reading,
    ends_in_zip_end_record,
    expected_formats,
    extension_of,
    sniff,
    unaudited_readings,
)
from ..model import Format, Report, decide
from ..policy import Limits, Policy
from ..primitives import clip, gc_paused, open_readonly
from .readings import audit_readings  # every file's audit runs it (a first call paid ~0.6 ms)

_HEAD = 4096


def audit_file(path: str, *, policy: Policy, limits: Limits) -> Report:
    """Audit the one file at ``path`` (folders, indexes and DCP checkpoints are dispatched
    above the engine: ``scan_api.scan``)."""
    try:
        fd = open_readonly(path)
    except OSError as e:
        return unreadable_report(path, e.strerror or str(e), limits)
    try:
        return audit_fd(path, fd, policy=policy, limits=limits)
    finally:
        os.close(fd)


def unreadable_report(path: str, reason: str, limits: Limits) -> Report:
    ctx = AuditContext(path, Source.from_bytes(b""), Policy(), limits)
    ctx.add("CKG010", f"cannot read the file: {reason}", evidence={"reason": reason})
    return _finish(ctx, Format.UNKNOWN, None)


def audit_fd(path: str, fd: int, *, policy: Policy, limits: Limits,
             name: str | None = None, graph_out: list[object] | None = None,
             keep_bytes: bool = False) -> Report:
    """Audit the open file ``fd`` (reads with pread; never moves its offset).

    ``graph_out``, when given, receives the fast path's symbolic graph of a proven
    ``data.pkl`` (None otherwise): ``engine="ckptguard"`` materialises it.
    ``keep_bytes``: the report's regions keep the audited bytes (``context.KEEP_BYTES``)
    and compute their SHA-256 only when read (the loader compares the bytes instead)."""
    import stat

    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        kind = _kind_of(st.st_mode)
        ctx = AuditContext(path, Source.from_bytes(b""), policy, limits)
        ctx.add("CKG010", f"not a regular file ({kind}); nothing was read",
                evidence={"kind": kind})
        return _finish(ctx, Format.UNKNOWN, None)
    deadline = time.monotonic() + limits.max_seconds
    src = Source(fd, st.st_size, deadline=deadline, keep=keep_bytes)
    ctx = AuditContext(path, src, policy, limits, keep_graph=graph_out is not None)
    if st.st_nlink > 1:
        # Another path names these bytes (a shard hard-linked from outside the model
        # folder passes every path check). The audit read the bytes themselves, and
        # safe_load re-checks identity, so this is a note, not a block (SECURITY.md).
        ctx.add("CKG706", f"the file has {st.st_nlink} hard links: another path, possibly "
                "outside this folder, names the same bytes",
                evidence={"links": str(st.st_nlink), "inode": str(st.st_ino)})
    fmt = _audit(ctx, name or path)
    if graph_out is not None:
        graph_out.append(ctx.graph)
    return _finish(ctx, fmt, fd)


def audit_bytes(data: bytes, name: str, *, policy: Policy, limits: Limits) -> Report:
    """Audit an in-memory file (the torch.load gate uses this for file-like objects)."""
    return audit_source(name, Source.from_bytes(data), policy=policy, limits=limits)


def audit_source(path: str, src: Source, *, policy: Policy, limits: Limits,
                 name: str | None = None) -> Report:
    """Audit one file read through ``src`` (in memory, or over HTTP ranges); the report
    carries no file identity, since there is no local inode to load from. A deadline the
    source already has (a remote file's, set before its first response) is kept when
    earlier."""
    deadline = time.monotonic() + limits.max_seconds
    src.deadline = deadline if src.deadline is None else min(src.deadline, deadline)
    ctx = AuditContext(path, src, policy, limits)
    fmt = _audit(ctx, name or path)
    return _finish(ctx, fmt, None)


def audit_context(ctx: AuditContext, name: str) -> Format:
    """Audit ``ctx.source`` as one file named ``name`` (formats nest: a .distcp byte range
    or a .pt2 member is audited through a ``SliceSource``); findings go to ``ctx``."""
    return _audit(ctx, name)


def finish_report(ctx: AuditContext, fmt: Format, fd: int | None) -> Report:
    """The Report of a finished audit context (identity read from ``fd`` when given)."""
    return _finish(ctx, fmt, fd)


def _kind_of(mode: int) -> str:
    import stat

    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


Handler = Callable[[AuditContext, str], Format]


def _audit(ctx: AuditContext, name: str) -> Format:
    # One file's audit allocates millions of small objects that form no garbage cycles
    # (VM values, tensor records); the cyclic collector would re-walk them over and over.
    # It is paused for the file and restored after, whatever happens.
    if ctx.audit_file is None:
        ctx.audit_file = _audit  # files inside this one are audited the same way (nested.py)
    with gc_paused():
        return _audit_file(ctx, name)


def _audit_file(ctx: AuditContext, name: str) -> Format:
    fmt = Format.UNKNOWN
    head = b""
    try:
        head = ctx.source.read(0, _HEAD)
        fmt, detail = sniff(head, ctx.source.size)
        if fmt is Format.UNKNOWN and extension_of(name) == ".safetensors":
            fmt = Format.SAFETENSORS  # let the validator name what is wrong with the header
        elif fmt is Format.UNKNOWN and _has_eocd(ctx):
            # a zip with bytes before it (polyglot / prefixed archive): central-directory
            # readers such as Python's zipfile still open it
            fmt = Format.ZIP
        base = name.replace("\\", "/").rsplit("/", 1)[-1]
        if fmt is Format.PICKLE and _dcp_metadata_name(base):
            fmt = _dcp_metadata(ctx)  # FileSystemReader.read_metadata's pickle.load
        elif fmt is Format.ZIP and base.endswith(".distcp"):
            fmt = _dcp_shard_alone(ctx)
        else:
            fmt = _HANDLERS[fmt](ctx, detail)
        zip_audited = fmt in (Format.ZIP, Format.TORCH_ZIP, Format.TORCHSCRIPT,
                              Format.NUMPY_NPZ, Format.TORCH_EXPORT)
        if fmt in (Format.PICKLE, Format.TORCH_LEGACY) and \
                any(f.rule_id in ("CKG203", "CKG004") for f in ctx.findings) and _has_eocd(ctx):
            # A pickle/zip polyglot: torch.load reads the pickle, zip readers the archive.
            # Only possible when the audit found bytes after the stream, so a clean file
            # costs no tail read.
            ctx.add("CKG004", "a zip archive is appended to the pickle stream (polyglot)")
            from .torchfile import audit_zip

            audit_zip(ctx)
            zip_audited = True
        # Every other reader of the same bytes (detect.py's reader table): the readings the
        # format's own audit does not cover are audited too.
        todo = unaudited_readings(fmt, head, name)
        if todo:
            needs_zip = not zip_audited and any(r in todo for r in (Reading.ZIP_MINIZ,
                                                                    Reading.ZIP_PYTHON))
            audit_readings(ctx, fmt, todo, zip_audited=zip_audited,
                           has_eocd=needs_zip and _has_eocd(ctx), head=head)
    except LimitExceeded as e:
        ctx.limit_hit(e)
    except SourceError as e:
        ctx.add(e.rule_id, e.message, evidence=e.evidence)
    except Exception as e:  # noqa: BLE001 - the engine's per-stream guard (DESIGN.md)
        ctx.problem(f"internal error while auditing ({type(e).__name__}: {clip(str(e), 200)})")
    _check_extension(ctx, name, fmt)
    return fmt


def _has_eocd(ctx: AuditContext) -> bool:
    size = ctx.source.size
    if size < 22:
        return False
    n = min(size, ZIP_END_RECORD_MAX)
    return ends_in_zip_end_record(ctx.source.read(size - n, n), size - n, ctx.source.read)


def _check_extension(ctx: AuditContext, name: str, fmt: Format) -> None:
    ext = extension_of(name)
    if not ext:
        return
    if fmt in CODE_BEARING and ext in DATA_ONLY_EXTENSIONS:
        ctx.add("CKG003", f"file named '{ext}' holds a {fmt.value} (code-bearing) payload",
                evidence={"extension": ext, "content": fmt.value})
        return
    expected = expected_formats(name)
    if expected is not None and fmt not in expected and fmt not in (
            Format.EMPTY, Format.UNKNOWN, Format.WRAPPED):
        ctx.add("CKG009", f"file named '{ext}' holds {fmt.value} content",
                evidence={"extension": ext, "content": fmt.value})


def _finish(ctx: AuditContext, fmt: Format, fd: int | None) -> Report:
    findings = tuple(ctx.findings)
    problems = tuple(ctx.problems)
    identity = identity_of(fd, ctx.source.regions()) if fd is not None else None
    return Report(
        path=ctx.path,
        format=fmt,
        verdict=decide(findings, problems),
        findings=findings,
        problems=problems,
        tensors=tuple(ctx.tensors),
        identity=identity,
        members=tuple(ctx.members),
        metadata=tuple(sorted(ctx.metadata.items())),
        bytes_read=ctx.source.bytes_read,
        limits=ctx.limits.as_items(),
        tool_version=_version,
    )


# --- format handlers ---------------------------------------------------------------------

def _empty(ctx: AuditContext, detail: str) -> Format:
    ctx.add("CKG006", "the file is empty")
    return Format.EMPTY


def _unknown(ctx: AuditContext, detail: str) -> Format:
    ctx.add("CKG001", "content matches no supported checkpoint format")
    return Format.UNKNOWN


def _wrapped(ctx: AuditContext, detail: str) -> Format:
    ctx.add("CKG002", f"the file is a {detail} wrapper; ckptguard does not open wrappers, so "
            "the checkpoint inside is not audited", evidence={"wrapper": detail})
    return Format.WRAPPED


def _zip(ctx: AuditContext, detail: str) -> Format:
    from .torchfile import audit_zip

    return audit_zip(ctx)


def _pickle(ctx: AuditContext, detail: str) -> Format:
    from .torchfile import audit_raw_pickle

    return audit_raw_pickle(ctx)


def _legacy(ctx: AuditContext, detail: str) -> Format:
    from .torchfile import audit_legacy

    return audit_legacy(ctx)


def _legacy_tar(ctx: AuditContext, detail: str) -> Format:
    from .torchfile import audit_legacy_tar

    return audit_legacy_tar(ctx)


def _safetensors(ctx: AuditContext, detail: str) -> Format:
    from .safetensors import audit_safetensors

    audit_safetensors(ctx)
    return Format.SAFETENSORS


def _npy(ctx: AuditContext, detail: str) -> Format:
    from .numpy import audit_npy

    audit_npy(ctx)
    return Format.NUMPY_NPY


def _json(ctx: AuditContext, detail: str) -> Format:
    from .jsonfile import audit_json

    audit_json(ctx)
    return Format.JSON


def _dcp_metadata_name(base: str) -> bool:
    return DCP_METADATA_RE.match(base) is not None


def _dcp_metadata(ctx: AuditContext) -> Format:
    from .dcp import audit_metadata

    audit_metadata(ctx)
    return Format.PICKLE


def _dcp_shard_alone(ctx: AuditContext) -> Format:
    ctx.add("CKG809", "a torch.distributed.checkpoint shard scanned on its own: the byte "
            "ranges torch reads are named by the folder's .metadata; scan the folder")
    return Format.DCP_SHARD


_HANDLERS: dict[Format, Handler] = {
    Format.EMPTY: _empty,
    Format.UNKNOWN: _unknown,
    Format.WRAPPED: _wrapped,
    Format.ZIP: _zip,
    Format.PICKLE: _pickle,
    Format.TORCH_LEGACY: _legacy,
    Format.TORCH_LEGACY_TAR: _legacy_tar,
    Format.SAFETENSORS: _safetensors,
    Format.NUMPY_NPY: _npy,
    Format.JSON: _json,
}

__all__ = ["audit_bytes", "audit_context", "audit_fd", "audit_file", "audit_source",
           "finish_report", "unreadable_report"]
