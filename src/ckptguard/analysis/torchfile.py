"""Torch checkpoint audits: zip archives (torch.save default), TorchScript archives, legacy
(pre-zip) streams, legacy tar files, and plain pickles.

Record selection follows torch's reader (caffe2/serialize/inline_container.cc): the
archive's folder is the first member's name up to its first '/', and records are looked up
as ``<folder>/<record>`` with miniz's case-insensitive lookup (so case collisions are
already CKG301 in the zip reader). Only the directory, the small records and ``data.pkl``
are read; tensor bytes never are.
"""

from __future__ import annotations

from .._native import native
from ..context import AuditContext, LimitExceeded
from ..detect import TORCH_LEGACY_MAGIC, sniff
from ..model import Format, TensorInfo
from ..primitives import clip
from ..readers.zipfast import facts
from ..readers.zipfile import (
    STORED,
    TORCH_NAME_BUFFER,
    Defect,
    DefectSink,
    ZipArchive,
    ZipEntry,
    compare_python_zipfile,
    read_archive,
)
from . import opcodes as O
from .fastpath import try_fast
from .records import check_byteorder, read_small_record
from .tensors import DTYPE_SIZES, StorageCatalog
from .vm import PickleMode, PickleResult, audit_after_stop, audit_pickle

_TORCH_RECORDS = frozenset({"data.pkl", "version", ".data/version", "byteorder",
                            ".format_version", ".storage_alignment", ".data/serialization_id"})
#: caffe2/serialize/versions.h: kMinSupportedFileFormatVersion, kMaxSupportedFileFormatVersion
TORCH_FORMAT_VERSIONS = (1, 10)


# --- zip ---------------------------------------------------------------------------------

def audit_zip(ctx: AuditContext) -> Format:
    archive = read_archive(ctx, _record_defects(ctx))
    if archive is None:
        return Format.ZIP
    _python_reading(ctx, archive)
    names = archive.names()
    ctx.members.extend(names)
    if names and all(n.lower().endswith(".npy") for n in names):
        from .numpy import audit_npz

        audit_npz(ctx, archive)
        return Format.NUMPY_NPZ
    if not names:
        ctx.add("CKG311", "the archive has no members")
        return Format.ZIP
    first = names[0]
    if "/" not in first:
        fmt = _generic_zip(ctx, archive, "the first member is not inside a folder, so torch "
                           "cannot read the archive")
        _numpy_reading(ctx, archive)
        return fmt
    prefix = first.split("/", 1)[0] + "/"
    # torch looks records up as "<prefix><record>" through miniz, which compares names
    # ignoring ASCII case: mirror that, so archive/DATA.PKL is the data.pkl torch loads.
    lprefix = _ascii_lower(prefix)
    records: dict[str, ZipEntry] = {}
    outside: list[ZipEntry] = []
    proven = facts(archive)  # the zip prover's facts: per-member loops that find nothing
    split = _split_native(archive, prefix) if proven is not None and proven.no_upper \
        else None
    catalog: dict[str, tuple[str, int, int]] | None = None
    kept: list[ZipEntry] = []
    if split is not None:
        # the loop below and _torch_zip's catalog loop in one C pass: the records but the
        # tensor data, the catalog's records, the members outside the folder, the entries
        # that are not tensor data
        records, catalog, outside, kept = split
    elif proven is not None and proven.no_upper:
        # no name holds a capital: lower-casing changes none, and no record can be another
        # one's case twin (the loop below, without its per-member work)
        n = len(prefix)
        for e in archive.entries:
            if e.name.startswith(prefix):
                records.setdefault(e.name[n:], e)
            else:
                outside.append(e)
    else:
        for e in archive.entries:
            lname = _ascii_lower(e.name)
            if lname.startswith(lprefix):
                rel = lname[len(lprefix):]
                if e.name != prefix + rel and rel in _TORCH_RECORDS | {"constants.pkl"}:
                    ctx.add("CKG301", f"member {e.name!r} is the record {prefix}{rel} only "
                            "because torch's reader ignores case", member=e.name,
                            offset=e.header_offset)
                records.setdefault(rel, e)
            else:
                outside.append(e)
    ctx.metadata["torch.archive_folder"] = prefix[:-1]
    if catalog is not None and (is_pt2(records) or "constants.pkl" in records or
                                "data.pkl" not in records or
                                (proven is not None and not proven.no_constants_pkl)):
        # not a plain torch zip: its auditors want every record (the Python loop)
        records, catalog = _records(archive, prefix), None
    if catalog is not None and proven is not None and proven.numpy_free:
        # a plain torch zip: from here on nothing reads a tensor record's entry (the
        # catalog holds its name, data offset and size; the numpy pass is skipped), so the
        # entries (~400 bytes each) are released before data.pkl's proof, which is the
        # peak of the scan's memory
        archive.entries = kept
    if is_pt2(records):  # a torch.export archive (.pt2): its own auditor
        from .pt2 import audit_outside, audit_pt2

        audit_outside(ctx, archive, outside)
        fmt = audit_pt2(ctx, archive, records, prefix)
        _numpy_reading(ctx, archive)  # numpy.load reads a .pt2 as an npz like any zip
        return fmt
    # torch's TorchScript check sees each name as miniz copies it into a C buffer: cut at
    # the first NUL and at the buffer size.
    script_name = (prefix + "constants.pkl").encode("utf-8", "surrogateescape")
    is_script = "constants.pkl" in records or (
        (proven is None or not proven.no_constants_pkl) and (any(
            n == "constants.pkl" or n.endswith("/constants.pkl") for n in names) or any(
            e.raw_name.split(b"\0", 1)[0][:TORCH_NAME_BUFFER - 1] == script_name
            for e in archive.entries)))
    if is_script:
        _torchscript(ctx, archive, records, prefix)
        fmt = Format.TORCHSCRIPT
    elif "data.pkl" not in records:
        fmt = _generic_zip(ctx, archive, f"no {prefix}data.pkl record: not a torch checkpoint")
    else:
        _torch_zip(ctx, archive, records, prefix, outside, catalog)
        fmt = Format.TORCH_ZIP
    _numpy_reading(ctx, archive)
    return fmt


