"""Pickle opcode table (protocols 0-5) and the sets the audit uses.

Values are the opcode bytes as ints. A test checks this table against ``pickletools``.
"""

from __future__ import annotations

import codecs
import functools
import io
import re
from typing import Any

MARK = 0x28            # (
STOP = 0x2E            # .
POP = 0x30             # 0
POP_MARK = 0x31        # 1
DUP = 0x32             # 2
FLOAT = 0x46           # F
INT = 0x49             # I
BININT = 0x4A          # J
BININT1 = 0x4B         # K
LONG = 0x4C            # L
BININT2 = 0x4D         # M
NONE = 0x4E            # N
PERSID = 0x50          # P
BINPERSID = 0x51       # Q
REDUCE = 0x52          # R
STRING = 0x53          # S
BINSTRING = 0x54       # T
SHORT_BINSTRING = 0x55  # U
UNICODE = 0x56         # V
BINUNICODE = 0x58      # X
APPEND = 0x61          # a
BUILD = 0x62           # b
GLOBAL = 0x63          # c
DICT = 0x64            # d
EMPTY_DICT = 0x7D      # }
APPENDS = 0x65         # e
GET = 0x67             # g
BINGET = 0x68          # h
INST = 0x69            # i
LONG_BINGET = 0x6A     # j
LIST = 0x6C            # l
EMPTY_LIST = 0x5D      # ]
OBJ = 0x6F             # o
PUT = 0x70             # p
BINPUT = 0x71          # q
LONG_BINPUT = 0x72     # r
SETITEM = 0x73         # s
TUPLE = 0x74           # t
EMPTY_TUPLE = 0x29     # )
SETITEMS = 0x75        # u
BINFLOAT = 0x47        # G
# protocol 2
PROTO = 0x80
NEWOBJ = 0x81
EXT1 = 0x82
EXT2 = 0x83
EXT4 = 0x84
TUPLE1 = 0x85
TUPLE2 = 0x86
TUPLE3 = 0x87
NEWTRUE = 0x88
NEWFALSE = 0x89
LONG1 = 0x8A
LONG4 = 0x8B
# protocol 3
BINBYTES = 0x42        # B
SHORT_BINBYTES = 0x43  # C
# protocol 4
SHORT_BINUNICODE = 0x8C
BINUNICODE8 = 0x8D
BINBYTES8 = 0x8E
EMPTY_SET = 0x8F
ADDITEMS = 0x90
FROZENSET = 0x91
NEWOBJ_EX = 0x92
STACK_GLOBAL = 0x93
MEMOIZE = 0x94
FRAME = 0x95
# protocol 5
BYTEARRAY8 = 0x96
NEXT_BUFFER = 0x97
READONLY_BUFFER = 0x98

NAMES: dict[int, str] = {v: k for k, v in dict(globals()).items()
                         if k.isupper() and isinstance(v, int)}

#: Opcodes torch's weights-only unpickler (torch/_weights_only_unpickler.py) accepts.
TORCH_WEIGHTS_ONLY = frozenset({
    GLOBAL, NEWOBJ, REDUCE, BUILD, APPEND, APPENDS, SETITEM, SETITEMS, MARK, TUPLE, TUPLE1,
    TUPLE2, TUPLE3, NONE, NEWFALSE, NEWTRUE, EMPTY_TUPLE, EMPTY_LIST, EMPTY_DICT, EMPTY_SET,
    BININT, BININT1, BININT2, BINFLOAT, BINUNICODE, SHORT_BINSTRING, BINPERSID, BINGET,
    LONG_BINGET, BINPUT, LONG_BINPUT, LONG1, PROTO, STOP,
})

#: Fixed argument sizes (bytes after the opcode) for opcodes with fixed-size arguments.
FIXED_ARG = {
    BININT: 4, BININT1: 1, BININT2: 2, BINGET: 1, LONG_BINGET: 4, BINPUT: 1, LONG_BINPUT: 4,
    BINFLOAT: 8, PROTO: 1, EXT1: 1, EXT2: 2, EXT4: 4, FRAME: 8,
}
#: Opcodes whose argument is a length-prefixed blob: opcode -> (length bytes, signed).
COUNTED_ARG = {
    BINSTRING: (4, True), SHORT_BINSTRING: (1, False), BINUNICODE: (4, False),
    SHORT_BINUNICODE: (1, False), BINUNICODE8: (8, False), BINBYTES: (4, False),
    SHORT_BINBYTES: (1, False), BINBYTES8: (8, False), BYTEARRAY8: (8, False),
    LONG1: (1, False), LONG4: (4, True),
}
#: Opcodes whose argument is newline-terminated text (GLOBAL/INST take two lines).
LINE_ARG = {FLOAT: 1, INT: 1, LONG: 1, PERSID: 1, STRING: 1, UNICODE: 1, GET: 1, PUT: 1,
            GLOBAL: 2, INST: 2}
ALL_OPCODES = frozenset(NAMES)

