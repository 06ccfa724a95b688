"""The rule registry: every finding ckptguard can emit, under a stable ID.

One table, one source of truth. Readers, the pickle VM, the engine, the report
formatters (SARIF rule metadata) and the docs all read it; a test checks that every rule
ID used anywhere in the package is registered here and documented in SECURITY.md.

ID ranges:
  CKG0xx  file and format level       CKG4xx  tensor records
  CKG1xx  globals and callables       CKG5xx  safetensors
  CKG2xx  pickle program structure    CKG6xx  numpy
  CKG3xx  zip container               CKG7xx  model folders, shards, remote code
  CKG8xx  distributed checkpoints (DCP) and torch.export archives
  CKG9xx  limits and audit failures
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import Effect, Finding, Location, Severity
from .primitives import or_default


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
    Rule("CKG011", "pickle-reading-polyglot", S.HIGH, B,
         "Read as a pickle from its first byte (pickle.load, numpy.load(allow_pickle=True), "
         "torch.load on an open file or a name not ending in .safetensors), the file is a "
         "program that reaches a global or a call, whatever format it also is.",
         "Do not load this file with any loader; the findings under '<pickle reading>' name "
         "what that reading imports and calls."),
    Rule("CKG012", "tar-reading-polyglot", S.HIGH, B,
         "The first 512 bytes are a tar header Python's tarfile accepts (a v7 header needs no "
         "'ustar' magic): torch.load (a path or an open file that is not a zip) reads the file "
         "as a legacy tar checkpoint and unpickles its members, whatever format it also is.",
         "Do not load this file with torch.load; the findings under the tar members name what "
         "their pickles import and call."),
    # --- globals and callables -------------------------------------------------------------
    Rule("CKG020", "torchscript-file-or-process-op", S.CRITICAL, B,
         "TorchScript code calls an operator that reads, maps or writes files, loads other "
         "serialized objects or reaches processes (torch.from_file, image.read_file, "
         "torch.save/load, ...); __setstate__ runs it at torch.jit.load.",
         "Never torch.jit.load this file."),
    Rule("CKG021", "torchscript-foreign-op", S.HIGH, B,
         "TorchScript code calls an operator of a namespace outside torch's own "
         "(torch.ops.<library>.<op>): native code of whatever library the process loaded.",
         "Review the code and the library before torch.jit.load."),
    Rule("CKG101", "code-execution-global", S.CRITICAL, B,
         "The pickle program reaches a known code-execution, file, process or network "
         "primitive.",
         "Do not load this file. Report it to the publisher and to the hub it came from."),
    Rule("CKG102", "benign-global", S.MEDIUM, B,
         "The pickle program imports a global outside the weights-only allowlist that is on "
         "ckptguard's reviewed BENIGN table (a data class or enum whose unpickling does no I/O "
         "and calls no user code).",
         "Not weights-only, but allowable: if you trust the file, choose the shipped profile "
         "that lists this global (--profile NAME) or allow it in a policy file with a reason."),
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
    Rule("CKG120", "unreviewed-global", S.HIGH, B,
         "The pickle program imports a global that is neither weights-only nor on the "
         "reviewed BENIGN table: unpickling it may run code of its library or of the file's "
         "author.",
         "Do not load this file unless you wrote it. Allowing the global needs an explicit "
         "acknowledgement in a policy (acknowledge_unreviewed = true); ckptguard never "
         "suggests one."),
    Rule("CKG121", "acknowledged-unreviewed-global", S.LOW, N,
         "An unreviewed global (HIGH) was allowed because the policy acknowledges it.",
         "Keep such entries few and reviewed; they are not on ckptguard's benign table."),
    Rule("CKG122", "numpy-object-dtype-in-pickle", S.HIGH, B,
         "A numpy dtype of kind object ('O') is rebuilt inside the pickle: object arrays "
         "hold arbitrary Python objects, not numbers, and no profile allows them.",
         "Save plain numeric arrays; do not load this file with a numpy profile."),
    Rule("CKG123", "profile-row-misuse", S.HIGH, B,
         "A global a profile or policy allows (a reviewed benign row) is used in a way its "
         "row does not cover: a data class or torch module called (running __init__ / "
         "__post_init__) instead of restored by NEWOBJ + BUILD, an enum given state or odd "
         "arguments, a reconstructor handed a callable, a value constructor asked for an "
         "unbounded value.",
         "Do not load this file: the profile's review does not cover what it does."),
    Rule("CKG112", "allocating-call", S.HIGH, B,
         "An allowlisted constructor is called with a size (torch.Tensor(n), a legacy tensor or "
         "storage type, bytearray(n)): the load allocates memory that is not backed by bytes "
         "in the file.",
         "Do not load this file: a small file can make the loader allocate gigabytes."),
    Rule("CKG113", "non-rebuild-call-through-rebuild", S.HIGH, B,
         "_rebuild_from_type_v2 calls something other than a tensor rebuild function, or "
         "converts to something other than a tensor class.",
         "Do not load this file; torch.save only writes tensor rebuilds there."),
    Rule("CKG114", "constructor-of-computed-value", S.HIGH, B,
         "An allowlisted data constructor (set, Counter, OrderedDict, torch.Size, ...) iterates "
         "or converts a value computed at load time, e.g. a tensor element by element.",
         "Do not load this file."),
    Rule("CKG117", "unusual-codec-call", S.MEDIUM, B,
         "_codecs.encode or bytearray(str, codec) is called in a form pickle and torch.save "
         "never write (another codec, a non-string argument).",
         "Do not load this file; other codecs import modules and expand their input."),
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
         "forms, non-UTF-8 names, a second BUILD on one object).",
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
    Rule("CKG313", "zip-reader-disagreement", S.HIGH, B,
         "CPython's zipfile (numpy.load for npz, every Python program) and miniz (torch) read "
         "different members, offsets or sizes from the archive, or only one can open it; or "
         "an entry carries an extra field outside the harmless kinds (e.g. the Unicode Path "
         "field 0x7075, which renames a member for CPython >= 3.12 and Info-ZIP unzip).",
         "Do not load this file: a reader other than the audited one would see other content."),
    Rule("CKG314", "zip64-extensible-data", S.HIGH, B,
         "The Zip64 end-of-central-directory record carries extensible data: Python's zipfile "
         "ignores the locator and reads another record than miniz.",
         "Re-save the archive; no checkpoint writer emits Zip64 extensible data."),
    Rule("CKG315", "zip-name-too-long", S.HIGH, B,
         "A member name does not fit torch's 512-byte name buffer: torch sees a truncated name.",
         "Re-save the checkpoint with torch.save."),
    Rule("CKG316", "zip-stored-size-mismatch", S.HIGH, B,
         "A stored member's compressed and uncompressed sizes differ (or a non-empty member "
         "has no compressed bytes): miniz refuses the archive, other readers do not.",
         "Re-save the checkpoint with torch.save."),
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
         "A tensor rebuild call has arguments of the wrong shape or type, or something "
         "changes a tensor after it is rebuilt (a state or backward hooks set on it, a BUILD "
         "on a Tensor or Parameter, keyword arguments to a tensor call).",
         "Re-save the checkpoint with torch.save."),
    # tensor invariants torch's loaders skip: checked on every tensor a loader rebuilt,
    # before it is handed out (ckptguard.loaders.invariants); the file is refused
    Rule("CKG420", "sparse-index-out-of-bounds", S.HIGH, B,
         "A sparse tensor's indices point outside its shape, or its compressed indices are "
         "not a valid (monotonic, in-range) index array; torch writes out of bounds on first "
         "use.",
         "Do not use this file; torch.load skips this check unless sparse invariant checking "
         "is on."),
    Rule("CKG421", "bad-quantization-parameters", S.HIGH, B,
         "A quantized tensor has a non-finite or non-positive scale, a zero point outside its "
         "dtype's range, a per-channel axis or parameter count that does not fit its shape, "
         "or no quantizer at all (a plain rebuild over a quantized storage).",
         "Do not use this file; re-quantize the model with torch's observers."),
    Rule("CKG422", "nested-tensor-out-of-bounds", S.HIGH, B,
         "A nested tensor's component sizes, strides or offsets reach outside its buffer or "
         "repeat elements (negative offset, zero stride).",
         "Do not use this file; re-save the nested tensor with torch.save."),
    Rule("CKG423", "unsupported-tensor-layout", S.HIGH, B,
         "A loaded tensor has a layout whose invariants ckptguard cannot check (for example "
         "mkldnn).",
         "Convert the tensor to a strided or sparse layout and re-save the checkpoint."),
    Rule("CKG430", "legacy-storage-view", S.HIGH, B,
         "A legacy storage persistent id carries view metadata (view key, offset, size) that "
         "torch's legacy loader applies and torch.save never writes.",
         "Re-save the checkpoint with a current torch.save."),
    Rule("CKG431", "legacy-rebuild-reads-unread-storage", S.HIGH, B,
         "A legacy torch stream rebuilds a tensor whose construction reads the values of "
         "other tensors (a nested tensor's sizes, strides and offsets), but the legacy loader "
         "reads storage bytes only after the whole pickle: torch builds it from "
         "uninitialized memory.",
         "Re-save the checkpoint with a current torch.save (the zip format)."),
    Rule("CKG440", "allocation-not-backed-by-file", S.HIGH, B,
         "A tensor rebuild allocates or copies more memory than the storage bytes it is built "
         "from (a device copy of a broadcast view, a quantized tensor larger than its storage, "
         "a storage copied twice).",
         "Do not load this file: a small file can make the loader allocate and touch gigabytes."),
    Rule("CKG441", "unaudited-tensor-argument", S.HIGH, B,
         "A rebuild function that takes tensors is given something that is not an audited "
         "tensor record (a literal, a call result, a constructor's allocation).",
         "Do not load this file."),
    Rule("CKG442", "tensor-without-data", S.HIGH, B,
         "A wrapper-subclass rebuild makes a tensor with no storage bytes on a real device.",
         "Load it only with the subclass's code reviewed; its data is not in the audited bytes."),
    # --- safetensors ------------------------------------------------------------------------
    Rule("CKG501", "safetensors-header", S.HIGH, B,
         "The safetensors header is invalid (length field, UTF-8, JSON object, types).",
         "Re-download or re-save the file with the safetensors library."),
    Rule("CKG502", "safetensors-duplicate-key", S.HIGH, B,
         "The safetensors header JSON repeats a key: JSON parsers keep different copies.",
         "Do not load this file."),
    Rule("CKG503", "safetensors-dtype", S.HIGH, B,
         "A tensor has a dtype the safetensors Python binding cannot load: unknown, in the "
         "crate's list but refused by the binding (F6), or F4 with an odd last dimension "
         "(torch loads F4 in pairs).",
         "Re-save the file with a current safetensors."),
    Rule("CKG504", "safetensors-offsets", S.HIGH, B,
         "Tensor offsets are not sorted, contiguous, non-overlapping and covering the data "
         "region exactly, or shape x itemsize differs from the byte span, or the shape's "
         "product overflows 64 bits as the crate folds it, or a tensor without elements "
         "needs a contiguous stride above 2**63-1 (torch refuses to build it).",
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
    Rule("CKG706", "hard-linked-file", S.LOW, N,
         "The file has more than one hard link: another path, possibly outside the model "
         "folder, names the same bytes.",
         "Harmless for this audit (the bytes were read); make sure nobody else can write the "
         "other path, or copy the file before loading."),
    # --- distributed checkpoints and torch.export archives -------------------------------
    Rule("CKG801", "dcp-benign-global", S.INFO, N,
         "A torch.distributed.checkpoint metadata class (or a path object) was allowed "
         "because the pickle is a DCP .metadata file; the allowance applies to that file only.",
         "Nothing to do; the reviewed list is policy/benign_formats.py."),
    Rule("CKG802", "dcp-metadata-invalid", S.HIGH, B,
         "A DCP .metadata pickle is not the Metadata object dcp.save writes (root, "
         "storage_data, storage entries), so the byte ranges torch would read cannot be "
         "checked.",
         "Do not load this checkpoint; re-save it with dcp.save."),
    Rule("CKG803", "dcp-path-outside", S.HIGH, B,
         "A DCP storage entry names a file that is not a plain file in the checkpoint folder "
         "(absolute path, '..', a separator, a link out): torch would read that file.",
         "Do not load this checkpoint."),
    Rule("CKG804", "dcp-range-invalid", S.HIGH, B,
         "A DCP storage entry's byte range does not lie inside its file, or the file is "
         "missing.",
         "Do not load this checkpoint; re-download or re-save it."),
    Rule("CKG805", "dcp-stream-transform", S.MEDIUM, U,
         "A DCP storage entry is stored through stream transforms (compression, encryption "
         "extensions) that ckptguard does not decode, so its payload is not audited.",
         "Re-save the checkpoint without storage extensions to audit it."),
    Rule("CKG806", "dcp-item-format", S.HIGH, B,
         "A DCP byte range does not hold the torch.save archive dcp.save writes there.",
         "Do not load this checkpoint."),
    Rule("CKG807", "dcp-unreferenced", S.LOW, N,
         "A .distcp file or part of one is named by no storage entry: torch never reads it.",
         "Harmless for torch; re-save the checkpoint to drop it."),
    Rule("CKG808", "dcp-item-mismatch", S.HIGH, B,
         "The DCP metadata and its storage disagree (a chunk without a storage entry, an "
         "entry without a chunk, a stored tensor whose dtype or shape differ from its chunk).",
         "Do not load this checkpoint; tensors could be swapped or mis-shaped."),
    Rule("CKG809", "dcp-shard-alone", S.MEDIUM, U,
         "A .distcp shard was scanned without its checkpoint folder: the byte ranges torch "
         "reads from it are only named by the folder's .metadata.",
         "Scan the checkpoint folder (the directory holding .metadata) instead."),
    Rule("CKG820", "pt2-program", S.LOW, N,
         "A torch.export archive (.pt2): an ExportedProgram whose graph runs when the program "
         "is called. Its weights, constants and nested pickles were audited.",
         "Calling the program runs its graph's operators; review models/*.json if the "
         "source is not trusted."),
    Rule("CKG821", "pt2-layout-invalid", S.HIGH, B,
         "The .pt2 archive does not follow torch.export's layout (archive_format, "
         "archive_version, byteorder, JSON configs and models), or has members outside the "
         "archive folder: load_pt2 then refuses it and torch.export.load falls back to its "
         "torch 2.7 reader, which loads the top-level members instead.",
         "Re-export the program with torch.export.save."),
    Rule("CKG822", "pt2-native-code", S.CRITICAL, B,
         "The .pt2 archive carries AOTInductor artifacts: torch.export.load loads the "
         "compiled shared library they contain (native code).",
         "Do not load this archive unless you compiled it yourself."),
    Rule("CKG823", "pt2-symbolic-eval", S.CRITICAL, B,
         "A symbolic shape expression (expr_str) in the exported program is not a plain "
         "arithmetic expression: torch.export.load passes it to sympy.sympify, which evaluates "
         "it as Python.",
         "Do not load this archive."),
    Rule("CKG824", "pt2-unknown-member", S.LOW, N,
         "A .pt2 member is not part of torch.export's layout and torch.export.load does not "
         "use it (inside the folder: not named by the layout; outside: not read by the torch "
         "2.7 fallback, and CKG821 blocks the archive).",
         "Harmless for torch.export.load; re-export to drop it."),
    Rule("CKG825", "pt2-payload-mismatch", S.HIGH, B,
         "A .pt2 weights or constants config disagrees with the archive (a missing member, a "
         "raw blob too small for its tensor view, an unknown payload kind).",
         "Do not load this archive; re-export it."),
    # --- limits and audit failures ----------------------------------------------------------
    Rule("CKG901", "limit-exceeded", S.MEDIUM, U,
         "A resource limit was reached before the audit finished.",
         "Raise the named limit on purpose if the file is legitimately large."),
    Rule("CKG902", "audit-error", S.MEDIUM, U,
         "The audit of a stream failed unexpectedly; the file is not proven safe.",
         "Please report this with the file's report (no need to share the file)."),
    # --- remote scans (http(s) URLs, hf:// ids) --------------------------------------------
    Rule("CKG910", "remote-unavailable", S.MEDIUM, U,
         "The remote file could not be read (not found, private or gated, refused range, "
         "timeout, connection or server error).",
         "Check the URL or hub id and your access (HF_TOKEN for private or gated repos), "
         "then scan again."),
    Rule("CKG911", "remote-changed", S.HIGH, U,
         "The remote file changed while it was read (ETag or If-Range mismatch), or the "
         "server's sizes contradict each other: no single version of the file was audited.",
         "Scan again; if it persists, download the file and scan the local copy."),
    Rule("CKG912", "remote-no-ranges", S.MEDIUM, U,
         "The server does not serve byte ranges and the file is larger than the streaming "
         "cap, so the audit could not read it.",
         "Download the file and scan it locally, or raise the cap with "
         "--limit max_remote_stream_bytes=N."),
    Rule("CKG913", "remote-unversioned", S.MEDIUM, U,
         "The file took several range requests and the server sends neither ETag nor "
         "Last-Modified, so the ranges cannot be proven to come from one version of it.",
         "Prefer a server or mirror that sends validators, or download and scan locally."),
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
    sev = or_default(severity, r.severity)
    return Finding(
        rule_id=r.id,
        severity=sev,
        effect=r.effect,
        message=message,
        location=location,
        evidence=tuple(sorted((evidence or {}).items())),
        advice=or_default(advice, r.advice),
    )


__all__ = ["RULES", "Rule", "make_finding", "rule"]