def _split_native(archive: ZipArchive, prefix: str) -> tuple[
        dict[str, ZipEntry], dict[str, tuple[str, int, int]], list[ZipEntry],
        list[ZipEntry]] | None:
    """``picklecore.split_records`` (the member split and the catalog loop in C), or None
    when it is not built or declines (then the Python loops run)."""
    core = native("picklecore")
    if core is None or type(archive.entries) is not list:
        return None
    out: tuple[dict[str, ZipEntry], dict[str, tuple[str, int, int]], list[ZipEntry],
               list[ZipEntry]] | None = core.split_records(archive.entries, prefix, ZipEntry)
    return out


def _records(archive: ZipArchive, prefix: str) -> dict[str, ZipEntry]:
    """Every record under ``prefix`` (names without capitals: audit_zip's loop)."""
    n = len(prefix)
    records: dict[str, ZipEntry] = {}
    for e in archive.entries:
        if e.name.startswith(prefix):
            records.setdefault(e.name[n:], e)
    return records


def _record_defects(ctx: AuditContext) -> DefectSink:
    """``zipdefects.record_defects(ctx)``, its rule table imported by the first defect: a
    canonical archive has none, and its scan does not import the table (~1 ms)."""
    def record(defect: Defect) -> None:
        from .zipdefects import record_defects

        record_defects(ctx)(defect)
    return record


def is_pt2(records: dict[str, ZipEntry]) -> bool:
    """A torch.export archive: its folder holds ``archive_format`` or ``archive_version``
    (load_pt2 reads only the latter). Here, not in pt2.py, so that a torch zip's scan
    imports the .pt2 auditor (and its JSON reader) only for such an archive."""
    return "archive_format" in records or "archive_version" in records


def _numpy_reading(ctx: AuditContext, archive: ZipArchive) -> None:
    """numpy.load reads every zip as an npz (detect.py's reader table): members that start
    like an object-dtype .npy, tensor records included, are audited as numpy runs them."""
    proven = facts(archive)
    if proven is not None and proven.numpy_free:
        return  # no member starts with \x93NUMPY (the zip prover read every head)
    from .numpy import audit_numpy_reading

    audit_numpy_reading(ctx, archive, archive.entries)


