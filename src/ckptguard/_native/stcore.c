/* stcore: a plain-header prover for analysis/safetensors.py::audit_safetensors.
 *
 * init(tensor_info_type, dtypes) once: the TensorInfo slots class (its 12 slots are filled
 * directly) and the dtype table ((safetensors name, bits, torch name), ... from
 * analysis/safetensors.py::DTYPES, so the two can never drift apart).
 *
 * prove(header, data_start, size, max_tensors) parses the header JSON bytes in one bounded,
 * iterative pass over a strict subset of JSON and either PROVES that the strict Python path
 * would record no finding at all, returning ``(tensors, metadata_span, n)`` -- the
 * TensorInfo records in the strict path's order (data offset, then name), the
 * ``(start, end)`` byte span of the ``__metadata__`` object or None, and the tensor count --
 * or returns None (decline) and the Python paths run unchanged and explain.
 *
 * Accepted, and nothing else:
 *   - the top level: ``{`` then ``"key":value`` pairs separated by ``,``, then ``}``, then
 *     only JSON white space (space, tab, LF, CR: what Python's json and serde_json skip)
 *     to the end; white space between any two tokens;
 *   - keys and tensor names: printable ASCII (0x20-0x7e) without ``"`` or ``\`` (no escape,
 *     no UTF-8: both readers then see the very bytes), non-empty, each name once (the two
 *     readers keep different copies of a repeated key);
 *   - ``"__metadata__"`` at most once, an object of strings to strings; its strings may hold
 *     escapes (the JSON set, checked here) and non-ASCII bytes: Python decodes the span
 *     (strict UTF-8), parses it and checks keys for repeats and lone surrogates;
 *   - every other value: an object with exactly the keys ``dtype``, ``shape`` and
 *     ``data_offsets`` (any order, each once), the dtype a known name, the shape an array of
 *     integers, the offsets an array of two integers; integers are plain digit strings
 *     without a sign, fraction, exponent or leading zero, at most 2**64-1 (a dimension at
 *     most 2**63-1: torch and numpy hold dimensions as signed 64-bit integers);
 *   - each tensor's bytes = product(shape) * bits / 8, a whole number, and end - begin
 *     equal to it; no step of the product, folded left to right as the crate folds it,
 *     overflows 64 bits (after a zero dimension it stays 0: both readers agree);
 *   - the layout: sorted by (begin, end, name) every tensor starts where the previous
 *     ended, the first at 0, the last ending at the end of the file;
 *   - at most ``max_tensors`` tensors.
 *
 * Untrusted input: every read is bounds-checked against the header's length (no reliance
 * on NUL termination), no recursion (the accepted grammar nests 3 deep, tracked by the
 * parser's position, not a stack), 64-bit arithmetic checked before it can overflow,
 * every allocation checked, sorting with qsort over an index array (O(n log n)).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include "slots.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define N_FIELDS 12
#define MAX_DTYPES 64
#define SHAPE_CACHE 4096 /* slots of the shape-tuple cache (power of two) */

/* analysis/safetensors.py::STCORE_FIELDS (the Python side checks they are all of them) */
static const char *const FIELDS[N_FIELDS] = {
    "name", "dtype", "shape", "stride", "storage", "storage_offset", "nbytes",
    "storage_nbytes", "data_offset", "device", "requires_grad", "file"};

static PyTypeObject *info_type;
static Py_ssize_t info_off[N_FIELDS];
static PyObject *s_cpu, *i_zero;

typedef struct {
    char name[32];
    size_t len;
    uint64_t bits;
    PyObject *torch;
} Dtype;
static Dtype dtypes[MAX_DTYPES];
static int n_dtypes;

typedef struct {
    size_t name_off, name_len;
    size_t dims_off, ndim;
    uint64_t begin, end;
    int dtype;
} Entry;

typedef struct {
    const unsigned char *b;
    size_t n, p;
} P;

