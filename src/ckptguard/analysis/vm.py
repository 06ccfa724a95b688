"""The symbolic pickle VM.

It decodes every opcode of protocols 0-5 the way CPython's C unpickler does and runs the
program over *symbolic* values: imports become ``Global`` records (never imported), calls
become ``Call`` records (never called). After the run we know every global the program
could reach, every call it would make, on what, and the tensor records it would build.

Decisions are made here with the policy and the rule registry:
- a global outside the allowlist is CKG102 (CKG101/CKG104 when denied), SAFE only when all
  reachable globals are allowlisted;
- calls/instantiations of anything but a plain imported global are CKG103;
- in torch modes, opcodes outside the weights-only subset are CKG110.

The symbolic values live in ``values.py``; torch's tensor logic (persistent ids as storage
references, rebuild calls, tensor state, naming: CKG401-408, CKG440-442) in ``tensors.py``,
reached through two seams as CPython's Unpickler reaches ``persistent_load``: a persistent
id goes to ``TorchTensors.persistent_load``, a tensor rebuild call to ``TorchTensors.rebuild``.

The loop is deliberately one function with inlined opcode handlers ordered by frequency
in real checkpoints: it is the hot path of every scan.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import re
import struct
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from ..context import AuditContext, LimitExceeded
from ..detect import sniff
from ..model import Format, Severity
from ..policy import GlobalDecision, GlobalStatus, classify_global, global_message
from ..policy.benign_formats import ScopedAllowance
from ..primitives import clip, gc_paused
from . import opcodes as O
from ._torch_names import IMPORT_MAPPING, NAME_MAPPING  # every torch global is mapped
from .callmodels import CallModel, Effect
from .tensors import (
    DICT_LIKE,
    StorageCatalog,
    TensorRecord,
    TorchTensors,
    mapping_keys,
    name_tensors,
)
from .values import (
    USER_ALLOWED,
    Blob,
    Call,
    Global,
    Opaque,
    PersRef,
    PickleMode,
    describe,
    describe_value,
    encoded_bytes,
    int_tuple,
    plain,
)

if TYPE_CHECKING:
    from ..policy.benign import BenignRow

_MAX_KEY_DEPTH = 1000  # tuples hashed as dict keys / set items (C recursion)
_BIG_LITERAL = 4096  # literals longer than this are kept as Blob placeholders (no copy)
_unpack_d = struct.Struct(">d").unpack_from
_unpack_i = struct.Struct("<i").unpack_from
_unpack_I = struct.Struct("<I").unpack_from
_CHECK_EVERY = 1 << 16
_canon_int = O.CANONICAL_INT.fullmatch
_canon_float = O.CANONICAL_FLOAT.fullmatch
_PROBES_PER_CLOCK = 1 << 20  # hash probes charged between two looks at the clock
_allocated_blocks = sys.getallocatedblocks


@dataclass
class PickleResult:
    end: int                 # offset in data just past STOP (or where decoding stopped)
    complete: bool           # reached STOP
    root: object = None
    globals: list[Global] = field(default_factory=list)
    tensors: list[tuple[str, TensorRecord]] = field(default_factory=list)


#: (container, full hash -> distinct keys with it, shadow key set for symbolic dicts)
_ProbeEntry = tuple[object, dict[int, int], set[Any]]


class _Stop(Exception):
    """Decoding cannot continue (the finding is already recorded)."""


# --- the VM ------------------------------------------------------------------------------

class _VM:
    def __init__(self, ctx: AuditContext, data: bytes | memoryview, member: str | None,
                 base: int, mode: PickleMode, catalog: StorageCatalog | None,
                 allowance: ScopedAllowance | None = None) -> None:
        self.ctx = ctx
        self.allowance = allowance  # format-scoped benign globals (policy/benign_formats)
        self.data = bytes(data) if isinstance(data, memoryview) else data
        self.member = member
        self.base = base
        self.mode = mode
        self.torch = mode is not PickleMode.RAW
        self.globals: list[Global] = []
        self.proto = 0
        self._global_cache: dict[tuple[str, str, bool], Global] = {}
        self.items_budget = ctx.limits.max_container_items
        self._probes: dict[int, _ProbeEntry] = {}
        self._probes_unclocked = 0
        # torch's tensor logic behind its two seams: persistent ids and rebuild calls
        self.tensors = TorchTensors(add=self.add, call=self.call,
                                    count_items=self._count_items, base=base,
                                    mode=mode, catalog=catalog)

    # -- findings -----------------------------------------------------------------------
    def add(self, rule_id: str, message: str, pos: int, evidence: dict[str, str] | None = None,
            severity: Severity | None = None) -> None:
        self.ctx.add(rule_id, message, member=self.member, offset=self.base + pos,
                     evidence=evidence, severity=severity)

    def malformed(self, message: str, pos: int) -> _Stop:
        self.add("CKG202", message, pos)
        return _Stop()

    def truncated(self, what: str, pos: int) -> _Stop:
        self.add("CKG201", f"pickle ends inside {what}", pos)
        return _Stop()

    # -- globals ------------------------------------------------------------------------
    def resolve(self, module: str, name: str, pos: int, how: str) -> Global:
        key = (module, name, self.proto < 3)
        g = self._global_cache.get(key)
        if g is not None:
            return g
        if self.mode is PickleMode.TORCHSCRIPT and (
                module == "__torch__" or module.startswith(("__torch__.", "torch.jit._pickle"))):
            # TorchScript resolves these from the archive's own code (reported as CKG008),
            # not by importing Python modules.
            g = Global(module, name, f"{module}.{name}", self.base + pos, GlobalStatus.SCRIPT)
            self._global_cache[key] = g
            self.globals.append(g)
            return g
        policy = self.ctx.policy
        raw = f"{module}.{name}"
        # What the loader will import: torch's weights-only unpickler always applies its
        # (smaller) rename table; pickle applies _compat_pickle's when protocol < 3.
        candidates: list[str] = []
        if self.torch:
            candidates.append(_torch_mapped(module, name))
        # What a plain pickle.load (or torch.load(weights_only=False)) would import.
        candidates.append(_py_mapped(module, name) if self.proto < 3 else raw)
        candidates = list(dict.fromkeys(candidates))
        effective = candidates[0]
        # the worst reading decides (smallest rank: DENY < UNREVIEWED < BENIGN < ...)
        decision = min((classify_global(c, policy) for c in candidates),
                       key=lambda d: d.status.rank)
        scoped = None
        # A format-scoped allowance names exact, reviewed data classes; it beats a denylist
        # entry for a whole module (torch.distributed.checkpoint.filesystem) but never one
        # that names this very global.
        if self.allowance is not None and decision.status is not GlobalStatus.ALLOW and (
                decision.deny is None or decision.deny.matched not in candidates):
            scoped = self.allowance.reason(candidates)
        if scoped is not None:  # exact names only, and only inside that format's metadata
            decision = GlobalDecision(GlobalStatus.POLICY, scoped)
        status = decision.status
        g = Global(module, name, effective, self.base + pos, status)
        self._global_cache[key] = g
        self.globals.append(g)
        ev = {"module": clip(module), "name": clip(name), "global": clip(effective)}
        if "." in name:
            ev["dotted"] = "yes"
        if candidates != [raw]:
            ev["imported_as"] = clip(", ".join(candidates))
            self.add("CKG108", f"{clip(raw)} is imported as {clip(', '.join(candidates))}",
                     pos, ev)
        if "." in name:
            self.add("CKG107", f"dotted global name {clip(module)} / {clip(name)}", pos, ev)
        if scoped is not None and self.allowance is not None:
            self.add(self.allowance.rule_id, f"{clip(effective)} allowed in "
                     f"{self.allowance.scope.value} only: {scoped}", pos, ev)
        elif (rule_id := decision.rule_id) is not None:
            ev["class"] = status.value
            self.add(rule_id, global_message(how, clip(effective), decision), pos, ev)
        if not _valid_dotted(module) or not _valid_dotted(name):
            self.add("CKG204", f"{how} names a global that is not a valid identifier path "
                     f"({clip(module)!r}, {clip(name)!r})", pos, ev)
        return g

    # -- the run ------------------------------------------------------------------------
    def run(self, start: int) -> PickleResult:
        data = self.data
        n = len(data)
        pos = start
        stack: list[Any] = []
        metastack: list[list[Any]] = []
        memo: dict[int, Any] = {}
        limits = self.ctx.limits
        max_memo = limits.max_memo
        max_stack = limits.max_stack
        max_mark = limits.max_mark_depth
        # torch.load(weights_only=True) accepts a subset of opcodes; TorchScript pickles go
        # through TorchScript's own unpickler instead.
        bad_ops = set(range(256)) - O.TORCH_WEIGHTS_ONLY if self.mode in (
            PickleMode.TORCH_ZIP, PickleMode.TORCH_LEGACY) else set()
        frame_end = -1  # end of the current FRAME (Python's unframer semantics), -1 if none
        op_pos = pos
        result = PickleResult(end=pos, complete=False)
        base = self.base
        checkpoint = pos + _CHECK_EVERY
        max_objects = limits.max_objects
        blocks0 = _allocated_blocks()
        try:
            while True:
                op_pos = pos
                op = data[pos]  # IndexError at the end of data: reported as truncation
                pos += 1
                if pos > checkpoint:
                    # Every opcode consumes at least one byte, so the loop is bounded by the
                    # pickle's size; the clock and the stack are checked every 256 KiB. The
                    # checkpoint is also pulled to the end of a FRAME, so frame boundaries
                    # cost nothing per opcode: we get here at the first opcode at or past it.
                    if 0 <= frame_end <= op_pos:
                        if op_pos > frame_end:
                            self.add("CKG204", "an opcode straddles the end of its FRAME "
                                     "(pickle.py refuses, the C unpickler accepts)", frame_end)
                        frame_end = -1
                    checkpoint = pos + _CHECK_EVERY
                    if frame_end >= 0:
                        checkpoint = min(checkpoint, frame_end - 1)
                    self.ctx.source.check_time()
                    # the values under the MARKs: summed here (at most max_mark_depth lists)
                    # rather than kept per opcode, which cost O(marks) per rare opcode
                    if len(stack) + sum(map(len, metastack)) > max_stack:
                        raise LimitExceeded("max_stack", max_stack)
                    if len(memo) > max_memo:  # at most 64k puts happen between checks
                        raise LimitExceeded("max_memo", max_memo)
                    # Memory: objects the program built so far (a C counter, so nearly free;
                    # it sees the whole process, so concurrent threads count too).
                    if _allocated_blocks() - blocks0 > max_objects:
                        raise LimitExceeded("max_objects", max_objects,
                                            "the program builds too many objects")
                # ---- most frequent opcodes in torch pickles first (measured) ----
                # Stack underflow raises IndexError, reported by the handler below.
                if op == 0x72:  # LONG_BINPUT
                    idx = _unpack_I(data, pos)[0]  # struct.error at the end: truncation
                    pos += 4
                    if idx > 0xFFFFFF:
                        self._memo_index(idx, op_pos)
                    memo[idx] = stack[-1]
                elif op == 0x68:  # BINGET
                    if pos >= n:
                        raise self.truncated("BINGET", op_pos)
                    try:
                        stack.append(memo[data[pos]])
                    except KeyError:
                        raise self.malformed(f"BINGET of memo key {data[pos]} that was never "
                                             "stored", op_pos) from None
                    pos += 1
                elif op == 0x4B:  # BININT1
                    if pos >= n:
                        raise self.truncated("BININT1", op_pos)
                    stack.append(data[pos])
                    pos += 1
                elif op == 0x28:  # MARK
                    if len(metastack) >= max_mark:
                        raise LimitExceeded("max_mark_depth", max_mark)
                    metastack.append(stack)
                    stack = []
                elif op in {0x58, 0x8C, 0x8D}:  # BINUNICODE / SHORT_BINUNICODE / BINUNICODE8
                    if op in bad_ops:
                        bad_ops.discard(op)
                        self._flag_op(op, op_pos)
                    w = 4 if op == 0x58 else (1 if op == 0x8C else 8)
                    if pos + w > n:
                        raise self.truncated(O.NAMES[op], op_pos)
                    ln = int.from_bytes(data[pos : pos + w], "little")
                    pos += w
                    if pos + ln > n:
                        raise self.truncated(f"a {ln}-byte {O.NAMES[op]} literal", op_pos)
                    if ln > _BIG_LITERAL:
                        self._check_literal(ln, op_pos)
                        stack.append(Blob("str", ln, base + pos))
                        self._check_utf8(data, pos, ln, op_pos)
                    else:
                        try:
                            stack.append(data[pos : pos + ln].decode("utf-8", "surrogatepass"))
                        except UnicodeDecodeError:
                            raise self.malformed(f"{O.NAMES[op]} is not valid UTF-8",
                                                 op_pos) from None
                    pos += ln
                elif op == 0x74:  # TUPLE
                    tup = tuple(stack)
                    stack = metastack.pop()
                    stack.append(tup)
                elif op == 0x85:  # TUPLE1
                    stack[-1] = (stack[-1],)
                elif op == 0x52:  # REDUCE
                    args = stack.pop()
                    func = stack[-1]
                    if type(func) is Global and type(args) is tuple and (
                            func.ok or (func.ok_empty and not args)) and \
                            func.full not in _ARG_CHECKED:
                        c = Call(func, args, base + op_pos, "REDUCE")
                        if func.rebuild:
                            self.tensors.rebuild(c, func, args, op_pos)
                        stack[-1] = c
                    else:
                        stack[-1] = self.call(func, args, op_pos, "REDUCE")
                elif op == 0x51:  # BINPERSID
                    stack[-1] = self.tensors.persistent_load(stack[-1], op_pos)
                elif op == 0x89:  # NEWFALSE
                    stack.append(False)
                elif op == 0x29:  # EMPTY_TUPLE
                    stack.append(())
                elif op == 0x71:  # BINPUT
                    if pos >= n:
                        raise self.truncated("BINPUT", op_pos)
                    memo[data[pos]] = stack[-1]
                    pos += 1
                elif op == 0x86:  # TUPLE2
                    b = stack.pop()
                    stack[-1] = (stack[-1], b)
                elif op == 0x87:  # TUPLE3
                    c3 = stack.pop()
                    b = stack.pop()
                    stack[-1] = (stack[-1], b, c3)
                elif op == 0x88:  # NEWTRUE
                    stack.append(True)
                elif op == 0x4E:  # NONE
                    stack.append(None)
                elif op == 0x63:  # GLOBAL
                    module, pos = self._line(data, pos, n, op_pos, "GLOBAL module")
                    name, pos = self._line(data, pos, n, op_pos, "GLOBAL name")
                    stack.append(self.resolve(self._utf8(module, op_pos),
                                              self._utf8(name, op_pos), op_pos, "GLOBAL"))
                elif op == 0x6A:  # LONG_BINGET
                    if pos + 4 > n:
                        raise self.truncated("LONG_BINGET", op_pos)
                    idx = int.from_bytes(data[pos : pos + 4], "little")
                    pos += 4
                    try:
                        stack.append(memo[idx])
                    except KeyError:
                        raise self.malformed(f"LONG_BINGET of memo key {idx} that was never "
                                             "stored", op_pos) from None
                elif op == 0x75:  # SETITEMS
                    if not metastack:
                        raise self.malformed("SETITEMS without MARK", op_pos)
                    items = stack
                    stack = metastack.pop()
                    if not stack:
                        raise self.malformed("SETITEMS with no target", op_pos)
                    if len(items) % 2:
                        raise self.malformed("SETITEMS with an odd number of items", op_pos)
                    self.setitems(stack[-1], items, op_pos)
                elif op == 0x73:  # SETITEM
                    if len(stack) < 3:
                        raise self.malformed("SETITEM stack underflow", op_pos)
                    v = stack.pop()
                    k = stack.pop()
                    self.setitems(stack[-1], [k, v], op_pos)
                elif op == 0x7D:  # EMPTY_DICT
                    stack.append({})
                elif op == 0x5D:  # EMPTY_LIST
                    stack.append([])
                elif op == 0x4A:  # BININT
                    if pos + 4 > n:
                        raise self.truncated("BININT", op_pos)
                    stack.append(_unpack_i(data, pos)[0])
                    pos += 4
                elif op == 0x4D:  # BININT2
                    if pos + 2 > n:
                        raise self.truncated("BININT2", op_pos)
                    stack.append(data[pos] | (data[pos + 1] << 8))
                    pos += 2
                elif op in {0x8A, 0x8B}:  # LONG1 / LONG4
                    if op in bad_ops:
                        bad_ops.discard(op)
                        self._flag_op(op, op_pos)
                    w = 1 if op == 0x8A else 4
                    if pos + w > n:
                        raise self.truncated(O.NAMES[op], op_pos)
                    ln = int.from_bytes(data[pos : pos + w], "little", signed=(w == 4))
                    pos += w
                    if ln < 0:
                        raise self.malformed("LONG4 with a negative byte count", op_pos)
                    if pos + ln > n:
                        raise self.truncated(f"a {ln}-byte LONG literal", op_pos)
                    self._check_literal(ln, op_pos)
                    if ln > _BIG_LITERAL:
                        stack.append(Blob("int", ln, self.base + pos))
                    else:
                        stack.append(int.from_bytes(data[pos : pos + ln], "little", signed=True))
                    pos += ln
                elif op == 0x62:  # BUILD
                    if len(stack) < 2:
                        raise self.malformed("BUILD stack underflow", op_pos)
                    state = stack.pop()
                    self.build(stack[-1], state, op_pos)
                elif op == 0x61:  # APPEND
                    if len(stack) < 2:
                        raise self.malformed("APPEND stack underflow", op_pos)
                    v = stack.pop()
                    self.append(stack[-1], [v], op_pos)
                elif op == 0x65:  # APPENDS
                    if not metastack:
                        raise self.malformed("APPENDS without MARK", op_pos)
                    items = stack
                    stack = metastack.pop()
                    if not stack:
                        raise self.malformed("APPENDS with no target", op_pos)
                    self.append(stack[-1], items, op_pos)
                elif op == 0x47:  # BINFLOAT
                    if pos + 8 > n:
                        raise self.truncated("BINFLOAT", op_pos)
                    stack.append(_unpack_d(data, pos)[0])
                    pos += 8
                elif op == 0x81:  # NEWOBJ
                    if len(stack) < 2:
                        raise self.malformed("NEWOBJ stack underflow", op_pos)
                    args = stack.pop()
                    cls = stack[-1]
                    stack[-1] = self.call(cls, args, op_pos, "NEWOBJ")
                elif op == 0x80:  # PROTO
                    if pos >= n:
                        raise self.truncated("PROTO", op_pos)
                    proto = data[pos]
                    pos += 1
                    if proto > 5:
                        raise self.malformed(f"unsupported pickle protocol {proto}", op_pos)
                    if op_pos != start:
                        self.add("CKG204", "PROTO opcode in the middle of the program", op_pos)
                    self.proto = proto
                elif op == 0x2E:  # STOP
                    if not stack:
                        raise self.malformed("STOP with an empty stack", op_pos)
                    result.root = stack.pop()
                    result.complete = True
                    if metastack or stack:
                        # pickle.py ignores leftovers; torch's unpickler too: flag, go on
                        self.add("CKG204", "values or MARKs left on the stack at STOP", op_pos)
                    if frame_end >= 0 and pos != frame_end and pos < n:
                        self.add("CKG204", "STOP inside a FRAME that declares more bytes",
                                 op_pos)
                    break
                # ---- everything else ----
                else:
                    if op in bad_ops:
                        bad_ops.discard(op)
                        self._flag_op(op, op_pos)
                    pos, stack, frame_end = self._rare(op, op_pos, pos, data, n, stack,
                                                       metastack, memo, frame_end)
                    if frame_end >= 0:
                        checkpoint = min(checkpoint, frame_end - 1)
        except _Stop:
            pass
        except struct.error:
            self.add("CKG201", f"pickle ends inside {O.NAMES.get(data[op_pos], '?')}", op_pos)
        except IndexError:
            if op_pos >= n:
                self.add("CKG201", "pickle ends before its STOP opcode", op_pos)
            else:
                self.add("CKG202", f"stack underflow at {O.NAMES.get(data[op_pos], '?')}",
                         op_pos)
        except LimitExceeded as e:
            self.ctx.limit_hit(e, member=self.member, offset=self.base + op_pos)
        result.end = pos
        result.globals = self.globals
        return result

    def _flag_op(self, op: int, pos: int) -> None:
        name = O.NAMES.get(op)
        if name is None:
            return  # invalid opcode: reported by the decoder
        self.add("CKG110", f"opcode {name} is outside what torch's weights-only unpickler "
                 "accepts", pos, {"opcode": name})

    def _memo_index(self, idx: int, pos: int) -> None:
        if idx > self.ctx.limits.max_memo_index:
            raise LimitExceeded("max_memo_index", self.ctx.limits.max_memo_index)
        if idx > (1 << 24):
            self.add("CKG204", f"memo index {idx}: the C unpickler allocates a memo array of "
                     "that size", pos)

    def _check_literal(self, ln: int, pos: int) -> None:
        if ln > self.ctx.limits.max_literal_bytes:
            raise LimitExceeded("max_literal_bytes", self.ctx.limits.max_literal_bytes,
                                f"{ln}-byte literal")

    def _check_utf8(self, data: bytes, pos: int, ln: int, op_pos: int,
                    errors: str = "surrogatepass") -> None:
        dec = codecs.getincrementaldecoder("utf-8")(errors)
        step = 1 << 20
        try:
            for i in range(pos, pos + ln, step):
                dec.decode(data[i : min(i + step, pos + ln)], final=(i + step >= pos + ln))
        except UnicodeDecodeError:
            raise self.malformed("string literal is not valid UTF-8", op_pos) from None

    def _line(self, data: bytes, pos: int, n: int, op_pos: int, what: str) -> tuple[bytes, int]:
        limit = self.ctx.limits.max_line_bytes
        end = data.find(b"\n", pos, min(n, pos + limit + 1))
        if end < 0:
            if n - pos > limit:
                raise LimitExceeded("max_line_bytes", limit, f"{what} line")
            raise self.truncated(what, op_pos)
        return data[pos:end], end + 1

    def _utf8(self, b: bytes, pos: int) -> str:
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise self.malformed("GLOBAL name is not valid UTF-8", pos) from None

    # -- semantics of calls and containers -----------------------------------------------
    def call(self, func: object, args: object, pos: int, how: str) -> Call:
        c = Call(func, args, self.base + pos, how)
        if isinstance(func, Global):
            if func.status.allowed:
                if func.kind == "value":
                    raise self.malformed(f"{how} calls {clip(func.full)}, a constant that is not "
                                         "callable", pos)
                if func.kind == "function" and how in ("NEWOBJ", "NEWOBJ_EX"):
                    raise self.malformed(f"{how} on the function {clip(func.full)}, which has no "
                                         "__new__ to call", pos)
            if not isinstance(args, tuple):
                if isinstance(args, (Call, PersRef, Opaque)):
                    self.add("CKG103", f"{how} of {clip(func.full)} with arguments computed at "
                             "load time", pos)
                elif how != "NEWOBJ_EX":
                    raise self.malformed(f"{how} arguments are not a tuple", pos)
            if func.model is not None and isinstance(args, tuple):
                self._model_call(c, func, func.model, args, pos, how)
            elif func.rebuild:
                self.tensors.rebuild(c, func, args, pos)
            if func.full == "numpy.dtype" and isinstance(args, tuple) and \
                    (not args or _may_hold_objects(args[0])):
                shown = clip(repr(args[0]) if args else "()")
                self.add("CKG122", f"numpy.dtype({shown}): an object (or structured) dtype, "
                         "whose arrays may hold Python objects instead of numbers", pos,
                         {"global": "numpy.dtype", "dtype": shown})
            if func.status in USER_ALLOWED:  # a profile's or policy's row (imported then)
                from ..policy.benign import benign_row

                if (row := benign_row(func.full)) is not None:
                    self._profile_call(func, row, args, pos, how)
        elif isinstance(func, Call):
            self.add("CKG103", f"{how} calls the result of an earlier call "
                     f"({describe(func)})", pos, {"callable": describe(func)})
        elif isinstance(func, (PersRef, Opaque)):
            self.add("CKG103", f"{how} calls a value resolved at load time "
                     f"({describe(func)})", pos, {"callable": describe(func)})
        else:
            raise self.malformed(f"{how} calls a {type(func).__name__} literal, which is not "
                                 "callable", pos)
        return c

    def _keywords(self, func: object, kwargs: object, pos: int) -> None:
        """NEWOBJ_EX's keyword arguments: CPython runs ``cls.__new__(cls, *args, **kwargs)``
        (torch.Tensor.__new__ takes ``cdata=`` -- a raw TensorImpl pointer -- and ``size=``;
        UntypedStorage's ``allocator=`` is a pointer too). Allow, don't deny: they reach
        the global's call model, which names the keywords it takes (none does: torch.save
        never writes one); a global a profile reviewed may take none either."""
        keys = mapping_keys(kwargs)
        if keys == []:
            return
        if not isinstance(func, Global) or not func.status.allowed:
            return  # a computed callable or a refused global: reported already
        name = clip(func.full)
        if keys is None:
            self.add("CKG103", f"NEWOBJ_EX of {name} with keyword arguments computed at load "
                     f"time ({describe(kwargs)})", pos, {"global": name})
            return
        self._count_items(len(keys))
        shown = clip(repr([plain(k) for k in keys[:8]]))
        model = func.model
        if model is not None:
            unknown = [k for k in keys if k not in model.keywords]
            if unknown:
                rule = _KEYWORD_RULES[model.effect]
                self.add(rule, f"NEWOBJ_EX {name}.__new__(**{{{shown}}}): keyword arguments "
                         f"its call model does not take ({model.effect.value}"
                         f"{'; ' + model.note if model.note else ''}); torch.save never "
                         "writes them", pos, {"global": name, "keywords": shown})
            return
        if func.status in USER_ALLOWED:
            from ..policy.benign import benign_row

            if benign_row(func.full) is not None:
                self.add("CKG123", f"NEWOBJ_EX of {name} with keyword arguments {shown}: its "
                         "reviewed row covers NEWOBJ with positional arguments only", pos,
                         {"global": name})

    # -- globals a profile or policy allows (policy/benign.py rows) -------------------------
    def _profile_call(self, func: Global, row: BenignRow, args: object, pos: int,
                      how: str) -> None:
        """A call of a reviewed benign row, checked against what its row covers: a row
        says how the global is unpickled (NEWOBJ + BUILD for data classes and torch
        modules, a member lookup for enums, plain arguments for value types and
        reconstructors); any other use runs code the review did not cover (CKG123)."""
        from ..policy.benign import BenignKind

        name = clip(func.full)
        kind = row.kind
        if kind in (BenignKind.DATACLASS, BenignKind.MODULE) and how not in ("NEWOBJ", "NEWOBJ_EX"):
            self.add("CKG123", f"{how} calls {name}: that runs its __init__ / __post_init__ "
                     "(which may read files, create state, allocate); its reviewed row covers "
                     "only NEWOBJ + BUILD, the form pickle writes", pos, {"global": name})
            return
        items = args if isinstance(args, tuple) else ()
        if kind is BenignKind.ENUM and not (
                how == "REDUCE" and len(items) == 1 and _plain_literal(items[0])):
            self.add("CKG123", f"{how} of the enum {name} with something other than one "
                     "plain value (a member lookup is what pickle writes)", pos,
                     {"global": name})
            return
        for a in items:
            if isinstance(a, Global) and not _profile_callable_arg(a):
                self.add("CKG123", f"{how} of {name} is handed the callable {clip(a.full)}, "
                         "which it calls with arguments the audit does not check", pos,
                         {"global": name, "argument": clip(a.full)})
                return
            if kind is BenignKind.VALUE_TYPE and isinstance(a, Call) and \
                    func.full in _PROFILE_CONTAINERS:
                self.add("CKG114", f"{name} iterates a value computed at load time "
                         f"({describe(a)})", pos, {"global": name})
                return
            if kind is BenignKind.VALUE_TYPE and type(a) is int and abs(a) > _PROFILE_MAX_INT:
                self.add("CKG123", f"{how} of {name} with the integer {a}: a value "
                         "constructor asked for a size or magnitude no checkpoint needs", pos,
                         {"global": name})
                return
            if func.full == "fractions.Fraction" and isinstance(a, str) and \
                    not _PLAIN_FRACTION.fullmatch(a):
                self.add("CKG123", f"Fraction({clip(repr(a))}): an exponent makes it compute a "
                         "power of ten of that size", pos, {"global": name})
                return

    # -- what allowlisted callables call and allocate (callmodels.py) ---------------------
    def _model_call(self, c: Call, func: Global, model: CallModel, args: tuple[Any, ...],
                    pos: int, how: str) -> None:
        """Check one call of an allowlisted global against its row in CALL_MODELS."""
        name = clip(func.full)
        effect = model.effect
        most = _MAX_POSITIONAL.get(func.full)
        if most is not None and how in ("REDUCE", "INST", "OBJ") and len(args) > most:
            # every loader raises TypeError there (safe_load raised it raw): not loadable
            raise self.malformed(f"{how} {name} with {len(args)} arguments; it takes at most "
                                 f"{most}, so every loader refuses the file", pos)
        if model.literal_args:
            for a in args:
                if isinstance(a, (Call, PersRef, Opaque)) and not (
                        effect is Effect.DATA and encoded_bytes(a)):
                    self.add("CKG114", f"{how} {name}(...) iterates or converts "
                             f"{describe(a)}, a value computed at load time (a tensor "
                             "iterated element by element builds one object per element)",
                             pos, {"global": name, "argument": describe(a)})
                    return
        for i in model.tensor_args:
            if i < len(args):
                self.tensors.tensor_arg(args[i], name, i, pos, allow_none=effect is Effect.WRAP)
        if model.reads_tensor_values and self.tensors.catalog is not None and \
                self.tensors.catalog.deferred:
            self.add("CKG431", f"{how} {name}(...) reads its tensor arguments' values while "
                     "the legacy loader unpickles, before it has read any storage bytes: "
                     "torch builds it from uninitialized memory", pos, {"global": name})
        match effect:
            case Effect.CONSTANT | Effect.LOOKUP | Effect.VIEW | Effect.META | \
                    Effect.COMPOSITE | Effect.WRAP:
                if func.rebuild:
                    self.tensors.rebuild(c, func, args, pos)
                elif func.full == "torch._utils._rebuild_sparse_tensor":
                    self.tensors.block_sides(args, pos)
            case Effect.DATA:
                self._data_call(func.full, args, pos, how)
            case Effect.ENCODE:
                if len(args) != 2 or not isinstance(args[0], (str, Blob)) or \
                        (isinstance(args[0], Blob) and args[0].kind != "str") or \
                        args[1] not in _WRITTEN_CODECS:
                    self.add("CKG117", f"{name} called as {clip(repr(plain(args)))}: pickle "
                             "and torch.save only write encode(str, 'latin1') (other codecs "
                             "import modules and expand their input)", pos,
                             {"global": name})
            case Effect.ALLOCATE:
                if args:  # T(n) and T.__new__(T, n) both allocate
                    self.add("CKG112", f"{how} {name}{clip(repr(plain(args)))}: "
                             f"{model.note}; the memory is not backed by bytes in the file "
                             "and torch.save never writes this call", pos,
                             {"global": name})
            case Effect.QUANTIZED:
                self.tensors.rebuild(c, func, args, pos)
                self.tensors.quantized(c, name, args, pos)
            case Effect.COPY:
                self.tensors.copy_call(c, func, args, pos)
            case Effect.CALLS_ARGUMENT:
                self.tensors.from_type_call(c, func, args, pos)
            case Effect.NO_DATA:
                self.tensors.no_data(name, args, pos)
            case _:
                _never(effect)


    def _data_call(self, full: str, args: tuple[Any, ...], pos: int, how: str) -> None:
        if full == "builtins.bytearray" and args and isinstance(args[0], int) and \
                not isinstance(args[0], bool) and args[0] > 0 and how != "NEWOBJ":
            self.add("CKG112", f"bytearray({args[0]}) allocates and zeroes {args[0]} bytes "
                     "that are not in the file", pos, {"global": full})
            return
        if full == "builtins.bytearray" and how not in ("NEWOBJ", "NEWOBJ_EX") and (
                len(args) > 1 or (args and isinstance(args[0], str))) and not (
                len(args) == 2 and isinstance(args[0], (str, Blob)) and
                (not isinstance(args[0], Blob) or args[0].kind == "str") and
                args[1] in _WRITTEN_CODECS):
            # bytearray(str, codec[, errors]) encodes like _codecs.encode: any codec name
            # imports its encodings module, and some are quadratic (punycode)
            self.add("CKG117", f"bytearray called as {clip(repr(plain(args)))}: pickle "
                     "writes bytearray(str, 'latin-1') only (other codecs import modules and "
                     "expand their input)", pos, {"global": full})
            return
        if full == "torch.Size" and args and not int_tuple(args[0]) and \
                not (type(args[0]) is list and all(type(x) is int for x in args[0])):
            self.add("CKG114", "torch.Size of something other than a tuple of ints", pos,
                     {"global": full})
            return
        if full in ("builtins.set", "collections.Counter") and args and \
                isinstance(args[0], (list, tuple)) and how != "NEWOBJ":
            # the loader hashes every item: charge collisions as for SETITEMS
            items = list(args[0])
            self._count_items(len(items))
            self._hash_guard(items, pos)
            tmp: set[Any] = set()
            self._insert(tmp, (tmp, {}, set()), items, False, pos)


    def setitems(self, target: object, items: list[Any], pos: int) -> None:
        self._count_items(len(items) // 2)
        if items and id(target) in self.tensors.hooks:
            self.add("CKG408", "items added to a tensor's backward-hooks dict after the "
                     "tensor was rebuilt: the loader attaches that dict, filled, to the "
                     "tensor", pos)
        if isinstance(target, dict):
            self._hash_guard(items[0::2], pos)
            self._insert(target, self._probe_entry(target), items, True, pos)
            return
        if isinstance(target, Call) and isinstance(target.func, Global) and \
                target.func.full in _DICT_LIKE:
            if target.items is None:
                target.items = []
            self._hash_guard(items[0::2], pos)
            # the loader inserts into a real OrderedDict: the keys whose hash the file can
            # choose go into a shadow set, so collisions are charged as for a real dict
            entry = self._probe_entry(target)
            self._insert(entry[2], entry, items, True, pos, shadow=True)
            target.items.extend(zip(items[::2], items[1::2], strict=True))
            return
        self._bad_target("SETITEM(S)", target, pos)

    def _probe_entry(self, owner: object) -> _ProbeEntry:
        """The hash-collision bookkeeping of one container (kept alive with it)."""
        entry = self._probes.get(id(owner))
        if entry is None:
            entry = (owner, {}, set())
            self._probes[id(owner)] = entry
        return entry

    def _insert(self, table: dict[Any, Any] | set[Any], entry: _ProbeEntry, items: list[Any],
                pairs: bool, pos: int, *, shadow: bool = False) -> None:
        """Insert ``items`` (key, value pairs when ``pairs``) into ``table`` the way the
        loader does, charging the probes a hash table makes for keys that share a full hash.

        str/bytes hashes are randomised and objects the VM made hash by identity, so only
        numbers, tuples and frozensets can be made to collide (ints mod 2**61-1, -1 and -2,
        floats equal as rationals mod 2**61-1, tuples and frozensets of those). Inserting
        a key whose hash ``c`` distinct keys of the container already have costs up to
        ``c`` comparisons, each as long as the key; the sum is charged to
        ``max_container_items`` (CKG901 when spent) before the work is done, so one opcode
        cannot run quadratic. ``shadow``: ``table`` only stands in for the loader's dict (a
        symbolic OrderedDict), so keys that cannot collide are not stored in it."""
        counts = entry[1]
        step = 2 if pairs else 1
        is_dict = type(table) is dict
        try:
            for i in range(0, len(items), step):
                k = items[i]
                tk = type(k)
                if tk in _FIXED_HASH:
                    if shadow:
                        continue
                    if is_dict:
                        table[k] = items[i + 1]  # type: ignore[index]
                    else:
                        table.add(k)  # type: ignore[union-attr]
                    continue
                h = hash(k)
                c = counts.get(h, 0)
                if c:
                    # a tuple compares item by item; a frozenset looks every item up
                    self._charge_probes(c if tk is not tuple and tk is not frozenset else
                                        c * (1 + len(k)) if tk is tuple else c * 4 * (1 + len(k)))
                before = len(table)
                if is_dict:
                    table[k] = items[i + 1] if pairs else None  # type: ignore[index]
                else:
                    table.add(k)  # type: ignore[union-attr]
                if len(table) != before:
                    counts[h] = c + 1
        except TypeError:
            raise self.malformed("unhashable dictionary key or set item", pos) from None

    def _charge_probes(self, n: int) -> None:
        self.items_budget -= n
        self._probes_unclocked += n
        if self._probes_unclocked > _PROBES_PER_CLOCK:
            self._probes_unclocked = 0
            self.ctx.source.check_time()
        if self.items_budget < 0:
            raise LimitExceeded("max_container_items", self.ctx.limits.max_container_items,
                                "hash-colliding keys make dict/set inserts quadratic")

    def append(self, target: object, items: list[Any], pos: int) -> None:
        self._count_items(len(items))
        if isinstance(target, list):
            target.extend(items)
            return
        self._bad_target("APPEND(S)", target, pos)

    def _hash_guard(self, keys: list[Any], pos: int) -> None:
        """Bound the work of hashing ``keys`` before a dict/set/frozenset hashes them.

        CPython hashes a tuple by hashing its items recursively in C, without caching: a
        tuple nested a million deep (one TUPLE1 byte per level) overflows the C stack and
        kills the process, and a tuple DAG built through the memo ((t, t) nested n deep)
        costs 2**n. Hashing work is charged to ``max_container_items``; nesting deeper than
        ``_MAX_KEY_DEPTH`` is malformed (it crashes CPython's unpickler as well)."""
        for k in keys:
            if type(k) is not tuple or not k:
                continue
            # cost: items hashed (with repeats, as the hash does); computed once per node
            cost: dict[int, tuple[int, int]] = {}  # id -> (items hashed, nesting height)
            todo: list[tuple[tuple[Any, ...], bool, int]] = [(k, False, 1)]
            while todo:
                t, done, depth = todo.pop()
                if done:
                    c, h = len(t), 1
                    for x in t:
                        if type(x) is tuple and x:
                            cx, hx = cost[id(x)]
                            c, h = c + cx, max(h, hx + 1)
                    cost[id(t)] = (c, h)
                    continue
                if id(t) in cost:
                    continue
                if depth > _MAX_KEY_DEPTH:
                    raise self.malformed(f"hashed tuple nested more than {_MAX_KEY_DEPTH} deep "
                                         "(CPython's recursive hash overflows the C stack)", pos)
                todo.append((t, True, depth))
                for x in t:
                    if type(x) is tuple and x and id(x) not in cost:
                        todo.append((x, False, depth + 1))
            total, height = cost[id(k)]
            if height > _MAX_KEY_DEPTH:
                raise self.malformed(f"hashed tuple nested {height} deep (CPython's recursive "
                                     "hash overflows the C stack)", pos)
            self._count_items(total)

    def _count_items(self, k: int) -> None:
        self.items_budget -= k
        if self.items_budget < 0:
            raise LimitExceeded("max_container_items", self.ctx.limits.max_container_items)

    def _bad_target(self, how: str, target: object, pos: int) -> None:
        if isinstance(target, (Call, PersRef, Opaque)):
            self.add("CKG111", f"{how} on {describe(target)}: calls a method of an object the "
                     "weights-only loader does not allow it on", pos,
                     {"target": describe(target)})
        elif isinstance(target, (set, frozenset)) and how == "ADDITEMS":
            return
        else:
            raise self.malformed(f"{how} on a {type(target).__name__}", pos)

    def _set_state(self, target: Call, state: object, pos: int) -> None:
        """BUILD's state on ``target``. pickle writes one BUILD per object; a second one
        is applied on top of the first by every loader (a dict state updates the
        instance's ``__dict__``), so the states merge here as they merge there, and the
        file is CKG204: an audit that kept only the last state (DCP metadata read its
        fields from it) missed what the first one set."""
        if target.state is not None:
            self.add("CKG204", "BUILD applied twice to one object: loaders merge the second "
                     "state into the first (pickle never writes this)", pos)
            if isinstance(target.state, dict) and isinstance(state, dict):
                state = {**target.state, **state}
        target.state = state

    def build(self, target: object, state: object, pos: int) -> None:
        if isinstance(target, Call) and isinstance(target.func, Global):
            full = target.func.full
            if target.tensor is not None and self.mode is not PickleMode.TORCHSCRIPT:
                # torch would run tensor.set_(*state) / __setstate__ on the rebuilt tensor,
                # re-pointing it after the audit recorded its storage and layout
                self.add("CKG408", f"BUILD sets state on a tensor built by {clip(full)}: "
                         "torch.save never writes this and the tensor would no longer be the "
                         "one audited", pos)
                return
            m = target.func.model
            if target.func.status.allowed and (full in _TENSOR_TYPES or (
                    m is not None and m.makes_tensor and target.tensor is None)):
                # torch's weights-only BUILD runs tensor.set_(*state) on a torch.Tensor
                # (a dict state: set_ over its keys) and Parameter.__setstate__ (set_ for
                # 4 items, .data and hooks for 5 or 3); pickle.load runs __setstate__:
                # the tensor (or the one a Parameter wraps) is no longer one the audit
                # recorded
                self.add("CKG408", f"BUILD sets state on a {clip(full)} "
                         f"({describe_value(state)}): torch runs set_ / __setstate__ on the "
                         "tensor, which then is not the one audited (torch.save never writes "
                         "this)", pos)
                return
            row = None
            if target.func.status in USER_ALLOWED:
                from ..policy.benign import benign_row

                row = benign_row(full)
            if row is not None and row.kind.value == "enum":
                self.add("CKG123", f"BUILD sets state on a member of the enum {clip(full)}",
                         pos, {"global": clip(full)})
                return
            if full == "numpy.dtype" and not _plain_dtype_state(state):
                # numpy's dtype.__setstate__ takes names, fields and flags from the state:
                # an object field without the flags that make numpy pickle it as objects
                # lets ndarray.__setstate__ copy raw bytes into PyObject* slots
                self.add("CKG122", "BUILD gives numpy.dtype a structured or flagged state "
                         "(fields, names, sub-arrays or flags): only plain numeric dtypes are "
                         "reviewed", pos, {"global": "numpy.dtype"})
                return
            if full in _BUILDABLE or target.func.status in USER_ALLOWED:
                self._set_state(target, state, pos)
                return
            if target.func.status is GlobalStatus.ALLOW and self.torch:
                # torch's loader allows BUILD on allowlisted types only
                self._set_state(target, state, pos)
                return
            self.add("CKG111", f"BUILD sets state on {clip(full)} instance (runs its "
                     "__setstate__ or writes its __dict__)", pos, {"target": clip(full)})
            return
        if isinstance(target, (Call, PersRef, Opaque)):
            self.add("CKG111", f"BUILD on {describe(target)}", pos, {"target": describe(target)})
            return
        raise self.malformed(f"BUILD on a {type(target).__name__} literal", pos)


    # -- rare opcodes -----------------------------------------------------------------------
    def _rare(self, op: int, op_pos: int, pos: int, data: bytes, n: int, stack: list[Any],
              metastack: list[list[Any]], memo: dict[int, Any],
              frame_end: int) -> tuple[int, list[Any], int]:
        if op == 0x93:  # STACK_GLOBAL
            if len(stack) < 2:
                raise self.malformed("STACK_GLOBAL stack underflow", op_pos)
            name = stack.pop()
            module = stack.pop()
            if isinstance(module, str) and isinstance(name, str):
                stack.append(self.resolve(module, name, op_pos, "STACK_GLOBAL"))
            elif isinstance(module, (Call, PersRef, Opaque)) or isinstance(name, (Call, PersRef,
                                                                                  Opaque)):
                self.add("CKG103", "STACK_GLOBAL with a module or name computed at load time",
                         op_pos)
                stack.append(Opaque("computed global", self.base + op_pos))
            elif isinstance(module, Blob) or isinstance(name, Blob):
                raise LimitExceeded("max_line_bytes", self.ctx.limits.max_line_bytes,
                                    "STACK_GLOBAL name")
            else:
                raise self.malformed("STACK_GLOBAL operands are not strings", op_pos)
        elif op == 0x94:  # MEMOIZE
            if not stack:
                raise self.malformed("MEMOIZE with an empty stack", op_pos)
            idx = len(memo)
            memo[idx] = stack[-1]
            if idx > self.ctx.limits.max_memo:
                raise LimitExceeded("max_memo", self.ctx.limits.max_memo)
        elif op == 0x95:  # FRAME
            if pos + 8 > n:
                raise self.truncated("FRAME", op_pos)
            ln = int.from_bytes(data[pos : pos + 8], "little")
            pos += 8
            if frame_end >= 0 and pos <= frame_end:
                self.add("CKG204", "FRAME starts inside another frame (pickle.py refuses)",
                         op_pos)
            if pos + ln > n:
                self.add("CKG204", f"FRAME declares {ln} bytes but only {n - pos} remain",
                         op_pos)
            frame_end = pos + ln
        elif op == 0x30:  # POP
            if stack:
                stack.pop()
            elif metastack:
                stack = metastack.pop()
            else:
                raise self.malformed("POP stack underflow", op_pos)
        elif op == 0x31:  # POP_MARK
            if not metastack:
                raise self.malformed("POP_MARK without MARK", op_pos)
            stack = metastack.pop()
        elif op == 0x32:  # DUP
            if not stack:
                raise self.malformed("DUP stack underflow", op_pos)
            stack.append(stack[-1])
        elif op in {0x6C, 0x64, 0x91}:  # LIST / DICT / FROZENSET
            if not metastack:
                raise self.malformed(f"{O.NAMES[op]} without MARK", op_pos)
            items = stack
            stack = metastack.pop()
            self._count_items(len(items))
            if op == 0x6C:
                stack.append(list(items))
            elif op == 0x64:
                if len(items) % 2:
                    raise self.malformed("DICT with an odd number of items", op_pos)
                d: dict[Any, Any] = {}
                self._hash_guard(items[0::2], op_pos)
                self._insert(d, self._probe_entry(d), items, True, op_pos)
                stack.append(d)
            else:
                self._hash_guard(items, op_pos)
                fs: set[Any] = set()
                self._insert(fs, (fs, {}, set()), items, False, op_pos)
                stack.append(frozenset(fs))
        elif op == 0x8F:  # EMPTY_SET
            stack.append(set())
        elif op == 0x90:  # ADDITEMS
            if not metastack:
                raise self.malformed("ADDITEMS without MARK", op_pos)
            items = stack
            stack = metastack.pop()
            if not stack:
                raise self.malformed("ADDITEMS with no target", op_pos)
            target = stack[-1]
            self._count_items(len(items))
            if isinstance(target, set):
                self._hash_guard(items, op_pos)
                self._insert(target, self._probe_entry(target), items, False, op_pos)
            else:
                self._bad_target("ADDITEMS", target, op_pos)
        elif op in (0x42, 0x43, 0x8E, 0x96, 0x54, 0x55):  # bytes-like counted literals
            w, signed = O.COUNTED_ARG[op]
            if pos + w > n:
                raise self.truncated(O.NAMES[op], op_pos)
            ln = int.from_bytes(data[pos : pos + w], "little", signed=signed)
            pos += w
            if ln < 0:
                raise self.malformed(f"{O.NAMES[op]} with a negative byte count", op_pos)
            if pos + ln > n:
                raise self.truncated(f"a {ln}-byte {O.NAMES[op]} literal", op_pos)
            self._check_literal(ln, op_pos)
            py2_str = op in (0x54, 0x55)
            if py2_str and self.torch:
                # Python 2 str: torch.load passes encoding="utf-8" (strict) to every
                # unpickler it uses; bytes that do not decode make it raise
                if ln > _BIG_LITERAL:
                    self._check_utf8(data, pos, ln, op_pos, "strict")
                    stack.append(Blob("str", ln, self.base + pos))
                else:
                    try:
                        stack.append(data[pos : pos + ln].decode("utf-8"))
                    except UnicodeDecodeError:
                        raise self.malformed(f"{O.NAMES[op]} is not valid UTF-8, the "
                                             "encoding torch.load decodes it with",
                                             op_pos) from None
            elif ln > _BIG_LITERAL:
                stack.append(Blob("bytes", ln, self.base + pos))
            elif py2_str:
                # Python 2 str in a plain pickle: pickle.load decodes it as ASCII (strict),
                # encoding="latin1" loaders byte for byte: latin-1 keeps every byte
                raw = data[pos : pos + ln]
                stack.append(raw.decode("latin-1"))
            elif op == 0x96:
                stack.append(bytearray(data[pos : pos + ln]))
            else:
                stack.append(data[pos : pos + ln])
            pos += ln
        elif op in {0x49, 0x4C, 0x46, 0x53, 0x56}:  # INT / LONG / FLOAT / STRING / UNICODE
            line, pos = self._line(data, pos, n, op_pos, O.NAMES[op])
            v = self._text_literal(op, line, op_pos)
            if op == 0x53 and self.torch and isinstance(v, str):
                # the unpickler decodes the escaped bytes with its encoding: utf-8 in torch
                try:
                    v = v.encode("latin-1").decode("utf-8")
                except UnicodeDecodeError:
                    raise self.malformed("STRING is not valid UTF-8, the encoding torch.load "
                                         "decodes it with", op_pos) from None
            stack.append(v)
        elif op == 0x67:  # GET (text)
            line, pos = self._line(data, pos, n, op_pos, "GET")
            idx = self._text_literal(op, line, op_pos)
            if not isinstance(idx, int) or idx not in memo:
                raise self.malformed(f"GET of memo key {clip(repr(line))} that was never stored",
                                     op_pos)
            stack.append(memo[idx])
        elif op == 0x70:  # PUT (text)
            line, pos = self._line(data, pos, n, op_pos, "PUT")
            idx = self._text_literal(op, line, op_pos)
            if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
                raise self.malformed("PUT with a negative or non-integer index", op_pos)
            if not stack:
                raise self.malformed("PUT with an empty stack", op_pos)
            self._memo_index(idx, op_pos)
            memo[idx] = stack[-1]
        elif op == 0x69:  # INST
            module, pos = self._line(data, pos, n, op_pos, "INST module")
            name, pos = self._line(data, pos, n, op_pos, "INST name")
            if not metastack:
                raise self.malformed("INST without MARK", op_pos)
            inst_args = tuple(stack)
            stack = metastack.pop()
            g = self.resolve(self._utf8(module, op_pos), self._utf8(name, op_pos), op_pos, "INST")
            stack.append(self.call(g, inst_args, op_pos, "INST"))
        elif op == 0x6F:  # OBJ
            if not metastack:
                raise self.malformed("OBJ without MARK", op_pos)
            items = stack
            stack = metastack.pop()
            if not items:
                raise self.malformed("OBJ with no class", op_pos)
            stack.append(self.call(items[0], tuple(items[1:]), op_pos, "OBJ"))
        elif op == 0x92:  # NEWOBJ_EX
            if len(stack) < 3:
                raise self.malformed("NEWOBJ_EX stack underflow", op_pos)
            kwargs = stack.pop()
            args = stack.pop()
            cls = stack[-1]
            if not isinstance(kwargs, (dict, Call, Opaque, PersRef)):
                raise self.malformed("NEWOBJ_EX keyword arguments are not a dict", op_pos)
            if not isinstance(args, (tuple, Call, PersRef, Opaque)):
                if not isinstance(args, (list, set, frozenset, dict, str, bytes, bytearray)):
                    raise self.malformed(f"NEWOBJ_EX arguments are a {type(args).__name__}, "
                                         "not a tuple", op_pos)
                # pickle.py runs cls.__new__(cls, *args, **kwargs) on any iterable; the C
                # unpickler refuses what is not a tuple: audit what pickle.py would call
                self.add("CKG204", f"NEWOBJ_EX arguments are a {type(args).__name__}: the C "
                         "unpickler refuses them, pickle.py unpacks them into the call",
                         op_pos)
                self._count_items(len(args))
                args = tuple(args)
            c = self.call(cls, args, op_pos, "NEWOBJ_EX")
            self._keywords(cls, kwargs, op_pos)
            stack[-1] = c
        elif op in (0x82, 0x83, 0x84):  # EXT1/2/4
            w = {0x82: 1, 0x83: 2, 0x84: 4}[op]
            if pos + w > n:
                raise self.truncated(O.NAMES[op], op_pos)
            code = int.from_bytes(data[pos : pos + w], "little", signed=(w == 4))
            pos += w
            self.add("CKG105", f"{O.NAMES[op]} {code}: the global comes from the loading "
                     "process's copyreg extension registry", op_pos, {"code": str(code)})
            stack.append(Opaque(f"extension code {code}", self.base + op_pos))
        elif op == 0x50:  # PERSID (text)
            line, pos = self._line(data, pos, n, op_pos, "PERSID")
            pid: object = self._text_literal(op, line, op_pos)
            stack.append(self.tensors.persistent_load(pid, op_pos))
        elif op in {0x97, 0x98}:  # NEXT_BUFFER / READONLY_BUFFER
            if op == 0x97:
                self.add("CKG202", "NEXT_BUFFER: the pickle needs out-of-band buffers, which "
                         "no model loader supplies", op_pos)
                stack.append(Opaque("out-of-band buffer", self.base + op_pos))
            elif not stack:
                raise self.malformed("READONLY_BUFFER stack underflow", op_pos)
        else:
            raise self.malformed(f"invalid opcode 0x{op:02x}", op_pos)
        return pos, stack, frame_end

    def _text_literal(self, op: int, line: bytes, pos: int) -> Any:
        """Decode the line of a text opcode exactly as the C unpickler does (``pickle.load``
        and torch use it; ``opcodes.text_value`` asks it). Where pickle.py reads the line
        differently (a NUL ends strtol's number in C, FLOAT takes no spaces or underscores
        in C, ' 1' is True for C's INT...), report CKG204 and go on with the C value."""
        # the forms pickle writes, read alike by both unpicklers: no second opinion needed
        if op in {0x70, 0x67, 0x49}:  # PUT / GET / INT
            if _canon_int(line):
                return int(line)
        elif op == 0x46:  # FLOAT
            if _canon_float(line):
                x = float(line)
                if x - x == 0.0:  # finite: the C unpickler refuses an overflow (1e400)
                    return x
        elif op == 0x56:  # UNICODE: by length in both, same codec
            try:
                return line.decode("raw-unicode-escape")
            except UnicodeDecodeError:
                raise self.malformed("UNICODE literal has an invalid escape", pos) from None
        if len(line) > O.MAX_TEXT_LITERAL and op not in (0x53, 0x56, 0x50):
            raise LimitExceeded("max_line_bytes", O.MAX_TEXT_LITERAL,
                                f"{O.NAMES[op]} literal digits")
        name = O.NAMES[op]
        c_ok, c_val = O.text_value(op, line, c=True)
        py_ok, py_val = O.text_value(op, line, c=False)
        if not c_ok:
            if not py_ok:
                raise self.malformed(f"invalid {name} literal {clip(repr(line))} ({c_val})",
                                     pos)
            if op in (0x67, 0x70) and isinstance(py_val, int) and py_val > 0xFFFFFF:
                self._memo_index(py_val, pos)  # beyond the limit: CKG901 first
            # the C unpickler stops here; pickle.py reads on: audit what it would run
            self.add("CKG204", f"{name} literal {clip(repr(line))} is refused by the C "
                     f"unpickler ({c_val}) and reads as {clip(repr(plain(py_val)))} in "
                     "pickle.py", pos, {"opcode": name})
            return py_val
        if not py_ok or not _same_value(c_val, py_val):
            self.add("CKG204", f"{name} literal {clip(repr(line))} reads as "
                     f"{clip(repr(plain(c_val)))} in the C unpickler and "
                     f"{clip(repr(plain(py_val))) if py_ok else 'fails (' + py_val + ')'} in "
                     "pickle.py", pos, {"opcode": name})
        elif op in (0x49, 0x4C) and not _canonical_int(
                line[:-1] if op == 0x4C and line.endswith(b"L") else line) and \
                line not in (b"00", b"01"):
            self.add("CKG204", f"non-canonical integer literal {clip(repr(line))}: pickle never "
                     "writes it and other decoders (pickletools-based scanners) read it "
                     "differently", pos)
        return c_val


def _same_value(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)
    return a == b


def _canonical_int(text: bytes) -> bool:
    if text[:1] == b"-":
        text = text[1:]
    return bool(text) and text.isdigit() and (text == b"0" or text[:1] != b"0")

#: value types whose hash a file cannot steer: str/bytes are randomised, the VM's own
#: records hash by identity, None/True/False are single values
_FIXED_HASH = frozenset({str, bytes, Global, Call, PersRef, Blob, Opaque, type(None), bool})
_DICT_LIKE = DICT_LIKE
_BUILDABLE = frozenset({"collections.OrderedDict"})
#: tensor classes a BUILD never applies to (their state reaches set_)
_TENSOR_TYPES = frozenset({"torch.Tensor", "torch.nn.parameter.Parameter"})


#: the data constructors on the allowlist and the positional arguments they take
#: (every DATA row of callmodels.CALL_MODELS, a test pins it)
_MAX_POSITIONAL = {"builtins.set": 1, "collections.Counter": 1,
                   "collections.OrderedDict": 1, "torch.Size": 1, "builtins.bytearray": 3,
                   "builtins.complex": 2}

#: profile value types that iterate their argument (a computed one can be made huge)
_PROFILE_CONTAINERS = frozenset({"builtins.list", "builtins.tuple", "builtins.frozenset",
                                 "builtins.dict", "builtins.bytes", "builtins.str",
                                 "collections.deque", "collections.defaultdict"})
#: the largest integer a profile value constructor takes (bytes(n), range(n) ...)
_PROFILE_MAX_INT = 1 << 24
#: Fraction from a string without an exponent ("1e30000000" computes 10**30000000)
_PLAIN_FRACTION = re.compile(r"\s*[+-]?\d{1,4300}(?:\.\d{0,4300})?(?:/\d{1,4300})?\s*")


def _plain_literal(v: object) -> bool:
    return v is None or type(v) in (str, int, float, bool, bytes)


def _profile_callable_arg(g: Global) -> bool:
    """A global a profile reconstructor may receive and call: numpy's own array and random
    generator classes (numpy.random pickles pass the bit generator class by name)."""
    from ..policy.benign import BenignKind, benign_row

    row = benign_row(g.full)
    return row is not None and row.group == "numpy" and row.kind is BenignKind.VALUE_TYPE \
        and g.full != "numpy.dtype"


def _may_hold_objects(spec: object) -> bool:
    """Could ``numpy.dtype(spec)`` hold Python objects? Any spelling of 'O', 'object', a
    comma (structured) string, or anything that is not a string (a list of fields, a
    dtype class, a tuple)."""
    if not isinstance(spec, str):
        return True
    return "O" in spec or "object" in spec.lower() or "," in spec or "(" in spec


def _plain_dtype_state(state: object) -> bool:
    """numpy.dtype.__reduce__'s state for a plain numeric dtype: (version, byte order,
    subarray None, names None, fields None, elsize, alignment, flags 0[, metadata])."""
    return isinstance(state, tuple) and len(state) in (8, 9) and state[2] is None and \
        state[3] is None and state[4] is None and state[7] == 0 and \
        all(type(x) is int for x in (state[0], state[5], state[6], state[7])) and \
        (len(state) == 8 or state[8] is None)


def _never(x: NoReturn) -> NoReturn:
    """typing.assert_never (Python 3.11+) for 3.10: mypy checks the match is exhaustive."""
    raise AssertionError(f"unhandled {x!r}")


def _valid_dotted(s: str) -> bool:
    return bool(s) and all(p.isidentifier() for p in s.split("."))


def _torch_mapped(module: str, name: str) -> str:
    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _py_mapped(module: str, name: str) -> str:
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


#: allowed callables whose arguments call() checks (the inline REDUCE path skips them)
_ARG_CHECKED = frozenset({"builtins.bytearray", "numpy.dtype"})

#: the rule a call of an allowlisted global reports for keyword arguments its model does
#: not take, by the model's effect (a test pins that every Effect has one)
_KEYWORD_RULES: dict[Effect, str] = {
    Effect.ALLOCATE: "CKG112",      # size= allocates; cdata= / allocator= are raw pointers
    Effect.DATA: "CKG114", Effect.LOOKUP: "CKG114", Effect.CONSTANT: "CKG114",
    Effect.ENCODE: "CKG117",
    Effect.VIEW: "CKG408", Effect.QUANTIZED: "CKG408", Effect.COPY: "CKG408",
    Effect.WRAP: "CKG408", Effect.CALLS_ARGUMENT: "CKG408", Effect.META: "CKG408",
    Effect.NO_DATA: "CKG408", Effect.COMPOSITE: "CKG408",
}

#: the codecs pickle and torch.save write for bytes as text (_codecs.encode, bytearray)
_WRITTEN_CODECS = ("latin1", "latin-1")


# --- entry point -------------------------------------------------------------------------

def audit_after_stop(ctx: AuditContext, data: bytes, result: PickleResult,
                     member: str | None, base: int = 0) -> None:
    """Bytes after a complete program's STOP (CKG203), and the program they hold, when
    they sniff as one (audited too, so its payload is named)."""
    extra = len(data) - result.end
    ctx.add("CKG203", f"{extra} bytes follow the pickle's STOP opcode", member=member,
            offset=base + result.end)
    tail = data[result.end:]
    fmt, _ = sniff(tail[:4096], len(tail))
    if fmt is Format.PICKLE:
        audit_pickle(ctx, data, member=member, base_offset=base, mode=PickleMode.RAW,
                     start=result.end)


def audit_pickle(
    ctx: AuditContext,
    data: bytes | memoryview,
    *,
    member: str | None = None,
    base_offset: int = 0,
    mode: PickleMode = PickleMode.RAW,
    storages: StorageCatalog | None = None,
    start: int = 0,
    allowance: ScopedAllowance | None = None,
) -> PickleResult:
    """Run one pickle program starting at ``start`` in ``data``; findings go to ``ctx``.
    ``allowance``: format-scoped benign globals, passed only by that format's auditor."""
    vm = _VM(ctx, data, member, base_offset, mode, storages, allowance)
    # The VM allocates millions of small tuples and lists that form no garbage cycles while
    # it runs; the cyclic collector would re-traverse them thousands of times (35% of the
    # run). It is paused for the run and restored after, whatever happens.
    with gc_paused():
        try:
            result = vm.run(start)
        finally:
            # the tensor model holds the VM's bound methods: dropping it breaks that cycle,
            # so the VM's values are freed by reference counting now, not by a collection
            del vm.tensors
    if result.complete:
        try:
            result.tensors = name_tensors(result.root, ctx.limits.max_tensors,
                                          ctx.limits.max_mark_depth)
        except LimitExceeded as e:
            ctx.limit_hit(e, member=member)
    return result


__all__ = ["PickleMode", "PickleResult", "StorageCatalog", "audit_after_stop", "audit_pickle"]