def _python_reading(ctx: AuditContext, archive: ZipArchive) -> None:
    """numpy.load (npz) and every Python program read the archive through CPython's zipfile,
    not miniz: any disagreement is CKG313, and the members only Python sees are audited the
    way numpy reads them (``\\x93NUMPY`` members as arrays, whatever their name)."""
    other = compare_python_zipfile(ctx, archive)
    if other is None:
        return
    from .numpy import audit_npz

    npy = [e for e in other.entries if other.head(e, 6) == b"\x93NUMPY"]
    if npy:
        audit_npz(ctx, ZipArchive(ctx, npy, other.cd_offset, b"", other.on_defect))
    for e in other.entries:
        if e not in npy and _holds_pickle(other, e):
            _maybe_hidden_pickle(ctx, other, e, "a member only Python's zipfile sees")


def _ascii_lower(name: str) -> str:
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def _generic_zip(ctx: AuditContext, archive: ZipArchive, why: str) -> Format:
    ctx.add("CKG002", f"zip archive that is not a torch checkpoint ({why}); its members are "
            "not audited as weights", evidence={"wrapper": "zip"})
    for e in archive.entries:
        _maybe_hidden_pickle(ctx, archive, e, "a member of a non-torch zip")
    return Format.ZIP


def _read_small(ctx: AuditContext, archive: ZipArchive, e: ZipEntry) -> bytes | None:
    return read_small_record(ctx, archive, e, "CKG311")


#: torch passes ``.storage_alignment`` to C++ as a ``uint64_t``
STORAGE_ALIGNMENT_LIMIT = 1 << 64


