/* zipcore: a canonical-archive prover for readers/zipfile.py::read_archive.
 *
 * prove(read, size, max_members, max_cd_bytes, entry_type) reads the archive through
 * ``read(offset, length, record=...)`` (the audit's Source.read: the very reads, with the
 * same arguments and in the same order, that the pure-Python reader makes on the same
 * archive) and either PROVES that read_archive would record no finding at all, returning
 * ``(entries, cd_offset, facts)`` with the entries built exactly as read_archive builds
 * them, or returns None (decline) and the pure-Python reader runs and explains.
 *
 * prove_fd(fd, base, size, max_members, max_cd_bytes, entry_type) is the same proof over
 * pread(2) on a local file's descriptor (the source's byte 0 at file offset ``base``), with
 * no call back into Python: it returns ``(entries, cd_offset, facts, recorded,
 * recorded_bytes, nread)``, ``recorded`` the list of ``((file offset, length), region)`` of
 * the reads Source.read would have recorded, in order, each region a ``region_type``
 * (context.AuditedRegion) holding the bytes read, ``recorded_bytes`` their total, and
 * ``nread`` the bytes all the logical reads returned (what Source.bytes_read would count);
 * the glue records and counts them only when the proof holds. A data descriptor that lies just before the next local-header window is read
 * with that window (one pread; the logical reads, their bytes and counts are unchanged).
 *
 * It accepts only the plain case: one EOCD without a comment ending the file, an optional
 * Zip64 end record + locator as torch writes them, a central directory that exactly fills
 * the space up to the end records, stored members in ascending offset order with no gap,
 * overlap or prefix, ASCII names without suspect bytes that stay distinct under ASCII case
 * folding, no entry miniz takes for a directory unless it has no bytes (a '/' name
 * without bytes; the DOS directory attribute declines), extra fields (central and local)
 * of the harmless kinds only (HARMLESS_EXTRA), local headers equal to the
 * central directory, data descriptors (with signature) that agree with it. Every
 * condition the Python reader checks is covered by a C condition at least as strict (see
 * the comments naming the rule each one stands for).
 *
 * facts = (numpy_free, no_constants_pkl, no_upper): summary facts the torch-zip auditor
 * uses to skip per-member loops that would find nothing (analysis/torchfile.py).
 *
 * Untrusted input: every read is bounds-checked against the buffer it reads, sizes are
 * 64-bit and checked before any addition can overflow, no recursion, every allocation is
 * checked, no reliance on NUL termination.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include "slots.h"
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>

#define EOCD_SIZE 22
#define Z64_LOC_SIZE 20
#define Z64_EOCD_SIZE 56
#define CEN_SIZE 46
#define LOC_SIZE 30
#define OK_FLAGS 0x080EU
#define DOS_DIRECTORY 0x10U /* external attributes: miniz's MZ_ZIP_DOS_DIR_ATTRIBUTE_BITFLAG */
#define NAME_BUFFER 512
#define WINDOW_GAP 4096
#define WINDOW_SPAN (1 << 20)
#define N_FIELDS 12

static const char *const FIELDS[N_FIELDS] = {
    "index", "name", "raw_name", "header_offset", "data_offset", "compressed_size",
    "size", "method", "flags", "crc32", "end", "stored_head"};

static PyObject *kw_record; /* ("record",) */

/* little-endian signatures, compared as one 32-bit load (memcmp calls cost more than the
 * whole rest of an entry's check) */
#define SIG_EOCD 0x06054b50U
#define SIG_Z64_LOC 0x07064b50U
#define SIG_Z64_EOCD 0x06064b50U
#define SIG_CEN 0x02014b50U
#define SIG_LOC 0x04034b50U
#define SIG_DD 0x08074b50U

static inline uint16_t rd16(const unsigned char *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}
static inline uint64_t rd64(const unsigned char *p) {
    return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32);
}

/* Where the prover's reads go: Source.read (``read`` set), or pread on ``fd``. */
typedef struct {
    PyObject *read;     /* Source.read, or NULL for the descriptor */
    int fd;
    int64_t base;       /* file offset of the source's byte 0 */
    int64_t size;       /* the source's size: reads are clipped to it as Source.read clips */
    PyObject *recorded; /* fd: list of ((file offset, length), region) of the recorded reads */
    int64_t nread;      /* fd: bytes returned by the logical reads */
    int64_t nrecorded;  /* fd: bytes of the recorded reads */
    PyTypeObject *region_type; /* context.AuditedRegion */
    Py_ssize_t region_offs[3]; /* its offset, length, audited slots */
} Reader;

static const char *const REGION_SLOTS[3] = {"offset", "length", "audited"};

/* The slot offsets of ``tp``'s offset / length / audited (found through its MRO), or -1
 * when it is not a plain slots class with those object slots. */
static int region_slots(PyObject *tp, Py_ssize_t *offs) {
    if (!PyType_Check(tp)) return -1;
    PyTypeObject *t = (PyTypeObject *)tp;
    if (!ckg_plain_slots_class(t) || t->tp_alloc == NULL) return -1;
    for (int k = 0; k < 3; k++) {
        PyObject *d = PyObject_GetAttrString(tp, REGION_SLOTS[k]);
        if (!d) { PyErr_Clear(); return -1; }
        offs[k] = ckg_object_slot(t, d, 1);
        Py_DECREF(d); /* the type keeps the descriptor */
        if (offs[k] < 0) return -1;
    }
    return 0;
}

/* pread until ``len`` bytes or end of file: the bytes read, -1 with an exception set */
static int64_t pread_full(int fd, unsigned char *buf, int64_t len, int64_t off) {
    int64_t got = 0;
    while (got < len) {
        int64_t want = len - got;
        if (want > ((int64_t)1 << 26)) want = (int64_t)1 << 26;
        ssize_t k = pread(fd, buf + got, (size_t)want, (off_t)(off + got));
        if (k < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0) return -1;
                continue;
            }
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (k == 0) break;
        got += k;
    }
    return got;
}

/* Source.read's clip: the length of a read at ``off`` inside the source (0 past its end) */
static int64_t clip_len(const Reader *r, int64_t off, int64_t len) {
    int64_t room = r->size - off;
    if (room < 0) room = 0;
    return len < room ? len : room;
}

