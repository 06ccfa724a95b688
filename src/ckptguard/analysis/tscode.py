"""Grade a TorchScript archive by its code (issue 17 point 4).

``torch.jit.load`` compiles every ``code/**/*.py`` file of the archive and runs the
modules' ``__setstate__`` while loading; ``forward`` and the other methods run when the
module is called. TorchScript code cannot import Python modules, but it calls any
registered operator: ``torch.from_file`` maps (and with ``shared=True`` creates) an
arbitrary file, torchvision's ``ops.image.read_file`` / ``write_file`` read and write
files, and ``torch.ops.<namespace>`` reaches native code of whatever library the loading
process has loaded.

This module never executes or compiles the code. A bounded, tolerant scanner walks the
text once (comments and string literals skipped by ``str.find``, names matched by one
regex between them: linear in the file, never backtracking across it), tracks the
enclosing ``def`` and names every operator in ``SCRIPT_OPS``: CKG020 (CRITICAL) for file,
process and nested-load operators, CKG021 (HIGH) for operators of namespaces outside
torch's own.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from ..context import AuditContext, LimitExceeded
from ..primitives import escape


class OpKind(enum.Enum):
    FILE = "reads, maps or writes a file"
    NESTED_LOAD = "loads or saves another serialized object"
    PROCESS = "reaches processes or the interpreter"


@dataclass(frozen=True)
class ScriptOp:
    kind: OpKind
    why: str


#: dotted names (as TorchScript prints them, ``torch.`` prefix optional) -> what they do.
SCRIPT_OPS: dict[str, ScriptOp] = {
    "from_file": ScriptOp(OpKind.FILE, "torch.from_file maps an arbitrary file (shared=True "
                          "creates it and writes through)"),
    "ops.aten.from_file": ScriptOp(OpKind.FILE, "aten::from_file maps an arbitrary file"),
    "ops.image.read_file": ScriptOp(OpKind.FILE, "torchvision read_file reads any file"),
    "ops.image.write_file": ScriptOp(OpKind.FILE, "torchvision write_file writes any file"),
    "ops.image.write_png": ScriptOp(OpKind.FILE, "torchvision write_png writes a file"),
    "ops.image.write_jpeg": ScriptOp(OpKind.FILE, "torchvision write_jpeg writes a file"),
    "save": ScriptOp(OpKind.NESTED_LOAD, "torch.save writes a file"),
    "load": ScriptOp(OpKind.NESTED_LOAD, "torch.load reads and unpickles a file"),
    "jit.load": ScriptOp(OpKind.NESTED_LOAD, "torch.jit.load loads more code"),
    "jit.save": ScriptOp(OpKind.NESTED_LOAD, "torch.jit.save writes a file"),
    "ops.aten.save": ScriptOp(OpKind.NESTED_LOAD, "aten::save writes a file"),
    "ops.aten._save_for_mobile": ScriptOp(OpKind.NESTED_LOAD, "writes a file"),
    "open": ScriptOp(OpKind.FILE, "open() is no TorchScript builtin: a hand-edited archive"),
    "os": ScriptOp(OpKind.PROCESS, "os is no TorchScript module: a hand-edited archive"),
    "subprocess": ScriptOp(OpKind.PROCESS, "subprocess: a hand-edited archive"),
    "sys": ScriptOp(OpKind.PROCESS, "sys: a hand-edited archive"),
    "builtins": ScriptOp(OpKind.PROCESS, "builtins: a hand-edited archive"),
    "eval": ScriptOp(OpKind.PROCESS, "eval: a hand-edited archive"),
    "exec": ScriptOp(OpKind.PROCESS, "exec: a hand-edited archive"),
    "__import__": ScriptOp(OpKind.PROCESS, "__import__: a hand-edited archive"),
}
#: names that match only with a ``torch.`` prefix (``self.save`` is a user method)
_TORCH_ONLY = frozenset({"save", "load", "jit.load", "jit.save"})
#: operator namespaces of torch itself (``torch.ops.<ns>``); others are native libraries
TORCH_OP_NAMESPACES = frozenset({
    "aten", "prim", "prims", "quantized", "_quantized", "quantized_decomposed", "profiler",
    "prepacked", "mkldnn", "mkldnn_prepacked", "_caffe2", "cuda", "inductor", "higher_order",
    "_c10d_functional", "c10d_functional", "_dtensor", "onednn", "xnnpack",
})
#: substrings of string literals that name a file operator (getattr-style indirection)
_STRING_HINTS = ("from_file", "read_file", "write_file", "aten::save")
MAX_CODE_CHARS = 64 * 1024 * 1024  # all code files of one archive together

#: a dotted name; inside brackets the parts may sit on separate lines (or be joined by a
#: backslash-newline), so any whitespace may surround the dots
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:(?:\s|\\\n)*\.(?:\s|\\\n)*[A-Za-z_][A-Za-z0-9_]*)*")
_SPACE = re.compile(r"\s|\\\n")
_SPECIAL = re.compile(r"[#'\"]")
_DEF = re.compile(r"def[ \t]+([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Hit:
    name: str             # the dotted name as written (spaces removed)
    op: ScriptOp | None   # None: an operator of a foreign namespace (CKG021)
    function: str         # enclosing def ("" at class or module level)
    offset: int           # character offset in the file


def scan_code(text: str) -> list[Hit]:
    """Every dangerous operator name in one TorchScript code file, in order."""
    hits: list[Hit] = []
    n = len(text)
    pos = 0
    func = ""
    while pos < n:
        m = _SPECIAL.search(text, pos)
        stop = m.start() if m else n
        func = _names(text, pos, stop, func, hits)
        if m is None:
            break
        ch = text[stop]
        if ch == "#":
            end = text.find("\n", stop)
            pos = n if end < 0 else end + 1
            continue
        end = _string_end(text, stop)
        lit = text[stop:end]
        if any(h in lit for h in _STRING_HINTS):
            hits.append(Hit(escape(lit, 80), SCRIPT_OPS["from_file"] if "from_file" in lit else
                            ScriptOp(OpKind.FILE, "a string naming a file operator"),
                            func, stop))
        pos = end
    return hits


def _names(text: str, start: int, stop: int, func: str, hits: list[Hit]) -> str:
    for m in _NAME.finditer(text, start, stop):
        raw = m.group(0)
        name = _SPACE.sub("", raw)
        if name == "def":
            d = _DEF.match(text, m.start(), stop)
            if d is not None:
                func = d.group(1)
            continue
        hit = _classify(name)
        if hit is not None:
            hits.append(Hit(name, hit if isinstance(hit, ScriptOp) else None, func,
                            m.start()))
    return func


def _classify(name: str) -> ScriptOp | bool | None:
    parts = name.split(".")
    if parts[-1] == "from_file":
        return SCRIPT_OPS["from_file"]
    bare = name[6:] if name.startswith("torch.") else name
    op = SCRIPT_OPS.get(bare)
    if op is not None and (bare not in _TORCH_ONLY or name.startswith("torch.")):
        return op
    if parts[0] in ("os", "subprocess", "sys", "builtins") and len(parts) > 1:
        return SCRIPT_OPS[parts[0]]
    bp = bare.split(".")
    if len(bp) >= 3 and bp[0] == "ops":
        full = ".".join(bp[:3])
        if full in SCRIPT_OPS:
            return SCRIPT_OPS[full]
        if bp[1] not in TORCH_OP_NAMESPACES:
            return True  # a foreign operator namespace
    return None


def _string_end(text: str, start: int) -> int:
    """Index just past the string literal opening at ``start`` (tolerant: an unterminated
    literal runs to the end of its line, or of the file for a triple quote)."""
    q = text[start]
    triple = text.startswith(q * 3, start)
    close = q * 3 if triple else q
    i = start + (3 if triple else 1)
    while True:
        j = text.find(close, i)
        nl = -1 if triple else text.find("\n", i)
        if j < 0 or (nl >= 0 and nl < j):
            return len(text) if triple or nl < 0 else nl
        k = j - 1
        while k >= i and text[k] == "\\":
            k -= 1
        if (j - 1 - k) % 2 == 0:
            return j + len(close)
        i = j + 1


def grade_code(ctx: AuditContext, files: list[tuple[str, bytes]]) -> None:
    """Report the operators of every code file (``member``, raw bytes)."""
    total = 0
    for member, raw in files:
        total += len(raw)
        if total > MAX_CODE_CHARS:
            ctx.limit_hit(LimitExceeded("max_decompressed_bytes", MAX_CODE_CHARS,
                                        "TorchScript code graded"), member=member)
            return
        text = raw.decode("utf-8", "replace")
        seen: set[tuple[str, str]] = set()
        for h in scan_code(text):
            if (h.name, h.function) in seen:
                continue
            seen.add((h.name, h.function))
            where = ("in __setstate__, which torch.jit.load runs while loading" if
                     h.function == "__setstate__" else
                     f"in {h.function}(), which runs when the module is called" if h.function
                     else "at class level")
            ev = {"operator": h.name[:160], "function": h.function[:80] or "-"}
            if h.op is None:
                ctx.add("CKG021", f"TorchScript code calls {h.name[:160]} {where}: an operator "
                        "of a namespace outside torch's own runs native code of whatever "
                        "library the loading process has loaded", member=member,
                        offset=None, evidence=ev)
            else:
                ctx.add("CKG020", f"TorchScript code calls {h.name[:160]} {where}: "
                        f"{h.op.why} ({h.op.kind.value})", member=member, offset=None,
                        evidence=ev)


__all__ = ["SCRIPT_OPS", "TORCH_OP_NAMESPACES", "Hit", "OpKind", "ScriptOp", "grade_code",
           "scan_code"]