def _torch_zip(ctx: AuditContext, archive: ZipArchive, records: dict[str, ZipEntry],
               prefix: str, outside: list[ZipEntry],
               split: dict[str, tuple[str, int, int]] | None = None) -> None:
    """``split``: the catalog's records when picklecore.split_records made them (then
    ``records`` holds the other records only)."""
    # torch (PyTorchStreamReader::init) reads .data/version when it exists, else version,
    # parses it with std::stoull and accepts kMinSupportedFileFormatVersion..kMax.
    version = records.get(".data/version") or records.get("version")
    if version is None:
        ctx.add("CKG311", f"no {prefix}version record: torch refuses the archive")
    else:
        raw = _read_small(ctx, archive, version)
        if raw is not None:
            text = raw.decode("ascii", "replace").strip()
            if not (text.isascii() and text.isdigit()):
                ctx.add("CKG311", f"version record {text[:20]!r} is not a number",
                        member=version.name)
            elif not TORCH_FORMAT_VERSIONS[0] <= int(text) <= TORCH_FORMAT_VERSIONS[1]:
                ctx.add("CKG311", f"version record {version.name} says {text[:20]}: torch "
                        f"reads versions {TORCH_FORMAT_VERSIONS[0]} to "
                        f"{TORCH_FORMAT_VERSIONS[1]} and refuses the archive",
                        member=version.name)
            else:
                ctx.metadata["torch.format_version"] = text
    check_byteorder(ctx, archive, records, "CKG311")
    for rec in (".format_version", ".storage_alignment"):
        e = records.get(rec)
        if e is not None:
            raw = _read_small(ctx, archive, e)
            if raw is None:
                continue
            if not raw.strip().isdigit():
                ctx.add("CKG311", f"{rec} record is not a number", member=e.name)
            elif rec == ".storage_alignment":
                # torch computes record offsets modulo it (getRecordOffsetNoRead: every
                # meta load, and mmap loads under config.load.calculate_storage_offsets):
                # 0 divides by zero (SIGFPE), 2**64 and more fail its uint64 argument
                digits = raw.strip()
                # (no int() of thousands of digits: past 4300 it raises)
                sig = digits.lstrip(b"0")
                n = int(sig or b"0") if len(sig) <= 24 else STORAGE_ALIGNMENT_LIMIT
                if not 0 < n < STORAGE_ALIGNMENT_LIMIT:
                    why = "0 crashes the process (division by zero)" if n == 0 else \
                        "it does not fit torch's 64-bit argument"
                    ctx.add("CKG311", f"{rec} record says {clip(digits.decode(), 24)}: torch "
                            f"computes record offsets modulo it, and {why}", member=e.name)
                else:
                    ctx.metadata["torch.storage_alignment"] = str(n)

    catalog = StorageCatalog()
    others: list[tuple[str, ZipEntry]] = []  # the records that are not tensor data
    if split is not None:
        catalog.records = split
        others.extend(records.items())
    cat_records = catalog.records
    # one pass over the (up to a million) records: this loop runs once per tensor
    for rel, e in records.items() if split is None else ():
        if rel[:5] == "data/" and len(rel) > 5:
            key = rel[5:]
            cat_records[key] = (e.name, e.data_offset, e.size)
            if e.method != STORED:
                ctx.add("CKG305", f"tensor record {e.name} is compressed: torch's mmap loader "
                        "reads it as raw bytes", member=e.name, offset=e.header_offset)
        else:
            others.append((rel, e))

    for rel, e in others:
        if e.method != STORED and not rel.startswith("data/"):
            ctx.add("CKG305", f"record {e.name} is compressed (method {e.method}); torch.save "
                    "never compresses, and byte-level scanners see no opcodes in it",
                    member=e.name, offset=e.header_offset)
    pkl = records["data.pkl"]
    data = archive.read(pkl, record=True)
    fast = try_fast(ctx, data, catalog)  # proves SAFE or declines (DESIGN.md principle 9)
    if fast is not None:
        if ctx.keep_graph:
            ctx.graph = fast
        result = fast.result
    else:
        result = audit_pickle(ctx, data, member=pkl.name, base_offset=0,
                              mode=PickleMode.TORCH_ZIP, storages=catalog)
    if result.complete and result.end < len(data):
        audit_after_stop(ctx, data, result, pkl.name)
    if result.globals:
        ctx.metadata["pickle.globals"] = str(len({g.full for g in result.globals}))
    if fast is not None and fast.infos is not None:
        ctx.tensors.extend(fast.infos)  # built by the native core, as _emit_tensors would
    else:
        _emit_tensors(ctx, result, catalog)

    seen = catalog.seen
    # (the catalog's records are the tensor records, keyed and ordered alike: no second
    # 50k-entry dict held through the scan)
    if not all(map(seen.__contains__, cat_records)):  # a C loop; the rare case in order
        for key, (member, _, _) in cat_records.items():
            if key not in seen:
                ctx.add("CKG312", f"tensor record {member} is not referenced by data.pkl",
                        member=member)
    for rel, e in others:
        if rel in _TORCH_RECORDS:
            continue
        _maybe_hidden_pickle(ctx, archive, e, "a member torch never reads")
    for e in outside:
        # torch's getAllRecords (run by every torch.load for its TorchScript check) throws
        # on a member outside the folder: torch refuses the whole archive.
        ctx.add("CKG311", f"member {e.name!r} lies outside the archive folder {prefix}: "
                "torch refuses the archive", member=e.name, offset=e.header_offset)
        _maybe_hidden_pickle(ctx, archive, e, f"a member outside the archive folder {prefix}")


def _emit_tensors(ctx: AuditContext, result: PickleResult, catalog: StorageCatalog) -> None:
    for name, rec in result.tensors:
        st = rec.storage
        numel = 1
        for s in rec.shape:
            numel *= s
        ctx.tensors.append(TensorInfo(
            name=name,
            dtype=rec.dtype,
            shape=rec.shape,
            stride=rec.stride,
            storage=None if st is None else (f"data/{st.key}" if not catalog.deferred
                                             else st.key),
            storage_offset=rec.storage_offset,
            nbytes=numel * DTYPE_SIZES.get(rec.dtype, 1),
            storage_nbytes=None if st is None else st.numel * st.itemsize,
            data_offset=None if st is None else st.data_offset,
            device=st.location if st is not None else "meta",
            requires_grad=rec.requires_grad,
        ))


def _maybe_hidden_pickle(ctx: AuditContext, archive: ZipArchive, e: ZipEntry, where: str) -> None:
    if e.size == 0 or e.method not in (0, 8):
        ctx.add("CKG312", f"{e.name}: {where}", member=e.name)
        return
    if not _holds_pickle(archive, e):
        ctx.add("CKG312", f"{e.name}: {where}", member=e.name)
        if e.method != STORED:
            try:
                archive.verify(e)  # CRC and size, streamed
            except LimitExceeded as exc:
                ctx.limit_hit(exc, member=e.name)
        return
    ctx.add("CKG309", f"{e.name} is {where} and holds a pickle program", member=e.name)
    data = archive.read(e)
    audit_pickle(ctx, data, member=e.name, mode=PickleMode.RAW)