/* Account for one logical read the fd path made (its bytes in ``b``): count it, and keep
 * it when ``record``. 0, or -1 with an exception. */
static int account(Reader *r, int64_t off, PyObject *b, int record) {
    r->nread += PyBytes_GET_SIZE(b);
    if (!record || PyBytes_GET_SIZE(b) == 0) return 0;
    /* ((offset, length), AuditedRegion(offset, b)): the region made as its __init__
     * makes it (the digest slot stays empty until read) */
    PyObject *o = PyLong_FromLongLong((long long)(r->base + off));
    PyObject *n = PyLong_FromSsize_t(PyBytes_GET_SIZE(b));
    PyObject *reg = (o && n) ? r->region_type->tp_alloc(r->region_type, 0) : NULL;
    PyObject *key = reg ? PyTuple_Pack(2, o, n) : NULL;
    if (!key) {
        Py_XDECREF(reg);
        Py_XDECREF(o);
        Py_XDECREF(n);
        return -1;
    }
    PyObject **slot;
    slot = (PyObject **)((char *)reg + r->region_offs[0]); *slot = o; /* steals o */
    slot = (PyObject **)((char *)reg + r->region_offs[1]); *slot = n; /* steals n */
    Py_INCREF(b);
    slot = (PyObject **)((char *)reg + r->region_offs[2]); *slot = b;
    PyObject *item = PyTuple_Pack(2, key, reg);
    Py_DECREF(key);
    Py_DECREF(reg);
    if (!item) return -1;
    int rc = PyList_Append(r->recorded, item);
    Py_DECREF(item);
    if (rc == 0) r->nrecorded += PyBytes_GET_SIZE(b);
    return rc;
}

/* One logical read on the descriptor, as Source.read makes it (a new reference) */
static PyObject *fd_read(Reader *r, int64_t off, int64_t len, int record) {
    if (off < 0 || len < 0) {
        PyErr_SetString(PyExc_ValueError, "negative read");
        return NULL;
    }
    len = clip_len(r, off, len);
    PyObject *b = PyBytes_FromStringAndSize(NULL, len);
    if (!b) return NULL;
    if (len > 0) {
        int64_t got = pread_full(r->fd, (unsigned char *)PyBytes_AS_STRING(b), len,
                                 r->base + off);
        if (got < 0) { Py_DECREF(b); return NULL; }
        if (got < len && _PyBytes_Resize(&b, (Py_ssize_t)got) < 0) return NULL;
    }
    if (account(r, off, b, record) < 0) { Py_DECREF(b); return NULL; }
    return b;
}

/* read(offset, length[, record=True]) -> bytes (a new reference), NULL with an exception */
static PyObject *do_read(Reader *rd, int64_t off, int64_t len, int record) {
    if (!rd->read) return fd_read(rd, off, len, record);
    PyObject *read = rd->read;
    PyObject *args[3];
    args[0] = PyLong_FromLongLong(off);
    if (!args[0]) return NULL;
    args[1] = PyLong_FromLongLong(len);
    if (!args[1]) { Py_DECREF(args[0]); return NULL; }
    args[2] = Py_True;
    PyObject *r = PyObject_Vectorcall(read, args, 2, record ? kw_record : NULL);
    Py_DECREF(args[0]);
    Py_DECREF(args[1]);
    if (r && !PyBytes_CheckExact(r)) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_TypeError, "zipcore: read() must return bytes");
        return NULL;
    }
    return r;
}

/* zipfile._zip64_extra: 0 when a Zip64 field (id 1) is found with every needed value,
 * -1 otherwise (None in Python). Values not needed are left untouched. */
static int zip64_extra(const unsigned char *x, Py_ssize_t xlen, int need_u, int need_c,
                       int need_o, uint64_t *u, uint64_t *c, uint64_t *o) {
    Py_ssize_t pos = 0;
    while (pos + 4 <= xlen) {
        unsigned hid = rd16(x + pos), hlen = rd16(x + pos + 2);
        Py_ssize_t blen = xlen - (pos + 4);
        if (blen > (Py_ssize_t)hlen) blen = hlen;
        const unsigned char *body = x + pos + 4;
        if (hid == 0x0001) {
            Py_ssize_t p = 0;
            uint64_t vals[3];
            int need[3] = {need_u, need_c, need_o};
            for (int k = 0; k < 3; k++) {
                if (need[k]) {
                    if (p + 8 > blen) return -1;
                    vals[k] = rd64(body + p);
                    p += 8;
                }
            }
            if (need_u) *u = vals[0];
            if (need_c) *c = vals[1];
            if (need_o) *o = vals[2];
            return 0;
        }
        pos += 4 + (Py_ssize_t)hlen;
    }
    return -1;
}

/* zipfile.HarmlessExtra: the extra-field ids known to leave how every reader names, sizes,
 * places and decodes a member alone (the module's HARMLESS_EXTRA_IDS; a test pins the two
 * tables to each other). Any other id (0x7075, the Info-ZIP Unicode Path that renames a
 * member for CPython >= 3.12's zipfile and Info-ZIP unzip, first of all) is CKG313. */
static const unsigned HARMLESS_EXTRA[] = {
    0x0001, /* Zip64 */
    0x000A, /* NTFS times */
    0x4246, /* torch.save's 'FB' padding */
    0x5455, /* Info-ZIP extended timestamp */
    0x5855, /* Info-ZIP Unix, first form */
    0x7855, /* Info-ZIP Unix owner, second form */
    0x7875, /* Info-ZIP Unix owner */
    0xCAFE, /* JAR marker */
    0xD935, /* Android zipalign */
};
#define N_HARMLESS_EXTRA ((int)(sizeof(HARMLESS_EXTRA) / sizeof(HARMLESS_EXTRA[0])))

static inline int harmless_extra(unsigned hid) {
    for (int k = 0; k < N_HARMLESS_EXTRA; k++)
        if (HARMLESS_EXTRA[k] == hid) return 1;
    return 0;
}

/* zipfile._python_same_entry's extra-field part and zipfile._unlisted_extra (CKG313): well
 * formed, harmless ids only, at most one Zip64 field. The local header's extra field is
 * held to the same (Info-ZIP unzip reads fields there too). */
