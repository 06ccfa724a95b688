/* jsoncore: the tensor rows of a JSON report, byte for byte what json.dumps writes for
 * [t.to_dict() for t in tensors] (ensure_ascii, compact or indent=2), straight from the
 * TensorInfo slots: no dict per tensor, no Python call per value.
 *
 * rows(tensors, level) returns the text report/fastjson.py's _rows(tensors, level) returns
 * (level -1: compact), or None to decline: the Python path then writes the same bytes (or
 * raises what json.dumps raises). It declines on anything but the exact types it encodes
 * itself: an exact TensorInfo (init() checked its 12 slots are object slots), str, int,
 * bool, None, and for shape/stride an exact tuple of exact ints/bools. An int whose repr
 * fails (over the int-to-str digit limit) declines too.
 *
 * Every write is bounds-checked against a buffer grown by doubling (overflow-checked, every
 * allocation checked: a failed one raises MemoryError); the values are read through the
 * slot offsets init() took from the class's member descriptors, and an unset slot declines.
 * No recursion.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include "slots.h"
#include <stdint.h>
#include <string.h>

#define N_FIELDS 12
#define MAX_LEVEL 64

/* TensorInfo.to_dict's keys, in its order (fastjson._TENSOR_KEYS; init() is given them) */
static PyTypeObject *INFO_TYPE;
static Py_ssize_t INFO_OFF[N_FIELDS];
static char KEY_TEXT[N_FIELDS][48];
static Py_ssize_t KEY_LEN[N_FIELDS];

enum { F_NAME, F_DTYPE, F_SHAPE, F_STRIDE }; /* the two list fields: 2, 3 */

typedef struct {
    char *p;
    Py_ssize_t n, cap;
} Buf;

static int buf_grow(Buf *b, Py_ssize_t extra) {
    if (extra < 0 || b->n > PY_SSIZE_T_MAX - extra) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t need = b->n + extra;
    if (need <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < need) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static int put(Buf *b, const char *s, Py_ssize_t n) {
    if (buf_grow(b, n) < 0)
        return -1;
    memcpy(b->p + b->n, s, (size_t)n);
    b->n += n;
    return 0;
}

/* "\n" and two spaces per level (nothing when compact: level < 0) */
static int put_nl(Buf *b, int level) {
    if (level < 0)
        return 0;
    if (buf_grow(b, 1 + 2 * (Py_ssize_t)level) < 0)
        return -1;
    b->p[b->n++] = '\n';
    memset(b->p + b->n, ' ', (size_t)(2 * level));
    b->n += 2 * level;
    return 0;
}

static const char HEX[] = "0123456789abcdef";

static void put_u(char *o, Py_UCS4 c) {
    o[0] = '\\';
    o[1] = 'u';
    o[2] = HEX[(c >> 12) & 0xf];
    o[3] = HEX[(c >> 8) & 0xf];
    o[4] = HEX[(c >> 4) & 0xf];
    o[5] = HEX[c & 0xf];
}

/* json's encode_basestring_ascii (py_encode_basestring_ascii / ascii_escape_unichar) */
static int put_str(Buf *b, PyObject *s) {
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(s) < 0)
        return -1;
#endif
    Py_ssize_t len = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    /* at most 12 bytes per character (a surrogate pair), plus the quotes */
    if (len > (PY_SSIZE_T_MAX - 2) / 12) {
        PyErr_NoMemory();
        return -1;
    }
    if (buf_grow(b, 2 + 12 * len) < 0)
        return -1;
    char *o = b->p + b->n;
    *o++ = '"';
    if (kind == PyUnicode_1BYTE_KIND) {
        /* the common case: copy runs of plain ASCII characters at once */
        const Py_UCS1 *u = (const Py_UCS1 *)data;
        Py_ssize_t i = 0;
        while (i < len) {
            Py_ssize_t j = i;
            while (j < len && u[j] >= ' ' && u[j] <= '~' && u[j] != '\\' && u[j] != '"')
                j++;
            memcpy(o, u + i, (size_t)(j - i));
            o += j - i;
            if (j == len)
                break;
            Py_UCS4 c = u[j];
            *o++ = '\\';
            switch (c) {
            case '\\': *o++ = '\\'; break;
            case '"': *o++ = '"'; break;
            case '\b': *o++ = 'b'; break;
            case '\f': *o++ = 'f'; break;
            case '\n': *o++ = 'n'; break;
            case '\r': *o++ = 'r'; break;
            case '\t': *o++ = 't'; break;
            default:
                o--;
                put_u(o, c);
                o += 6;
            }
            i = j + 1;
        }
        *o++ = '"';
        b->n = o - b->p;
        return 0;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c >= ' ' && c <= '~' && c != '\\' && c != '"') {
            *o++ = (char)c;
            continue;
        }
        switch (c) {
        case '\\': *o++ = '\\'; *o++ = '\\'; break;
        case '"': *o++ = '\\'; *o++ = '"'; break;
        case '\b': *o++ = '\\'; *o++ = 'b'; break;
        case '\f': *o++ = '\\'; *o++ = 'f'; break;
        case '\n': *o++ = '\\'; *o++ = 'n'; break;
        case '\r': *o++ = '\\'; *o++ = 'r'; break;
        case '\t': *o++ = '\\'; *o++ = 't'; break;
        default:
            if (c >= 0x10000) {
                Py_UCS4 v = c - 0x10000;
                put_u(o, 0xd800 | ((v >> 10) & 0x3ff));
                o += 6;
                c = 0xdc00 | (v & 0x3ff);
            }
            put_u(o, c);
            o += 6;
        }
    }
    *o++ = '"';
    b->n = o - b->p;
    return 0;
}