def _holds_pickle(archive: ZipArchive, e: ZipEntry) -> bool:
    """Does a member hold a pickle program? Sniffed from its first 4 KiB only: a deflated
    member is never inflated whole just to look at its head (a 1 MB zip bomb member held
    420 MB that way)."""
    head = archive.head(e, 4096)
    return sniff(head, max(e.size, len(head)))[0] is Format.PICKLE


def _torchscript(ctx: AuditContext, archive: ZipArchive, records: dict[str, ZipEntry],
                 prefix: str) -> None:
    code = sorted(r for r in records if r.startswith("code/"))
    ctx.add("CKG008", f"TorchScript archive with {len(code)} code file(s): torch.jit.load runs "
            "them and torch.load(weights_only=True) refuses the file",
            evidence={"code_files": ", ".join(code[:20]) + (" ..." if len(code) > 20 else "")})
    # What the code calls (analysis/tscode.py): file and process operators are CRITICAL.
    sources: list[tuple[str, bytes]] = []
    try:
        for rel in code:
            e = records[rel]
            if rel.endswith(".py") and e.method in (0, 8):
                sources.append((e.name, archive.read(e, record=False)))
    except LimitExceeded as exc:
        ctx.limit_hit(exc, member=e.name)
    from .tscode import grade_code  # TorchScript only: not imported by a state dict's scan

    grade_code(ctx, sources)
    catalog = StorageCatalog()
    for rel, e in records.items():
        if rel.startswith("data/") and len(rel) > 5:
            catalog.records[rel[5:]] = (e.name, e.data_offset, e.size)
    # Every pickle-bearing member is audited (data.pkl, constants.pkl, the code's
    # *.debug_pkl source maps, anything else), by content.
    for e in archive.entries:
        if e.size == 0 or e.name.endswith("/") or e.method not in (0, 8) or (
                e.name.startswith(prefix + "data/") and len(e.name) > len(prefix) + 5):
            continue
        if not _holds_pickle(archive, e):
            continue
        data = archive.read(e, record=True)
        is_data = _ascii_lower(e.name) == _ascii_lower(prefix) + "data.pkl"
        audit_pickle(ctx, data, member=e.name, mode=PickleMode.TORCHSCRIPT,
                     storages=catalog if is_data else StorageCatalog(deferred=True))


# --- plain pickles -----------------------------------------------------------------------

def audit_raw_pickle(ctx: AuditContext) -> Format:
    size = ctx.source.size
    if size > ctx.limits.max_pickle_bytes:
        raise LimitExceeded("max_pickle_bytes", ctx.limits.max_pickle_bytes,
                            f"{size}-byte pickle")
    data = ctx.source.read(0, size, record=True)
    result = audit_pickle(ctx, data, mode=PickleMode.RAW)
    if result.complete and result.end < len(data):
        audit_after_stop(ctx, data, result, None)
    _emit_tensors(ctx, result, StorageCatalog(deferred=True))
    return Format.PICKLE


# --- legacy (pre-zip) streams --------------------------------------------------------------

_LEGACY_PICKLES = ("magic number", "protocol version", "sys info", "main", "storage keys")


def audit_legacy(ctx: AuditContext) -> Format:
    """magic | protocol | sys_info | main pickle | storage keys | raw storages."""
    src = ctx.source
    pos = 0
    catalog = StorageCatalog(deferred=True)
    results: list[PickleResult] = []
    for label in _LEGACY_PICKLES:
        end = pickle_extent(ctx, pos)
        if end is None:
            ctx.add("CKG201", f"legacy torch file ends inside its {label} pickle", offset=pos)
            return Format.TORCH_LEGACY
        data = src.read(pos, end - pos, record=True)
        member = f"<{label} pickle>"
        r = audit_pickle(ctx, data, member=member, base_offset=pos,
                         mode=PickleMode.TORCH_LEGACY, storages=catalog)
        results.append(r)
        if not r.complete:
            return Format.TORCH_LEGACY
        pos += r.end
    magic, proto = results[0].root, results[1].root
    if magic != TORCH_LEGACY_MAGIC:
        ctx.add("CKG202", "legacy torch file with a wrong magic number", offset=0)
    if proto != 1001:
        ctx.add("CKG202", f"legacy torch protocol version {proto!r}, expected 1001")
    keys = results[4].root
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        ctx.add("CKG401", "legacy storage-keys pickle is not a list of strings",
                member="<storage keys pickle>")
        return Format.TORCH_LEGACY
    main = results[3]
    _legacy_storages(ctx, keys, catalog, pos)
    _emit_tensors(ctx, main, catalog)
    return Format.TORCH_LEGACY