#: How CPython's unpickler checks the stack (Modules/_pickle.c; pickle.py agrees), for
#: the opcodes that neither push nor close a MARK frame: opcode -> (values the current
#: MARK frame must hold, change of its size). With fewer values the unpickler raises
#: ("unpickling stack underflow") before the opcode does anything else. The PUTs and
#: MEMOIZE peek at the top value; STOP pops the value it returns. EXT codes, GLOBAL and
#: PERSID push what they look up. A test pins this table against pickletools'.
STACK_EFFECT: dict[int, tuple[int, int]] = {
    **dict.fromkeys((INT, BININT, BININT1, BININT2, LONG, LONG1, LONG4, STRING, BINSTRING,
                     SHORT_BINSTRING, BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8,
                     NEXT_BUFFER, NONE, NEWTRUE, NEWFALSE, UNICODE, SHORT_BINUNICODE,
                     BINUNICODE, BINUNICODE8, FLOAT, BINFLOAT, EMPTY_LIST, EMPTY_TUPLE,
                     EMPTY_DICT, EMPTY_SET, GET, BINGET, LONG_BINGET, EXT1, EXT2, EXT4,
                     GLOBAL, PERSID), (0, 1)),
    **dict.fromkeys((PUT, BINPUT, LONG_BINPUT, MEMOIZE, READONLY_BUFFER, TUPLE1, BINPERSID),
                    (1, 0)),
    **dict.fromkeys((PROTO, FRAME), (0, 0)),
    APPEND: (2, -1), TUPLE2: (2, -1), TUPLE3: (3, -2), SETITEM: (3, -2), DUP: (1, 1),
    STACK_GLOBAL: (2, -1), REDUCE: (2, -1), BUILD: (2, -1), NEWOBJ: (2, -1),
    NEWOBJ_EX: (3, -2), STOP: (1, -1),
}
#: The opcodes that close the current MARK frame: opcode -> (values the closed frame must
#: hold, values the enclosing frame must hold (the target of APPENDS/SETITEMS/ADDITEMS),
#: values pushed onto the enclosing frame, the closed frame must hold an even number).
#: Without a MARK the unpickler raises ("could not find MARK"). MARK opens a frame; POP
#: drops a value, or the MARK itself when the frame is empty.
MARK_EFFECT: dict[int, tuple[int, int, int, bool]] = {
    TUPLE: (0, 0, 1, False), LIST: (0, 0, 1, False), DICT: (0, 0, 1, True),
    FROZENSET: (0, 0, 1, False), INST: (0, 0, 1, False), OBJ: (1, 0, 1, False),
    POP_MARK: (0, 0, 0, False), APPENDS: (0, 1, 0, False), SETITEMS: (0, 1, 0, True),
    ADDITEMS: (0, 1, 0, False),
}


def scan_opcodes_prefix(head: bytes, *, min_ops: int = 3) -> bool:
    """Is ``head`` plausibly the start of a protocol 0/1 pickle? Decode opcodes without
    semantics: True on STOP or on reaching the end of the window after ``min_ops`` valid
    opcodes, when the first opcode is a GLOBAL/INST naming identifiers, or when an opcode's
    argument is structurally impossible for text (a negative byte count). Text files fail
    within a few bytes (a space, '#', '{' are no opcodes)."""
    pos, n, ops = 0, len(head), 0
    while pos < n:
        op = head[pos]
        if op not in ALL_OPCODES:
            return False
        pos += 1
        ops += 1
        if op == STOP:
            return ops >= 2
        if op in FIXED_ARG:
            pos += FIXED_ARG[op]
        elif op in COUNTED_ARG:
            width, signed = COUNTED_ARG[op]
            if pos + width > n:
                return ops >= min_ops
            ln = int.from_bytes(head[pos : pos + width], "little", signed=signed)
            if ln < 0:
                return True  # a malformed binary pickle, not text: let the VM report it
            pos += width + ln
        elif op in LINE_ARG:
            for _ in range(LINE_ARG[op]):
                end = head.find(b"\n", pos)
                line = head[pos:] if end < 0 else head[pos:end]
                if op in (GLOBAL, INST) and not _identifier_path(line.rstrip(b"\r")):
                    return False
                if op in (INT, LONG, GET, PUT, FLOAT) and end >= 0 and \
                        not text_value(op, line, c=True)[0] and \
                        not text_value(op, line, c=False)[0]:
                    # what the C unpickler reads (strtol stops at a NUL, ...), not what
                    # the line looks like: text fails here within a byte or two
                    return False
                if end < 0:
                    # The line runs past the window. An absurdly long GLOBAL/INST name is
                    # still a pickle (a scanner-flooding trick); a short unterminated line
                    # at the end of the data (b"little") is just text.
                    if n - pos <= 256:
                        # a short line cut by the end of the window: a pickle when enough
                        # valid opcodes came before it (a window cuts big protocol-0
                        # pickles anywhere); text (b"little") fails the count
                        return ops > min_ops
                    return op in (GLOBAL, INST) or ops >= min_ops
                pos = end + 1
            if op in (GLOBAL, INST) and ops == 1:
                return True
    return ops >= min_ops