static int extra_plain(const unsigned char *x, Py_ssize_t xlen) {
    Py_ssize_t pos = 0;
    int z = 0;
    while (pos + 4 <= xlen) {
        unsigned hid = rd16(x + pos), hlen = rd16(x + pos + 2);
        if (pos + 4 + (Py_ssize_t)hlen > xlen || !harmless_extra(hid)) return 0;
        z += hid == 0x0001;
        pos += 4 + (Py_ssize_t)hlen;
    }
    return pos == xlen && z <= 1;
}

typedef struct {
    const unsigned char *name; /* into the central directory buffer */
    Py_ssize_t nlen;
    uint64_t hoff, csize, usize;
    uint32_t crc;
    unsigned flags, method;
    /* set by the local-header pass */
    int64_t data_off, end;
    PyObject *head; /* stored_head (owned until build_entries takes it) */
} Ent;

static inline unsigned char lower(unsigned char b) {
    return (b >= 'A' && b <= 'Z') ? (unsigned char)(b + 32) : b;
}

/* A hash that ignores ASCII case: 8 bytes at a time, each byte OR 0x20 (A-Z and a-z meet;
 * so do a few punctuation pairs, which only costs a comparison). */
static uint64_t name_hash(const unsigned char *s, Py_ssize_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = (h ^ (w | 0x2020202020202020ULL)) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
    }
    uint64_t w = 0;
    for (Py_ssize_t k = 0; i + k < n; k++) w |= (uint64_t)(s[i + k] | 0x20) << (8 * k);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 29;
    return h;
}

static inline int same_bytes(const unsigned char *a, const unsigned char *b, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static inline PyObject *bytes_of(const unsigned char *p, Py_ssize_t n) {
    PyObject *b = PyBytes_FromStringAndSize(NULL, n);
    if (b) {
        unsigned char *d = (unsigned char *)PyBytes_AS_STRING(b);
        for (Py_ssize_t i = 0; i < n; i++) d[i] = p[i];
    }
    return b;
}

static int names_fold_equal(const Ent *a, const Ent *b) {
    if (a->nlen != b->nlen) return 0;
    for (Py_ssize_t i = 0; i < a->nlen; i++)
        if (lower(a->name[i]) != lower(b->name[i])) return 0;
    return 1;
}

/* 1: every name distinct under ASCII case folding (so neither a duplicate raw name nor
 * a casefold collision: CKG301), 0: a collision, -1: out of memory. The table keeps each
 * name's hash next to its index, so a probe touches the entry only on a hash match. */
typedef struct {
    uint64_t hash;
    Py_ssize_t index; /* -1: empty */
} Slot;

static int names_distinct(const Ent *ents, Py_ssize_t n) {
    size_t cap = 16;
    while (cap < (size_t)n * 2) cap <<= 1;
    Slot *slots = PyMem_Malloc(cap * sizeof(Slot));
    if (!slots) return -1;
    for (size_t i = 0; i < cap; i++) slots[i].index = -1;
    int ok = 1;
    for (Py_ssize_t i = 0; i < n && ok; i++) {
        uint64_t hv = name_hash(ents[i].name, ents[i].nlen);
        size_t h = (size_t)hv & (cap - 1);
        while (slots[h].index >= 0) {
            if (slots[h].hash == hv && names_fold_equal(&ents[slots[h].index], &ents[i])) {
                ok = 0;
                break;
            }
            h = (h + 1) & (cap - 1);
        }
        if (ok) {
            slots[h].hash = hv;
            slots[h].index = i;
        }
    }
    PyMem_Free(slots);
    return ok;
}

/* CKG308/CKG315/CKG302 names: non-empty, under the torch name buffer, ASCII, no byte of
 * zipfile's _SUSPECT_NAME class ([\x00-\x1f\x7f\\:]), no leading '/', no "..". */
static int plain_name(const unsigned char *s, Py_ssize_t n) {
    if (n <= 0 || n >= NAME_BUFFER || s[0] == '/') return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char b = s[i];
        if (b < 0x20 || b >= 0x7F || b == '\\' || b == ':') return 0;
        if (b == '.' && i + 1 < n && s[i + 1] == '.') return 0;
    }
    return 1;
}

static int ends_with(const unsigned char *s, Py_ssize_t n, const char *t) {
    Py_ssize_t m = (Py_ssize_t)strlen(t);
    return n >= m && same_bytes(s + n - m, (const unsigned char *)t, m);
}

/* The member-descriptor offsets of entry_type's slots, in FIELDS order; -1 on mismatch. */
static int slot_offsets(PyObject *tp, Py_ssize_t *offs) {
    if (!PyType_Check(tp)) return -1;
    PyTypeObject *t = (PyTypeObject *)tp;
    if (!ckg_plain_slots_class(t) || t->tp_alloc == NULL) return -1;
    PyObject *dict = t->tp_dict;
    if (!dict || !PyDict_Check(dict)) return -1;
    for (int k = 0; k < N_FIELDS; k++) {
        /* borrowed; NULL with an exception only for a non-str key, which FIELDS is not */
        offs[k] = ckg_object_slot(t, PyDict_GetItemString(dict, FIELDS[k]), 1);
        if (offs[k] < 0) return -1;
    }
    return 0;
}

/* An int for v, reusing *last when it holds the same value (a new reference). */
static PyObject *int_u64(uint64_t v, PyObject **last, uint64_t *last_v) {
    if (*last && *last_v == v) {
        Py_INCREF(*last);
        return *last;
    }
    PyObject *o = PyLong_FromUnsignedLongLong(v);
    if (!o) return NULL;
    Py_XSETREF(*last, o);
    Py_INCREF(o);
    *last_v = v;
    return o;
}

/* The ZipEntry objects, filled through their slots (what ZipEntry.__init__ assigns; the
 * glue checks the class is the plain slots dataclass). Equal ints are shared: a member's
 * size and compressed size, its end and the next member's header offset, the flags. */