static inline int is_ws(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
static inline void ws(P *s) {
    while (s->p < s->n && is_ws(s->b[s->p]))
        s->p++;
}
static inline int lit(P *s, unsigned char c) {
    if (s->p < s->n && s->b[s->p] == c) {
        s->p++;
        return 1;
    }
    return 0;
}

/* bytes allowed in a plain key or name: printable ASCII (0x20-0x7e) but '"' and '\\' */
static unsigned char plain_ok[256];

/* a plain key or name: printable ASCII without '"' or a backslash; *off, *len: its bytes */
static inline int plain_string(P *s, size_t *off, size_t *len) {
    if (!lit(s, '"'))
        return 0;
    size_t start = s->p, p = s->p, n = s->n;
    const unsigned char *b = s->b;
    while (p < n && plain_ok[b[p]])
        p++;
    if (p >= n || b[p] != '"')
        return 0; /* the end, a control byte, a non-ASCII byte or an escape */
    *off = start;
    *len = p - start;
    s->p = p + 1;
    return 1;
}

/* a short byte string equal to a C string of klen bytes (no libc call per key) */
static inline int bytes_eq(const unsigned char *a, const char *k, size_t klen) {
    for (size_t i = 0; i < klen; i++)
        if (a[i] != (unsigned char)k[i])
            return 0;
    return 1;
}

static inline int hexd(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* a metadata string: JSON escapes checked, bytes >= 0x80 left to Python's strict decode */
static int meta_string(P *s) {
    if (!lit(s, '"'))
        return 0;
    while (s->p < s->n) {
        unsigned char c = s->b[s->p];
        if (c == '"') {
            s->p++;
            return 1;
        }
        if (c < 0x20)
            return 0;
        if (c == '\\') {
            if (s->p + 1 >= s->n)
                return 0;
            unsigned char e = s->b[s->p + 1];
            if (e == 'u') {
                if (s->n - s->p < 6 || !hexd(s->b[s->p + 2]) || !hexd(s->b[s->p + 3]) ||
                    !hexd(s->b[s->p + 4]) || !hexd(s->b[s->p + 5]))
                    return 0;
                s->p += 6;
                continue;
            }
            if (!(e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' ||
                  e == 'r' || e == 't'))
                return 0;
            s->p += 2;
            continue;
        }
        s->p++;
    }
    return 0;
}

/* an unsigned integer: digits, no leading zero, at most 2**64-1 */
static int u64_lit(P *s, uint64_t *out) {
    if (s->p >= s->n)
        return 0;
    unsigned char c = s->b[s->p];
    if (c < '0' || c > '9')
        return 0;
    uint64_t v = 0;
    if (c == '0') {
        s->p++;
    } else {
        while (s->p < s->n && s->b[s->p] >= '0' && s->b[s->p] <= '9') {
            uint64_t d = (uint64_t)(s->b[s->p] - '0');
            if (v > (UINT64_MAX - d) / 10)
                return 0;
            v = v * 10 + d;
            s->p++;
        }
    }
    /* a fraction or exponent (or a digit after a leading zero) makes it no plain integer */
    if (s->p < s->n) {
        c = s->b[s->p];
        if (c == '.' || c == 'e' || c == 'E' || (c >= '0' && c <= '9'))
            return 0;
    }
    *out = v;
    return 1;
}

static inline int key_is(const P *s, size_t off, size_t len, const char *k, size_t klen) {
    return len == klen && bytes_eq(s->b + off, k, klen);
}

typedef struct {
    uint64_t *d;
    size_t n, cap;
} Dims;

static int dims_push(Dims *d, uint64_t v) {
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 1024;
        uint64_t *nd = PyMem_Realloc(d->d, cap * sizeof(uint64_t));
        if (nd == NULL)
            return -1;
        d->d = nd;
        d->cap = cap;
    }
    d->d[d->n++] = v;
    return 0;
}

/* the metadata object: {} or {"k":"v",...}; 1 ok, 0 decline */
static int meta_object(P *s) {
    if (!lit(s, '{'))
        return 0;
    ws(s);
    if (lit(s, '}'))
        return 1;
    for (;;) {
        if (!meta_string(s))
            return 0;
        ws(s);
        if (!lit(s, ':'))
            return 0;
        ws(s);
        if (!meta_string(s))
            return 0;
        ws(s);
        if (lit(s, '}'))
            return 1;
        if (!lit(s, ','))
            return 0;
        ws(s);
    }
}

/* one tensor entry; 1 ok, 0 decline, -1 error (memory) */
static int entry(P *s, Dims *dims, Entry *e, int *last_dtype) {
    if (!lit(s, '{'))
        return 0;
    int seen = 0; /* 1 dtype, 2 shape, 4 data_offsets */
    for (int k = 0; k < 3; k++) {
        ws(s);
        size_t off, len;
        if (!plain_string(s, &off, &len))
            return 0;
        ws(s);
        if (!lit(s, ':'))
            return 0;
        ws(s);
        if (key_is(s, off, len, "dtype", 5) && !(seen & 1)) {
            seen |= 1;
            size_t doff, dlen;
            if (!plain_string(s, &doff, &dlen))
                return 0;
            e->dtype = -1;
            /* the previous entry's dtype first (headers repeat one or two) */
            if (*last_dtype >= 0 && dtypes[*last_dtype].len == dlen &&
                bytes_eq(s->b + doff, dtypes[*last_dtype].name, dlen)) {
                e->dtype = *last_dtype;
            } else {
                for (int i = 0; i < n_dtypes; i++) {
                    if (dtypes[i].len == dlen && bytes_eq(s->b + doff, dtypes[i].name, dlen)) {
                        e->dtype = i;
                        break;
                    }
                }
            }
            if (e->dtype < 0)
                return 0;
            *last_dtype = e->dtype;
        } else if (key_is(s, off, len, "shape", 5) && !(seen & 2)) {
            seen |= 2;
            if (!lit(s, '['))
                return 0;
            e->dims_off = dims->n;
            ws(s);
            if (!lit(s, ']')) {
                for (;;) {
                    uint64_t v;
                    /* torch and numpy hold dimensions as signed 64-bit integers: a larger
                     * one declines (the Python path reports it, CKG501) */
                    if (!u64_lit(s, &v) || v > (uint64_t)INT64_MAX)
                        return 0;
                    if (dims_push(dims, v) < 0)
                        return -1;
                    ws(s);
                    if (lit(s, ']'))
                        break;
                    if (!lit(s, ','))
                        return 0;
                    ws(s);
                }
            }
            e->ndim = dims->n - e->dims_off;
        } else if (key_is(s, off, len, "data_offsets", 12) && !(seen & 4)) {
            seen |= 4;
            if (!lit(s, '['))
                return 0;
            ws(s);
            if (!u64_lit(s, &e->begin))
                return 0;
            ws(s);
            if (!lit(s, ','))
                return 0;
            ws(s);
            if (!u64_lit(s, &e->end))
                return 0;
            ws(s);
            if (!lit(s, ']'))
                return 0;
        } else {
            return 0; /* another key, or one repeated */
        }
        ws(s);
        if (k < 2 && !lit(s, ','))
            return 0;
    }
    if (!lit(s, '}'))
        return 0;
    /* bytes = product(shape) * bits / 8. The crate folds the product left to right with
     * checked multiplications (an overflow before a zero dimension is an error there, while
     * Python's exact product is 0): an overflow at any step declines, so both readers agree
     * on every product proven here */
    uint64_t numel = 1;
    for (size_t i = 0; i < e->ndim; i++) {
        uint64_t d = dims->d[e->dims_off + i];
        if (numel != 0 && d != 0 && numel > UINT64_MAX / d)
            return 0;
        numel *= d;
    }
    if (numel == 0) {
        /* no elements: torch still lays the tensor out contiguously (each dimension at
         * least 1) and refuses a stride above INT64_MAX; the largest is the product of the
         * dimensions after the first (the Python path says so, CKG504) */
        uint64_t stride = 1;
        for (size_t i = 1; i < e->ndim; i++) {
            uint64_t d = dims->d[e->dims_off + i];
            if (d > 1) {
                if (stride > (uint64_t)INT64_MAX / d)
                    return 0;
                stride *= d;
            }
        }
    }
    uint64_t bits = dtypes[e->dtype].bits;
    if (bits && numel > UINT64_MAX / bits)
        return 0;
    uint64_t total = numel * bits;
    if (total % 8)
        return 0;
    if (e->end < e->begin || e->end - e->begin != total / 8)
        return 0;
    return 1;
}

/* ---- ordering ------------------------------------------------------------------------ */

static const unsigned char *sort_base;
static const Entry *sort_entries;

static inline int name_cmp(const Entry *a, const Entry *b) {
    size_t m = a->name_len < b->name_len ? a->name_len : b->name_len;
    int c = memcmp(sort_base + a->name_off, sort_base + b->name_off, m);
    if (c)
        return c;
    return (a->name_len > b->name_len) - (a->name_len < b->name_len);
}
static int by_name(const void *x, const void *y) {
    return name_cmp(&sort_entries[*(const size_t *)x], &sort_entries[*(const size_t *)y]);
}
/* (begin, name): the strict path's order of the records (data_offset = start + begin) */
static int by_begin_name(const void *x, const void *y) {
    const Entry *a = &sort_entries[*(const size_t *)x], *b = &sort_entries[*(const size_t *)y];
    if (a->begin != b->begin)
        return (a->begin > b->begin) - (a->begin < b->begin);
    return name_cmp(a, b);
}

/* ---- records ------------------------------------------------------------------------- */

typedef struct {
    PyObject *tuple;
    size_t dims_off, ndim;
} ShapeSlot;

/* A new tuple of the n ints d[0..n), or NULL with an exception. */
static PyObject *int_tuple(const uint64_t *d, size_t n) {
    PyObject *t = PyTuple_New((Py_ssize_t)n);
    if (t == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(d[i]);
        if (v == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, (Py_ssize_t)i, v);
    }
    return t;
}

static PyObject *shape_tuple(ShapeSlot *cache, const Dims *dims, const Entry *e) {
    const uint64_t *d = dims->d + e->dims_off;
    uint64_t h = 1469598103934665603ULL ^ e->ndim;
    for (size_t i = 0; i < e->ndim; i++)
        h = (h ^ d[i]) * 1099511628211ULL;
    size_t slot = (size_t)(h ^ (h >> 29)) & (SHAPE_CACHE - 1);
    for (int probe = 0; probe < 8; probe++) {
        ShapeSlot *c = &cache[(slot + (size_t)probe) & (SHAPE_CACHE - 1)];
        if (c->tuple == NULL) {
            PyObject *t = int_tuple(d, e->ndim);
            if (t == NULL)
                return NULL;
            if (PyObject_GC_IsTracked(t))
                PyObject_GC_UnTrack(t); /* ints only: no cycle */
            c->tuple = t;
            c->dims_off = e->dims_off;
            c->ndim = e->ndim;
            Py_INCREF(t);
            return t;
        }
        if (c->ndim == e->ndim &&
            (e->ndim == 0 || memcmp(dims->d + c->dims_off, d, e->ndim * sizeof(uint64_t)) == 0)) {
            Py_INCREF(c->tuple);
            return c->tuple;
        }
    }
    return int_tuple(d, e->ndim); /* a crowded neighbourhood: a tuple of its own */
}

static PyObject *new_info(PyObject **vals) {
    PyObject *o = info_type->tp_alloc(info_type, 0);
    if (o == NULL) {
        for (int i = 0; i < N_FIELDS; i++)
            Py_XDECREF(vals[i]);
        return NULL;
    }
    for (int i = 0; i < N_FIELDS; i++)
        *(PyObject **)((char *)o + info_off[i]) = vals[i];
    /* strings, ints, a tuple of ints, None, False: no cycle passes through it */
    if (PyObject_GC_IsTracked(o))
        PyObject_GC_UnTrack(o);
    return o;
}

static PyObject *build(const P *s, const Entry *es, const size_t *order, size_t n,
                       const Dims *dims, uint64_t data_start) {
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL)
        return NULL;
    ShapeSlot *cache = PyMem_Calloc(SHAPE_CACHE, sizeof(ShapeSlot));
    if (cache == NULL) {
        Py_DECREF(list);
        return PyErr_NoMemory();
    }
    PyObject *last_nbytes = NULL;
    uint64_t last_nb = 0;
    for (size_t k = 0; k < n; k++) {
        const Entry *e = &es[order ? order[k] : k];
        PyObject *vals[N_FIELDS];
        PyObject *name = PyUnicode_New((Py_ssize_t)e->name_len, 127);
        if (name == NULL)
            goto fail;
        memcpy(PyUnicode_DATA(name), s->b + e->name_off, e->name_len);
        PyObject *shape = shape_tuple(cache, dims, e);
        if (shape == NULL) {
            Py_DECREF(name);
            goto fail;
        }
        uint64_t nb = e->end - e->begin;
        if (last_nbytes == NULL || nb != last_nb) {
            PyObject *v = PyLong_FromUnsignedLongLong(nb);
            if (v == NULL) {
                Py_DECREF(name);
                Py_DECREF(shape);
                goto fail;
            }
            Py_XSETREF(last_nbytes, v);
            last_nb = nb;
        }
        /* data_start + begin <= size: the layout was proven inside the file */
        PyObject *off = PyLong_FromUnsignedLongLong(data_start + e->begin);
        if (off == NULL) {
            Py_DECREF(name);
            Py_DECREF(shape);
            goto fail;
        }
        PyObject *torch = dtypes[e->dtype].torch;
        Py_INCREF(name); /* storage */
        Py_INCREF(torch);
        Py_INCREF(Py_None);
        Py_INCREF(i_zero);
        Py_INCREF(last_nbytes);
        Py_INCREF(last_nbytes);
        Py_INCREF(s_cpu);
        Py_INCREF(Py_False);
        Py_INCREF(Py_None);
        vals[0] = name;
        vals[1] = torch;
        vals[2] = shape;
        vals[3] = Py_None;
        vals[4] = name;
        vals[5] = i_zero;
        vals[6] = last_nbytes;
        vals[7] = last_nbytes;
        vals[8] = off;
        vals[9] = s_cpu;
        vals[10] = Py_False;
        vals[11] = Py_None;
        PyObject *o = new_info(vals);
        if (o == NULL)
            goto fail;
        PyList_SET_ITEM(list, (Py_ssize_t)k, o);
    }
    for (size_t i = 0; i < SHAPE_CACHE; i++)
        Py_XDECREF(cache[i].tuple);
    PyMem_Free(cache);
    Py_XDECREF(last_nbytes);
    return list;
fail:
    for (size_t i = 0; i < SHAPE_CACHE; i++)
        Py_XDECREF(cache[i].tuple);
    PyMem_Free(cache);
    Py_XDECREF(last_nbytes);
    Py_DECREF(list); /* items not yet set are NULL: list_dealloc skips them */
    return NULL;
}