/* int.__repr__ (what json.dumps writes for an exact int). 0: written; 1: decline. */
static int put_int(Buf *b, PyObject *v) {
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (!overflow) {
        char tmp[24];
        int k = sizeof tmp;
        unsigned long long u = x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x;
        do {
            tmp[--k] = (char)('0' + (int)(u % 10));
            u /= 10;
        } while (u);
        if (x < 0)
            tmp[--k] = '-';
        return put(b, tmp + k, (Py_ssize_t)sizeof tmp - k);
    }
    PyObject *r = PyLong_Type.tp_repr(v);
    if (r == NULL) { /* over the int max str digits limit: json.dumps raises; decline */
        PyErr_Clear();
        return 1;
    }
    int rc = 1;
    if (PyUnicode_IS_ASCII(r))
        rc = put(b, (const char *)PyUnicode_1BYTE_DATA(r), PyUnicode_GET_LENGTH(r));
    Py_DECREF(r);
    return rc;
}

/* a str, int, bool or None. 0: written; 1: another type (decline); -1: error */
static int put_scalar(Buf *b, PyObject *v) {
    if (v == Py_None)
        return put(b, "null", 4);
    if (v == Py_True)
        return put(b, "true", 4);
    if (v == Py_False)
        return put(b, "false", 5);
    if (PyUnicode_CheckExact(v))
        return put_str(b, v);
    if (PyLong_CheckExact(v))
        return put_int(b, v);
    return 1;
}

/* an exact tuple of exact ints/bools as a JSON list, its items at level + 1 */
static int put_int_list(Buf *b, PyObject *t, int level) {
    if (!PyTuple_CheckExact(t))
        return 1;
    Py_ssize_t n = PyTuple_GET_SIZE(t);
    if (n == 0)
        return put(b, "[]", 2);
    if (put(b, "[", 1) < 0)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyTuple_GET_ITEM(t, i);
        if (!(PyLong_CheckExact(v) || PyBool_Check(v)))
            return 1;
        if ((i && put(b, ",", 1) < 0) || put_nl(b, level < 0 ? -1 : level + 1) < 0)
            return -1;
        int rc = put_scalar(b, v);
        if (rc)
            return rc;
    }
    if (put_nl(b, level) < 0 || put(b, "]", 1) < 0)
        return -1;
    return 0;
}

static PyObject *jc_init(PyObject *self, PyObject *args) {
    PyObject *cls, *names;
    (void)self;
    if (!PyArg_ParseTuple(args, "OO!:init", &cls, &PyTuple_Type, &names))
        return NULL;
    if (!PyType_Check(cls) || PyTuple_GET_SIZE(names) != N_FIELDS) {
        PyErr_SetString(PyExc_TypeError, "init(cls, the 12 field names)");
        return NULL;
    }
    PyTypeObject *t = (PyTypeObject *)cls;
    if (!ckg_plain_slots_class(t)) {
        PyErr_Format(PyExc_TypeError, "%s is not a plain __slots__ class", t->tp_name);
        return NULL;
    }
    Py_ssize_t off[N_FIELDS];
    for (int i = 0; i < N_FIELDS; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if (!PyUnicode_CheckExact(name) || !PyUnicode_IS_ASCII(name) ||
            PyUnicode_GET_LENGTH(name) > 40) {
            PyErr_SetString(PyExc_TypeError, "field names: short ASCII str");
            return NULL;
        }
        PyObject *d = PyObject_GetAttr(cls, name);
        if (d == NULL)
            return NULL;
        off[i] = ckg_object_slot(t, d, 0); /* read only here: a read-only slot will do */
        Py_DECREF(d);
        if (off[i] < 0) {
            PyErr_Format(PyExc_TypeError, "%s.%U is not an object slot", t->tp_name, name);
            return NULL;
        }
    }
    for (int i = 0; i < N_FIELDS; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        Py_ssize_t n = PyUnicode_GET_LENGTH(name);
        const char *s = (const char *)PyUnicode_1BYTE_DATA(name);
        /* the key as json writes it: plain names only (no escapes needed) */
        for (Py_ssize_t j = 0; j < n; j++) {
            if (!(s[j] == '_' || (s[j] >= 'a' && s[j] <= 'z'))) {
                PyErr_SetString(PyExc_TypeError, "field names: [a-z_]+");
                return NULL;
            }
        }
        KEY_TEXT[i][0] = '"';
        memcpy(KEY_TEXT[i] + 1, s, (size_t)n);
        KEY_TEXT[i][n + 1] = '"';
        KEY_LEN[i] = n + 2;
        INFO_OFF[i] = off[i];
    }
    Py_INCREF(cls);
    Py_XSETREF(INFO_TYPE, t);
    Py_RETURN_NONE;
}

