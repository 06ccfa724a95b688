"""A torch.distributed.checkpoint folder audited as one checkpoint (see ``dcp.py`` for the
format): every ``.metadata`` file, then every ``.distcp`` file and byte range they name,
each range audited with the full engine as a file of its own (``nested.audit_range``).
Dispatched above the one-file engine, like model folders and sharded indexes.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import replace

from ..context import AuditContext, LimitExceeded, Source
from ..model import Format, Report, TensorInfo
from ..policy import Limits, Policy
from ..primitives import escape, open_readonly
from .dcp import METADATA_RE, SHARD_SUFFIX, DcpMetadata, Key, StorageEntry, audit_metadata
from .engine import audit_context, finish_report, unreadable_report
from .nested import audit_range
from .paths import allowed_roots

# --- the folder --------------------------------------------------------------------------

def audit_dcp(path: str, *, policy: Policy, limits: Limits) -> Report:
    """Audit a DCP folder: every metadata file, every file and range it names."""
    top = AuditContext(path, Source.from_bytes(b""), policy, limits)
    children: dict[str, Report] = {}
    tensors: list[TensorInfo] = []
    try:
        names = _list(top, path)
    except OSError as e:
        return unreadable_report(path, e.strerror or str(e), limits)
    entries: dict[str, list[StorageEntry]] = {}
    metas: list[DcpMetadata] = []
    for name in names:
        if not METADATA_RE.match(name):
            continue
        report, md = _audit_metadata(os.path.join(path, name), policy=policy, limits=limits)
        children[name] = report
        if md is not None:
            metas.append(md)
            for se in md.entries.values():
                entries.setdefault(se.relative_path, []).append(se)
    shapes = _expected_shapes(top, metas)
    roots = allowed_roots(path)  # the folder, and a HF cache snapshot's blob store
    for rel in sorted(entries):
        shown = escape(rel, 200)
        if not _plain(rel):
            top.add("CKG803", f"a storage entry names '{shown}', which is not a plain file name "
                    "in the checkpoint folder: FileSystemReader would open that path",
                    evidence={"relative_path": shown})
            continue
        full = os.path.join(path, rel)
        if os.path.islink(full) and not _inside(os.path.realpath(full), roots):
            top.add("CKG803", f"'{shown}' is a link to a file outside the checkpoint folder",
                    evidence={"relative_path": shown,
                              "target": escape(os.path.realpath(full), 300)})
            continue
        if not os.path.isfile(full):
            top.add("CKG804", f"'{shown}', named by {len(entries[rel])} storage entr"
                    f"{'y' if len(entries[rel]) == 1 else 'ies'}, is missing",
                    evidence={"relative_path": shown})
            continue
        report = _audit_shard(full, entries[rel], shapes, policy=policy, limits=limits)
        children[rel] = report
        tensors.extend(report.tensors)
    for name in names:
        if name.endswith(SHARD_SUFFIX) and name not in entries:
            top.add("CKG807", f"'{escape(name, 200)}' is named by no storage entry: torch never "
                    "reads it", member=name)
    if not any(METADATA_RE.match(n) for n in names):
        top.add("CKG802", "the folder has no .metadata file")
    kids = tuple(children[k] for k in sorted(children))
    metadata = {"dcp.metadata_files": str(sum(1 for n in names if METADATA_RE.match(n))),
                "dcp.storage_files": str(len(entries)),
                "dcp.storage_entries": str(sum(len(v) for v in entries.values()))}
    return top.parent_report(Format.DCP_CHECKPOINT, kids, metadata=metadata,
                             tensors=tuple(tensors))


def _list(ctx: AuditContext, path: str) -> list[str]:
    out: list[str] = []
    with os.scandir(path) as it:
        for entry in it:
            out.append(entry.name)
            if len(out) > ctx.limits.max_files:
                ctx.limit_hit(LimitExceeded("max_files", ctx.limits.max_files,
                                            "files in the checkpoint folder"))
                break
    return sorted(out)


def _plain(name: str) -> bool:
    return (bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
            and "\x00" not in name and name.isprintable() and not os.path.isabs(name)
            and ":" not in name)


def _inside(path: str, roots: list[str]) -> bool:
    return any(path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _open_regular(path: str) -> tuple[int, os.stat_result] | str:
    try:
        fd = open_readonly(path)
    except OSError as e:
        return e.strerror or str(e)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return "not a regular file"
    return fd, st


# --- .metadata -----------------------------------------------------------------------------

def _audit_metadata(path: str, *, policy: Policy,
                    limits: Limits) -> tuple[Report, DcpMetadata | None]:
    opened = _open_regular(path)
    if isinstance(opened, str):
        return unreadable_report(path, opened, limits), None
    fd, st = opened
    try:
        src = Source(fd, st.st_size, deadline=time.monotonic() + limits.max_seconds)
        ctx = AuditContext(path, src, policy, limits)
        md: DcpMetadata | None = None
        try:
            md = audit_metadata(ctx)
        except LimitExceeded as e:
            ctx.limit_hit(e)
        except Exception as e:  # noqa: BLE001 - the per-stream guard (DESIGN.md)
            ctx.problem(f"internal error while auditing ({type(e).__name__})")
        return finish_report(ctx, Format.PICKLE, fd), md
    finally:
        os.close(fd)


def _expected_shapes(ctx: AuditContext, metas: list[DcpMetadata]) -> dict[Key, tuple[str, str,
                                                                              tuple[int, ...]]]:
    """Key -> ("tensor", dtype, chunk sizes) or ("bytes", "", ()); CKG808 for the
    chunks and items that have no storage entry (and CKG807 for entries no item reads)."""
    out: dict[Key, tuple[str, str, tuple[int, ...]]] = {}
    for md in metas:
        for fqn, (dtype, size, chunks) in md.tensors.items():
            for offsets, sizes in chunks:
                if len(offsets) != len(size) or len(sizes) != len(size) or any(
                        o + s > g for o, s, g in zip(offsets, sizes, size, strict=True)):
                    ctx.add("CKG808", f"a chunk of '{escape(fqn, 200)}' lies outside the "
                            f"tensor's size {size}", evidence={"fqn": escape(fqn, 200)})
                key: Key = (fqn, offsets)
                out[key] = ("tensor", dtype, sizes)
                if key not in md.entries:
                    ctx.add("CKG808", f"chunk {offsets} of '{escape(fqn, 200)}' has no storage "
                            "entry (torch fails to load it)", evidence={"fqn": escape(fqn, 200)})
        for fqn in md.byte_items:
            out[(fqn, None)] = ("bytes", "", ())
            if (fqn, None) not in md.entries:
                ctx.add("CKG808", f"item '{escape(fqn, 200)}' has no storage entry",
                        evidence={"fqn": escape(fqn, 200)})
        for ekey in md.entries:
            if ekey not in out:
                ctx.add("CKG807", f"storage entry {_label(ekey)} is read by no item of the "
                        "metadata", evidence={"fqn": escape(ekey[0], 200)})
    return out


def _label(key: Key) -> str:
    fqn, off = key
    return escape(fqn, 200) if off is None else f"{escape(fqn, 200)}{list(off)}"


# --- .distcp ---------------------------------------------------------------------------------

def _audit_shard(path: str, entries: list[StorageEntry],
                 shapes: dict[Key, tuple[str, str, tuple[int, ...]]], *,
                 policy: Policy, limits: Limits) -> Report:
    opened = _open_regular(path)
    if isinstance(opened, str):
        return unreadable_report(path, opened, limits)
    fd, st = opened
    try:
        src = Source(fd, st.st_size, deadline=time.monotonic() + limits.max_seconds)
        ctx = AuditContext(path, src, policy, limits, audit_file=audit_context)
        try:
            _check_shard(ctx, entries, shapes)
        except LimitExceeded as e:
            ctx.limit_hit(e)
        except Exception as e:  # noqa: BLE001 - the per-stream guard (DESIGN.md)
            ctx.problem(f"internal error while auditing ({type(e).__name__})")
        ctx.metadata["dcp.entries"] = str(len(entries))
        return finish_report(ctx, Format.DCP_SHARD, fd)
    finally:
        os.close(fd)


def _check_shard(ctx: AuditContext, entries: list[StorageEntry],
                 shapes: dict[Key, tuple[str, str, tuple[int, ...]]]) -> None:
    size = ctx.source.size
    covered: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for e in sorted(entries, key=lambda e: (e.offset, e.length, e.key[0])):
        label = _label(e.key)
        if e.offset < 0 or e.length < 0 or e.offset + e.length > size:
            ctx.add("CKG804", f"{label}: bytes {e.offset}..{e.offset + e.length} do not lie "
                    f"inside the {size}-byte file", member=label,
                    evidence={"offset": str(e.offset), "length": str(e.length)})
            continue
        covered.append((e.offset, e.offset + e.length))
        if e.transforms:
            ctx.add("CKG805", f"{label} is stored through {', '.join(e.transforms)[:200]}; its "
                    "payload is not audited", member=label, offset=e.offset)
            continue
        if (e.offset, e.length) in seen:
            continue  # the same bytes, already audited
        seen.add((e.offset, e.length))
        result = audit_range(ctx, e.offset, e.length, label)
        if result.format is not Format.TORCH_ZIP:
            ctx.add("CKG806", f"{label} holds {result.format.value} content, not the "
                    "torch.save archive dcp.save writes", member=label, offset=e.offset)
            continue
        expect = shapes.get(e.key)
        if expect is None or expect[0] != "tensor" or not result.complete:
            continue
        _, dtype, sizes = expect
        roots = [t for t in result.tensors if t.name in ("", "<root>")] or list(result.tensors)
        if len(roots) != 1 or roots[0].dtype != dtype or tuple(roots[0].shape) != sizes:
            got = ", ".join(f"{t.dtype}{list(t.shape)}" for t in roots[:3]) or "no tensor"
            ctx.add("CKG808", f"{label} stores {got}; the metadata describes {dtype}"
                    f"{list(sizes)}", member=label, offset=e.offset)
            continue
        ctx.tensors.append(replace(roots[0], name=e.key[0] if e.key[1] is None or
                                   not any(e.key[1]) else label, file=None))
    pos = 0
    for start, end in sorted(covered):
        if start > pos:
            ctx.add("CKG807", f"bytes {pos}..{start} are named by no storage entry",
                    offset=pos)
        pos = max(pos, end)
    if pos < size:
        ctx.add("CKG807", f"bytes {pos}..{size} are named by no storage entry", offset=pos)


__all__ = ["audit_dcp"]
