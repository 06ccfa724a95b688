"""torch.export archives (``torch.export.save`` -> ``.pt2``), as torch 2.13's
``torch.export.load`` / ``torch.export.pt2_archive._package.load_pt2`` read them.

Layout (under the archive folder, like a torch zip)::

    archive_format                      "pt2"
    archive_version                     "0" (load_pt2 refuses anything else)
    byteorder, .data/version, .data/serialization_id
    models/<name>.json                  the serialized ExportedProgram (JSON)
    data/sample_inputs/<name>.pt        torch.save archive: torch.load(weights_only=True,
                                        falling back to weights_only=False)
    data/weights/<name>_weights_config.json, data/constants/<name>_constants_config.json
                                        JSON payload configs: path_name, use_pickle,
                                        tensor_meta
    data/weights/weight_N, data/constants/tensor_N
                                        raw tensor bytes (use_pickle false), or a torch.save
                                        archive loaded with torch.load(weights_only=False)
    data/constants/custom_obj_N         TorchScript pickle (torch._C._pickle_load_obj)
    data/constants/opaque_obj_N         plain pickle (pickle.loads)
    data/weights/<name>.pt, data/constants/<name>.pt   legacy: torch.save archives
    extra/*                             strings handed back to the caller
    data/aotinductor/**                 compiled AOTInductor packages: a shared library that
                                        load_pt2 dlopens (CKG822)

Everything that holds a pickle or an archive is audited with the full engine (nested.py);
raw weight blobs are data and only their sizes are checked against the config (CKG825).
Two JSON strings are evaluated as Python by torch: every ``expr_str`` (``sympy.sympify``
at load time) and every ``guards_code`` entry (``exec`` when ``ep.module()`` is built).
They must be plain expressions (CKG823, CRITICAL otherwise). Members outside the layout
are noted (CKG824), and audited too when they hold a pickle or an archive.

Members outside the archive folder are another program (``audit_outside``). load_pt2 refuses
such an archive (RuntimeError: "file in archive is not in a subdirectory"), and
``torch.export.load`` then falls back to the torch 2.7 layout: Python's ``zipfile`` opens the
file, a top-level ``version`` must exist (``"8.x"``: SCHEMA_VERSION's major), every member is
read, and by exact name ``serialized_exported_program.json`` goes to
``torch._export.serde.serialize.deserialize`` (the same ExportedProgram schema as
models/*.json: every expr_str is sympify'd) while ``serialized_{state_dict,constants,
example_inputs}.pt`` and the deprecated ``serialized_{state_dict,constants}.json`` go to
``deserialize_torch_artifact`` (b"" -> {}, else ``torch.load(weights_only=True)``, then
``weights_only=False`` when that fails); ``extra_files*`` members are decoded as text for
the caller. Those members are audited exactly so (whether or not ``version`` is there), and
any member outside the folder is CKG821: torch.export.load either loads the fallback's
program instead of the folder's, or fails. Without a member outside the folder the fallback
finds no top-level ``version`` (Python's zipfile and miniz read the same names, CKG313
otherwise) and stops before reading anything.

Other readers of the same archive (DESIGN.md principle 2): ``torch.load`` reads
``<folder>/data.pkl`` of ANY zip (found as miniz finds it, ignoring ASCII case) and unpickles
it with torch's persistent ids resolving to ``<folder>/data/<key>``, so a data.pkl is
audited as a torch zip's data.pkl, from its first byte, whatever it sniffs as; numpy.load's
npz reading of ``\\x93NUMPY`` members runs in ``torchfile.audit_zip``. Every member the
.pt2 loader unpickles is audited as that loader reads it (``opaque_obj_N`` as a pickle from
byte 0 even when its head sniffs as something else); sniffing only decides for members no
reader unpickles.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from ..context import AuditContext, LimitExceeded
from ..detect import sniff
from ..model import Format, TensorInfo
from ..primitives import escape
from ..readers.jsonfile import JsonError, parse_json
from ..readers.zipfile import STORED, ZipArchive, ZipEntry
from .nested import NestedResult, audit_data, audit_range
from .records import check_byteorder, read_small_record
from .tensors import StorageCatalog
from .vm import PickleMode, audit_after_stop, audit_pickle

ARCHIVE_VERSION = b"0"
_NESTABLE = frozenset({Format.ZIP, Format.PICKLE, Format.TORCH_LEGACY,
                       Format.TORCH_LEGACY_TAR})
_MODEL = re.compile(r"models/([^/]+)\.json\Z")
_SAMPLE = re.compile(r"data/sample_inputs/([^/]+)\.pt\Z")
_CONFIG = re.compile(r"data/(weights|constants)/([^/]+)_(weights|constants)_config\.json\Z")
_LEGACY_PAYLOAD = re.compile(r"data/(weights|constants)/([^/]+)\.pt\Z")
_TORCH_RECORDS = frozenset({"byteorder", ".data/version", ".data/serialization_id",
                            ".format_version", ".storage_alignment", "version"})
#: torch._export.serde.schema.ScalarType code -> (torch dtype name, item size) (torch 2.13)
_SCALAR_TYPES = {1: ("uint8", 1), 2: ("int8", 1), 3: ("int16", 2), 4: ("int32", 4),
                 5: ("int64", 8), 6: ("float16", 2), 7: ("float32", 4), 8: ("float64", 8),
                 9: ("complex32", 4), 10: ("complex64", 8), 11: ("complex128", 16),
                 12: ("bool", 1), 13: ("bfloat16", 2), 28: ("uint16", 2),
                 29: ("float8_e4m3fn", 1), 30: ("float8_e5m2", 1), 31: ("float8_e4m3fnuz", 1),
                 32: ("float8_e5m2fnuz", 1), 33: ("float8_e8m0fnu", 1), 34: ("uint32", 4),
                 35: ("uint64", 8)}


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def audit_pt2(ctx: AuditContext, archive: ZipArchive, records: dict[str, ZipEntry],
              prefix: str) -> Format:
    ctx.add("CKG820", "torch.export archive (ExportedProgram): weights, constants, sample "
            "inputs and the program's expressions were audited; calling the program runs "
            "its graph", evidence={"models": ", ".join(
                sorted(m.group(1) for r in records if (m := _MODEL.match(r))))[:300]})
    _check_small(ctx, archive, records)
    raw_payloads: dict[str, list[tuple[str, dict[str, Any]]]] = {}  # rel -> (fqn, meta)
    nested_payloads: dict[str, str] = {}  # rel -> the reader: "torch.load", "pickle", ...
    done: set[str] = set()
    for rel in sorted(records):
        e = records[rel]
        if _MODEL.match(rel):
            _audit_model(ctx, archive, e)
            done.add(rel)
        elif (m := _CONFIG.match(rel)) is not None:
            _read_config(ctx, archive, e, m.group(1), records, raw_payloads, nested_payloads)
            done.add(rel)
    models = {m.group(1) for r in records if (m := _MODEL.match(r))}
    if not models:
        ctx.add("CKG821", "the archive has no models/<name>.json: not an exported program "
                "torch.export.load can read")
    for name in sorted(models):
        for need in (f"data/sample_inputs/{name}.pt",):
            if need not in records:
                ctx.add("CKG821", f"models/{name}.json has no {need} (torch.export.load "
                        "fails)", member=prefix + need)
        for kind in ("weights", "constants"):
            if f"data/{kind}/{name}_{kind}_config.json" not in records and \
                    f"data/{kind}/{name}.pt" not in records:
                ctx.add("CKG821", f"models/{name}.json has no {kind} config (torch.export.load "
                        "fails)", member=f"{prefix}data/{kind}/{name}_{kind}_config.json")
    aoti = sorted(r for r in records if r.startswith("data/aotinductor/"))
    if aoti:
        ctx.add("CKG822", f"{len(aoti)} AOTInductor member(s) (data/aotinductor/): "
                "torch.export.load loads the compiled shared library they carry",
                member=prefix + aoti[0], evidence={"members": ", ".join(aoti[:10])[:500]})
    for rel in sorted(records):
        if rel in done or rel in _TORCH_RECORDS or rel in ("archive_format", "archive_version"):
            continue
        e = records[rel]
        if rel.endswith("/") or rel.startswith("data/aotinductor/"):
            continue
        if rel in raw_payloads:
            for fqn, tm in raw_payloads[rel]:  # several views may share one blob
                _check_raw(ctx, e, fqn, tm)
            continue
        if rel == "data.pkl":  # (records are keyed as miniz finds them: DATA.PKL too)
            _torch_load_reading(ctx, archive, records, e)
            continue
        reader = nested_payloads.get(rel) or (
            "torch.load" if _SAMPLE.match(rel) or _LEGACY_PAYLOAD.match(rel) else None)
        if reader == "pickle.loads" and not _sniffs_pickle(archive, e):
            _raw_pickle(ctx, archive, e)
            continue
        if rel.startswith("extra/") and reader is None:
            if _nestable(archive, e):
                _nested(ctx, archive, e)
            continue
        if reader is not None:
            result = _nested(ctx, archive, e)
            if reader == "torch.load" and result.format not in (Format.TORCH_ZIP,
                                                                Format.TORCH_LEGACY):
                ctx.add("CKG821", f"{e.name} holds {result.format.value} content, not the "
                        "torch.save archive torch.export.load reads there", member=e.name)
            continue
        ctx.add("CKG824", f"{e.name} is not part of the torch.export layout; "
                "torch.export.load never reads it", member=e.name)
        if _nestable(archive, e):
            _nested(ctx, archive, e)
    return Format.TORCH_EXPORT


#: torch.export.load's torch 2.7 fallback (torch/export/__init__.py, ``load``), by the exact
#: names Python's zipfile gives the top-level members it keeps
FALLBACK_VERSION = "version"
FALLBACK_PROGRAM = "serialized_exported_program.json"
#: handed to ``deserialize_torch_artifact``: torch.load(weights_only=True), then False
FALLBACK_TORCH_LOAD = frozenset({"serialized_state_dict.pt", "serialized_constants.pt",
                                 "serialized_example_inputs.pt", "serialized_state_dict.json",
                                 "serialized_constants.json"})
FALLBACK_EXTRA = "extra_files"  # a prefix: decoded as UTF-8 text for the caller
_FALLBACK_READER = "torch.export.load (torch 2.7 fallback)"


def _python_name(e: ZipEntry) -> str:
    """The name CPython's zipfile gives the member (cut at the first NUL; a name that reads
    differently otherwise is already CKG313)."""
    return e.name.split("\0", 1)[0]


def audit_outside(ctx: AuditContext, archive: ZipArchive, outside: list[ZipEntry]) -> None:
    """Members outside the archive folder: load_pt2 refuses the archive and torch.export.load
    falls back to the torch 2.7 layout (module docstring). The members that fallback reads
    are audited as it reads them; the others by content."""
    if not outside:
        return
    named = [(_python_name(e), e) for e in outside]
    versions = [e for n, e in named if n == FALLBACK_VERSION]
    shown = ", ".join(escape(e.name, 80) for e in outside[:10])[:500]
    if versions:
        raw = read_small_record(ctx, archive, versions[-1], "CKG821")  # zipfile: the last
        text = escape(raw.decode("utf-8", "replace"), 40) if raw is not None else "?"
        ctx.metadata["pt2.fallback_version"] = text
        ctx.add("CKG821", f"{len(outside)} member(s) lie outside the archive folder: load_pt2 "
                "refuses the archive (RuntimeError) and torch.export.load falls back to its "
                f"torch 2.7 reader, which finds the top-level version ({text!r}) and loads "
                f"{FALLBACK_PROGRAM} (every expr_str through sympy.sympify) and the "
                "serialized_*.pt members (torch.load, weights_only=False when weights_only="
                "True fails) instead of the folder's program; audited as it reads them",
                member=versions[-1].name,
                evidence={"members": shown, "reader": _FALLBACK_READER})
    else:
        ctx.add("CKG821", f"{len(outside)} member(s) lie outside the archive folder: load_pt2 "
                "refuses the archive (RuntimeError) and torch.export.load's torch 2.7 "
                "fallback finds no top-level 'version': torch.export.load fails",
                member=outside[0].name, evidence={"members": shown})
    for n, e in named:
        if n == FALLBACK_VERSION:
            continue
        if n == FALLBACK_PROGRAM:
            _audit_model(ctx, archive, e, meta="pt2.fallback")
        elif n in FALLBACK_TORCH_LOAD:
            _fallback_torch_load(ctx, archive, e)
        elif n.startswith(FALLBACK_EXTRA):  # text for the caller; other readers by content
            if not e.name.endswith("/") and _nestable(archive, e):
                _nested(ctx, archive, e)
        else:
            ctx.add("CKG824", f"{e.name} lies outside the archive folder; torch.export.load's "
                    "torch 2.7 fallback inflates it but does not use it (CKG821: load_pt2 "
                    "refuses the archive)", member=e.name)
            if not e.name.endswith("/") and _nestable(archive, e):
                _nested(ctx, archive, e)


def _fallback_torch_load(ctx: AuditContext, archive: ZipArchive, e: ZipEntry) -> None:
    """A serialized_*.pt/.json member of the torch 2.7 fallback: ``deserialize_torch_artifact``
    returns {} for no bytes, else ``torch.load``s them (weights_only=False on failure)."""
    if e.size == 0:
        return  # zipfile reads b"" (or fails its CRC check)
    result = _nested(ctx, archive, e)
    if result.format not in (Format.TORCH_ZIP, Format.TORCH_LEGACY):
        ctx.add("CKG821", f"{e.name} holds {result.format.value} content, not the torch.save "
                "archive torch.export.load's torch 2.7 fallback torch.loads from it "
                "(weights_only=False when weights_only=True fails)", member=e.name,
                evidence={"reader": _FALLBACK_READER})


# --- records ---------------------------------------------------------------------------------

def _small(ctx: AuditContext, archive: ZipArchive, e: ZipEntry) -> bytes | None:
    return read_small_record(ctx, archive, e, "CKG821")


def _check_small(ctx: AuditContext, archive: ZipArchive, records: dict[str, ZipEntry]) -> None:
    af = records.get("archive_format")
    fmt = None if af is None else _small(ctx, archive, af)
    if af is None:
        ctx.add("CKG821", "no archive_format record (torch.export.save writes 'pt2')")
    elif fmt is not None and fmt != b"pt2":
        ctx.add("CKG821", f"archive_format is {escape(fmt.decode('latin-1'), 40)!r}, not 'pt2'",
                member=af.name)
    ver = records.get("archive_version")
    if ver is None:
        ctx.add("CKG821", "no archive_version record (load_pt2 fails)")
    else:
        raw = _small(ctx, archive, ver)
        if raw is not None and raw != ARCHIVE_VERSION:
            ctx.add("CKG821", f"archive_version {escape(raw.decode('latin-1'), 40)!r}: torch "
                    "2.13's load_pt2 reads version 0 only (other readers may differ)",
                    member=ver.name)
        elif raw is not None:
            ctx.metadata["pt2.archive_version"] = raw.decode()
    check_byteorder(ctx, archive, records, "CKG821")


def _json(ctx: AuditContext, archive: ZipArchive, e: ZipEntry) -> Any:
    data = archive.read(e, max_bytes=ctx.limits.max_header_bytes)
    try:
        parsed = parse_json(data, max_depth=max(ctx.limits.max_json_depth, 256))
    except JsonError as err:
        if err.kind == "depth":
            raise LimitExceeded("max_json_depth", max(ctx.limits.max_json_depth, 256),
                                e.name) from None
        ctx.add("CKG821", f"{e.name} is not valid JSON ({escape(err.detail, 200)})",
                member=e.name)
        return None
    if parsed.duplicates:
        ctx.add("CKG821", f"{e.name} repeats the key {escape(parsed.duplicates[0], 80)!r}: "
                "JSON parsers keep different copies", member=e.name)
    return parsed.value


# --- models/<name>.json: the program's expressions --------------------------------------------

def _audit_model(ctx: AuditContext, archive: ZipArchive, e: ZipEntry, *,
                 meta: str = "pt2") -> None:
    value = _json(ctx, archive, e)
    if value is None:
        return
    if not isinstance(value, dict) or "graph_module" not in value:
        ctx.add("CKG821", f"{e.name} is not a serialized ExportedProgram", member=e.name)
        return
    exprs = guards = 0
    stack: list[Any] = [value]
    budget = ctx.limits.max_container_items
    while stack:
        v = stack.pop()
        budget -= 1
        if budget < 0:
            raise LimitExceeded("max_container_items", ctx.limits.max_container_items, e.name)
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "expr_str":
                    exprs += 1
                    _check_expr(ctx, e, x)
                elif k == "guards_code":
                    for g in x if isinstance(x, list) else [x]:
                        guards += 1
                        _check_guard(ctx, e, g)
                else:
                    stack.append(x)
        elif isinstance(v, list):
            stack.extend(v)
    ctx.metadata[f"{meta}.expressions"] = str(exprs)
    ctx.metadata[f"{meta}.guards"] = str(guards)


#: names sympy.sympify may CALL in an expr_str: sympy's own constructors and torch's
#: symbolic functions (torch.utils._sympy.functions), nothing that does I/O or evaluates
SYMPY_CALLABLES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min",
    "Abs", "sqrt", "floor", "ceiling", "Eq", "Ne", "Lt", "Le", "Gt", "Ge",
    "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality",
    "Unequality", "And", "Or", "Not", "Piecewise", "ExprCondPair", "BooleanTrue",
    "BooleanFalse",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow",
    "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat",
    "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "BitwiseFn_bitwise_and",
    "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor", "OpaqueUnaryFn_sqrt", "OpaqueUnaryFn_exp",
    "OpaqueUnaryFn_log", "OpaqueUnaryFn_cos", "OpaqueUnaryFn_sin", "OpaqueUnaryFn_tan",
    "OpaqueUnaryFn_cosh", "OpaqueUnaryFn_sinh", "OpaqueUnaryFn_tanh", "OpaqueUnaryFn_asin",
    "OpaqueUnaryFn_acos", "OpaqueUnaryFn_atan", "OpaqueUnaryFn_log2",
})
_PLAIN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*\Z")
_MAX_EXPR = 10_000
_ARITH = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub,
          ast.UAdd, ast.Not, ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt,
          ast.GtE, ast.BitAnd, ast.BitOr, ast.BitXor, ast.LShift, ast.RShift, ast.Invert)


def _parse_expression(text: object) -> ast.Expression | str:
    """``text`` parsed as one bounded Python expression, or why it is not one."""
    if not isinstance(text, str):
        return f"a {type(text).__name__}, not a string"
    if len(text) > _MAX_EXPR:
        return f"{len(text)} characters long"
    try:
        return ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "not a Python expression"


def expr_problem(text: object) -> str | None:
    """Why ``text`` is not a plain sympy expression sympify may evaluate, or None."""
    tree = _parse_expression(text)
    if isinstance(tree, str):
        return tree
    return _walk(tree, calls=SYMPY_CALLABLES, attrs={}, subscript_root=None)


#: guard code: L['x'].size()[0] <= 64 and the like; the methods a guard may call
_GUARD_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
_GUARD_CALLS = frozenset({"Max", "Min", "FloorDiv", "Mod", "PythonMod", "CeilDiv", "CleanDiv",
                          "IntTrueDiv", "FloatTrueDiv", "ModularIndexing", "Eq", "Ne",
                          "ToFloat", "TruncToInt", "floor", "ceiling", "sqrt", "abs", "len",
                          "int", "float", "bool"})
_MATH_FUNCS = frozenset({"floor", "ceil", "trunc", "sqrt", "log2", "isnan", "isinf"})


def guard_problem(text: object) -> str | None:
    """Why a guards_code entry is not a plain guard expression, or None."""
    tree = _parse_expression(text)
    if isinstance(tree, str):
        return tree
    return _walk(tree, calls=_GUARD_CALLS, attrs={"math": _MATH_FUNCS}, subscript_root="L")


#: sympy constructors whose first argument may be a string they parse WITHOUT eval (a
#: string anywhere else reaches sympify's parser, which evaluates it: Max('...'))
_STRING_ARG_CALLS = frozenset({"Symbol", "Float"})


def _walk(tree: ast.AST, *, calls: frozenset[str], attrs: dict[str, frozenset[str]],
          subscript_root: str | None) -> str | None:
    strings_ok: set[int] = set()  # ids of the string constants allowed where they are
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in _STRING_ARG_CALLS and node.args:
            strings_ok.add(id(node.args[0]))
        elif isinstance(node, ast.Subscript) and subscript_root is not None:
            strings_ok.add(id(node.slice))
    for node in ast.walk(tree):
        match node:
            case ast.Expression() | ast.Load() | ast.keyword() | ast.Tuple():
                continue
            case ast.BinOp() | ast.UnaryOp() | ast.BoolOp() | ast.Compare():
                continue
            case ast.Constant(value=str()):
                if id(node) not in strings_ok:
                    return "holds a string literal where sympy would parse (evaluate) it"
                continue
            case ast.Constant(value=v):
                if v is not None and not isinstance(v, (int, float, bool)):
                    return f"holds a {type(v).__name__} literal"
                continue
            case ast.Name(id=name):
                if not _PLAIN_NAME.match(name) and name != subscript_root:
                    return f"names {name[:40]!r}"
                continue
            case ast.Call(func=ast.Name(id=fn), args=_, keywords=kws):
                if fn not in calls:
                    return f"calls {fn[:40]!r}"
                if any(k.arg is None for k in kws):
                    return "passes **kwargs"
                continue
            case ast.Call(func=ast.Attribute(value=ast.Name(id=mod), attr=fn)) if fn in attrs.get(
                    mod, frozenset()):
                continue
            case ast.Call(func=ast.Attribute(attr=meth)) if (
                    subscript_root is not None and meth in _GUARD_METHODS):
                continue
            case ast.Attribute(value=ast.Name(id=mod), attr=fn) if fn in attrs.get(
                    mod, frozenset()):
                continue
            case ast.Attribute(attr=meth) if subscript_root is not None and meth in \
                    _GUARD_METHODS:
                continue
            case ast.Subscript(slice=ast.Constant(value=int() | str())) \
                    if subscript_root is not None:
                continue
            case _ if isinstance(node, _ARITH):
                continue
            case _:
                return f"uses {type(node).__name__}"
    return None


def _check_expr(ctx: AuditContext, e: ZipEntry, text: object) -> None:
    why = expr_problem(text)
    if why is not None:
        ctx.add("CKG823", f"{e.name}: an expr_str {why}; torch.export.load evaluates it with "
                "sympy.sympify", member=e.name,
                evidence={"expr_str": escape(str(text), 300)})


def _check_guard(ctx: AuditContext, e: ZipEntry, text: object) -> None:
    why = guard_problem(text)
    if why is not None:
        ctx.add("CKG823", f"{e.name}: a guards_code entry {why}; ExportedProgram.module() "
                "exec()s it", member=e.name, evidence={"guards_code": escape(str(text), 300)})


# --- payload configs ------------------------------------------------------------------------

def _read_config(ctx: AuditContext, archive: ZipArchive, e: ZipEntry, kind: str,
                 records: dict[str, ZipEntry], raw: dict[str, list[tuple[str, dict[str, Any]]]],
                 nested: dict[str, str]) -> None:
    value = _json(ctx, archive, e)
    if value is None:
        return
    config = value.get("config") if isinstance(value, dict) else None
    if not isinstance(config, dict):
        ctx.add("CKG821", f"{e.name} has no 'config' object", member=e.name)
        return
    for fqn, meta in config.items():
        shown = escape(str(fqn), 120)
        if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
            ctx.add("CKG825", f"{e.name}: entry {shown!r} has no path_name", member=e.name)
            continue
        path_name = meta["path_name"]
        # records are keyed as torch looks them up (miniz: ASCII case-insensitive)
        rel = f"data/{kind}/{path_name}".translate(_ASCII_LOWER)
        if "/" in path_name or path_name in ("", ".", "..") or rel not in records:
            ctx.add("CKG825", f"{e.name}: {shown!r} names {escape(path_name, 120)!r}, which "
                    "is not a member of the archive (torch.export.load fails)", member=e.name)
            continue
        use_pickle = meta.get("use_pickle") is True
        if kind == "constants" and path_name.startswith("custom_obj_"):
            nested[rel] = "torch._C._pickle_load_obj"
        elif kind == "constants" and path_name.startswith("opaque_obj_"):
            nested[rel] = "pickle.loads"
        elif kind == "constants" and not path_name.startswith("tensor_"):
            ctx.add("CKG825", f"{e.name}: constant {shown!r} is stored as "
                    f"{escape(path_name, 80)!r}, a kind torch.export.load refuses",
                    member=e.name)
        elif use_pickle:
            nested[rel] = "torch.load"  # weights_only=False
        else:
            tm = meta.get("tensor_meta")
            if not isinstance(tm, dict):
                ctx.add("CKG825", f"{e.name}: raw payload {shown!r} has no tensor_meta",
                        member=e.name)
                continue
            raw.setdefault(rel, []).append((str(fqn), tm))


def _ints(v: Any) -> list[int] | None:
    """[{"as_int": n}, ...] -> [n, ...] (None for symbolic or malformed sizes)."""
    if not isinstance(v, list):
        return None
    out = []
    for x in v:
        n = x.get("as_int") if isinstance(x, dict) else None
        if type(n) is not int:
            return None
        out.append(n)
    return out


def _check_raw(ctx: AuditContext, e: ZipEntry, fqn: str, tm: dict[str, Any]) -> None:
    """A raw blob must hold the strided view the config describes (as_strided would fail
    or, worse, read outside the blob otherwise)."""
    if e.method != STORED:
        ctx.add("CKG825", f"raw payload {e.name} is compressed: torch maps it as raw bytes",
                member=e.name, offset=e.header_offset)
        return
    code = tm.get("dtype")
    dtype, item = _SCALAR_TYPES.get(code, ("", None)) if type(code) is int else ("", None)
    sizes, strides = _ints(tm.get("sizes")), _ints(tm.get("strides"))
    off = tm.get("storage_offset")
    off_n = off.get("as_int") if isinstance(off, dict) else None
    if item is None or sizes is None or strides is None or type(off_n) is not int or \
            len(sizes) != len(strides):
        ctx.add("CKG825", f"{e.name}: tensor_meta of {escape(fqn, 120)!r} is not a plain "
                "dtype/sizes/strides/offset record", member=e.name)
        return
    numel_view = 1
    for n in sizes:
        numel_view *= max(n, 0)
    info = TensorInfo(name=fqn, dtype=dtype, shape=tuple(sizes), stride=tuple(strides),
                      storage=e.name, storage_offset=off_n, nbytes=numel_view * item,
                      storage_nbytes=e.size, data_offset=e.data_offset,
                      requires_grad=tm.get("requires_grad") is True)
    if e.size == 0:
        ctx.tensors.append(info)
        return  # torch builds zeros of the given size
    if e.size % item or any(s < 0 for s in sizes) or any(st < 0 for st in strides) or \
            off_n < 0:
        ctx.add("CKG825", f"{e.name}: {e.size} bytes do not fit {escape(fqn, 120)!r}'s "
                "tensor_meta", member=e.name)
        return
    numel = e.size // item
    span = 0 if 0 in sizes else off_n + sum((s - 1) * st for s, st in zip(sizes, strides,
                                                                           strict=True)) + 1
    if span > numel:
        ctx.add("CKG825", f"{e.name}: the view of {escape(fqn, 120)!r} needs {span} elements, "
                f"the blob holds {numel}", member=e.name)
        return
    ctx.tensors.append(info)


# --- nested files ---------------------------------------------------------------------------

def _nestable(archive: ZipArchive, e: ZipEntry) -> bool:
    if e.size == 0 or e.method not in (0, 8):
        return False
    head = archive.head(e, 4096)
    return sniff(head, max(e.size, len(head)))[0] in _NESTABLE


def _sniffs_pickle(archive: ZipArchive, e: ZipEntry) -> bool:
    if e.size == 0 or e.method not in (0, 8):
        return False
    head = archive.head(e, 4096)
    return sniff(head, max(e.size, len(head)))[0] is Format.PICKLE


def _raw_pickle(ctx: AuditContext, archive: ZipArchive, e: ZipEntry) -> None:
    """A member the .pt2 loader hands to ``pickle.loads`` whose head does not sniff as a
    pickle: pickle.loads reads it from byte 0 all the same (bytes after STOP ignored)."""
    if e.method not in (0, 8):
        return  # the zip reader's unsupported-method defect; no reader inflates it
    ctx.add("CKG824", f"{e.name} does not start like a pickle, but torch.export.load passes it "
            "to pickle.loads, which runs it from its first byte: audited as a pickle",
            member=e.name, evidence={"reader": "pickle.loads"})
    data = archive.read(e, record=True)
    audit_pickle(ctx, data, member=e.name, mode=PickleMode.RAW)


def _torch_load_reading(ctx: AuditContext, archive: ZipArchive,
                        records: dict[str, ZipEntry], e: ZipEntry) -> None:
    """``<folder>/data.pkl`` in a .pt2: torch.export.load never reads it, but torch.load
    (weights_only=False, mmap or not, path or open file) loads it as the checkpoint of this
    zip. Audited the way ``torchfile._torch_zip`` audits a torch zip's data.pkl: the whole
    member from byte 0, persistent ids resolving to ``<folder>/data/<key>``, whatever its
    head sniffs as."""
    ctx.add("CKG824", f"{e.name} is not part of the torch.export layout: torch.export.load "
            "never reads it, but torch.load reads it as this archive's data.pkl (audited as "
            "a torch checkpoint's pickle)", member=e.name, evidence={"reader": "torch.load"})
    if e.method not in (0, 8):
        return  # the zip reader's unsupported-method defect; miniz refuses it too
    catalog = StorageCatalog()
    for rel, r in records.items():
        if rel[:5] == "data/" and len(rel) > 5:
            catalog.records[rel[5:]] = (r.name, r.data_offset, r.size)
    data = archive.read(e, record=True)
    result = audit_pickle(ctx, data, member=e.name, base_offset=0, mode=PickleMode.TORCH_ZIP,
                          storages=catalog)
    if result.complete and result.end < len(data):
        audit_after_stop(ctx, data, result, e.name)


def _nested(ctx: AuditContext, archive: ZipArchive, e: ZipEntry) -> NestedResult:
    if e.method == STORED:
        return audit_range(ctx, e.data_offset, e.compressed_size, e.name)
    data = archive.read(e)
    return audit_data(ctx, data, e.data_offset, e.name)


__all__ = ["FALLBACK_PROGRAM", "FALLBACK_TORCH_LOAD", "FALLBACK_VERSION", "SYMPY_CALLABLES",
           "audit_outside", "audit_pt2", "expr_problem", "guard_problem"]