static PyObject *build_entries(PyObject *tp, const Py_ssize_t *offs, Ent *ents,
                               Py_ssize_t n) {
    PyTypeObject *t = (PyTypeObject *)tp;
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    PyObject *last_end = NULL, *last_flags = NULL, *last_method = NULL;
    uint64_t last_end_v = 0, last_flags_v = 0, last_method_v = 0;
    int gc_was = PyGC_Disable();
    int failed = 0;
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        Ent *e = &ents[i];
        PyObject *v[N_FIELDS];
        PyObject *name = PyUnicode_New(e->nlen, 127);
        if (name) {
            unsigned char *d = PyUnicode_1BYTE_DATA(name);
            for (Py_ssize_t k = 0; k < e->nlen; k++) d[k] = e->name[k];
        }
        v[0] = PyLong_FromSsize_t(i);
        v[1] = name;
        v[2] = bytes_of(e->name, e->nlen);
        v[3] = int_u64(e->hoff, &last_end, &last_end_v);
        v[4] = PyLong_FromLongLong(e->data_off);
        v[5] = PyLong_FromUnsignedLongLong(e->csize);
        if (v[5] && e->usize == e->csize) {
            Py_INCREF(v[5]);
            v[6] = v[5];
        } else {
            v[6] = PyLong_FromUnsignedLongLong(e->usize);
        }
        v[7] = int_u64(e->method, &last_method, &last_method_v);
        v[8] = int_u64(e->flags, &last_flags, &last_flags_v);
        v[9] = PyLong_FromUnsignedLong(e->crc);
        v[10] = int_u64((uint64_t)e->end, &last_end, &last_end_v);
        v[11] = e->head; /* taken over */
        e->head = NULL;
        PyObject *obj = NULL;
        int bad = 0;
        for (int k = 0; k < N_FIELDS; k++) bad |= v[k] == NULL;
        if (!bad) obj = t->tp_alloc(t, 0);
        if (!obj) {
            for (int k = 0; k < N_FIELDS; k++) Py_XDECREF(v[k]);
            failed = 1;
            break;
        }
        for (int k = 0; k < N_FIELDS; k++) {
            PyObject **slot = (PyObject **)((char *)obj + offs[k]);
            *slot = v[k]; /* steals; the fresh object's slots are NULL */
        }
        PyList_SET_ITEM(list, i, obj);
    }
    if (gc_was) PyGC_Enable();
    Py_XDECREF(last_end);
    Py_XDECREF(last_flags);
    Py_XDECREF(last_method);
    if (failed) {
        Py_DECREF(list); /* unfilled items are NULL: list_dealloc skips them */
        return NULL;
    }
    return list;
}

typedef struct {
    int64_t start, end; /* [start, end) before clipping to the directory */
    Py_ssize_t first, last; /* entries [first, last) */
} Window;

/* The local-header pass (zipfile._check_locals) for entries in ascending offset order.
 * Each window is released once its members are checked (their stored heads are copied
 * out), as the Python reader does. 1: proven, 0: decline, -1: exception. */
/* The bytes of the logical read (off, len) taken out of ``raw``, which holds the file's
 * bytes from ``raw_start`` on as one pread returned them (a new reference): what fd_read
 * would have returned for that read, counted (and recorded) the same way. */
static PyObject *from_raw(Reader *r, PyObject *raw, int64_t raw_start, int64_t off,
                         int64_t len, int record) {
    int64_t want = clip_len(r, off, len);
    int64_t avail = PyBytes_GET_SIZE(raw) - (off - raw_start);
    if (avail < 0) avail = 0;
    if (want > avail) want = avail;
    PyObject *b = bytes_of((const unsigned char *)PyBytes_AS_STRING(raw) + (off - raw_start),
                           (Py_ssize_t)want);
    if (!b) return NULL;
    if (account(r, off, b, record) < 0) { Py_DECREF(b); return NULL; }
    return b;
}

/* at most this many bytes between a data descriptor and the next window for the two to be
 * read with one pread (torch.save: none) */
#define DD_MERGE_GAP 64

