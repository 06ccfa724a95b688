"""The zip reader's defects as findings: ONE table, ``ZIP_RULES``, maps each ``ZipDefect``
kind (``readers/zipfile.py``) to its rule and builds the message (and evidence) from the
defect's typed values. ``tests/test_zipdefects.py`` pins it both ways: every kind has a
row, every row names a registered zip rule, and the reader produces every kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..context import AuditContext
from ..primitives import clip
from ..readers.zipfile import Defect, DefectSink, ZipDefect

D = ZipDefect


@dataclass(frozen=True, slots=True)
class ZipRule:
    """How one defect kind becomes a finding."""

    rule_id: str
    #: the message, from the defect's values as keyword arguments (``ZipDefect.fields``)
    message: Callable[..., str]
    #: evidence, from the same values (None: no evidence)
    evidence: Callable[..., dict[str, str]] | None = None
    #: the finding's member is cut to this many characters (a name past torch's buffer)
    member_chars: int | None = None


def _python_reading(name: str, data_offset: int | None, compressed_size: int, size: int,
                    method: int, why: str) -> str:
    what = (f"offset {data_offset}, {compressed_size} -> {size} bytes, method {method}"
            if data_offset is not None else why)
    return f"Python's zipfile reads member {name!r} differently from torch's reader ({what})"


def _miniz_directory(name: str, external_attr: int, made_by: int, size: int) -> str:
    why = ("a name ending in '/'" if name.endswith("/") else
           "the DOS directory attribute 0x10 in its external attributes "
           f"0x{external_attr:08x}, which miniz honours whatever the made-by OS ({made_by})")
    if size:
        what = (f"reads none of its bytes: torch gets an uninitialised {size}-byte buffer "
                "(heap memory) where Python's zipfile and numpy read the member's bytes")
    else:
        what = "while Python's zipfile and numpy read it as a file"
    return f"member {name!r}: torch's reader (miniz) takes it for a directory ({why}) and {what}"


def _m(text: str) -> Callable[..., str]:
    """A message that names no value."""
    return lambda: text


#: THE zip defect -> rule table (order: as ``ZipDefect`` lists the kinds)
ZIP_RULES: Mapping[ZipDefect, ZipRule] = MappingProxyType({
    D.NO_EOCD: ZipRule("CKG310", _m(
        "no end-of-central-directory record: not a complete zip archive")),
    D.BYTES_AFTER_EOCD: ZipRule("CKG004", lambda count: (
        f"{count} bytes follow the end-of-central-directory record")),
    D.SEVERAL_EOCD: ZipRule("CKG307", lambda count: (
        f"{count} end-of-central-directory signatures; readers that scan from the end may "
        "pick another one")),
    D.HIDDEN_EOCD: ZipRule("CKG307", _m(
        "a second end-of-central-directory record hides in bytes that belong to no member")),
    D.MULTI_DISK: ZipRule("CKG310", _m("multi-disk (split) archive")),
    D.MULTI_DISK_ZIP64: ZipRule("CKG310", _m("multi-disk (split) Zip64 archive")),
    D.ZIP64_LOCATOR_PAST_ITSELF: ZipRule("CKG310", _m(
        "Zip64 locator points past its own position")),
    D.ZIP64_EOCD_MISSING: ZipRule("CKG310", _m(
        "Zip64 end-of-central-directory record missing")),
    D.ZIP64_EXTENSIBLE_DATA: ZipRule("CKG314", lambda extra, record_size: (
        f"Zip64 end record carries {extra} bytes of extensible data (Python's zipfile and "
        "miniz read different end records)"),
        lambda extra, record_size: {"record_size": str(record_size)}),
    D.ZIP64_GAP: ZipRule("CKG306", _m(
        "bytes between the Zip64 record and its locator belong to nothing")),
    D.ZIP64_DISAGREES: ZipRule("CKG310", lambda what, eocd, zip64: (
        f"EOCD and Zip64 EOCD disagree on the {what} ({eocd} vs {zip64})")),
    D.DIRECTORY_PAST_END: ZipRule("CKG310", _m(
        "central directory extends past its end record")),
    D.BYTES_BEFORE_EOCD: ZipRule("CKG004", lambda count: (
        f"{count} bytes between the central directory and its end record")),
    D.DIRECTORY_SLACK: ZipRule("CKG306", lambda count: (
        f"{count} bytes in the central directory belong to no entry")),
    D.ENTRY_MISSING: ZipRule("CKG310", lambda index: (
        f"central directory entry {index} is missing or corrupt")),
    D.ENTRY_PAST_DIRECTORY: ZipRule("CKG310", lambda index: (
        f"central directory entry {index} runs past the directory")),
    D.ZIP64_EXTRA_MISSING: ZipRule("CKG310", lambda index: (
        f"entry {index}: Zip64 sizes announced but no valid Zip64 extra field")),
    D.NAME_NOT_UTF8: ZipRule("CKG302", lambda index: (
        f"entry {index}: name flagged UTF-8 is not valid UTF-8")),
    D.NAME_NOT_ASCII: ZipRule("CKG302", lambda index: (
        f"entry {index}: non-ASCII name without the UTF-8 flag (cp437 vs raw bytes)")),
    D.ENTRY_ON_OTHER_DISK: ZipRule("CKG310", lambda name: (
        f"entry {name}: starts on another disk")),
    D.SIZES_CONTRADICT: ZipRule("CKG316", lambda index, name, compressed_size, size, method: (
        f"entry {index} ({name!r}): compressed size {compressed_size} and size {size} cannot "
        f"both be right for method {method}; torch's reader refuses the archive")),
    D.ENCRYPTED: ZipRule("CKG304", lambda name: f"member {name} is encrypted"),
    D.UNSUPPORTED_FLAGS: ZipRule("CKG304", lambda name, flags: (
        f"member {name} uses unsupported flag bits 0x{flags:04x}")),
    D.UNSUPPORTED_METHOD: ZipRule("CKG305", lambda name, method: (
        f"member {name} uses compression method {method}"),
        lambda name, method: {"method": str(method)}),
    D.MINIZ_DIRECTORY: ZipRule("CKG313", _miniz_directory,
        lambda name, external_attr, made_by, size: {
            "external_attr": f"0x{external_attr:08x}", "made_by_os": str(made_by)}),
    D.DUPLICATE_NAME: ZipRule("CKG301", lambda name, first, second: (
        f"duplicate member name {name!r} (entries {first} and {second})")),
    D.NAMES_DIFFER_IN_CASE: ZipRule("CKG301", lambda other, name: (
        f"member names {other!r} and {name!r} differ only in case (torch's reader looks "
        "names up case-insensitively)")),
    D.NAME_PAST_TORCH_BUFFER: ZipRule("CKG315", lambda length, kept: (
        f"member name of {length} bytes: torch's reader keeps only the first {kept} (its "
        "name buffer), so it sees another name than every other reader"), member_chars=80),
    D.UNSAFE_NAME: ZipRule("CKG308", lambda name: f"unsafe member name {name!r}"),
    D.LOCAL_HEADER_OUTSIDE: ZipRule("CKG306", lambda name: (
        f"member {name}: local header lies outside the member area")),
    D.NO_LOCAL_HEADER: ZipRule("CKG302", lambda name, header_offset: (
        f"member {name}: no local header at offset {header_offset}")),
    D.LOCAL_NAME_DIFFERS: ZipRule("CKG302", lambda local_name, central_name: (
        f"local header names {local_name!r}, central directory {central_name!r}")),
    D.LOCAL_METHOD_DIFFERS: ZipRule("CKG302", lambda name, local, central: (
        f"member {name}: compression method {local} locally, {central} centrally")),
    D.LOCAL_FLAGS_DIFFER: ZipRule("CKG302", lambda name, local, central: (
        f"member {name}: flags 0x{local:04x} locally, 0x{central:04x} centrally")),
    D.LOCAL_DESCRIPTOR_FIELDS_DIFFER: ZipRule("CKG302", lambda name: (
        f"member {name}: local header sizes/CRC disagree with the central directory")),
    D.LOCAL_SIZES_DIFFER: ZipRule("CKG302", lambda name, crc32, compressed_size, size,
                                  central_crc32, central_compressed_size, central_size: (
        f"member {name}: local header CRC/sizes ({crc32:08x}, {compressed_size}, {size}) "
        f"disagree with the central directory ({central_crc32:08x}, "
        f"{central_compressed_size}, {central_size})")),
    D.DESCRIPTOR_CUT_OFF: ZipRule("CKG306", lambda name: (
        f"member {name}: data descriptor cut off")),
    D.DESCRIPTOR_DIFFERS: ZipRule("CKG302", lambda name, crc32, compressed_size, size,
                                  central_crc32, central_compressed_size, central_size: (
        f"member {name}: data descriptor ({crc32:08x}, {compressed_size}, {size}) disagrees "
        f"with the central directory ({central_crc32:08x}, {central_compressed_size}, "
        f"{central_size})")),
    D.MEMBER_INTO_DIRECTORY: ZipRule("CKG306", lambda name: (
        f"member {name} extends into the central directory")),
    D.MEMBERS_OVERLAP: ZipRule("CKG306", lambda name, previous: (
        f"member {name} overlaps member {previous}")),
    D.PREFIX: ZipRule("CKG005", lambda count: f"{count} bytes precede the first zip member"),
    D.PREFIX_BEFORE_EMPTY_DIRECTORY: ZipRule("CKG005", lambda count: (
        f"{count} bytes precede an empty archive's directory")),
    D.GAP_BEFORE_MEMBER: ZipRule("CKG306", lambda count, name: (
        f"{count} bytes before member {name} belong to no member")),
    D.GAP_BEFORE_DIRECTORY: ZipRule("CKG306", lambda count: (
        f"{count} bytes between the last member and the central directory belong to no "
        "member")),
    D.MEMBER_CUT_OFF: ZipRule("CKG310", lambda name: (
        f"member {name} is cut off by the end of the file")),
    D.CRC_MISMATCH: ZipRule("CKG303", lambda name, crc32: (
        f"member {name}: CRC-32 mismatch (central directory says {crc32:08x})")),
    D.SIZE_MISMATCH: ZipRule("CKG302", lambda name, actual, declared: (
        f"member {name}: {actual} bytes after decompression, central directory says "
        f"{declared}")),
    D.INFLATES_PAST_SIZE: ZipRule("CKG302", lambda name, declared: (
        f"member {name} inflates past its declared size {declared}")),
    D.BAD_DEFLATE: ZipRule("CKG310", lambda name, error: (
        f"member {name}: invalid deflate stream ({error})")),
    D.PYTHON_CANNOT_OPEN: ZipRule("CKG313", lambda error: (
        "Python's zipfile (numpy.load, every Python program) cannot open the archive that "
        f"torch's reader opens ({error[:160]})"),
        lambda error: {"python_zipfile": error[:200]}),
    D.PYTHON_MEMBER_COUNT: ZipRule("CKG313", lambda python, miniz: (
        f"Python's zipfile sees {python} members, torch's reader {miniz}: the readers find "
        "different central directories"),
        lambda python, miniz: {"python_members": str(python), "miniz_members": str(miniz)}),
    D.PYTHON_READS_DIFFERENTLY: ZipRule("CKG313", _python_reading),
})


@dataclass(frozen=True, slots=True)
class ZipFindingArgs:
    """What ``AuditContext.add`` gets for one defect."""

    rule_id: str
    message: str
    member: str | None
    offset: int | None
    evidence: dict[str, str] | None


def finding_args(defect: Defect) -> ZipFindingArgs:
    """The rule ID, message, place and evidence of one defect (its ``ZIP_RULES`` row)."""
    row = ZIP_RULES[defect.kind]
    values = defect.fields()
    member = defect.member
    if row.member_chars is not None and member is not None:
        member = clip(member, row.member_chars)
    return ZipFindingArgs(row.rule_id, row.message(**values), member, defect.offset,
                          row.evidence(**values) if row.evidence is not None else None)


def record_defects(ctx: AuditContext) -> DefectSink:
    """The sink that records each defect as its finding in ``ctx``, in the order found."""
    def record(defect: Defect) -> None:
        a = finding_args(defect)
        ctx.add(a.rule_id, a.message, member=a.member, offset=a.offset, evidence=a.evidence)
    return record


__all__ = ["ZIP_RULES", "ZipFindingArgs", "ZipRule", "finding_args", "record_defects"]