/* ---- prove ----------------------------------------------------------------------------- */

static PyObject *prove(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    unsigned long long data_start, size;
    Py_ssize_t max_tensors;
    if (!PyArg_ParseTuple(args, "y*KKn", &buf, &data_start, &size, &max_tensors))
        return NULL;
    if (info_type == NULL) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_RuntimeError, "stcore.init was not called");
        return NULL;
    }
    P st = {(const unsigned char *)buf.buf, (size_t)buf.len, 0};
    P *s = &st;
    Entry *es = NULL;
    size_t n = 0, cap = 0;
    Dims dims = {NULL, 0, 0};
    size_t *order = NULL;
    PyObject *result = NULL;
    int err = 0;
    size_t meta_start = 0, meta_end = 0;
    int has_meta = 0;
    int last_dtype = -1;

    if (size < data_start || max_tensors < 0)
        goto decline;
    uint64_t data_len = size - data_start;

    if (!lit(s, '{'))
        goto decline;
    ws(s);
    if (!lit(s, '}')) {
        for (;;) {
            size_t off, len;
            if (!plain_string(s, &off, &len) || len == 0)
                goto decline;
            ws(s);
            if (!lit(s, ':'))
                goto decline;
            ws(s);
            if (key_is(s, off, len, "__metadata__", 12)) {
                if (has_meta)
                    goto decline;
                has_meta = 1;
                meta_start = s->p;
                if (!meta_object(s))
                    goto decline;
                meta_end = s->p;
            } else {
                if (n == (size_t)max_tensors)
                    goto decline; /* the strict path raises the limit */
                if (n == cap) {
                    size_t nc = cap ? cap * 2 : 256;
                    Entry *ne = PyMem_Realloc(es, nc * sizeof(Entry));
                    if (ne == NULL) {
                        err = 1;
                        PyErr_NoMemory();
                        goto decline;
                    }
                    es = ne;
                    cap = nc;
                }
                Entry *e = &es[n];
                e->name_off = off;
                e->name_len = len;
                e->dims_off = e->ndim = 0;
                int r = entry(s, &dims, e, &last_dtype);
                if (r < 0) {
                    err = 1;
                    PyErr_NoMemory();
                    goto decline;
                }
                if (r == 0)
                    goto decline;
                n++;
            }
            ws(s);
            if (lit(s, '}'))
                break;
            if (!lit(s, ','))
                goto decline;
            ws(s);
        }
    }
    ws(s);
    if (s->p != s->n)
        goto decline; /* trailing bytes that are not JSON white space */

    sort_base = s->b;
    sort_entries = es;
    /* names distinct: ascending in the header (the library writes them sorted per dtype),
     * else sorted here and compared with their neighbours */
    int ascending = 1, in_order = 1;
    for (size_t i = 1; i < n; i++) {
        int c = name_cmp(&es[i - 1], &es[i]);
        if (c >= 0)
            ascending = 0;
        if (es[i - 1].begin > es[i].begin || (es[i - 1].begin == es[i].begin && c >= 0))
            in_order = 0;
    }
    if (!ascending || !in_order) {
        order = PyMem_Malloc((n ? n : 1) * sizeof(size_t));
        if (order == NULL) {
            err = 1;
            PyErr_NoMemory();
            goto decline;
        }
    }
    if (!ascending) {
        for (size_t i = 0; i < n; i++)
            order[i] = i;
        qsort(order, n, sizeof(size_t), by_name);
        for (size_t i = 1; i < n; i++)
            if (name_cmp(&es[order[i - 1]], &es[order[i]]) == 0)
                goto decline; /* a repeated name (CKG502) */
    }
    if (!in_order) {
        for (size_t i = 0; i < n; i++)
            order[i] = i;
        qsort(order, n, sizeof(size_t), by_begin_name);
    } else if (order != NULL) {
        PyMem_Free(order);
        order = NULL;
    }
    /* the layout: groups of equal begin; each group starts where the previous one's
     * non-empty tensor ended (at most one non-empty tensor per group, else an overlap) */
    uint64_t expected = 0;
    for (size_t i = 0; i < n;) {
        const Entry *g = &es[order ? order[i] : i];
        uint64_t b = g->begin;
        if (b != expected)
            goto decline; /* a gap or an overlap (CKG504) */
        int nonempty = 0;
        uint64_t end = b;
        for (; i < n && es[order ? order[i] : i].begin == b; i++) {
            const Entry *e = &es[order ? order[i] : i];
            if (e->end != e->begin) {
                if (nonempty++)
                    goto decline;
                end = e->end;
            }
        }
        expected = end;
    }
    if (expected != data_len)
        goto decline; /* trailing data, or tensors past the end (CKG504) */

    {
        PyObject *tensors = build(s, es, order, n, &dims, data_start);
        if (tensors == NULL) {
            err = 1;
            goto decline;
        }
        PyObject *meta;
        if (has_meta)
            meta = Py_BuildValue("(nn)", (Py_ssize_t)meta_start, (Py_ssize_t)meta_end);
        else {
            meta = Py_None;
            Py_INCREF(meta);
        }
        if (meta == NULL) {
            Py_DECREF(tensors);
            err = 1;
            goto decline;
        }
        result = Py_BuildValue("(NNn)", tensors, meta, (Py_ssize_t)n);
        if (result == NULL)
            err = 1;
    }