static int check_locals(Reader *read, Ent *ents, Py_ssize_t n, int64_t cd_off) {
    Window *wins = PyMem_Malloc((size_t)n * sizeof(Window));
    if (!wins) { PyErr_NoMemory(); return -1; }
    Py_ssize_t nw = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t start = (int64_t)ents[i].hoff;
        int64_t need_end = start + LOC_SIZE + ents[i].nlen + 256;
        if (ents[i].csize <= 4096) need_end += (int64_t)ents[i].csize + 24;
        if (nw && start - wins[nw - 1].end <= WINDOW_GAP &&
            need_end - wins[nw - 1].start <= WINDOW_SPAN) {
            if (need_end > wins[nw - 1].end) wins[nw - 1].end = need_end;
            wins[nw - 1].last = i + 1;
        } else {
            wins[nw].start = start;
            wins[nw].end = need_end;
            wins[nw].first = i;
            wins[nw].last = i + 1;
            nw++;
        }
    }
    int64_t prev_end = 0;
    int ok = 1;
    /* fd path: the next window, read early together with the data descriptor before it */
    PyObject *ahead = NULL;
    int64_t ahead_start = 0;
    for (Py_ssize_t w = 0; w < nw && ok == 1; w++) {
        int64_t ws = wins[w].start;
        int64_t we = wins[w].end < cd_off ? wins[w].end : cd_off;
        PyObject *bo;
        if (we > ws && ahead) {
            bo = from_raw(read, ahead, ahead_start, ws, we - ws, 1);
            Py_CLEAR(ahead);
            if (!bo) { ok = -1; break; }
        } else if (we > ws) {
            bo = do_read(read, ws, we - ws, 1);
            if (!bo) { ok = -1; break; }
        } else {
            bo = PyBytes_FromStringAndSize(NULL, 0);
            if (!bo) { ok = -1; break; }
        }
        const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(bo);
        int64_t blen = PyBytes_GET_SIZE(bo);
        for (Py_ssize_t i = wins[w].first; i < wins[w].last; i++) {
            Ent *e = &ents[i];
            int64_t rel = (int64_t)e->hoff - ws;
            /* CKG302/CKG306: no local header */
            if (rel < 0 || rel + LOC_SIZE > blen || rd32(buf + rel) != SIG_LOC) {
                ok = 0; break;
            }
            const unsigned char *h = buf + rel;
            unsigned lflags = rd16(h + 6), lmethod = rd16(h + 8);
            uint32_t lcrc = rd32(h + 14);
            uint64_t lcsize = rd32(h + 18), lusize = rd32(h + 22);
            int64_t lnlen = rd16(h + 26), lxlen = rd16(h + 28);
            int64_t name_end = rel + LOC_SIZE + lnlen;
            /* Python reads again (record=True) when the name or extra is not buffered */
            if (name_end > blen || name_end + lxlen > blen) { ok = 0; break; }
            const unsigned char *lextra = buf + name_end;
            /* CKG313: a local extra field outside HarmlessExtra (or not well formed) */
            if (!extra_plain(lextra, (Py_ssize_t)lxlen)) { ok = 0; break; }
            int64_t data_off = (int64_t)e->hoff + LOC_SIZE + lnlen + lxlen;
            /* CKG302: name, method, flags differ */
            if (lnlen != e->nlen || !same_bytes(buf + rel + LOC_SIZE, e->name, lnlen) ||
                lmethod != e->method || ((lflags ^ e->flags) & ~0x0006U & 0xFFFFU)) {
                ok = 0; break;
            }
            int64_t end = data_off + (int64_t)e->csize;
            if (lflags & 0x0008) {
                if (!(lcrc == 0 && lcsize == 0 && lusize == 0) &&
                    !(lcrc == e->crc && (lcsize == e->csize || lcsize == 0xFFFFFFFFULL))) {
                    ok = 0; break; /* CKG302 */
                }
                int z64 = e->csize >= 0xFFFFFFFFULL || e->usize >= 0xFFFFFFFFULL ||
                          e->hoff >= 0xFFFFFFFFULL;
                int64_t nd = z64 ? 24 : 16;
                int64_t dd_rel = end - ws;
                const unsigned char *dd;
                PyObject *ddo = NULL;
                if (dd_rel >= 0 && dd_rel + 24 <= blen) {
                    dd = buf + dd_rel;
                } else {
                    /* _check_descriptor's own read; on the fd path, when it lies just
                     * before the next window, one pread takes both */
                    int64_t ns = w + 1 < nw ? wins[w + 1].start : 0;
                    int64_t ne = w + 1 < nw ? (wins[w + 1].end < cd_off ? wins[w + 1].end
                                                                         : cd_off) : 0;
                    if (!read->read && !ahead && i + 1 == wins[w].last && w + 1 < nw &&
                        ne > ns && end >= 0 && end <= ns && ns - end <= DD_MERGE_GAP &&
                        end + nd <= ne) {
                        int64_t rlen = clip_len(read, end, ne - end);
                        ahead = PyBytes_FromStringAndSize(NULL, rlen);
                        if (!ahead) { ok = -1; break; }
                        int64_t got = pread_full(read->fd,
                                                 (unsigned char *)PyBytes_AS_STRING(ahead),
                                                 rlen, read->base + end);
                        if (got < 0 ||
                            (got < rlen && _PyBytes_Resize(&ahead, (Py_ssize_t)got) < 0)) {
                            Py_CLEAR(ahead);
                            ok = -1; break;
                        }
                        ahead_start = end;
                        ddo = from_raw(read, ahead, ahead_start, end, nd, 0);
                    } else {
                        ddo = do_read(read, end, nd, 0);
                    }
                    if (!ddo) { ok = -1; break; }
                    if (PyBytes_GET_SIZE(ddo) < nd) { Py_DECREF(ddo); ok = 0; break; }
                    dd = (const unsigned char *)PyBytes_AS_STRING(ddo);
                }
                int good;
                if (rd32(dd) != SIG_DD) {
                    good = 0; /* the signature-less form: leave it to Python */
                } else if (z64) {
                    good = rd32(dd + 4) == e->crc && rd64(dd + 8) == e->csize &&
                           rd64(dd + 16) == e->usize;
                } else {
                    good = rd32(dd + 4) == e->crc && rd32(dd + 8) == e->csize &&
                           rd32(dd + 12) == e->usize;
                }
                Py_XDECREF(ddo);
                if (!good) { ok = 0; break; } /* CKG302/CKG306 */
                end += nd;
            } else {
                if (lcsize == 0xFFFFFFFFULL || lusize == 0xFFFFFFFFULL) {
                    uint64_t u = lusize, c = lcsize, o = 0;
                    if (zip64_extra(lextra, (Py_ssize_t)lxlen, lusize == 0xFFFFFFFFULL,
                                    lcsize == 0xFFFFFFFFULL, 0, &u, &c, &o) == 0) {
                        lusize = u;
                        lcsize = c;
                    }
                }
                if (lcrc != e->crc || lcsize != e->csize || lusize != e->usize) {
                    ok = 0; break; /* CKG302 */
                }
            }
            /* CKG306 (into the directory, overlap, gap) and CKG005 (prefix) */
            if (end > cd_off || (int64_t)e->hoff != prev_end) { ok = 0; break; }
            prev_end = end;
            e->data_off = data_off;
            e->end = end;
            int64_t d_rel = data_off - ws;
            int64_t take = e->csize < 16 ? (int64_t)e->csize : 16;
            if (d_rel > blen) d_rel = blen;
            if (d_rel + take > blen) take = blen - d_rel;
            e->head = bytes_of(buf + d_rel, (Py_ssize_t)take);
            if (!e->head) { ok = -1; break; }
        }
        Py_DECREF(bo);
    }
    Py_XDECREF(ahead);
    PyMem_Free(wins);
    if (ok == 1 && prev_end != cd_off) ok = 0; /* CKG306: bytes before the directory */
    return ok;
}