def _legacy_storages(ctx: AuditContext, keys: list[str], catalog: StorageCatalog,
                     pos: int) -> None:
    src = ctx.source
    seen = catalog.seen
    if len(set(keys)) != len(keys):
        ctx.add("CKG406", "a storage key is listed twice in the storage-keys pickle")
    for key in keys:
        ref = seen.get(key)
        if ref is None:
            ctx.add("CKG402", f"storage {key!r} is stored but no tensor references it "
                    "(torch.load fails)", offset=pos)
            return
        head = src.read(pos, 8)
        if len(head) < 8:
            ctx.add("CKG201", f"legacy file ends before storage {key!r}", offset=pos)
            return
        numel = int.from_bytes(head, "little", signed=True)
        if numel != ref.numel:
            ctx.add("CKG403", f"storage {key!r} holds {numel} elements on disk, the pickle "
                    f"declares {ref.numel}", offset=pos)
            return
        ref.data_offset = pos + 8
        ref.record_size = numel * ref.itemsize
        pos += 8 + numel * ref.itemsize
        if pos > src.size:
            ctx.add("CKG201", f"legacy file ends inside storage {key!r}", offset=src.size)
            return
    missing = [k for k in seen if k not in set(keys)]
    if missing:
        ctx.add("CKG402", f"storage {missing[0]!r} is referenced but not stored")
    if pos < src.size:
        ctx.add("CKG004", f"{src.size - pos} bytes follow the last storage", offset=pos)


def pickle_extent(ctx: AuditContext, start: int) -> int | None:
    """Find the end (just past STOP) of the pickle at ``start`` without running it, reading
    the stream in chunks. None when the stream ends first."""
    src = ctx.source
    limit = min(src.size, start + ctx.limits.max_pickle_bytes)
    chunk = 1 << 16  # grows x2 per read: small pickles cost little read-ahead
    buf = b""
    buf_start = start
    pos = start
    fixed, counted, lines = O.FIXED_ARG, O.COUNTED_ARG, O.LINE_ARG
    while True:
        i = pos - buf_start
        # read ahead while fewer than 16 bytes are buffered past the opcode (a fixed
        # argument is at most 8): near the end of the stream, go on with what is there
        if i + 16 > len(buf) and buf_start + len(buf) < limit:
            more = src.read(buf_start + len(buf), min(chunk, limit - buf_start - len(buf)))
            if more:
                buf += more
                chunk = min(chunk * 2, 1 << 26)
                continue
        if i >= len(buf):
            return None  # the stream ends before its STOP
        op = buf[i]
        if op == O.STOP:
            return pos + 1
        if op in fixed:
            pos += 1 + fixed[op]
        elif op in counted:
            w, signed = counted[op]
            if i + 1 + w > len(buf):
                buf += src.read(buf_start + len(buf), w + 16)
                if i + 1 + w > len(buf):
                    return None
            ln = int.from_bytes(buf[i + 1 : i + 1 + w], "little", signed=signed)
            if ln < 0:
                return pos + 1 + w  # malformed: let the VM report it
            pos += 1 + w + ln
            if pos > limit:
                return None
        elif op in lines:
            k = lines[op]
            j = i + 1
            while k:
                nl = buf.find(b"\n", j)
                if nl < 0:
                    if buf_start + len(buf) >= limit:
                        return None
                    buf += src.read(buf_start + len(buf), chunk)
                    continue
                j = nl + 1
                k -= 1
            pos = buf_start + j
        elif op in O.ALL_OPCODES:
            pos += 1
        else:
            return pos + 1  # invalid opcode: the VM reports it
        # drop consumed bytes now and then to bound memory
        if pos - buf_start > (1 << 26):
            cut = pos - buf_start
            buf = buf[cut:]
            buf_start = pos