/* what precedes each value of a row: ("," and) the line break, the key and its colon;
 * then what closes the row and separates it from the next (all for one level) */
#define PFX_MAX (2 + 2 * (MAX_LEVEL + 2) + 48 + 2)
typedef struct {
    char pfx[N_FIELDS][PFX_MAX];
    Py_ssize_t pfx_len[N_FIELDS];
} RowText;

static void row_text(RowText *rt, int level) {
    int inner = level < 0 ? -1 : level + 1;
    for (int i = 0; i < N_FIELDS; i++) {
        char *q = rt->pfx[i];
        if (i)
            *q++ = ',';
        if (inner >= 0) {
            *q++ = '\n';
            memset(q, ' ', (size_t)(2 * inner));
            q += 2 * inner;
        }
        memcpy(q, KEY_TEXT[i], (size_t)KEY_LEN[i]);
        q += KEY_LEN[i];
        *q++ = ':';
        if (inner >= 0)
            *q++ = ' ';
        rt->pfx_len[i] = q - rt->pfx[i];
    }
}

/* one tensor object at `level` (its keys at level + 1). 0 / 1 (decline) / -1 */
static int put_row(Buf *b, const RowText *rt, PyObject *o, int level) {
    int inner = level < 0 ? -1 : level + 1;
    if (put(b, "{", 1) < 0)
        return -1;
    for (int i = 0; i < N_FIELDS; i++) {
        PyObject *v = *(PyObject **)((char *)o + INFO_OFF[i]);
        if (v == NULL)
            return 1; /* an unset slot: to_dict would raise */
        if (put(b, rt->pfx[i], rt->pfx_len[i]) < 0)
            return -1;
        int rc;
        if (i == F_SHAPE || (i == F_STRIDE && v != Py_None))
            rc = put_int_list(b, v, inner);
        else
            rc = put_scalar(b, v);
        if (rc)
            return rc;
    }
    if (put_nl(b, level) < 0 || put(b, "}", 1) < 0)
        return -1;
    return 0;
}

static PyObject *jc_rows(PyObject *self, PyObject *args) {
    PyObject *seq;
    int level;
    (void)self;
    if (!PyArg_ParseTuple(args, "Oi:rows", &seq, &level))
        return NULL;
    if (INFO_TYPE == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "jsoncore.init() was not called");
        return NULL;
    }
    if (!(PyList_CheckExact(seq) || PyTuple_CheckExact(seq)) || level < -1 ||
        level > MAX_LEVEL)
        Py_RETURN_NONE;
    PyObject *fast = PySequence_Fast(seq, "rows");
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    Buf b = {NULL, 0, 0};
    RowText *rt = PyMem_Malloc(sizeof(RowText));
    if (rt == NULL) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    row_text(rt, level);
    int rc = n ? 0 : 1; /* no rows: the caller writes "[]" */
    for (Py_ssize_t i = 0; i < n && rc == 0; i++) {
        /* a borrowed item: PySequence_Fast of an exact list/tuple is the object itself
         * (one more reference), and nothing below runs Python code that could change it */
        PyObject *o = PySequence_Fast_GET_ITEM(fast, i);
        if (!Py_IS_TYPE(o, INFO_TYPE)) {
            rc = 1;
            break;
        }
        if (i && (put(&b, ",", 1) < 0 || put_nl(&b, level) < 0)) {
            rc = -1;
            break;
        }
        rc = put_row(&b, rt, o, level);
    }
    PyMem_Free(rt);
    Py_DECREF(fast);
    PyObject *out = NULL;
    if (rc == 0) {
        out = PyUnicode_New(b.n, 127);
        if (out != NULL)
            memcpy(PyUnicode_1BYTE_DATA(out), b.p, (size_t)b.n);
    } else if (rc == 1) {
        out = Py_NewRef(Py_None);
    }
    PyMem_Free(b.p);
    return out;
}

static PyMethodDef methods[] = {
    {"init", jc_init, METH_VARARGS,
     "init(cls, names): the tensor class and its 12 to_dict field names, in order."},
    {"rows", jc_rows, METH_VARARGS,
     "rows(tensors, level) -> str | None: fastjson._rows(tensors, level) (level -1: "
     "compact), or None to decline."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "jsoncore", NULL, -1, methods,
                                     NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_jsoncore(void) { return PyModule_Create(&module); }