/* The proof over ``read``: (entries, cd_offset, facts), None (decline) or NULL (error) */
static PyObject *prove_with(Reader *read, long long size_ll, long long max_members_ll,
                            long long max_cd_ll, PyObject *entry_type) {
    Py_ssize_t offs[N_FIELDS];
    if (slot_offsets(entry_type, offs) < 0 || size_ll < 0 || max_members_ll < 0 ||
        max_cd_ll < 0)
        Py_RETURN_NONE;
    int64_t size = size_ll;
    PyObject *tail = NULL, *z = NULL, *cd = NULL, *result = NULL;
    Ent *ents = NULL;
    Py_ssize_t n_ents = 0;

    /* --- the EOCD: the last 22 bytes, no comment, the only signature in the tail ------ */
    int64_t short_n = size < EOCD_SIZE + Z64_LOC_SIZE + Z64_EOCD_SIZE
                          ? size : EOCD_SIZE + Z64_LOC_SIZE + Z64_EOCD_SIZE;
    tail = do_read(read, size - short_n, short_n, 1);
    if (!tail) goto error;
    int64_t tl = PyBytes_GET_SIZE(tail);
    const unsigned char *t = (const unsigned char *)PyBytes_AS_STRING(tail);
    if (tl != short_n || tl < EOCD_SIZE) goto decline;
    int64_t eocd_pos = tl - EOCD_SIZE;
    if (rd32(t + eocd_pos) != SIG_EOCD || rd16(t + tl - 2) != 0) goto decline;
    for (int64_t p = 0; p + EOCD_SIZE <= tl; p++) /* CKG307: any other EOCD signature */
        if (p != eocd_pos && rd32(t + p) == SIG_EOCD)
            goto decline;
    int64_t tail_start = size - tl;
    const unsigned char *eo = t + eocd_pos;
    unsigned disk = rd16(eo + 4), cd_disk = rd16(eo + 6), n_disk = rd16(eo + 8),
             n_total16 = rd16(eo + 10);
    uint64_t n_total = n_total16, cd_size = rd32(eo + 12), cd_off = rd32(eo + 16);
    if (disk != 0 || cd_disk != 0 || n_disk != n_total16) goto decline; /* CKG310 */
    int64_t cd_end_limit = tail_start + eocd_pos;

    /* --- Zip64 as torch writes it: record + locator right before the EOCD -------------- */
    int64_t loc_pos = eocd_pos - Z64_LOC_SIZE;
    if (loc_pos >= 0 && rd32(t + loc_pos) == SIG_Z64_LOC) {
        uint32_t z_disk = rd32(t + loc_pos + 4), z_ndisks = rd32(t + loc_pos + 16);
        uint64_t z_off = rd64(t + loc_pos + 8);
        if (z_disk != 0 || z_ndisks > 1) goto decline;
        cd_end_limit = tail_start + loc_pos;
        if (cd_end_limit < Z64_EOCD_SIZE || z_off != (uint64_t)(cd_end_limit - Z64_EOCD_SIZE))
            goto decline; /* CKG310 (past the locator) / CKG306 (bytes between) */
        z = do_read(read, (int64_t)z_off, Z64_EOCD_SIZE, 1);
        if (!z) goto error;
        const unsigned char *zr = (const unsigned char *)PyBytes_AS_STRING(z);
        if (PyBytes_GET_SIZE(z) != Z64_EOCD_SIZE || rd32(zr) != SIG_Z64_EOCD)
            goto decline;
        uint64_t rec_size = rd64(zr + 4);
        uint32_t zdisk = rd32(zr + 16), zcd_disk = rd32(zr + 20);
        uint64_t zn_disk = rd64(zr + 24), zn_total = rd64(zr + 32),
                 zcd_size = rd64(zr + 40), zcd_off = rd64(zr + 48);
        if (zdisk != 0 || zcd_disk != 0 || zn_disk != zn_total) goto decline;
        if (rec_size != Z64_EOCD_SIZE - 12) goto decline; /* CKG314 */
        /* CKG310: the EOCD's values are the Zip64 ones or the sentinel */
        if ((n_total != 0xFFFF && n_total != zn_total) ||
            (cd_size != 0xFFFFFFFFULL && cd_size != zcd_size) ||
            (cd_off != 0xFFFFFFFFULL && cd_off != zcd_off))
            goto decline;
        cd_end_limit = (int64_t)z_off;
        n_total = zn_total;
        cd_size = zcd_size;
        cd_off = zcd_off;
    }
    /* LimitExceeded in Python: decline, and the Python reader raises it */
    if (n_total > (uint64_t)max_members_ll || cd_size > (uint64_t)max_cd_ll) goto decline;
    /* CKG310 (past its end record) / CKG004 (bytes between): exactly fills the space */
    if (cd_size > (uint64_t)cd_end_limit || cd_off != (uint64_t)cd_end_limit - cd_size)
        goto decline;
    if (n_total == 0) goto decline; /* an empty archive: the Python reader explains */
    cd = do_read(read, (int64_t)cd_off, (int64_t)cd_size, 1);
    if (!cd) goto error;
    if ((uint64_t)PyBytes_GET_SIZE(cd) != cd_size) goto decline;
    const unsigned char *c = (const unsigned char *)PyBytes_AS_STRING(cd);
    int64_t cl = PyBytes_GET_SIZE(cd);
    /* each entry takes at least 46 bytes: a larger count is "missing or corrupt" */
    if (n_total > (uint64_t)(cl / CEN_SIZE)) goto decline;
    Py_ssize_t n = (Py_ssize_t)n_total;
    ents = PyMem_Calloc((size_t)n, sizeof(Ent)); /* heads NULL */
    if (!ents) { PyErr_NoMemory(); goto error; }
    n_ents = n;

    /* --- the central directory (zipfile._parse_central) --------------------------------- */
    int64_t pos = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (pos + CEN_SIZE > cl || rd32(c + pos) != SIG_CEN) goto decline;
        const unsigned char *h = c + pos;
        unsigned vn = rd16(h + 6), flags = rd16(h + 8), method = rd16(h + 10);
        uint32_t crc = rd32(h + 16);
        uint64_t csize = rd32(h + 20), usize = rd32(h + 24);
        int64_t nlen = rd16(h + 28), xlen = rd16(h + 30), clen = rd16(h + 32);
        unsigned edisk = rd16(h + 34);
        uint64_t hoff = rd32(h + 42);
        int64_t end = pos + CEN_SIZE + nlen + xlen + clen;
        if (end > cl) goto decline;
        const unsigned char *name = h + CEN_SIZE, *extra = h + CEN_SIZE + nlen;
        /* zipfile reads it the same (_python_same_entry), CKG302/308/315 names */
        if (vn > 63 || !plain_name(name, (Py_ssize_t)nlen) ||
            !extra_plain(extra, (Py_ssize_t)xlen))
            goto decline; /* ... and CKG313: an extra field outside HarmlessExtra */
        if (csize == 0xFFFFFFFFULL || usize == 0xFFFFFFFFULL || hoff == 0xFFFFFFFFULL) {
            if (zip64_extra(extra, (Py_ssize_t)xlen, usize == 0xFFFFFFFFULL,
                            csize == 0xFFFFFFFFULL, hoff == 0xFFFFFFFFULL, &usize, &csize,
                            &hoff) < 0)
                goto decline; /* CKG310 */
        }
        /* CKG310 disk, CKG304 flags, CKG305 method, CKG316 sizes */
        if (edisk != 0 || (flags & ~OK_FLAGS & 0xFFFFU) || method != 0 || csize != usize)
            goto decline;
        /* CKG313 (zipfile._miniz_directory): miniz takes the entry for a directory (a name
         * ending in '/', or the DOS directory attribute in the external attributes whatever
         * the made-by OS) and reads none of its bytes; only a '/' name without bytes reads
         * the same everywhere (csize == usize here). nlen >= 1: plain_name. */
        if (name[nlen - 1] == '/' ? csize != 0 : (rd32(h + 38) & DOS_DIRECTORY) != 0)
            goto decline;
        /* ascending, inside the member area (the local pass proves the exact layout) */
        if (hoff >= cd_off || csize > cd_off || (i > 0 && hoff <= ents[i - 1].hoff))
            goto decline;
        Ent *e = &ents[i];
        e->name = name;
        e->nlen = (Py_ssize_t)nlen;
        e->hoff = hoff;
        e->csize = csize;
        e->usize = usize;
        e->crc = crc;
        e->flags = flags;
        e->method = method;
        pos = end;
    }
    if (pos != cl) goto decline; /* CKG306: bytes belonging to no entry */
    int d = names_distinct(ents, n);
    if (d < 0) { PyErr_NoMemory(); goto error; }
    if (d == 0) goto decline; /* CKG301 */

    /* --- local headers, data descriptors, layout (zipfile._check_locals) --------------- */
    int r = check_locals(read, ents, n, (int64_t)cd_off);
    if (r < 0) goto error;
    if (r == 0) goto decline;

    /* --- facts for analysis/torchfile.py ----------------------------------------------- */
    int numpy_free = 1, no_constants = 1, no_upper = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        Ent *e = &ents[i];
        if (e->usize >= 10 &&
            (PyBytes_GET_SIZE(e->head) < 6 ||
             same_bytes((const unsigned char *)PyBytes_AS_STRING(e->head),
                        (const unsigned char *)"\x93NUMPY", 6)))
            numpy_free = 0;
        if ((e->nlen == 13 && same_bytes(e->name, (const unsigned char *)"constants.pkl", 13)) ||
            ends_with(e->name, e->nlen, "/constants.pkl"))
            no_constants = 0;
        for (Py_ssize_t k = 0; k < e->nlen && no_upper; k++)
            if (e->name[k] >= 'A' && e->name[k] <= 'Z') no_upper = 0;
    }
    PyObject *list = build_entries(entry_type, offs, ents, n);
    if (!list) goto error;
    result = Py_BuildValue("(NK(OOO))", list, (unsigned long long)cd_off,
                           numpy_free ? Py_True : Py_False,
                           no_constants ? Py_True : Py_False,
                           no_upper ? Py_True : Py_False);
    goto done;