#: the text literals both unpicklers read alike without asking them: canonical ints
CANONICAL_INT = re.compile(rb"-?[1-9][0-9]{0,17}|0")
CANONICAL_FLOAT = re.compile(rb"-?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")
_INF = float("inf")
#: longest text literal handed to an unpickler (CPython's int max-str-digits is 4300)
MAX_TEXT_LITERAL = 4300


def text_value(op: int, line: bytes, *, c: bool) -> tuple[bool, Any]:
    """What an unpickler reads from the text line of INT/LONG/FLOAT/GET/PUT/STRING/
    UNICODE/PERSID: (True, value) or (False, error name). ``c``: the C unpickler
    (``_pickle``, what pickle.load and torch.load use), else pickle.py.

    Exact parity by construction: the line is given to the real unpickler inside a
    one-opcode program (``<op><line>\n.``; GET/PUT as ``N p<line>``, PERSID with a
    persistent_load that returns the id). None of these opcodes imports or calls
    anything. The C code parses numbers with strtol / PyLong_FromString /
    PyOS_string_to_double, which stop at a NUL byte, so ``I1\0junk`` is 1 there and an
    error in pickle.py. GET/PUT give the memo index."""
    if len(line) > MAX_TEXT_LITERAL:
        return False, "overlong"
    if op in (INT, GET, PUT) and CANONICAL_INT.fullmatch(line):
        return True, int(line)
    if op == LONG and CANONICAL_INT.fullmatch(line[:-1] if line[-1:] == b"L" else line):
        return True, int(line[:-1] if line[-1:] == b"L" else line)
    if op == FLOAT and CANONICAL_FLOAT.fullmatch(line):
        x = float(line)
        if x not in (_INF, -_INF):  # C raises OverflowError where float() gives inf
            return True, x
    if op in (STRING, UNICODE, PERSID):
        # both unpicklers take these by length (a NUL is just a character) with the same
        # codecs: decoded here, and the differential test holds it to _pickle
        try:
            if op == UNICODE:
                return True, line.decode("raw-unicode-escape")
            if op == PERSID:
                return True, line.decode("ascii")
            if len(line) >= 2 and line[:1] == line[-1:] and line[:1] in (b"'", b'"'):
                return True, codecs.escape_decode(line[1:-1])[0].decode("latin-1")
            return False, "UnpicklingError"
        except (UnicodeDecodeError, ValueError) as e:
            return False, type(e).__name__
    if op in (GET, PUT):
        # The C unpickler's PUT grows its memo array to twice the index before storing: a
        # line naming a huge index would make this probe allocate (and zero) gigabytes. Its
        # PyLong_FromString(base 10) reads what Python's int(text, 10) reads, up to a NUL;
        # an index that large is answered here (the VM's max_memo_index bounds it next).
        try:
            index = int(line.split(b"\0", 1)[0].decode("ascii"), 10)
        except (UnicodeDecodeError, ValueError):
            index = None
        if index is not None and abs(index) > _MEMO_PROBE_MAX:
            return True, index
    prog = b"Np" + line + b"\n." if op in (GET, PUT) else bytes([op]) + line + b"\n."
    refusals, py_unpickler, c_unpickler, pers_py, pers_c = _probes()
    try:
        f = io.BytesIO(prog)
        if op == PERSID:
            u: Any = pers_c(f) if c else pers_py(f)
        elif c:
            u = c_unpickler(f, encoding="latin1")
        else:
            u = py_unpickler(f, encoding="latin1")
        value = u.load()
        if op in (GET, PUT):
            keys = list(u.memo.copy() if c else u.memo)
            return (True, keys[0]) if len(keys) == 1 else (False, "memo")
        return True, value
    except refusals as e:  # the unpickler's refusal is the answer
        return False, type(e).__name__
    except MemoryError:  # the real unpickler could not take this line either
        return False, "MemoryError"


#: Largest memo index a GET/PUT probe hands to the real C unpickler (its memo array then
#: takes at most 2 * 2**20 pointers, 16 MB).
_MEMO_PROBE_MAX = 1 << 20


@functools.cache
def _probes() -> tuple[Any, ...]:
    """(refusals, pickle.py unpickler, C unpickler, their persistent_load variants):
    ``pickle`` (~1 ms) is imported by the first text literal a program holds, not by every
    scan (tests/test_startup.py)."""
    import _pickle
    import pickle

    class _PersUnpickler(pickle._Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            return pid

    class _PersC(_pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            return pid

    refusals = (pickle.UnpicklingError, ValueError, EOFError, OverflowError, UnicodeError,
                KeyError, IndexError, TypeError, AttributeError)
    return refusals, pickle._Unpickler, _pickle.Unpickler, _PersUnpickler, _PersC


def _identifier_path(line: bytes) -> bool:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return False
    return bool(text) and all(p.isidentifier() for p in text.split("."))


__all__ = ["ALL_OPCODES", "MAX_TEXT_LITERAL", "NAMES", "TORCH_WEIGHTS_ONLY",
           "scan_opcodes_prefix", "text_value"]