# --- legacy tar --------------------------------------------------------------------------

#: the members torch's legacy tar loader unpickles (storages and tensors hold a stream of
#: pickles: a count, then one pickle per storage or tensor)
_TAR_PICKLED = frozenset({"storages", "tensors", "pickle"})
#: the reader's buffer (io's default, as before): tarfile's 512-byte header reads go
#: through it; a read longer than it is an extended header (a PAX record set or a GNU long
#: name, read whole)
_TAR_BUFFER = 8192


def audit_legacy_tar(ctx: AuditContext, *, as_reading: bool = False) -> Format:
    """The legacy tar checkpoint torch.load reads: every member tarfile lists, and the
    pickles among them. ``as_reading``: the file is another format that torch.load also
    reads as a tar (the caller reported CKG012), so no CKG007."""
    import io
    import tarfile

    if not as_reading:
        ctx.add("CKG007", "legacy tar-format torch checkpoint: torch.load(weights_only=True) "
                "refuses it")
    src = ctx.source
    cap = ctx.limits.max_header_bytes

    class _Reader(io.RawIOBase):
        """The source as a file for tarfile. tarfile reads 512-byte header blocks (through
        the buffer) and, for a PAX or GNU long-name member, its whole declared size in one
        read, held in memory: such reads count against ``max_header_bytes``, so a header
        claiming gigabytes is a limit, not an allocation."""

        def __init__(self) -> None:
            self.pos = 0
            self.extended = 0

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return True

        def tell(self) -> int:
            return self.pos

        def seek(self, off: int, whence: int = 0) -> int:
            self.pos = off if whence == 0 else (self.pos + off if whence == 1 else src.size + off)
            return self.pos

        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            if len(b) > _TAR_BUFFER:
                self.extended += len(b)
                if self.extended > cap:
                    raise LimitExceeded("max_header_bytes", cap,
                                        "tar extended headers (PAX / GNU long names)")
            data = src.read(self.pos, len(b))
            b[: len(data)] = data
            self.pos += len(data)
            return len(data)

    # (name, data offset, size) of the regular files: tarfile keeps every TarInfo it reads
    # (~500 bytes each, a million members allowed), so the list is emptied as it goes
    files: list[tuple[str, int, int]] = []
    try:
        with tarfile.open(fileobj=io.BufferedReader(_Reader(), _TAR_BUFFER), mode="r:") as tar:
            count = 0
            kept = getattr(tar, "members", None)  # CPython's list of the TarInfos read
            while (m := tar.next()) is not None:
                count += 1
                if count > ctx.limits.max_members:
                    raise LimitExceeded("max_members", ctx.limits.max_members)
                ctx.members.append(m.name)
                if m.isfile():
                    files.append((m.name, m.offset_data, m.size))
                if isinstance(kept, list):
                    kept.clear()
    except tarfile.TarError as e:
        ctx.add("CKG202", f"legacy tar file is not a valid tar archive ({e})")
        return Format.TORCH_LEGACY_TAR
    for name, offset, size in files:
        if size > ctx.limits.max_pickle_bytes:
            raise LimitExceeded("max_pickle_bytes", ctx.limits.max_pickle_bytes, name)
        unpickled = name in _TAR_PICKLED
        if not unpickled:
            head = src.read(offset, min(size, 4096))
            fmt, _ = sniff(head, size)
            if fmt is not Format.PICKLE:
                continue
        # torch's legacy_load unpickles these members from their first byte whatever they
        # look like (a legacy magic number or a GGUF head is a pickle prefix too)
        data = src.read(offset, size, record=True)
        r = audit_pickle(ctx, data, member=name, mode=PickleMode.TORCH_LEGACY,
                         storages=StorageCatalog(deferred=True))
        if (unpickled or name == "sys_info") and r.complete and r.end < len(data):
            audit_after_stop(ctx, data, r, name)
    return Format.TORCH_LEGACY_TAR


__all__ = ["audit_legacy", "audit_legacy_tar", "audit_raw_pickle", "audit_zip", "is_pt2",
           "pickle_extent"]