decline:
    result = Py_None;
    Py_INCREF(result);
    goto done;
error:
    result = NULL;
done:
    if (ents)
        for (Py_ssize_t i = 0; i < n_ents; i++) Py_XDECREF(ents[i].head);
    PyMem_Free(ents);
    Py_XDECREF(cd);
    Py_XDECREF(z);
    Py_XDECREF(tail);
    return result;
}

static PyObject *prove(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *read, *entry_type;
    long long size_ll, max_members_ll, max_cd_ll;
    if (!PyArg_ParseTuple(args, "OLLLO", &read, &size_ll, &max_members_ll, &max_cd_ll,
                          &entry_type))
        return NULL;
    Reader rd = {read, -1, 0, size_ll, NULL, 0, 0, NULL, {0, 0, 0}};
    return prove_with(&rd, size_ll, max_members_ll, max_cd_ll, entry_type);
}

static PyObject *prove_fd(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *entry_type, *region_type;
    int fd;
    long long base_ll, size_ll, max_members_ll, max_cd_ll;
    if (!PyArg_ParseTuple(args, "iLLLLOO", &fd, &base_ll, &size_ll, &max_members_ll,
                          &max_cd_ll, &entry_type, &region_type))
        return NULL;
    Reader rd = {NULL, fd, base_ll, size_ll, NULL, 0, 0, NULL, {0, 0, 0}};
    if (fd < 0 || base_ll < 0 || size_ll < 0 || size_ll > INT64_MAX - base_ll ||
        region_slots(region_type, rd.region_offs) < 0)
        Py_RETURN_NONE;
    rd.region_type = (PyTypeObject *)region_type;
    rd.recorded = PyList_New(0);
    if (!rd.recorded) return NULL;
    PyObject *got = prove_with(&rd, size_ll, max_members_ll, max_cd_ll, entry_type);
    if (!got || got == Py_None) {
        Py_DECREF(rd.recorded);
        return got;
    }
    /* (entries, cd_offset, facts) + (recorded, recorded bytes, nread) */
    PyObject *out = Py_BuildValue("(OOONLL)", PyTuple_GET_ITEM(got, 0),
                                  PyTuple_GET_ITEM(got, 1), PyTuple_GET_ITEM(got, 2),
                                  rd.recorded, (long long)rd.nrecorded, (long long)rd.nread);
    Py_DECREF(got);
    return out;
}

