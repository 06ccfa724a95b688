"""The rule registry: every finding ckptguard can emit, under a stable ID.

One table, one source of truth. Readers, the pickle VM, the engine, the report
formatters (SARIF rule metadata) and the docs all read it; a test checks that every rule
ID used anywhere in the package is registered here and documented in SECURITY.md.

ID ranges:
  CKG0xx  file and format level       CKG4xx  tensor records
  CKG1xx  globals and callables       CKG5xx  safetensors
  CKG2xx  pickle program structure    CKG6xx  numpy
  CKG3xx  zip container               CKG7xx  model folders, shards, remote code
  CKG9xx  limits and audit failures
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import Effect, Finding, Location, Severity


@dataclass(frozen=True)
class Rule:
    id: str
    name: str           # short kebab-case name (SARIF "name")
    severity: Severity
    effect: Effect
    title: str          # one line: what it means
    advice: str         # what to do next


B, U, N = Effect.BLOCKS, Effect.UNDECIDED, Effect.NOTE
S = Severity

_RULES: tuple[Rule, ...] = (
    # --- file and format -----------------------------------------------------------------
    Rule("CKG001", "unknown-format", S.MEDIUM, U,
         "The file's content matches no supported checkpoint format.",
         "Check that this is a model file; ckptguard audits torch zip/legacy, pickle, "
         "safetensors and numpy files."),
    Rule("CKG002", "wrapped-archive", S.MEDIUM, U,
         "The checkpoint is inside a compressed or archive wrapper (gzip, bz2, xz, zstd, 7z, "
         "tar, ...) that ckptguard does not open.",
         "Unpack the wrapper yourself and scan the files inside; a wrapped file is never SAFE."),
    Rule("CKG003", "extension-disguise", S.HIGH, B,
         "The file name claims a data-only format but the content can execute code "
         "(for example a pickle named .safetensors or .npy).",
         "Treat the file as hostile: nothing legitimate disguises a pickle as a data-only format."),
    Rule("CKG004", "trailing-data", S.HIGH, B,
         "Bytes follow the end of the container or pickle; another reader may see them.",
         "Re-save the checkpoint with the original tool; appended bytes can hide a second "
         "payload."),
    Rule("CKG005", "leading-data", S.HIGH, B,
         "Bytes precede the container (a polyglot or prefixed archive).",
         "Re-save the checkpoint; prefixed archives are read differently by different tools."),
    Rule("CKG006", "empty-file", S.MEDIUM, U,
         "The file is empty.",
         "Re-download the file; an empty file holds no weights."),
    Rule("CKG007", "legacy-tar-format", S.MEDIUM, B,
         "Legacy tar-format torch checkpoint: torch.load(weights_only=True) refuses it.",
         "Convert it once in a sandbox with a trusted torch, then use safetensors."),
    Rule("CKG008", "torchscript-code", S.HIGH, B,
         "TorchScript archive carrying code: torch.jit.load runs it and weights_only refuses it.",
         "Load weights from a state-dict checkpoint or safetensors instead of a TorchScript "
         "archive, or review the listed code files."),
    Rule("CKG009", "extension-mismatch", S.LOW, N,
         "The file name suggests another format than its content.",
         "Rename the file to match its content; ckptguard decides by content."),
    Rule("CKG010", "unreadable-file", S.MEDIUM, U,
         "The file could not be read (permission, not a regular file, I/O error).",
         "Fix the permissions or point ckptguard at the regular file itself."),
    # --- globals and callables -------------------------------------------------------------
    Rule("CKG101", "code-execution-global", S.CRITICAL, B,
         "The pickle program reaches a known code-execution, file, process or network "
         "primitive.",
         "Do not load this file. Report it to the publisher and to the hub it came from."),
    Rule("CKG102", "non-allowlisted-global", S.MEDIUM, B,
         "The pickle program imports a global outside the weights-only allowlist.",
         "If this global is benign and you trust the file, allow it on purpose in a policy "
         "(with a reason); otherwise convert the weights to safetensors."),
    Rule("CKG103", "computed-callable", S.HIGH, B,
         "The program calls or instantiates a value that is not a plain imported global "
         "(a call result, an attribute fetched at run time, a string).",
         "Do not load this file; weights-only checkpoints never call computed values."),
    Rule("CKG104", "nested-deserialization", S.CRITICAL, B,
         "The program reaches a nested deserializer (pickle/marshal/torch.load/numpy.load/...), "
         "which would run a second, unaudited program.",
         "Do not load this file."),
    Rule("CKG105", "extension-registry", S.HIGH, B,
         "The program uses EXT1/EXT2/EXT4 (copyreg extension registry): what it resolves to "
         "depends on the loading process, not on the file.",
         "Do not load this file; no weights-only checkpoint uses the extension registry."),
    Rule("CKG106", "allowlisted-by-policy", S.INFO, N,
         "A global outside the default allowlist was allowed by the user's policy.",
         "Review the policy entry's reason from time to time."),
    Rule("CKG107", "dotted-global-name", S.LOW, N,
         "A global is named through a dotted attribute path or a split other than the "
         "canonical module/name.",
         "Harmless when the full path is allowlisted; a classic scanner-bypass shape otherwise."),
    Rule("CKG108", "compat-renamed-global", S.LOW, N,
         "A Python 2 module/name was renamed to its Python 3 equivalent (as pickle and torch do).",
         "No action needed when the renamed global is allowlisted."),
    Rule("CKG109", "disallowed-persistent-id", S.HIGH, B,
         "A persistent id outside torch's storage records (for a raw pickle: any persistent id).",
         "Only torch storage references are weights; do not load this file."),
    Rule("CKG110", "opcode-outside-weights-only", S.MEDIUM, B,
         "A torch checkpoint uses an opcode that torch's weights-only unpickler refuses.",
         "torch.load(weights_only=True) cannot load this file; re-save it with torch.save."),
    Rule("CKG111", "disallowed-build-target", S.MEDIUM, B,
         "BUILD/SETITEM/APPEND applied to an object the weights-only loader does not allow "
         "it on (state set on an arbitrary object).",
         "Re-save the checkpoint as a plain state dict."),
    # --- pickle program structure ----------------------------------------------------------
    Rule("CKG201", "truncated-pickle", S.MEDIUM, U,
         "The pickle program ends before STOP (truncated file).",
         "Re-download the file; what was read before the cut is still reported."),
    Rule("CKG202", "malformed-pickle", S.HIGH, B,
         "The pickle program is malformed (invalid opcode, stack underflow, bad literal, memo "
         "miss); pickle readers may disagree on it.",
         "Do not load this file; a checkpoint written by torch.save is never malformed."),
    Rule("CKG203", "data-after-stop", S.HIGH, B,
         "Bytes follow the STOP opcode of a pickle: a hidden second program or payload.",
         "Do not load this file."),
    Rule("CKG204", "parser-differential", S.HIGH, B,
         "A construct that pickle implementations decode differently (FRAME misuse, odd literal "
         "forms, non-UTF-8 names).",
         "Do not load this file; it may read differently in the loader than in any scanner."),
    # --- zip container ----------------------------------------------------------------------
    Rule("CKG301", "zip-duplicate-name", S.HIGH, B,
         "Two archive members have the same name, or names equal up to case; zip readers pick "
         "different ones.",
         "Do not load this file; torch.save never writes duplicate names."),
    Rule("CKG302", "zip-header-mismatch", S.HIGH, B,
         "A member's local header disagrees with its central-directory entry (name, sizes, "
         "method, flags).",
         "Do not load this file; streaming and central-directory readers would see different "
         "content."),
    Rule("CKG303", "zip-crc-mismatch", S.HIGH, B,
         "A member's bytes do not match their CRC-32.",
         "Re-download the file; if it persists, treat it as tampered."),
    Rule("CKG304", "zip-unsupported-flags", S.HIGH, B,
         "A member is encrypted or uses general-purpose flag bits ckptguard does not accept.",
         "Re-save the checkpoint without encryption."),
    Rule("CKG305", "zip-compression", S.HIGH, B,
         "A member uses compression other than stored (or a tensor record is compressed, which "
         "torch's mmap loader reads as raw bytes).",
         "Re-save with torch.save (records are stored uncompressed)."),
    Rule("CKG306", "zip-overlap", S.HIGH, B,
         "Archive members overlap or extend beyond the file.",
         "Do not load this file; overlapping members are a zip-bomb and parser-confusion shape."),
    Rule("CKG307", "zip-multiple-eocd", S.HIGH, B,
         "More than one end-of-central-directory record: readers choose different ones.",
         "Do not load this file."),
    Rule("CKG308", "zip-path-traversal", S.HIGH, B,
         "A member name is absolute, contains '..', backslashes or control characters.",
         "Do not extract or load this file."),
    Rule("CKG309", "zip-hidden-pickle", S.HIGH, B,
         "A member that torch never reads contains a pickle program (audited as well).",
         "Do not load this file: a second tool may read the hidden member."),
    Rule("CKG310", "zip-malformed", S.HIGH, B,
         "The zip structure is invalid (no or corrupt EOCD, central directory, Zip64 records).",
         "Re-download or re-save the file."),
    Rule("CKG311", "torch-record-missing", S.MEDIUM, B,
         "A record torch needs (data.pkl, version) is missing or unreadable, or members sit "
         "outside the archive's top folder.",
         "Re-save the checkpoint with torch.save."),
    Rule("CKG312", "zip-unused-member", S.LOW, N,
         "A member is neither a torch record nor referenced by the pickle.",
         "Harmless for torch; remove it when re-saving."),
    # --- tensor records ---------------------------------------------------------------------
    Rule("CKG401", "malformed-storage-record", S.HIGH, B,
         "A storage persistent id is malformed (not ('storage', type, key, location, numel)).",
         "Do not load this file."),
    Rule("CKG402", "missing-storage-record", S.HIGH, B,
         "A tensor references a storage record that is not in the archive.",
         "Do not load this file; torch's mmap path would read other bytes of the file."),
    Rule("CKG403", "storage-size-mismatch", S.HIGH, B,
         "A storage's declared size (numel x itemsize) differs from its record's size.",
         "Do not load this file; torch's mmap path would read past the record into other bytes."),
    Rule("CKG404", "view-out-of-bounds", S.HIGH, B,
         "A tensor view (offset, shape, stride) reaches outside its storage.",
         "Do not load this file."),
    Rule("CKG405", "bad-shape-or-stride", S.HIGH, B,
         "A tensor has a negative, non-integer or overflowing size, stride or offset.",
         "Do not load this file."),
    Rule("CKG406", "storage-dtype-conflict", S.HIGH, B,
         "One storage key is referenced with different types or sizes.",
         "Do not load this file."),
    Rule("CKG407", "unknown-device", S.LOW, N,
         "A storage names a device location ckptguard does not recognise.",
         "Pass map_location when loading."),
    Rule("CKG408", "malformed-tensor-record", S.MEDIUM, B,
         "A tensor rebuild call has arguments of the wrong shape or type.",
         "Re-save the checkpoint with torch.save."),
    # --- safetensors ------------------------------------------------------------------------
    Rule("CKG501", "safetensors-header", S.HIGH, B,
         "The safetensors header is invalid (length field, UTF-8, JSON object, types).",
         "Re-download or re-save the file with the safetensors library."),
    Rule("CKG502", "safetensors-duplicate-key", S.HIGH, B,
         "The safetensors header JSON repeats a key: JSON parsers keep different copies.",
         "Do not load this file."),
    Rule("CKG503", "safetensors-dtype", S.HIGH, B,
         "A tensor has an unknown dtype.",
         "Re-save the file with a current safetensors."),
    Rule("CKG504", "safetensors-offsets", S.HIGH, B,
         "Tensor offsets are not sorted, contiguous, non-overlapping and covering the data "
         "region exactly, or shape x itemsize differs from the byte span.",
         "Do not load this file; it can hide bytes or alias tensors."),
    Rule("CKG505", "safetensors-metadata", S.MEDIUM, B,
         "__metadata__ is not a string-to-string map.",
         "Re-save the file with the safetensors library."),
    Rule("CKG506", "safetensors-tensor-name", S.MEDIUM, B,
         "A tensor name is empty or holds control or non-printable characters.",
         "Re-save the file with printable tensor names."),
    # --- numpy ------------------------------------------------------------------------------
    Rule("CKG601", "npy-header", S.HIGH, B,
         "The .npy header is invalid (magic, version, length, dict literal, keys).",
         "Re-save the array with numpy.save."),
    Rule("CKG602", "npy-object-dtype", S.MEDIUM, B,
         "The array has an object dtype: its data is a pickle (audited as well).",
         "Save plain numeric arrays; numpy.load(allow_pickle=True) runs the embedded pickle."),
    Rule("CKG603", "npy-size-mismatch", S.HIGH, B,
         "The array's shape x itemsize differs from the data that follows the header.",
         "Re-save the array with numpy.save."),
    # --- model folders ----------------------------------------------------------------------
    Rule("CKG701", "shard-index-invalid", S.HIGH, B,
         "A sharded checkpoint's index json is invalid (JSON, weight_map, shard names).",
         "Re-save the sharded checkpoint with its library."),
    Rule("CKG702", "shard-outside-folder", S.HIGH, B,
         "A weight_map entry names a file outside the checkpoint folder (path, link).",
         "Do not load this checkpoint."),
    Rule("CKG703", "shard-missing", S.HIGH, B,
         "A shard named by the index is missing.",
         "Re-download the checkpoint."),
    Rule("CKG704", "shard-tensor-mismatch", S.HIGH, B,
         "The index and the shards disagree about which tensors exist where (a tensor missing "
         "from its shard, in two shards, or a shard outside the index).",
         "Do not load this checkpoint; tensors could be swapped silently."),
    Rule("CKG705", "remote-code", S.HIGH, B,
         "The model folder ships Python code or an auto_map: trust_remote_code=True would run it.",
         "Review the listed code before ever passing trust_remote_code=True."),
    # --- limits and audit failures ----------------------------------------------------------
    Rule("CKG901", "limit-exceeded", S.MEDIUM, U,
         "A resource limit was reached before the audit finished.",
         "Raise the named limit on purpose if the file is legitimately large."),
    Rule("CKG902", "audit-error", S.MEDIUM, U,
         "The audit of a stream failed unexpectedly; the file is not proven safe.",
         "Please report this with the file's report (no need to share the file)."),
)

RULES: dict[str, Rule] = {r.id: r for r in _RULES}
assert len(RULES) == len(_RULES), "duplicate rule id"


def rule(rule_id: str) -> Rule:
    return RULES[rule_id]


def make_finding(
    rule_id: str,
    message: str,
    location: Location,
    *,
    evidence: dict[str, str] | None = None,
    severity: Severity | None = None,
    advice: str | None = None,
) -> Finding:
    """Build a finding for a registered rule. ``severity`` may raise the rule's default
    (a denylist hit found through an odd shape stays CRITICAL), never lower a blocking rule
    below MEDIUM."""
    r = RULES[rule_id]
    sev = r.severity if severity is None else severity
    return Finding(
        rule_id=r.id,
        severity=sev,
        effect=r.effect,
        message=message,
        location=location,
        evidence=tuple(sorted((evidence or {}).items())),
        advice=r.advice if advice is None else advice,
    )


__all__ = ["RULES", "Rule", "make_finding", "rule"]