decline:
    PyMem_Free(es);
    PyMem_Free(dims.d);
    PyMem_Free(order);
    PyBuffer_Release(&buf);
    if (err)
        return NULL;
    if (result == NULL)
        Py_RETURN_NONE;
    return result;
}

static PyObject *init(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cls, *table;
    if (!PyArg_ParseTuple(args, "OO", &cls, &table))
        return NULL;
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "not a class");
        return NULL;
    }
    PyTypeObject *t = (PyTypeObject *)cls;
    if (!ckg_plain_slots_class(t)) {
        PyErr_Format(PyExc_TypeError, "%s is not a plain __slots__ class", t->tp_name);
        return NULL;
    }
    Py_ssize_t off[N_FIELDS];
    for (int i = 0; i < N_FIELDS; i++) {
        PyObject *d = PyObject_GetAttrString(cls, FIELDS[i]);
        if (d == NULL)
            return NULL;
        off[i] = ckg_object_slot(t, d, 1);
        Py_DECREF(d);
        if (off[i] < 0) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot", t->tp_name, FIELDS[i]);
            return NULL;
        }
    }
    PyObject *seq = PySequence_Fast(table, "dtypes must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t m = PySequence_Fast_GET_SIZE(seq);
    if (m > MAX_DTYPES) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many dtypes");
        return NULL;
    }
    Dtype tmp[MAX_DTYPES];
    for (Py_ssize_t i = 0; i < m; i++) {
        const char *name;
        Py_ssize_t len;
        unsigned long long bits;
        PyObject *torch;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "s#KU", &name, &len, &bits,
                              &torch)) {
            Py_DECREF(seq);
            return NULL;
        }
        if (len <= 0 || (size_t)len >= sizeof(tmp[i].name) || bits == 0 || bits > 1024) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "bad dtype entry");
            return NULL;
        }
        memcpy(tmp[i].name, name, (size_t)len);
        tmp[i].len = (size_t)len;
        tmp[i].bits = bits;
        tmp[i].torch = torch;
    }
    for (int i = 0; i < n_dtypes; i++)
        Py_CLEAR(dtypes[i].torch);
    for (Py_ssize_t i = 0; i < m; i++) {
        dtypes[i] = tmp[i];
        Py_INCREF(dtypes[i].torch);
    }
    n_dtypes = (int)m;
    Py_DECREF(seq);
    memcpy(info_off, off, sizeof(off));
    Py_INCREF(cls);
    Py_XSETREF(info_type, t);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"init", init, METH_VARARGS,
     "init(TensorInfo, ((safetensors dtype, bits, torch dtype), ...)) -> None"},
    {"prove", prove, METH_VARARGS,
     "prove(header, data_start, size, max_tensors) -> (tensors, metadata_span | None, n) | "
     "None"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "stcore",
                                    "Plain safetensors header prover (see "
                                    "analysis/safetensors.py).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_stcore(void) {
    for (int c = 0x20; c <= 0x7e; c++)
        plain_ok[c] = c != '"' && c != '\\';
    s_cpu = PyUnicode_InternFromString("cpu");
    i_zero = PyLong_FromLong(0);
    if (s_cpu == NULL || i_zero == NULL)
        return NULL;
    return PyModule_Create(&module);
}