/* --- the loader's identity check: the audited bytes, read again -------------------------
 *
 * same_bytes(fd, regions, region_type) -> (first_bad, rest). ``regions``: the report's
 * regions in offset order (a tuple). Each ``region_type`` (context.AuditedRegion) still
 * holding its audited bytes is read again with pread and compared byte for byte; regions
 * at most MERGE_GAP apart are read with one pread (their span at most MERGE_SPAN).
 * ``first_bad``: the index of the first region whose bytes differ or cannot be read in
 * full, -1 when none; ``rest``: the indexes of the regions it did not check (plain
 * Regions, or digests already computed): the caller compares their SHA-256. */
#define MERGE_GAP 4096
#define MERGE_SPAN (256 * 1024)

/* the audited bytes of region ``o`` (borrowed), or NULL when it holds none */
static PyObject *kept_bytes(PyObject *o, PyTypeObject *rt, const Py_ssize_t *offs,
                            int64_t *off, int64_t *len) {
    if (Py_TYPE(o) != rt) return NULL;
    PyObject *a = *(PyObject **)((char *)o + offs[2]);
    PyObject *po = *(PyObject **)((char *)o + offs[0]);
    PyObject *pl = *(PyObject **)((char *)o + offs[1]);
    if (!a || !PyBytes_CheckExact(a) || !po || !pl || !PyLong_CheckExact(po) ||
        !PyLong_CheckExact(pl))
        return NULL;
    int of1 = 0, of2 = 0;
    long long v1 = PyLong_AsLongLongAndOverflow(po, &of1);
    long long v2 = PyLong_AsLongLongAndOverflow(pl, &of2);
    if (of1 || of2 || v1 < 0 || v2 < 0 || (v1 == -1 && PyErr_Occurred()) ||
        (v2 == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return NULL;
    }
    if (v1 > INT64_MAX - v2 || PyBytes_GET_SIZE(a) != v2) return NULL;
    *off = v1;
    *len = v2;
    return a;
}

static PyObject *same_bytes_fn(PyObject *self, PyObject *args) {
    (void)self;
    int fd;
    PyObject *regions, *region_type;
    if (!PyArg_ParseTuple(args, "iO!O", &fd, &PyTuple_Type, &regions, &region_type))
        return NULL;
    Py_ssize_t offs[3];
    PyObject *rest = PyList_New(0);
    if (!rest) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(regions);
    int usable = fd >= 0 && region_slots(region_type, offs) == 0;
    PyTypeObject *rt = (PyTypeObject *)region_type;
    unsigned char *buf = NULL;
    int64_t cap = 0;
    Py_ssize_t bad = -1;
    Py_ssize_t i = 0;
    while (i < n && bad < 0) {
        int64_t off, len;
        PyObject *a = usable ? kept_bytes(PyTuple_GET_ITEM(regions, i), rt, offs, &off, &len)
                             : NULL;
        if (!a) {
            PyObject *ix = PyLong_FromSsize_t(i);
            if (!ix || PyList_Append(rest, ix) < 0) { Py_XDECREF(ix); goto error; }
            Py_DECREF(ix);
            i++;
            continue;
        }
        /* the run of kept regions read with this one: [off, end) */
        int64_t end = off + len;
        Py_ssize_t j = i + 1;
        while (j < n) {
            int64_t o2, l2;
            if (!kept_bytes(PyTuple_GET_ITEM(regions, j), rt, offs, &o2, &l2)) break;
            int64_t e2 = o2 + l2 > end ? o2 + l2 : end;
            if (o2 < off || o2 > end + MERGE_GAP || e2 - off > MERGE_SPAN) break;
            end = e2;
            j++;
        }
        int64_t span = end - off;
        if (span > cap) {
            unsigned char *nb = PyMem_Realloc(buf, span > 0 ? (size_t)span : 1);
            if (!nb) { PyErr_NoMemory(); goto error; }
            buf = nb;
            cap = span;
        }
        int64_t got = span > 0 ? pread_full(fd, buf, span, off) : 0;
        if (got < 0) goto error;
        for (Py_ssize_t k = i; k < j && bad < 0; k++) {
            int64_t o2, l2;
            PyObject *b = kept_bytes(PyTuple_GET_ITEM(regions, k), rt, offs, &o2, &l2);
            if (!b || o2 < off || o2 + l2 > end) {
                /* (a signal handler run by the read let its bytes go): by digest */
                PyObject *ix = PyLong_FromSsize_t(k);
                if (!ix || PyList_Append(rest, ix) < 0) { Py_XDECREF(ix); goto error; }
                Py_DECREF(ix);
                continue;
            }
            if (o2 - off + l2 > got ||
                memcmp(buf + (o2 - off), PyBytes_AS_STRING(b), (size_t)l2) != 0)
                bad = k;
        }
        i = j;
    }
    PyMem_Free(buf);
    return Py_BuildValue("(nN)", bad, rest);
error:
    PyMem_Free(buf);
    Py_DECREF(rest);
    return NULL;
}

static PyMethodDef methods[] = {
    {"same_bytes", same_bytes_fn, METH_VARARGS,
     "same_bytes(fd, regions, region_type) -> (first_bad, rest)"},
    {"prove", prove, METH_VARARGS,
     "prove(read, size, max_members, max_cd_bytes, entry_type) -> "
     "(entries, cd_offset, facts) | None"},
    {"prove_fd", prove_fd, METH_VARARGS,
     "prove_fd(fd, base, size, max_members, max_cd_bytes, entry_type, region_type) -> "
     "(entries, cd_offset, facts, recorded, recorded_bytes, nread) | None"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "zipcore",
                                    "Canonical zip archive prover (see readers/zipfast.py).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_zipcore(void) {
    kw_record = Py_BuildValue("(s)", "record");
    if (!kw_record) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    PyObject *ids = PyTuple_New(N_HARMLESS_EXTRA);
    if (!ids) { Py_DECREF(m); return NULL; }
    for (int k = 0; k < N_HARMLESS_EXTRA; k++) {
        PyObject *v = PyLong_FromUnsignedLong(HARMLESS_EXTRA[k]);
        if (!v) { Py_DECREF(ids); Py_DECREF(m); return NULL; }
        PyTuple_SET_ITEM(ids, k, v);
    }
    if (PyModule_AddObject(m, "HARMLESS_EXTRA_IDS", ids) < 0) {
        Py_DECREF(ids);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
