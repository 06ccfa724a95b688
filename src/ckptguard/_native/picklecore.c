/* picklecore: prove a torch.save state-dict pickle (data.pkl of a torch zip) SAFE in one
 * bounded, iterative C pass, or decline.
 *
 * It accepts exactly the subset analysis/fastpath.py accepts (PROTO 2|3, a fixed opcode
 * set, the allowlisted rebuild functions, OrderedDict and the typed storage classes,
 * BINPERSID storage ids checked against the archive's records), with CPython's
 * _pickle stack discipline (MARK fences, underflow checks) and the fast path's argument
 * checks, keeping every value as a small tagged C value (strings are spans of the input,
 * containers are nodes). Nothing calls back into Python per opcode. Python objects are
 * built only for what the audit keeps: one StorageRef per storage, one TensorRecord per
 * tensor, the tensor names (named exactly as analysis.tensors.name_tensors names them)
 * and the report's TensorInfo records; and, when the caller keeps the graph
 * (engine="ckptguard"), the same symbolic graph the Python fast path leaves (FastDict,
 * FastList, FastOrderedDict, tuples, FastTensor).
 *
 * scan() returns None to decline: the Python fast path, then the VM, decide as before.
 * Every read is bounds-checked; no recursion on input-controlled depth (the only recursive
 * helper, plain_meta, is bounded to depth 4 and charged to a work budget); every
 * allocation is checked (a failed one declines).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include "slots.h"
#include <stdint.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif
#ifdef PC_TIMING
#include <stdio.h>
#include <time.h>
static double pc_now(void) { struct timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); return t.tv_sec * 1e3 + t.tv_nsec / 1e6; }
static void pc_rss(const char *label) { char l[256]; FILE *f = fopen("/proc/self/status", "r"); if (!f) return; while (fgets(l, sizeof l, f)) if (!strncmp(l, "VmHWM", 5) || !strncmp(l, "VmRSS", 5)) fprintf(stderr, "  %s %s", label, l); fclose(f); }
#define TMARK(label) (fprintf(stderr, "%s %.2f\n", label, pc_now() - t0), pc_rss(label))
#else
#define TMARK(label) ((void)0)
#endif

/* ---- tables (pinned against analysis/tensors.py by tests/test_fastpath_native.py) ---- */

#define G_V2 0
#define G_PARAM 1
#define G_OD 2
#define G_STORAGE0 3
#define N_GLOBALS 20

static const char *const GLOBAL_LINES[N_GLOBALS] = {
    "torch._utils\n_rebuild_tensor_v2\n", "torch._utils\n_rebuild_parameter\n",
    "collections\nOrderedDict\n",
    "torch\nDoubleStorage\n", "torch\nFloatStorage\n", "torch\nHalfStorage\n",
    "torch\nLongStorage\n", "torch\nIntStorage\n", "torch\nShortStorage\n",
    "torch\nCharStorage\n", "torch\nByteStorage\n", "torch\nBoolStorage\n",
    "torch\nBFloat16Storage\n", "torch\nComplexDoubleStorage\n",
    "torch\nComplexFloatStorage\n", "torch\nQInt8Storage\n", "torch\nQInt32Storage\n",
    "torch\nQUInt8Storage\n", "torch\nQUInt4x2Storage\n", "torch\nQUInt2x4Storage\n",
};
static const char *const GLOBAL_FULL[N_GLOBALS] = {
    "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
    "collections.OrderedDict",
    "torch.DoubleStorage", "torch.FloatStorage", "torch.HalfStorage", "torch.LongStorage",
    "torch.IntStorage", "torch.ShortStorage", "torch.CharStorage", "torch.ByteStorage",
    "torch.BoolStorage", "torch.BFloat16Storage", "torch.ComplexDoubleStorage",
    "torch.ComplexFloatStorage", "torch.QInt8Storage", "torch.QInt32Storage",
    "torch.QUInt8Storage", "torch.QUInt4x2Storage", "torch.QUInt2x4Storage",
};
#define N_STORAGES (N_GLOBALS - G_STORAGE0)
static const char *const ST_DTYPE[N_STORAGES] = {
    "float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "bfloat16", "complex128", "complex64", "qint8", "qint32", "quint8", "quint4x2",
    "quint2x4",
};
static const int ST_ITEMSIZE[N_STORAGES] = {8, 4, 2, 8, 4, 2, 1, 1, 1, 2, 16, 8, 1, 4, 1, 1, 1};
static const int ST_GRAD[N_STORAGES] = {1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0};
/* the quantized storages (QInt8Storage on): a plain rebuild over one is the VM's CKG421 */
#define ST_FIRST_QUANT 12

#define N_LOCATIONS 16
static const char *const LOCATIONS[N_LOCATIONS] = {
    "cpu", "cuda", "meta", "mps", "xpu", "hpu", "xla", "privateuseone", "mtia", "ipu",
    "lazy", "vulkan", "hip", "ve", "fpga", "maia",
};

#define LIM62 ((int64_t)1 << 62)
#define MAX_KEY ((int64_t)1 << 60)
#define MAX_STR 128
#define MAX_LONG_PUT ((uint32_t)1 << 22)
#define MAX_NAME_CHARS ((Py_ssize_t)64 * 1024 * 1024)

/* ---- classes and slot offsets (set by init) -------------------------------------------- */

typedef struct {
    PyTypeObject *type;
    int n;
    Py_ssize_t off[12];
} SlotClass;

static SlotClass C_STORAGE;   /* StorageRef: key dtype itemsize numel location offset member
                                 data_offset record_size */
static SlotClass C_RECORD;    /* TensorRecord: storage storage_offset shape stride dtype
                                 requires_grad offset kind */
static SlotClass C_INFO;      /* TensorInfo (n == 0: not built here) */
static SlotClass C_FTENSOR;   /* FastTensor: func args tensor */
static SlotClass C_FASTOD;    /* FastOrderedDict: state hooks (a dict: made by dict's tp_new) */
static PyObject *EMPTY_ARGS;
static PyObject *T_FASTDICT, *T_FASTLIST, *T_FASTOD;
static PyObject *S_DTYPE[N_STORAGES], *S_TENSOR, *S_PARAMETER, *S_DATA, *S_STATE, *S_HOOKS;
/* the meta maker's method and attribute names, and keyword names */
static PyObject *S_UNTYPED_STORAGE, *S_NBYTES, *S_SET_, *S_CKPT_OFFSET, *S_REQUIRES_GRAD,
    *S_BACKWARD_HOOKS, *KW_DTYPE_DEVICE, *KW_DEVICE;

static int slot_class(SlotClass *sc, PyObject *cls, const char *const *names, int n) {
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "not a class");
        return -1;
    }
    PyTypeObject *t = (PyTypeObject *)cls;
    if (!ckg_plain_slots_class(t) || n > 12) {
        PyErr_Format(PyExc_TypeError, "%s is not a plain __slots__ class", t->tp_name);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        PyObject *d = PyObject_GetAttrString(cls, names[i]);
        if (d == NULL)
            return -1;
        sc->off[i] = ckg_object_slot(t, d, 1);
        Py_DECREF(d);
        if (sc->off[i] < 0) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot", t->tp_name, names[i]);
            return -1;
        }
    }
    Py_INCREF(cls);
    Py_XSETREF(sc->type, t);
    sc->n = n;
    return 0;
}

/* A new instance with every slot set (steals the references in vals; NULL on failure,
 * and then every reference in vals is released). */
static PyObject *slot_new(SlotClass *sc, PyObject **vals) {
    PyObject *o = sc->type->tp_alloc(sc->type, 0);
    if (o == NULL) {
        for (int i = 0; i < sc->n; i++)
            Py_XDECREF(vals[i]);
        return NULL;
    }
    for (int i = 0; i < sc->n; i++)
        *(PyObject **)((char *)o + sc->off[i]) = vals[i];
    /* records of strings, numbers, tuples of ints and other records: no cycle can pass
     * through them, so the collector need not track them (as CPython untracks tuples and
     * dicts of atomic values) */
    if (sc != &C_FTENSOR && PyObject_GC_IsTracked(o))
        PyObject_GC_UnTrack(o);
    return o;
}

/* ---- values ------------------------------------------------------------------------------ */

enum { V_UNSET = 0, V_NONE, V_TRUE, V_FALSE, V_INT, V_FLOAT, V_STR, V_GLOBAL, V_NODE };
typedef struct {
    uint32_t tag;
    uint32_t a;  /* V_STR: offset in data; V_GLOBAL: global id; V_NODE: node index */
    int64_t i;   /* V_INT: value; V_FLOAT: bits; V_STR: length */
} Val;

enum { N_TUPLE = 1, N_LIST, N_DICT, N_OD, N_TENSOR, N_STORAGE };
enum { F_SPECIAL = 1, F_INTS = 2, F_HOOKS = 4, F_VISITED = 8, F_REACH = 16 };

typedef struct {
    uint8_t type, flags, dstate, pad;
    uint32_t len;      /* items (dict/od: pairs) */
    uint32_t aux;      /* tuple: offset in the pool; tensor / storage / list / dict / od:
                          index in its table */
    int32_t depth;
    PyObject *obj;     /* int tuple: its Python tuple; graph mode: the built object */
} Node;

typedef struct {
    Val *vec;          /* list: len values; dict/od: 2*len values (key, value) */
    uint32_t cap;
    Val state;         /* od: BUILD state (V_UNSET: none) */
} Vec;

typedef struct {
    uint32_t storage, size, stride, hooks, args, inner;
    int64_t offset;
    uint8_t rg, param;
    PyObject *rec;     /* TensorRecord */
} TensorC;

typedef struct {
    uint32_t key_off, key_len, node;
    int g;             /* storage class index */
    int64_t numel;
    PyObject *ref;     /* StorageRef (owns key, location, member, data_offset, record_size);
                          NULL while pending (during the pass, see make_storages) */
    PyObject *key, *loc, *doff, *rsize;  /* borrowed from ref (pending: key and loc owned,
                                            doff the archive's record tuple) */
    PyObject *name;    /* "data/<key>", made on first use */
} StorageC;

/* a hash-table slot: (namespace node, key) -> value; payload: an int key (< 2**60) or, with
 * bit 63 set, a string key's span (offset << 8 | length) in the input */
typedef struct {
    uint32_t node;     /* HT_EMPTY: free */
    uint32_t h32;
    uint64_t payload;
    uint32_t value;
} HEntry;
#define HT_EMPTY 0xFFFFFFFFu
#define STR_BIT ((uint64_t)1 << 63)

typedef struct {
    const unsigned char *d;
    Py_ssize_t n;
    int keep_graph;
    /* limits */
    int64_t max_stack, max_items, max_memo, max_mark, max_tensors, max_objects;
    /* growable arrays */
    Val *stack; size_t sp, scap;
    uint32_t *marks; size_t nmarks, mcap;
    uint64_t *memo; size_t memocap, memolen;  /* packed (memo_pack); memolen: entries
                                                 [0, memolen) are set up */
    Val *mbig; size_t nbig, bigcap;  /* memo and pool values too wide to pack */
    uint64_t *pool; size_t plen, pcap;  /* tuple items, packed as the memo's (pack_val) */
    Node *nodes; size_t nn, ncap;
    TensorC *tensors; size_t nt, tcap;
    StorageC *stores; size_t ns, stcap;
    Vec *vecs; size_t nv, vcap;
    HEntry *ht; size_t htcap, htlen;   /* dict keys (node, key), storage keys (NS_STORAGE) */
    int64_t probes, probe_budget;
    uint64_t seed;
    int seq_keys;      /* every storage key so far is str(its index): no table needed */
    Py_ssize_t rec_pos; /* cursor into the records dict (storages come in archive order) */
    PyObject *loc_last; uint32_t loc_off, loc_len;
    /* counters */
    int64_t n_ops, n_puts, items, objects, work, work_budget;
    int found[N_GLOBALS];
    int order[N_GLOBALS], norder;
    PyObject *records, *seen;
    PyObject *shapes;  /* equal size / stride tuples shared: {tuple: tuple} */
    /* Global objects, owned (None: not allowed under the policy; Ellipsis: not resolved
     * yet -- ``resolver(id)`` resolves it when the program first names it) */
    PyObject *gobj[N_GLOBALS];
    PyObject *resolver;
} St;


/* The working arrays. Large ones get their own mappings, grown in place or moved by
 * mremap and unmapped when freed: glibc's heap would copy them on each doubling and keep
 * the freed copies (its mmap threshold rises with every large free), ~7 MB of peak RSS on
 * a 50k-tensor program. Under ASan everything stays on malloc (checked). */
#if defined(__linux__) && defined(MREMAP_MAYMOVE) && !defined(__SANITIZE_ADDRESS__)
#define ARR_MAP_MIN ((size_t)1 << 18)
typedef struct {
    size_t mapped; /* bytes mapped (0: malloc'd) */
    size_t size;   /* bytes asked for, after the header */
} ArrHead;         /* 16 bytes: the data keeps malloc's alignment */

static void *arr_realloc(void *p, size_t n) {
    ArrHead *h = p ? (ArrHead *)p - 1 : NULL;
    if (n > ((size_t)1 << 46))
        return NULL;
    size_t total = n + sizeof(ArrHead);
    if (total < ARR_MAP_MIN && (h == NULL || h->mapped == 0)) {
        ArrHead *q = realloc(h, total);
        if (q == NULL)
            return NULL;
        q->mapped = 0;
        q->size = n;
        return q + 1;
    }
    size_t len = (total + 4095) & ~(size_t)4095;
    void *q;
    if (h != NULL && h->mapped) {
        if (len <= h->mapped) {
            h->size = n;
            return p;
        }
        q = mremap(h, h->mapped, len, MREMAP_MAYMOVE);
        if (q == MAP_FAILED)
            return NULL;
    } else {
        q = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (q == MAP_FAILED)
            return NULL;
        if (h != NULL) {
            memcpy((ArrHead *)q + 1, p, h->size < n ? h->size : n);
            free(h);
        }
    }
#if defined(MADV_HUGEPAGE) && !defined(PC_NOHUGE)
    /* the whole mapping (a range inside it would split it, and mremap would refuse) */
    if (len >= ((size_t)4 << 20))
        (void)madvise(q, len, MADV_HUGEPAGE);
#endif
    ArrHead *nh = q;
    nh->mapped = len;
    nh->size = n;
    return nh + 1;
}

static void arr_free(void *p) {
    if (p == NULL)
        return;
    ArrHead *h = (ArrHead *)p - 1;
    if (h->mapped)
        munmap(h, h->mapped);
    else
        free(h);
}
#else
static void *arr_realloc(void *p, size_t n) { return realloc(p, n); }
static void arr_free(void *p) { free(p); }
#endif

/* Large arrays (a 50k-tensor program: ~35 MB) cost more in page faults than in the pass
 * itself: ask Linux for transparent huge pages on them (a hint; nothing else changes). */
static void huge(void *p, size_t len) {
#if defined(__linux__) && defined(MADV_HUGEPAGE) && !defined(PC_NOHUGE) && !defined(ARR_MAP_MIN)
    if (len >= ((size_t)4 << 20)) {
        uintptr_t a = ((uintptr_t)p + ((2u << 20) - 1)) & ~(uintptr_t)((2u << 20) - 1);
        uintptr_t e = ((uintptr_t)p + len) & ~(uintptr_t)((2u << 20) - 1);
        if (e > a)
            (void)madvise((void *)a, e - a, MADV_HUGEPAGE);
    }
#else
    (void)p;
    (void)len;
#endif
}

static int grow(void **p, size_t *cap, size_t need, size_t sz) {
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need) {
        if (c > ((size_t)1 << 40) / sz)
            return -1;
        c *= 2;
    }
    void *q = arr_realloc(*p, c * sz);
    if (q == NULL)
        return -1;
    *p = q;
    *cap = c;
    huge(q, c * sz);
    return 0;
}

static int new_node(St *s, uint8_t type, uint32_t *out) {
    if (s->nn >= 0xFFFFFFF0u || grow((void **)&s->nodes, &s->ncap, s->nn + 1, sizeof(Node)))
        return -1;
    Node *nd = &s->nodes[s->nn];
    memset(nd, 0, sizeof(Node));
    nd->type = type;
    if (type == N_LIST || type == N_DICT || type == N_OD) {
        if (s->nv >= 0xFFFFFFF0u || grow((void **)&s->vecs, &s->vcap, s->nv + 1, sizeof(Vec)))
            return -1;
        memset(&s->vecs[s->nv], 0, sizeof(Vec));
        nd->aux = (uint32_t)s->nv++;
    }
    *out = (uint32_t)s->nn++;
    return 0;
}

static inline int push(St *s, Val v) {
    if (s->sp >= s->scap && grow((void **)&s->stack, &s->scap, s->sp + 1, sizeof(Val)))
        return -1;
    s->stack[s->sp++] = v;
    return 0;
}

static inline size_t fence(St *s) { return s->nmarks ? s->marks[s->nmarks - 1] : 0; }

static inline Val node_val(uint32_t i) {
    Val v = {V_NODE, i, 0};
    return v;
}

static inline Node *nodeof(St *s, Val v) { return v.tag == V_NODE ? &s->nodes[v.a] : NULL; }

/* a value that may be stored in a container: not a global, a storage, or a tuple holding
 * one (those only ever feed REDUCE / BINPERSID) */
static inline int storable(St *s, Val v) {
    if (v.tag == V_GLOBAL || v.tag == V_UNSET)
        return 0;
    if (v.tag == V_NODE) {
        Node *nd = &s->nodes[v.a];
        if (nd->type == N_STORAGE || (nd->flags & F_SPECIAL))
            return 0;
    }
    return 1;
}

/* ---- hashing (dict keys, storage keys) ---------------------------------------------------- */

/* Seeded per process; the probes are also counted against a budget (a crafted set of
 * colliding keys declines instead of running quadratic). */
static uint64_t ht_seed;

static inline uint64_t mix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

static uint64_t key_hash(St *s, uint32_t node, Val k) {
    uint64_t h = s->seed ^ ((uint64_t)node * 0x9E3779B97F4A7C15ull);
    if (k.tag == V_STR) {
        const unsigned char *p = s->d + k.a;
        size_t n = (size_t)k.i, i = 0;
        for (; i + 8 <= n; i += 8) {
            uint64_t c;
            memcpy(&c, p + i, 8);
            h = (h ^ c) * 0x9E3779B97F4A7C15ull;
            h ^= h >> 29;
        }
        uint64_t c = 0;
        memcpy(&c, p + i, n - i);
        h = (h ^ c ^ ((uint64_t)n << 56)) * 0x9E3779B97F4A7C15ull;
        h ^= STR_BIT;
    } else {
        h = (h ^ (uint64_t)k.i) * 0xC2B2AE3D27D4EB4Full;
    }
    return mix64(h);
}

static inline uint64_t key_payload(Val k) {
    return k.tag == V_STR ? (STR_BIT | ((uint64_t)k.a << 8) | (uint64_t)k.i) : (uint64_t)k.i;
}

static int key_eq(St *s, HEntry *e, uint64_t payload) {
    if (e->payload == payload)
        return 1;
    if (!(payload & STR_BIT) || !(e->payload & STR_BIT))
        return 0;
    uint64_t la = e->payload & 0xFF, lb = payload & 0xFF;
    if (la != lb)
        return 0;
    uint64_t oa = (e->payload & ~STR_BIT) >> 8, ob = (payload & ~STR_BIT) >> 8;
    return memcmp(s->d + oa, s->d + ob, (size_t)la) == 0;
}

/* 1: inserted, 0: present (*found set), -1: no memory or probe budget spent */
static int ht_insert(St *s, uint32_t node, Val k, uint32_t value, uint32_t *found) {
    if ((s->htlen + 1) * 2 > s->htcap) {
        size_t nc = s->htcap ? s->htcap * 2 : 1024;
        HEntry *nt = arr_realloc(NULL, nc * sizeof(HEntry));
        if (nt == NULL)
            return -1;
        for (size_t i = 0; i < nc; i++)
            nt[i].node = HT_EMPTY;
        for (size_t i = 0; i < s->htcap; i++) {
            HEntry *e = &s->ht[i];
            if (e->node == HT_EMPTY)
                continue;
            size_t j = (size_t)e->h32 & (nc - 1);
            while (nt[j].node != HT_EMPTY) {
                j = (j + 1) & (nc - 1);
                if (++s->probes > s->probe_budget) {
                    arr_free(nt);
                    return -1;
                }
            }
            nt[j] = *e;
        }
        arr_free(s->ht);
        s->ht = nt;
        s->htcap = nc;
    }
    uint64_t h = key_hash(s, node, k);
    uint32_t h32 = (uint32_t)h;
    uint64_t payload = key_payload(k);
    size_t j = (size_t)h32 & (s->htcap - 1);
    while (s->ht[j].node != HT_EMPTY) {
        HEntry *e = &s->ht[j];
        if (e->h32 == h32 && e->node == node && key_eq(s, e, payload)) {
            if (found)
                *found = e->value;
            return 0;
        }
        j = (j + 1) & (s->htcap - 1);
        if (++s->probes > s->probe_budget)
            return -1;
    }
    HEntry *e = &s->ht[j];
    e->node = node;
    e->h32 = h32;
    e->payload = payload;
    e->value = value;
    s->htlen++;
    return 1;
}

#define NS_STORAGE 0xFFFFFFFEu

/* ---- small helpers ------------------------------------------------------------------------ */

static inline uint32_t rd_u32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static PyObject *str_of(St *s, uint32_t off, int64_t len) {
    return PyUnicode_DecodeUTF8((const char *)s->d + off, (Py_ssize_t)len, "surrogatepass");
}

/* the C unpickler decodes BINUNICODE with "surrogatepass": a string it refuses declines */
static int valid_str(St *s, uint32_t off, int64_t len) {
    const unsigned char *p = s->d + off;
    for (int64_t i = 0; i < len; i++) {
        if (p[i] >= 0x80) {
            PyObject *u = str_of(s, off, len);
            if (u == NULL) {
                PyErr_Clear();
                return 0;
            }
            Py_DECREF(u);
            return 1;
        }
    }
    return 1;
}

/* A memo entry or a tuple item (the pool) in 8 bytes: half a Val (the pool and the memo
 * are the largest arrays at the end of the pass, the peak of a scan's memory). 0: unset; low 3 bits: 1 None, 2 True, 3 False, 4 node and 5
 * global (index above), 6 string (offset in bits 3-34, length above), 7 an int of 61 bits
 * (above, two's complement); 0 with a payload: mbig[payload - 1] (wider ints, floats).
 * Every Val the pass makes has zero in its unused fields, so unpacking gives it back. */
static int pack_val(St *s, Val v, uint64_t *out) {
    switch (v.tag) {
    case V_NONE: *out = 1; return 0;
    case V_TRUE: *out = 2; return 0;
    case V_FALSE: *out = 3; return 0;
    case V_NODE: *out = (uint64_t)v.a << 3 | 4; return 0;
    case V_GLOBAL: *out = (uint64_t)v.a << 3 | 5; return 0;
    case V_STR:
        if (v.i >= 0 && v.i < ((int64_t)1 << 29)) {
            *out = (uint64_t)v.i << 35 | (uint64_t)v.a << 3 | 6;
            return 0;
        }
        break;
    case V_INT:
        if (v.i >= -((int64_t)1 << 60) && v.i < ((int64_t)1 << 60)) {
            *out = (uint64_t)v.i << 3 | 7;
            return 0;
        }
        break;
    default:
        break;
    }
    if (grow((void **)&s->mbig, &s->bigcap, s->nbig + 1, sizeof(Val)))
        return -1;
    s->mbig[s->nbig++] = v;
    *out = (uint64_t)s->nbig << 3;
    return 0;
}

static Val unpack_val(St *s, uint64_t m) {
    Val v = {V_UNSET, 0, 0};
    switch (m & 7) {
    case 1: v.tag = V_NONE; break;
    case 2: v.tag = V_TRUE; break;
    case 3: v.tag = V_FALSE; break;
    case 4: v.tag = V_NODE; v.a = (uint32_t)(m >> 3); break;
    case 5: v.tag = V_GLOBAL; v.a = (uint32_t)(m >> 3); break;
    case 6: v.tag = V_STR; v.a = (uint32_t)(m >> 3); v.i = (int64_t)(m >> 35); break;
    case 7: {
        int64_t x;
        memcpy(&x, &m, sizeof x);
        v.tag = V_INT;
        v.i = x >> 3; /* arithmetic: the sign comes back */
        break;
    }
    default:
        if ((m >> 3) - 1 < s->nbig)
            v = s->mbig[(m >> 3) - 1];
    }
    return v;
}

static inline Val pool_at(St *s, size_t i) { return unpack_val(s, s->pool[i]); }

static int memo_set(St *s, size_t idx, Val v) {
    if (idx >= s->memocap) {
        size_t nc = s->memocap ? s->memocap : 256;
        while (nc <= idx)
            nc *= 2;
        uint64_t *m = arr_realloc(s->memo, nc * sizeof(uint64_t));
        if (m == NULL)
            return -1;
        huge(m, nc * sizeof(uint64_t));
        s->memo = m;
        s->memocap = nc;
    }
    if (idx >= s->memolen) {
        /* cleared up to idx only: the capacity past the highest index the program uses
         * is never touched (no resident pages for it) */
        memset(s->memo + s->memolen, 0, (idx + 1 - s->memolen) * sizeof(uint64_t));
        s->memolen = idx + 1;
    }
    uint64_t m;
    if (v.tag == V_UNSET || pack_val(s, v, &m))
        return -1;
    if (s->memo[idx] == 0)
        s->n_puts++;
    s->memo[idx] = m;
    return 0;
}

static int memo_get(St *s, size_t idx) {
    if (idx >= s->memolen || s->memo[idx] == 0)
        return -1;
    Val v = unpack_val(s, s->memo[idx]);
    if (v.tag == V_UNSET)
        return -1;
    return push(s, v);
}

static int add_item(St *s, uint32_t node, Val v) {
    Node *nd = &s->nodes[node];
    Vec *vc = &s->vecs[nd->aux];
    size_t need = (size_t)nd->len + 1;
    if (need > vc->cap) {
        size_t cap = vc->cap;
        if (grow((void **)&vc->vec, &cap, need, sizeof(Val)) || cap > 0xFFFFFFF0u)
            return -1;
        vc->cap = (uint32_t)cap;
    }
    vc->vec[nd->len++] = v;
    return 0;
}

static int add_pair(St *s, uint32_t node, Val k, Val v) {
    Node *nd = &s->nodes[node];
    Vec *vc = &s->vecs[nd->aux];
    size_t need = 2 * ((size_t)nd->len + 1);
    if (need > vc->cap) {
        size_t cap = vc->cap;
        if (grow((void **)&vc->vec, &cap, need, sizeof(Val)) || cap > 0xFFFFFFF0u)
            return -1;
        vc->cap = (uint32_t)cap;
    }
    vc->vec[2 * nd->len] = k;
    vc->vec[2 * nd->len + 1] = v;
    nd->len++;
    return 0;
}

static uint32_t empty_tuple_node = 0;

static int make_tuple(St *s, size_t start) {
    size_t len = s->sp - start;
    uint32_t idx;
    if (len == 0) {
        s->sp = start;
        return push(s, node_val(empty_tuple_node));
    }
    if (s->plen + len > 0xFFFFFFF0u ||
        grow((void **)&s->pool, &s->pcap, s->plen + len, sizeof(uint64_t)))
        return -1;
    uint8_t flags = F_INTS;
    for (size_t i = start; i < s->sp; i++) {
        Val v = s->stack[i];
        if (v.tag != V_INT)
            flags &= (uint8_t)~F_INTS;
        if (v.tag == V_GLOBAL)
            flags |= F_SPECIAL;
        else if (v.tag == V_NODE) {
            Node *c = &s->nodes[v.a];
            if (c->flags & F_SPECIAL)
                return -1; /* a storage reference or a rebuild's arguments inside a tuple */
            if (c->type == N_STORAGE)
                flags |= F_SPECIAL;
        }
    }
    if (new_node(s, N_TUPLE, &idx))
        return -1;
    Node *nd = &s->nodes[idx];
    nd->aux = (uint32_t)s->plen;
    nd->len = (uint32_t)len;
    nd->flags = flags;
    for (size_t k = 0; k < len; k++)
        if (pack_val(s, s->stack[start + k], &s->pool[s->plen + k]))
            return -1;
    s->plen += len;
    s->items += (int64_t)len;
    s->objects += 1;
    s->sp = start;
    return push(s, node_val(idx));
}

#define MAX_SHARED_SHAPES 4096

/* the tuple of ints a node holds, as a Python tuple (cached on the node) */
static PyObject *int_tuple(St *s, uint32_t idx) {
    Node *nd = &s->nodes[idx];
    if (nd->obj != NULL) {
        Py_INCREF(nd->obj);
        return nd->obj;
    }
    PyObject *t = PyTuple_New(nd->len);
    if (t == NULL)
        return NULL;
    for (uint32_t i = 0; i < nd->len; i++) {
        PyObject *x = PyLong_FromLongLong(pool_at(s, nd->aux + i).i);
        if (x == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, x);
    }
    if (nd->len)
        PyObject_GC_UnTrack(t); /* ints only */
    /* one object per distinct shape (a checkpoint repeats a few shapes many times): the
     * first tuple of its value is kept, equal later ones are dropped; bounded table. Not
     * for a node the loaded object reaches (a built meta load marks them first): there
     * two equal tuples stay two objects, as torch.load makes them */
    if (s->shapes != NULL && !(nd->flags & F_REACH)) {
        PyObject *same = PyDict_GetItemWithError(s->shapes, t);
        if (same != NULL) {
            Py_INCREF(same);
            Py_SETREF(t, same);
        } else if (PyErr_Occurred() ||
                   (PyDict_GET_SIZE(s->shapes) < MAX_SHARED_SHAPES &&
                    PyDict_SetItem(s->shapes, t, t) < 0)) {
            Py_DECREF(t);
            return NULL;
        }
    }
    nd->obj = t;
    Py_INCREF(t);
    return t;
}

static inline int is_tuple_of_ints(St *s, Val v) {
    return v.tag == V_NODE && s->nodes[v.a].type == N_TUPLE &&
           (s->nodes[v.a].len == 0 || (s->nodes[v.a].flags & F_INTS));
}

#define STATE(s, nd) ((s)->vecs[(nd)->aux].state)
#define VEC(s, nd) ((s)->vecs[(nd)->aux].vec)

/* an OrderedDict() a rebuild may take as its backward hooks: empty, no state, and not
 * already a tensor's hooks (torch.load shares one dict between two tensors; the engine
 * that builds from the graph gives each its own: declined) */
static inline int is_empty_od(St *s, Val v) {
    return v.tag == V_NODE && s->nodes[v.a].type == N_OD && s->nodes[v.a].len == 0 &&
           STATE(s, &s->nodes[v.a]).tag == V_UNSET && !(s->nodes[v.a].flags & F_HOOKS);
}

/* ---- _metadata (an OrderedDict's BUILD state) ---------------------------------------------- */

/* 1: a dict of str keys whose values are scalars or such dicts, 0: not, -1: work budget
 * spent (depth bounded by 4: the recursion is constant-bounded) */
static int plain_meta(St *s, uint32_t idx, int depth) {
    if (depth <= 0)
        return 0;
    Node *nd = &s->nodes[idx];
    for (uint32_t i = 0; i < nd->len; i++) {
        if (++s->work > s->work_budget)
            return -1;
        Val k = VEC(s, nd)[2 * i], v = VEC(s, nd)[2 * i + 1];
        if (k.tag != V_STR)
            return 0;
        switch (v.tag) {
        case V_NONE: case V_TRUE: case V_FALSE: case V_INT: case V_FLOAT: case V_STR:
            continue;
        case V_NODE: {
            Node *c = &s->nodes[v.a];
            if (c->type == N_OD && STATE(s, c).tag != V_UNSET)
                return 0;
            if (c->type != N_OD && c->type != N_DICT)
                return 0;
            int r = plain_meta(s, v.a, depth - 1);
            if (r != 1)
                return r;
            continue;
        }
        default:
            return 0;
        }
    }
    return 1;
}

/* ---- calls ---------------------------------------------------------------------------------- */

static PyObject *new_record(St *s, uint32_t storage, int64_t offset, uint32_t size,
                            uint32_t stride, int rg, int param) {
    StorageC *sc = &s->stores[s->nodes[storage].aux];
    PyObject *v[8];
    Py_INCREF(sc->ref);
    v[0] = sc->ref;
    v[1] = PyLong_FromLongLong(offset);
    v[2] = int_tuple(s, size);
    v[3] = int_tuple(s, stride);
    v[4] = S_DTYPE[sc->g];
    Py_INCREF(v[4]);
    v[5] = rg ? Py_True : Py_False;
    Py_INCREF(v[5]);
    v[6] = PyLong_FromLong(0);
    v[7] = param ? S_PARAMETER : S_TENSOR;
    Py_INCREF(v[7]);
    if (v[1] == NULL || v[2] == NULL || v[3] == NULL || v[6] == NULL) {
        for (int i = 0; i < 8; i++)
            Py_XDECREF(v[i]);
        return NULL;
    }
    return slot_new(&C_RECORD, v);
}

/* every storage's StorageRef, into seen in the order of first reference (the order the
 * pass made them in); after the pass, before make_records */
static int make_storages(St *s) {
    for (size_t i = 0; i < s->ns; i++) {
        StorageC *sc = &s->stores[i];
        if (sc->ref != NULL)
            continue;
        PyObject *rec = sc->doff;
        PyObject *v[9];
        v[0] = sc->key;
        v[1] = S_DTYPE[sc->g];
        v[2] = PyLong_FromLong(ST_ITEMSIZE[sc->g]);
        v[3] = PyLong_FromLongLong(sc->numel);
        v[4] = sc->loc;
        v[5] = PyLong_FromLong(0);
        if (v[2] == NULL || v[3] == NULL || v[5] == NULL) {
            Py_XDECREF(v[2]);
            Py_XDECREF(v[3]);
            Py_XDECREF(v[5]);
            return -1;
        }
        Py_INCREF(v[0]);
        Py_INCREF(v[1]);
        Py_INCREF(v[4]);
        for (int j = 0; j < 3; j++) {
            v[6 + j] = PyTuple_GET_ITEM(rec, j);
            Py_INCREF(v[6 + j]);
        }
        PyObject *ref = slot_new(&C_STORAGE, v);
        if (ref == NULL)
            return -1;
        if (PyDict_SetItem(s->seen, sc->key, ref) < 0) {
            Py_DECREF(ref);
            return -1;
        }
        /* made: the ref owns the key and the location; borrowed from it from here on */
        Py_DECREF(sc->key);
        Py_DECREF(sc->loc);
        sc->ref = ref;
        sc->doff = v[7];
        sc->rsize = v[8];
    }
    return 0;
}

/* every tensor's TensorRecord, in creation order (after run: nothing in the pass reads
 * them, and the memo and key table are freed by then) */
static int make_records(St *s) {
    for (size_t i = 0; i < s->nt; i++) {
        TensorC *t = &s->tensors[i];
        t->rec = new_record(s, t->storage, t->offset, t->size, t->stride, t->rg, t->param);
        if (t->rec == NULL)
            return -1;
    }
    return 0;
}

static int new_tensor(St *s, TensorC *t, Val *out) {
    uint32_t idx;
    if (grow((void **)&s->tensors, &s->tcap, s->nt + 1, sizeof(TensorC)) ||
        s->nt >= 0xFFFFFFF0u)
        return -1;
    t->rec = NULL; /* built after the pass (make_records): the pass's arrays are gone by then */
    if (new_node(s, N_TENSOR, &idx))
        return -1;
    s->nodes[idx].aux = (uint32_t)s->nt;
    s->tensors[s->nt++] = *t;
    s->objects += 4;
    *out = node_val(idx);
    return 0;
}

/* torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
 *                                 backward_hooks[, metadata]) */
static int rebuild_v2(St *s, uint32_t args, Val *out) {
    Node *an = &s->nodes[args];
    if (!(an->len == 6 || (an->len == 7 && pool_at(s, an->aux + 6).tag == V_NONE)))
        return -1;
    Val a[6];
    for (int k = 0; k < 6; k++)
        a[k] = pool_at(s, an->aux + k);
    Val st = a[0], off = a[1], size = a[2], stride = a[3], rg = a[4], hooks = a[5];
    if (st.tag != V_NODE || s->nodes[st.a].type != N_STORAGE || off.tag != V_INT ||
        (rg.tag != V_TRUE && rg.tag != V_FALSE) || !is_tuple_of_ints(s, size) ||
        !is_tuple_of_ints(s, stride) || !is_empty_od(s, hooks))
        return -1;
    Node *sn = &s->nodes[size.a], *tn = &s->nodes[stride.a];
    uint32_t nd = sn->len;
    if (tn->len != nd)
        return -1;
    /* the VM charges the walk of (possibly memo-shared) size and stride to the items
     * budget; charged before the walk, so a shared million-int shape cannot go quadratic */
    s->items += 2 * (int64_t)nd;
    if (s->items > s->max_items)
        return -1;
    int has_zero = 0;
    for (uint32_t i = 0; i < nd; i++) {
        int64_t zi = pool_at(s, sn->aux + i).i, di = pool_at(s, tn->aux + i).i;
        if (zi < 0 || zi >= LIM62 || di < 0 || di >= LIM62)
            return -1;
        if (zi == 0)
            has_zero = 1;
    }
    if (off.i < 0 || off.i >= LIM62)
        return -1;
    StorageC *sc = &s->stores[s->nodes[st.a].aux];
    if (rg.tag == V_TRUE && !ST_GRAD[sc->g])
        return -1;
    if (sc->g >= ST_FIRST_QUANT)
        return -1;
    if (!has_zero) {
        /* the last element the view reaches must lie inside the storage */
        int64_t last = off.i;
        for (uint32_t i = 0; i < nd; i++) {
            int64_t step;
            if (__builtin_mul_overflow(pool_at(s, sn->aux + i).i - 1,
                                       pool_at(s, tn->aux + i).i, &step) ||
                __builtin_add_overflow(last, step, &last))
                return -1;
        }
        if (last >= sc->numel)
            return -1;
    }
    s->nodes[hooks.a].flags |= F_HOOKS;
    TensorC t = {0};
    t.storage = st.a;
    t.size = size.a;
    t.stride = stride.a;
    t.hooks = hooks.a;
    t.args = args;
    t.offset = off.i;
    t.rg = rg.tag == V_TRUE;
    t.param = 0;
    return new_tensor(s, &t, out);
}

/* torch._utils._rebuild_parameter(data, requires_grad, backward_hooks) */
static int rebuild_param(St *s, uint32_t args, Val *out) {
    Node *an = &s->nodes[args];
    if (an->len != 3)
        return -1;
    Val a[3];
    for (int k = 0; k < 3; k++)
        a[k] = pool_at(s, an->aux + k);
    Val data = a[0], rg = a[1], hooks = a[2];
    if (data.tag != V_NODE || s->nodes[data.a].type != N_TENSOR ||
        (rg.tag != V_TRUE && rg.tag != V_FALSE) || !is_empty_od(s, hooks))
        return -1;
    TensorC inner = s->tensors[s->nodes[data.a].aux];
    if (inner.param)
        return -1;
    s->nodes[hooks.a].flags |= F_HOOKS;
    StorageC *sc = &s->stores[s->nodes[inner.storage].aux];
    if (rg.tag == V_TRUE && !ST_GRAD[sc->g])
        return -1;
    TensorC t = inner;
    t.rg = rg.tag == V_TRUE;
    t.param = 1;
    t.hooks = hooks.a;
    t.args = args;
    t.inner = data.a;
    return new_tensor(s, &t, out);
}

/* BINPERSID: ("storage", <storage class>, key, location, numel) */
static int persistent_load(St *s, Val pid, Val *out) {
    if (pid.tag != V_NODE || s->nodes[pid.a].type != N_TUPLE || s->nodes[pid.a].len != 5)
        return -1;
    Val a[5];
    for (int k = 0; k < 5; k++)
        a[k] = pool_at(s, s->nodes[pid.a].aux + k);
    Val tag = a[0], cls = a[1], key = a[2], loc = a[3], numel = a[4];
    if (tag.tag != V_STR || tag.i != 7 || memcmp(s->d + tag.a, "storage", 7) != 0 ||
        cls.tag != V_GLOBAL || cls.a < G_STORAGE0 || key.tag != V_STR ||
        loc.tag != V_STR || numel.tag != V_INT || numel.i < 0 || numel.i >= LIM62)
        return -1;
    int known = 0;
    for (int i = 0; i < N_LOCATIONS && !known; i++) {
        size_t pl = strlen(LOCATIONS[i]);
        known = (size_t)loc.i >= pl && memcmp(s->d + loc.a, LOCATIONS[i], pl) == 0;
    }
    if (!known)
        return -1;
    int g = (int)cls.a - G_STORAGE0;
    uint32_t found = 0;
    uint32_t idx = (uint32_t)s->nn;
    int r;
    if (s->seq_keys) {
        /* torch.save names storages "0", "1", ... in order: while every key so far was
         * str(its index), a canonical decimal key < ns names storage <key>, == ns a new one */
        const unsigned char *kp = s->d + key.a;
        int64_t kv = 0;
        int canon = key.i > 0 && key.i <= 18 && (kp[0] != '0' || key.i == 1);
        for (int64_t i = 0; canon && i < key.i; i++) {
            if (kp[i] < '0' || kp[i] > '9')
                canon = 0;
            else
                kv = kv * 10 + (kp[i] - '0');
        }
        if (canon && kv < (int64_t)s->ns) {
            r = 0;
            found = s->stores[kv].node;
        } else if (canon && kv == (int64_t)s->ns) {
            r = 1;
        } else {
            /* from here on, a table of every key */
            s->seq_keys = 0;
            for (size_t i = 0; i < s->ns; i++) {
                Val kk = {V_STR, s->stores[i].key_off, s->stores[i].key_len};
                if (ht_insert(s, NS_STORAGE, kk, s->stores[i].node, NULL) != 1)
                    return -1;
            }
            r = ht_insert(s, NS_STORAGE, key, idx, &found);
        }
    } else {
        r = ht_insert(s, NS_STORAGE, key, idx, &found);
    }
    if (r < 0)
        return -1;
    if (r == 0) {
        StorageC *prev = &s->stores[s->nodes[found].aux];
        if (strcmp(ST_DTYPE[prev->g], ST_DTYPE[g]) != 0 || prev->numel != numel.i)
            return -1;
        *out = node_val(found);
        return 0;
    }
    if (grow((void **)&s->stores, &s->stcap, s->ns + 1, sizeof(StorageC)))
        return -1;
    /* the record: usually the next one of the archive (a sequential walk of the dict),
     * else a lookup */
    PyObject *k = NULL, *rec = NULL, *rk, *rv;
    Py_ssize_t pos = s->rec_pos;
    if (PyDict_Next(s->records, &pos, &rk, &rv) && PyUnicode_CheckExact(rk) &&
        PyUnicode_IS_ASCII(rk) && PyUnicode_GET_LENGTH(rk) == key.i &&
        memcmp(PyUnicode_DATA(rk), s->d + key.a, (size_t)key.i) == 0) {
        s->rec_pos = pos;
        k = rk;
        Py_INCREF(k);
        rec = rv;
    } else {
        k = str_of(s, key.a, key.i);
        if (k == NULL)
            return -1;
        rec = PyDict_GetItemWithError(s->records, k); /* borrowed */
    }
    long long size;
    if (rec == NULL || !PyTuple_CheckExact(rec) || PyTuple_GET_SIZE(rec) != 3 ||
        !PyLong_CheckExact(PyTuple_GET_ITEM(rec, 2)) ||
        (size = PyLong_AsLongLong(PyTuple_GET_ITEM(rec, 2))) == -1) {
        Py_DECREF(k);
        return -1;
    }
    int64_t want;
    if (__builtin_mul_overflow(numel.i, (int64_t)ST_ITEMSIZE[g], &want) || want != size) {
        Py_DECREF(k);
        return -1;
    }
    PyObject *locobj;
    if (s->loc_last != NULL && s->loc_len == loc.i &&
        memcmp(s->d + s->loc_off, s->d + loc.a, (size_t)loc.i) == 0) {
        locobj = s->loc_last;
        Py_INCREF(locobj);
    } else {
        locobj = str_of(s, loc.a, loc.i);
        if (locobj != NULL) {
            Py_INCREF(locobj);
            Py_XSETREF(s->loc_last, locobj);
            s->loc_off = loc.a;
            s->loc_len = (uint32_t)loc.i;
        }
    }
    if (locobj == NULL || new_node(s, N_STORAGE, &idx)) {
        Py_DECREF(k);
        Py_XDECREF(locobj);
        return -1;
    }
    /* the StorageRef itself is made after the pass (make_storages): pending, the key and
     * the location are owned here and doff holds the record tuple (borrowed from the
     * records dict, which outlives the scan) */
    StorageC *sc = &s->stores[s->ns];
    memset(sc, 0, sizeof(*sc));
    sc->key_off = key.a;
    sc->key_len = (uint32_t)key.i;
    sc->node = idx;
    sc->g = g;
    sc->numel = numel.i;
    sc->ref = NULL;
    sc->key = k;
    sc->loc = locobj;
    sc->doff = rec;
    s->nodes[idx].aux = (uint32_t)s->ns++;
    s->objects += 3;
    *out = node_val(idx);
    return 0;
}

/* ---- the pass ------------------------------------------------------------------------------- */

static int check_key(Val k) {
    if (k.tag == V_STR)
        return 0;
    if (k.tag == V_INT && k.i >= 0 && k.i < MAX_KEY)
        return 0;
    return -1;
}

/* SETITEM(S) of stack[x:] into stack[x-1] */
static int setitems(St *s, size_t x) {
    Val t = s->stack[x - 1];
    if (t.tag != V_NODE)
        return -1;
    Node *tn = &s->nodes[t.a];
    if ((tn->type != N_DICT && tn->type != N_OD) || (tn->flags & F_HOOKS))
        return -1;
    if ((s->sp - x) % 2)
        return -1;
    for (size_t i = x; i < s->sp; i += 2) {
        Val k = s->stack[i], v = s->stack[i + 1];
        if (check_key(k) || !storable(s, v))
            return -1;
        if (ht_insert(s, t.a, k, 0, NULL) != 1)
            return -1; /* a repeated key (torch.save never writes one) or no memory */
        if (add_pair(s, t.a, k, v))
            return -1;
    }
    s->items += (int64_t)(s->sp - x);
    s->sp = x;
    return 0;
}

static int appends(St *s, size_t x) {
    Val t = s->stack[x - 1];
    if (t.tag != V_NODE || s->nodes[t.a].type != N_LIST)
        return -1;
    for (size_t i = x; i < s->sp; i++) {
        if (!storable(s, s->stack[i]) || add_item(s, t.a, s->stack[i]))
            return -1;
    }
    s->items += (int64_t)(s->sp - x);
    s->sp = x;
    return 0;
}

static int pop_mark(St *s, size_t *x) {
    if (s->nmarks == 0)
        return -1;
    *x = s->marks[--s->nmarks];
    return 0;
}

static int run(St *s) {
    const unsigned char *d = s->d;
    const Py_ssize_t n = s->n;
    Py_ssize_t pos = 2;
    Val v;
    size_t x;
    for (;;) {
        if (pos >= n)
            return -1;
        unsigned char op = d[pos++];
        /* every value on the stack and every tuple item needs an opcode: this bounds the
         * memory of the pass while it runs (not only at the end) */
        if (++s->n_ops > s->max_stack || s->n_ops > s->max_items)
            return -1;
        switch (op) {
        case '.': /* STOP: the last byte, one value left, no MARK open */
            if (pos != n || s->sp != 1 || s->nmarks != 0)
                return -1;
            return 0;
        case '(':
            if ((int64_t)s->nmarks + 6 > s->max_mark)
                return -1;
            if (grow((void **)&s->marks, &s->mcap, s->nmarks + 1, sizeof(uint32_t)) ||
                s->sp > 0xFFFFFFF0u)
                return -1;
            s->marks[s->nmarks++] = (uint32_t)s->sp;
            break;
        case 't':
            if (pop_mark(s, &x) || make_tuple(s, x))
                return -1;
            break;
        case 0x85: case 0x86: case 0x87: {
            size_t k = (size_t)(op - 0x84);
            if (s->sp < fence(s) + k || make_tuple(s, s->sp - k))
                return -1;
            break;
        }
        case ')':
            if (push(s, node_val(empty_tuple_node)))
                return -1;
            break;
        case '}': case ']': {
            uint32_t idx;
            if (new_node(s, op == '}' ? N_DICT : N_LIST, &idx) || push(s, node_val(idx)))
                return -1;
            s->objects += 2;
            break;
        }
        case 's':
            if (s->sp < 2 || s->sp - 2 <= fence(s) || setitems(s, s->sp - 2))
                return -1;
            break;
        case 'u':
            if (pop_mark(s, &x) || x <= fence(s) || setitems(s, x))
                return -1;
            break;
        case 'a':
            if (s->sp < 1 || s->sp - 1 <= fence(s) || appends(s, s->sp - 1))
                return -1;
            break;
        case 'e':
            if (pop_mark(s, &x) || x <= fence(s) || appends(s, x))
                return -1;
            break;
        case 'b': { /* BUILD: only an OrderedDict's plain _metadata */
            if (s->sp < fence(s) + 2)
                return -1;
            Val state = s->stack[--s->sp], inst = s->stack[s->sp - 1];
            if (inst.tag != V_NODE || state.tag != V_NODE)
                return -1;
            Node *in = &s->nodes[inst.a];
            if (in->type != N_OD || (in->flags & F_HOOKS) || s->nodes[state.a].type != N_DICT)
                return -1;
            if (plain_meta(s, state.a, 4) != 1)
                return -1;
            /* a second BUILD merges into the first in every loader; pickle never writes
             * one, and the VM reports it (CKG204): decline */
            if (STATE(s, in).tag != V_UNSET)
                return -1;
            STATE(s, in) = state;
            break;
        }
        case 'R': {
            if (s->sp < fence(s) + 2)
                return -1;
            Val args = s->stack[--s->sp], fn = s->stack[--s->sp];
            if (fn.tag != V_GLOBAL || args.tag != V_NODE || s->nodes[args.a].type != N_TUPLE)
                return -1;
            if (fn.a == G_OD) {
                uint32_t idx;
                if (s->nodes[args.a].len != 0 || new_node(s, N_OD, &idx))
                    return -1;
                v = node_val(idx);
                s->objects += 2;
            } else if (fn.a == G_V2) {
                if (rebuild_v2(s, args.a, &v))
                    return -1;
            } else if (fn.a == G_PARAM) {
                if (rebuild_param(s, args.a, &v))
                    return -1;
            } else {
                return -1;
            }
            if (push(s, v))
                return -1;
            break;
        }
        case 'Q':
            if (s->sp <= fence(s) || persistent_load(s, s->stack[s->sp - 1], &v))
                return -1;
            s->stack[s->sp - 1] = v;
            break;
        case 'N': case 0x88: case 0x89:
            v.tag = op == 'N' ? V_NONE : (op == 0x88 ? V_TRUE : V_FALSE);
            v.a = 0;
            v.i = 0;
            if (push(s, v))
                return -1;
            break;
        case 'K': case 'M': case 'J': {
            Py_ssize_t w = op == 'K' ? 1 : (op == 'M' ? 2 : 4);
            if (n - pos < w)
                return -1;
            v.tag = V_INT;
            v.a = 0;
            if (op == 'K')
                v.i = d[pos];
            else if (op == 'M')
                v.i = (int64_t)d[pos] | ((int64_t)d[pos + 1] << 8);
            else
                v.i = (int32_t)rd_u32(d + pos);
            if (v.i < -5 || v.i > 256)
                s->objects++;
            pos += w;
            if (push(s, v))
                return -1;
            break;
        }
        case 0x8a: { /* LONG1, up to 8 bytes */
            if (pos >= n)
                return -1;
            int w = d[pos];
            if (w > 8 || n - pos - 1 < w)
                return -1;
            uint64_t u = 0;
            for (int i = 0; i < w; i++)
                u |= (uint64_t)d[pos + 1 + i] << (8 * i);
            if (w > 0 && w < 8 && (d[pos + w] & 0x80))
                u |= ~(uint64_t)0 << (8 * w);
            v.tag = V_INT;
            v.a = 0;
            memcpy(&v.i, &u, sizeof(u));
            s->objects++;
            pos += 1 + w;
            if (push(s, v))
                return -1;
            break;
        }
        case 'G': {
            if (n - pos < 8)
                return -1;
            uint64_t u = 0;
            for (int i = 0; i < 8; i++)
                u = (u << 8) | d[pos + i];
            v.tag = V_FLOAT;
            v.a = 0;
            memcpy(&v.i, &u, sizeof(u));
            s->objects++;
            pos += 8;
            if (push(s, v))
                return -1;
            break;
        }
        case 'X': {
            if (n - pos < 4)
                return -1;
            uint32_t len = rd_u32(d + pos);
            if (len >= MAX_STR || n - pos - 4 < (Py_ssize_t)len)
                return -1;
            v.tag = V_STR;
            v.a = (uint32_t)(pos + 4);
            v.i = len;
            if (!valid_str(s, v.a, len))
                return -1;
            s->objects++;
            pos += 4 + len;
            if (push(s, v))
                return -1;
            break;
        }
        case 'c': {
            int g = -1;
            for (int i = 0; i < N_GLOBALS; i++) {
                size_t l = strlen(GLOBAL_LINES[i]);
                if ((size_t)(n - pos) >= l && memcmp(d + pos, GLOBAL_LINES[i], l) == 0) {
                    g = i;
                    pos += (Py_ssize_t)l;
                    break;
                }
            }
            if (g >= 0 && s->gobj[g] == Py_Ellipsis) {
                /* first named: resolved now, so a program resolves only what it uses */
                PyObject *gid = s->resolver ? PyLong_FromLong(g) : NULL;
                PyObject *r = gid ? PyObject_CallOneArg(s->resolver, gid) : NULL;
                Py_XDECREF(gid);
                if (r == NULL)
                    return -1; /* no resolver, or it raised: decline */
                Py_SETREF(s->gobj[g], r);
            }
            if (g < 0 || s->gobj[g] == Py_None || s->gobj[g] == Py_Ellipsis)
                return -1; /* not a global the fast path understands, or not allowed */
            if (!s->found[g]) {
                s->found[g] = 1;
                s->order[s->norder++] = g;
            }
            v.tag = V_GLOBAL;
            v.a = (uint32_t)g;
            v.i = 0;
            if (push(s, v))
                return -1;
            break;
        }
        case 'q':
            if (pos >= n || s->sp <= fence(s) || memo_set(s, d[pos], s->stack[s->sp - 1]))
                return -1;
            pos++;
            break;
        case 'r': {
            if (n - pos < 4)
                return -1;
            uint32_t idx = rd_u32(d + pos);
            if (idx >= MAX_LONG_PUT || s->sp <= fence(s) ||
                memo_set(s, idx, s->stack[s->sp - 1]))
                return -1;
            pos += 4;
            break;
        }
        case 'h':
            if (pos >= n || memo_get(s, d[pos]))
                return -1;
            pos++;
            break;
        case 'j':
            if (n - pos < 4 || memo_get(s, rd_u32(d + pos)))
                return -1;
            pos += 4;
            break;
        default:
            return -1; /* outside the grammar */
        }
    }
}

/* ---- after the pass --------------------------------------------------------------------- */

typedef struct {
    uint32_t node, cur;
} Frame;

static inline int is_container(Node *nd) {
    return nd->type == N_TUPLE || nd->type == N_LIST || nd->type == N_DICT ||
           nd->type == N_OD;
}

/* the i-th child of a container (dict: values; key in *key) */
static inline Val child(St *s, Node *nd, uint32_t i, Val *key) {
    if (nd->type == N_TUPLE) {
        if (key) { key->tag = V_INT; key->a = 0; key->i = i; }
        return pool_at(s, nd->aux + i);
    }
    Val *vec = VEC(s, nd);
    if (nd->type == N_LIST) {
        if (key) { key->tag = V_INT; key->a = 0; key->i = i; }
        return vec[i];
    }
    if (key)
        *key = vec[2 * i];
    return vec[2 * i + 1];
}

/* the longest chain of nested containers under the root (MARK nesting and the naming walk
 * are bounded by it); -1 on a cycle or no memory */
static int64_t longest_chain(St *s, Val root) {
    if (root.tag != V_NODE || !is_container(&s->nodes[root.a]))
        return 0;
    Frame *fr = NULL;
    size_t nf = 0, fcap = 0;
    if (grow((void **)&fr, &fcap, 1, sizeof(Frame)))
        return -1;
    fr[nf++] = (Frame){root.a, 0};
    s->nodes[root.a].dstate = 1;
    s->nodes[root.a].depth = 1;
    while (nf) {
        Frame *f = &fr[nf - 1];
        Node *nd = &s->nodes[f->node];
        int pushed = 0;
        while (f->cur < nd->len) {
            Val c = child(s, nd, f->cur, NULL);
            if (c.tag == V_NODE && is_container(&s->nodes[c.a])) {
                Node *cn = &s->nodes[c.a];
                if (cn->dstate == 1) {
                    arr_free(fr);
                    return -1; /* a cycle */
                }
                if (cn->dstate == 0) {
                    cn->dstate = 1;
                    cn->depth = 1;
                    if (grow((void **)&fr, &fcap, nf + 1, sizeof(Frame))) {
                        arr_free(fr);
                        return -1;
                    }
                    fr[nf++] = (Frame){c.a, 0};
                    pushed = 1;
                    break;
                }
                if (cn->depth + 1 > nd->depth)
                    nd->depth = cn->depth + 1;
            }
            f->cur++;
        }
        if (pushed)
            continue;
        nd->dstate = 2;
        nf--;
    }
    arr_free(fr);
    return s->nodes[root.a].depth;
}

typedef struct {
    char *p;
    size_t len, cap;
} Buf;

static int buf_add(Buf *b, const char *p, size_t n) {
    if (grow((void **)&b->p, &b->cap, b->len + n + 1, 1))
        return -1;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

static int key_text(St *s, Buf *b, Val k) {
    if (k.tag == V_STR)
        return buf_add(b, (const char *)s->d + k.a, (size_t)k.i);
    char tmp[32];
    int l = snprintf(tmp, sizeof tmp, "%lld", (long long)k.i);
    return buf_add(b, tmp, (size_t)l);
}

static inline int key_empty(Val k) { return k.tag == V_STR && k.i == 0; }

/* a tensor's storage index and byte count (-1: the shape's product overflows, and the
 * Python path names it) */
static int tensor_nbytes(St *s, TensorC *t, uint32_t *store, int64_t *nbytes) {
    *store = s->nodes[t->storage].aux;
    StorageC *sc = &s->stores[*store];
    Node *sn = &s->nodes[t->size];
    int64_t numel = 1;
    for (uint32_t i = 0; i < sn->len; i++) {
        if (__builtin_mul_overflow(numel, pool_at(s, sn->aux + i).i, &numel))
            return -1;
    }
    if (__builtin_mul_overflow(numel, (int64_t)ST_ITEMSIZE[sc->g], nbytes))
        return -1;
    return 0;
}

/* the report's TensorInfo; its shape and stride are the record's own tuples (so it needs
 * neither the nodes nor the pool: they may be freed by then) */
static PyObject *tensor_info_of(St *s, TensorC *t, uint32_t store, int64_t nbytes,
                                PyObject *name) {
    StorageC *sc = &s->stores[store];
    if (sc->name == NULL) {
        sc->name = PyUnicode_Concat(S_DATA, sc->key);
        if (sc->name == NULL)
            return NULL;
    }
    PyObject *v[12];
    v[0] = name;
    v[1] = S_DTYPE[sc->g];
    v[2] = *(PyObject **)((char *)t->rec + C_RECORD.off[2]);
    v[3] = *(PyObject **)((char *)t->rec + C_RECORD.off[3]);
    Py_XINCREF(v[2]);
    Py_XINCREF(v[3]);
    v[4] = sc->name;
    v[5] = PyLong_FromLongLong(t->offset);
    /* a tensor that spans its storage (most do): its byte count is the record's size */
    if (PyLong_CheckExact(sc->rsize) && PyLong_AsLongLong(sc->rsize) == nbytes) {
        v[6] = sc->rsize;
        Py_INCREF(v[6]);
    } else {
        PyErr_Clear();
        v[6] = PyLong_FromLongLong(nbytes);
    }
    v[7] = sc->rsize;
    v[8] = sc->doff;
    v[9] = sc->loc;
    v[10] = t->rg ? Py_True : Py_False;
    v[11] = Py_None;
    Py_INCREF(v[0]); Py_INCREF(v[1]); Py_INCREF(v[4]); Py_INCREF(v[7]);
    Py_INCREF(v[8]); Py_INCREF(v[9]); Py_INCREF(v[10]); Py_INCREF(v[11]);
    if (v[2] == NULL || v[3] == NULL || v[5] == NULL || v[6] == NULL) {
        for (int i = 0; i < 12; i++)
            Py_XDECREF(v[i]);
        return NULL;
    }
    return slot_new(&C_INFO, v);
}

static PyObject *tensor_info(St *s, TensorC *t, PyObject *name) {
    uint32_t store;
    int64_t nbytes;
    if (tensor_nbytes(s, t, &store, &nbytes))
        return NULL;
    return tensor_info_of(s, t, store, nbytes, name);
}

/* a tensor named by the walk, its Python objects not built yet (see name_tensors) */
typedef struct {
    uint32_t t, store;
    size_t off, len;   /* its name: UTF-8 bytes in the names buffer */
    int64_t nbytes;
} Named;

/* the arrays only the graph needs (nodes, values pool, containers): freed once the names
 * are known in a scan, before the Python records are built */
static void free_vecs(St *s) {
    for (size_t i = 0; i < s->nv; i++)
        arr_free(s->vecs[i].vec);
    arr_free(s->vecs);
    s->vecs = NULL;
    s->nv = s->vcap = 0;
}

static void free_graph(St *s) {
    for (size_t i = 0; i < s->nn; i++)
        Py_CLEAR(s->nodes[i].obj);
    free_vecs(s);
    arr_free(s->nodes);
    arr_free(s->pool);
    arr_free(s->mbig);
    s->nodes = NULL;
    s->pool = NULL;
    s->mbig = NULL;
    s->nn = s->ncap = s->plen = s->pcap = s->nbig = s->bigcap = 0;
}

/* the deferred names and records, built after free_graph */
static int emit_named(St *s, const Named *nm, size_t count, const char *text,
                      PyObject *names, PyObject *infos) {
    Py_ssize_t chars = 0;
    for (size_t i = 0; i < count; i++) {
        TensorC *t = &s->tensors[nm[i].t];
        PyObject *name = PyUnicode_DecodeUTF8(nm[i].len ? text + nm[i].off : "",
                                              (Py_ssize_t)nm[i].len, "surrogatepass");
        if (name == NULL)
            return -1;
        chars += PyUnicode_GET_LENGTH(name);
        if (chars > MAX_NAME_CHARS) {
            Py_DECREF(name);
            return -1;
        }
        PyObject *pair = PyTuple_Pack(2, name, t->rec);
        if (pair != NULL)
            PyObject_GC_UnTrack(pair);
        int bad = pair == NULL || PyList_Append(names, pair) < 0;
        Py_XDECREF(pair);
        if (!bad && infos != NULL) {
            PyObject *info = tensor_info_of(s, t, nm[i].store, nm[i].nbytes, name);
            bad = info == NULL || PyList_Append(infos, info) < 0;
            Py_XDECREF(info);
        }
        Py_DECREF(name);
        if (bad)
            return -1;
    }
    return 0;
}

/* one named tensor: (name, record) onto ``names`` and, when the report's records are
 * built here (``infos``), its TensorInfo; 0, or -1 with a Python error set */
static int append_named(St *s, TensorC *t, PyObject *name, PyObject *names, PyObject *infos) {
    PyObject *pair = PyTuple_Pack(2, name, t->rec);
    if (pair != NULL)
        PyObject_GC_UnTrack(pair);
    int bad = pair == NULL || PyList_Append(names, pair) < 0;
    Py_XDECREF(pair);
    if (!bad && infos != NULL) {
        PyObject *info = tensor_info(s, t, name);
        bad = info == NULL || PyList_Append(infos, info) < 0;
        Py_XDECREF(info);
    }
    return bad ? -1 : 0;
}

/* name every tensor by its key path, exactly as analysis.tensors.name_tensors walks the
 * fast path's graph; appends (name, record) to names and TensorInfo to infos */
static int name_tensors(St *s, Val root, PyObject *names, PyObject *infos, int defer) {
    Frame *fr = NULL;
    Val *path = NULL;
    size_t nf = 0, fcap = 0, np = 0, pcap = 0;
    Buf b = {0};
    Named *nm = NULL;  /* defer: the names found, built into objects after free_graph */
    size_t nnm = 0, nmcap = 0;
    if (defer && (root.tag != V_NODE || !is_container(&s->nodes[root.a]))) {
        /* nothing to walk: the records now, and the plain way */
        if (make_storages(s) || make_records(s))
            return -1;
        defer = 0;
    }
    Py_ssize_t chars = 0, count = 0;
    int64_t work = 0;
    int rc = -1;
    if (root.tag != V_NODE)
        return 0;
    Node *rn = &s->nodes[root.a];
    if (rn->type == N_TENSOR) {
        /* the root itself: named "" */
        TensorC *t = &s->tensors[rn->aux];
        PyObject *name = PyUnicode_FromStringAndSize("", 0);
        if (name == NULL)
            return -1;
        int bad = append_named(s, t, name, names, infos);
        Py_DECREF(name);
        return bad;
    }
    if (!is_container(rn))
        return 0;
    if (grow((void **)&fr, &fcap, 1, sizeof(Frame)))
        goto done;
    rn->flags |= F_VISITED;
    fr[nf++] = (Frame){root.a, 0};
    while (nf) {
        Frame *f = &fr[nf - 1];
        Node *nd = &s->nodes[f->node];
        Val key, c = {0, 0, 0};
        int got = 0;
        while (f->cur < nd->len) {
            c = child(s, nd, f->cur, &key);
            f->cur++;
            if (c.tag == V_NODE &&
                (s->nodes[c.a].type == N_TENSOR || is_container(&s->nodes[c.a]))) {
                got = 1;
                break;
            }
        }
        if (!got) {
            nf--;
            if (np)
                np--;
            continue;
        }
        Node *cn = &s->nodes[c.a];
        if (cn->type == N_TENSOR) {
            TensorC *t = &s->tensors[cn->aux];
            size_t start = defer ? b.len : 0;
            b.len = start;
            int started = 0;
            work += (int64_t)np + 1;
            if (work > MAX_NAME_CHARS)
                goto done;
            for (size_t i = 0; i <= np; i++) {
                Val k = i < np ? path[i] : key;
                if (!started && key_empty(k))
                    continue;
                if (started && buf_add(&b, ".", 1))
                    goto done;
                if (key_text(s, &b, k))
                    goto done;
                started = 1;
            }
            if (defer) {
                /* b holds every name so far, back to back: the name is its tail */
                uint32_t store;
                int64_t nbytes;
                count++;
                if (count > s->max_tensors || b.len > 4 * (size_t)MAX_NAME_CHARS ||
                    tensor_nbytes(s, t, &store, &nbytes) ||
                    grow((void **)&nm, &nmcap, nnm + 1, sizeof(Named)))
                    goto done;
                nm[nnm++] = (Named){cn->aux, store, start, b.len - start, nbytes};
                continue;
            }
            PyObject *name = PyUnicode_DecodeUTF8(b.p ? b.p : "", (Py_ssize_t)b.len,
                                                  "surrogatepass");
            if (name == NULL)
                goto done;
            chars += PyUnicode_GET_LENGTH(name);
            count++;
            if (chars > MAX_NAME_CHARS || count > s->max_tensors) {
                Py_DECREF(name);
                goto done;
            }
            int bad = append_named(s, t, name, names, infos);
            Py_DECREF(name);
            if (bad)
                goto done;
            continue;
        }
        if ((cn->flags & F_VISITED) || cn->len == 0)
            continue;
        if ((int64_t)nf >= s->max_mark)
            goto done; /* name_tensors' max_depth: a limit, the VM reports it */
        cn->flags |= F_VISITED;
        if (grow((void **)&path, &pcap, np + 1, sizeof(Val)) ||
            grow((void **)&fr, &fcap, nf + 1, sizeof(Frame)))
            goto done;
        path[np++] = key;
        fr[nf++] = (Frame){c.a, 0};
    }
    if (defer) {
        arr_free(fr);
        arr_free(path);
        fr = NULL;
        path = NULL;
        /* the containers served the walk only; the records need the nodes and the pool
         * (their shape tuples), the names nothing of the graph */
        free_vecs(s);
        if (make_storages(s) || make_records(s))
            goto done;
        free_graph(s);
        if (emit_named(s, nm, nnm, b.p, names, infos))
            goto done;
    }
    rc = 0;
done:
    arr_free(fr);
    arr_free(path);
    arr_free(b.p);
    arr_free(nm);
    return rc;
}

/* the graph the Python fast path leaves, for engine="ckptguard" */
static PyObject *val_obj(St *s, Val v) {
    switch (v.tag) {
    case V_NONE: Py_RETURN_NONE;
    case V_TRUE: Py_RETURN_TRUE;
    case V_FALSE: Py_RETURN_FALSE;
    case V_INT: return PyLong_FromLongLong(v.i);
    case V_FLOAT: {
        double f;
        memcpy(&f, &v.i, sizeof f);
        return PyFloat_FromDouble(f);
    }
    case V_STR: return str_of(s, v.a, v.i);
    case V_GLOBAL: /* a storage class inside a persistent id (no longer reachable) */
        Py_INCREF(s->gobj[v.a]);
        return s->gobj[v.a];
    case V_NODE: {
        Node *nd = &s->nodes[v.a];
        PyObject *o = nd->type == N_STORAGE ? s->stores[nd->aux].ref : nd->obj;
        if (o == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "node not built");
            return NULL;
        }
        Py_INCREF(o);
        return o;
    }
    default:
        PyErr_SetString(PyExc_RuntimeError, "value outside the graph");
        return NULL;
    }
}

/* mark the nodes the root reaches (items, values, OrderedDict state, a tensor's
 * arguments): only those are built (a persistent id's tuple, say, is not) */
static int mark_reachable(St *s, Val root, int follow_args) {
    if (root.tag != V_NODE)
        return 0;
    uint32_t *todo = NULL;
    size_t nt = 0, cap = 0;
    if (grow((void **)&todo, &cap, 1, sizeof(uint32_t)))
        return -1;
    todo[nt++] = root.a;
    s->nodes[root.a].flags |= F_REACH;
    while (nt) {
        Node *nd = &s->nodes[todo[--nt]];
        Val extra[2];
        int ne = 0;
        if (nd->type == N_TENSOR && follow_args)
            extra[ne++] = node_val(s->tensors[nd->aux].args);
        else if (nd->type == N_OD && STATE(s, nd).tag == V_NODE)
            extra[ne++] = STATE(s, nd);
        uint32_t len = is_container(nd) ? nd->len : 0;
        for (uint32_t i = 0; i < len + (uint32_t)ne; i++) {
            Val c = i < len ? child(s, nd, i, NULL) : extra[i - len];
            if (c.tag != V_NODE || (s->nodes[c.a].flags & F_REACH))
                continue;
            s->nodes[c.a].flags |= F_REACH;
            if (grow((void **)&todo, &cap, nt + 1, sizeof(uint32_t))) {
                arr_free(todo);
                return -1;
            }
            todo[nt++] = c.a; /* (todo may move; the nodes do not) */
        }
    }
    arr_free(todo);
    return 0;
}

/* Fill a reachable list, dict or OrderedDict node's object with its items, in order:
 * PyDict_SetItem for the graph's Fast* dicts (exact dict subclasses of ours), the generic
 * PyObject_SetItem for the loaded object (a real OrderedDict). 0, or -1 with an exception. */
static int fill_items(St *s, Node *nd, int generic) {
    if (nd->type == N_LIST) {
        for (uint32_t j = 0; j < nd->len; j++) {
            PyObject *x = val_obj(s, VEC(s, nd)[j]);
            int bad = x == NULL || PyList_Append(nd->obj, x) < 0;
            Py_XDECREF(x);
            if (bad)
                return -1;
        }
    } else if (nd->type == N_DICT || nd->type == N_OD) {
        for (uint32_t j = 0; j < nd->len; j++) {
            PyObject *k = val_obj(s, VEC(s, nd)[2 * j]);
            PyObject *x = k ? val_obj(s, VEC(s, nd)[2 * j + 1]) : NULL;
            int bad = x == NULL || (generic ? PyObject_SetItem(nd->obj, k, x)
                                            : PyDict_SetItem(nd->obj, k, x)) < 0;
            Py_XDECREF(k);
            Py_XDECREF(x);
            if (bad)
                return -1;
        }
    }
    return 0;
}

static int build_graph(St *s, Val root) {
    if (mark_reachable(s, root, 1))
        return -1;
    /* 1: every object the root reaches, in creation order (a tuple's items and a tensor's
     * arguments are older than it); containers empty */
    for (size_t i = 0; i < s->nn; i++) {
        Node *nd = &s->nodes[i];
        if (nd->obj != NULL || nd->type == N_STORAGE || !(nd->flags & F_REACH))
            continue;
        switch (nd->type) {
        case N_TUPLE: {
            PyObject *t = PyTuple_New(nd->len);
            if (t == NULL)
                return -1;
            for (uint32_t j = 0; j < nd->len; j++) {
                PyObject *x = val_obj(s, pool_at(s, nd->aux + j));
                if (x == NULL) {
                    Py_DECREF(t);
                    return -1;
                }
                PyTuple_SET_ITEM(t, j, x);
            }
            s->nodes[i].obj = t;
            break;
        }
        case N_LIST: nd->obj = PyObject_CallNoArgs(T_FASTLIST); break;
        case N_DICT: nd->obj = PyObject_CallNoArgs(T_FASTDICT); break;
        case N_OD: {
            /* dict's own constructor, then the two slots FastOrderedDict.__init__ sets
             * (state None, hooks False): no Python call per OrderedDict (one per tensor) */
            PyObject *o = PyDict_Type.tp_new(C_FASTOD.type, EMPTY_ARGS, NULL);
            if (o != NULL) {
                Py_INCREF(Py_None);
                Py_INCREF(Py_False);
                Py_XSETREF(*(PyObject **)((char *)o + C_FASTOD.off[0]), Py_None);
                Py_XSETREF(*(PyObject **)((char *)o + C_FASTOD.off[1]), Py_False);
            }
            nd->obj = o;
            break;
        }
        case N_TENSOR: {
            TensorC *t = &s->tensors[nd->aux];
            PyObject *v[3];
            v[0] = s->gobj[t->param ? G_PARAM : G_V2];
            Py_INCREF(v[0]);
            v[1] = s->nodes[t->args].obj;
            Py_XINCREF(v[1]);
            v[2] = t->rec;
            Py_INCREF(v[2]);
            if (v[1] == NULL) {
                Py_DECREF(v[0]);
                Py_DECREF(v[2]);
                return -1;
            }
            s->nodes[i].obj = slot_new(&C_FTENSOR, v);
            break;
        }
        default:
            return -1;
        }
        if (s->nodes[i].obj == NULL)
            return -1;
    }
    /* 2: fill the containers, set the OrderedDicts' state and hooks marks */
    for (size_t i = 0; i < s->nn; i++) {
        Node *nd = &s->nodes[i];
        if (!(nd->flags & F_REACH))
            continue;
        if (fill_items(s, nd, 0) < 0)
            return -1;
        if (nd->type == N_OD) {
            if (STATE(s, nd).tag != V_UNSET) {
                PyObject *st = val_obj(s, STATE(s, nd));
                if (st == NULL)
                    return -1;
                Py_XSETREF(*(PyObject **)((char *)nd->obj + C_FASTOD.off[0]), st);
            }
            if (nd->flags & F_HOOKS) {
                Py_INCREF(Py_True);
                Py_XSETREF(*(PyObject **)((char *)nd->obj + C_FASTOD.off[1]), Py_True);
            }
        }
    }
    return 0;
}

/* loaders/direct._meta_maker's make(rec), line for line, for a maker given as the tuple
 * (torch.empty_strided, torch.UntypedStorage, torch.device("meta"), {dtype name: torch
 * dtype}, torch.nn.Parameter, fresh list or None): what torch.load(map_location="meta")
 * makes of the record (see there). A new reference, or NULL with an exception set. */
static PyObject *meta_make(PyObject *spec, PyObject *rec, PyObject *od_type) {
    if (PyTuple_GET_SIZE(spec) != 6 || Py_TYPE(rec) != C_RECORD.type) {
        PyErr_SetString(PyExc_TypeError, "meta maker");
        return NULL;
    }
    PyObject *es = PyTuple_GET_ITEM(spec, 0), *untyped = PyTuple_GET_ITEM(spec, 1),
             *meta = PyTuple_GET_ITEM(spec, 2), *dtypes = PyTuple_GET_ITEM(spec, 3),
             *parameter = PyTuple_GET_ITEM(spec, 4), *fresh = PyTuple_GET_ITEM(spec, 5);
#define RSLOT(i) (*(PyObject **)((char *)rec + C_RECORD.off[i]))
    PyObject *st = RSLOT(0), *offset = RSLOT(1), *shape = RSLOT(2), *stride = RSLOT(3),
             *dtname = RSLOT(4), *rg = RSLOT(5), *kind = RSLOT(7);
#undef RSLOT
    if (st == NULL || Py_TYPE(st) != C_STORAGE.type || offset == NULL || shape == NULL ||
        stride == NULL || dtname == NULL || rg == NULL || kind == NULL ||
        !PyDict_Check(dtypes)) {
        PyErr_SetString(PyExc_TypeError, "meta maker: record");
        return NULL;
    }
#define SSLOT(i) (*(PyObject **)((char *)st + C_STORAGE.off[i]))
    PyObject *numel = SSLOT(3), *itemsize = SSLOT(2), *doff = SSLOT(7);
#undef SSLOT
    if (numel == NULL || itemsize == NULL || doff == NULL) {
        PyErr_SetString(PyExc_TypeError, "meta maker: storage");
        return NULL;
    }
    PyObject *dt = PyDict_GetItemWithError(dtypes, dtname); /* borrowed */
    if (dt == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_KeyError, "meta maker: dtype");
        return NULL;
    }
    PyObject *sto = NULL, *nbytes = NULL;
    PyObject *a[5] = {NULL, shape, stride, dt, meta};
    PyObject *t = PyObject_Vectorcall(es, a + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                      KW_DTYPE_DEVICE);
    if (t == NULL)
        return NULL;
    sto = PyObject_CallMethodNoArgs(t, S_UNTYPED_STORAGE);
    nbytes = PyNumber_Multiply(numel, itemsize);
    if (sto == NULL || nbytes == NULL)
        goto fail;
    int plain = fresh != Py_None && PyLong_CheckExact(offset) && PyLong_AsLongLong(offset) == 0;
    if (PyErr_Occurred())
        goto fail;
    if (plain) {
        PyObject *nb = PyObject_CallMethodNoArgs(sto, S_NBYTES);
        if (nb == NULL)
            goto fail;
        plain = PyObject_RichCompareBool(nb, nbytes, Py_EQ);
        Py_DECREF(nb);
        if (plain < 0)
            goto fail;
    }
    if (plain) {
        if (PyList_Append(fresh, t) < 0)
            goto fail;
    } else {
        PyObject *b[3] = {NULL, nbytes, meta};
        Py_SETREF(sto, PyObject_Vectorcall(untyped, b + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                           KW_DEVICE));
        if (sto == NULL)
            goto fail;
        PyObject *c[5] = {t, sto, offset, shape, stride};
        PyObject *r = PyObject_VectorcallMethod(S_SET_, c, 5, NULL);
        if (r == NULL)
            goto fail;
        Py_DECREF(r);
    }
    if (PyObject_SetAttr(sto, S_CKPT_OFFSET, doff) < 0)
        goto fail;
    Py_CLEAR(sto);
    Py_CLEAR(nbytes);
    /* the rest of torch._utils._rebuild_tensor_v2 / _rebuild_parameter */
    if (kind == S_TENSOR || PyUnicode_Compare(kind, S_TENSOR) == 0) {
        int on = PyObject_IsTrue(rg);
        if (on < 0 || (on && PyObject_SetAttr(t, S_REQUIRES_GRAD, Py_True) < 0))
            goto fail;
    } else if (!PyErr_Occurred() && PyUnicode_Compare(kind, S_PARAMETER) == 0) {
        PyObject *p[3] = {NULL, t, rg};
        Py_SETREF(t, PyObject_Vectorcall(parameter, p + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                         NULL));
        if (t == NULL)
            goto fail;
    } else {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "meta maker: kind");
        goto fail;
    }
    PyObject *hooks = PyObject_CallNoArgs(od_type);
    if (hooks == NULL)
        goto fail;
    int bad = PyObject_SetAttr(t, S_BACKWARD_HOOKS, hooks) < 0;
    Py_DECREF(hooks);
    if (bad)
        goto fail;
    return t;
fail:
    Py_XDECREF(sto);
    Py_XDECREF(nbytes);
    Py_XDECREF(t);
    return NULL;
}

/* The loaded object itself (scan's ``maker``: meta loads, loaders/direct.py), built as
 * direct._build builds it from the graph above: what the root reaches through container
 * items and OrderedDict state (not a rebuild's arguments), dict / list / tuple /
 * OrderedDict (its state applied by __dict__.update), scalars, maker(TensorRecord) per
 * tensor node; shared nodes stay shared. -1 with an exception set on any failure. */
static int build_final(St *s, Val root, PyObject *maker, PyObject *od_type) {
    if (mark_reachable(s, root, 0))
        return -1;
    for (size_t i = 0; i < s->nn; i++) {
        Node *nd = &s->nodes[i];
        if (nd->obj != NULL || !(nd->flags & F_REACH))
            continue;
        PyObject *o;
        switch (nd->type) {
        case N_TUPLE:
            o = PyTuple_New(nd->len);
            for (uint32_t j = 0; o != NULL && j < nd->len; j++) {
                PyObject *x = val_obj(s, pool_at(s, nd->aux + j));
                if (x == NULL)
                    Py_CLEAR(o);
                else
                    PyTuple_SET_ITEM(o, j, x);
            }
            break;
        case N_LIST: o = PyList_New(0); break;
        case N_DICT: o = PyDict_New(); break;
        case N_OD: o = PyObject_CallNoArgs(od_type); break;
        case N_TENSOR: {
            PyObject *rec = s->tensors[nd->aux].rec;
            o = rec == NULL ? NULL : PyTuple_Check(maker) ? meta_make(maker, rec, od_type)
                                                        : PyObject_CallOneArg(maker, rec);
            break;
        }
        default: /* a storage reached as a value: the scan declines those */
            PyErr_SetString(PyExc_RuntimeError, "unexpected node");
            o = NULL;
        }
        if (o == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "node not built");
            return -1;
        }
        nd->obj = o;
    }
    for (size_t i = 0; i < s->nn; i++) {
        Node *nd = &s->nodes[i];
        if (!(nd->flags & F_REACH))
            continue;
        if (fill_items(s, nd, 1) < 0)
            return -1;
    }
    /* then the OrderedDicts' state (torch's weights-only BUILD: __dict__.update(state)),
     * once every container it may hold is filled */
    for (size_t i = 0; i < s->nn; i++) {
        Node *nd = &s->nodes[i];
        if (!(nd->flags & F_REACH) || nd->type != N_OD || STATE(s, nd).tag == V_UNSET)
            continue;
        PyObject *st = val_obj(s, STATE(s, nd));
        PyObject *d = st ? PyObject_GetAttrString(nd->obj, "__dict__") : NULL;
        int bad = d == NULL || !PyDict_Check(st) || PyDict_Update(d, st) < 0;
        Py_XDECREF(st);
        Py_XDECREF(d);
        if (bad) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "OrderedDict state");
            return -1;
        }
    }
    return 0;
}

static void st_free_run(St *s) {
    arr_free(s->stack);
    arr_free(s->marks);
    arr_free(s->memo);
    arr_free(s->ht);
    s->stack = NULL;
    s->marks = NULL;
    s->memo = NULL;
    s->ht = NULL;
    s->sp = s->scap = s->nmarks = s->mcap = s->memocap = s->memolen = s->htcap = 0;
    s->htlen = 0;
}

static void st_free(St *s) {
    for (size_t i = 0; i < s->nn; i++)
        Py_XDECREF(s->nodes[i].obj);
    for (size_t i = 0; i < s->nv; i++)
        arr_free(s->vecs[i].vec);
    arr_free(s->vecs);
    for (size_t i = 0; i < s->nt; i++)
        Py_XDECREF(s->tensors[i].rec);
    for (size_t i = 0; i < s->ns; i++) {
        if (s->stores[i].ref == NULL) { /* pending (see make_storages) */
            Py_XDECREF(s->stores[i].key);
            Py_XDECREF(s->stores[i].loc);
        }
        Py_XDECREF(s->stores[i].ref);
        Py_XDECREF(s->stores[i].name);
    }
    arr_free(s->nodes);
    arr_free(s->tensors);
    arr_free(s->stores);
    st_free_run(s);
    arr_free(s->pool);
    arr_free(s->mbig);
    Py_XDECREF(s->loc_last);
    Py_CLEAR(s->shapes);
    for (int i = 0; i < N_GLOBALS; i++)
        Py_CLEAR(s->gobj[i]);
}

/* ---- module functions ------------------------------------------------------------------- */

static PyObject *pc_scan(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *records, *gobjs, *limits, *maker = Py_None, *od_type = Py_None;
    PyObject *resolver = Py_None;
    int keep_graph, want_infos;
    (void)self;
    if (C_RECORD.type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "picklecore.init() was not called");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*O!O!O!pp|OOO", &buf, &PyDict_Type, &records, &PyTuple_Type,
                          &gobjs, &PyTuple_Type, &limits, &keep_graph, &want_infos, &maker,
                          &od_type, &resolver))
        return NULL;
    int final = keep_graph && maker != Py_None;
    St st;
    memset(&st, 0, sizeof st);
    St *s = &st;
    PyObject *result = NULL, *names = NULL, *infos = NULL, *order = NULL, *root = NULL;
    long long lim[7];
    if (PyTuple_GET_SIZE(gobjs) != N_GLOBALS || PyTuple_GET_SIZE(limits) != 7) {
        PyErr_SetString(PyExc_ValueError, "bad arguments");
        PyBuffer_Release(&buf);
        return NULL;
    }
    for (int i = 0; i < 7; i++) {
        lim[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(limits, i));
        if (lim[i] == -1 && PyErr_Occurred()) {
            PyBuffer_Release(&buf);
            return NULL;
        }
    }
    for (int i = 0; i < N_GLOBALS; i++)
        s->gobj[i] = Py_NewRef(PyTuple_GET_ITEM(gobjs, i));
    s->resolver = resolver == Py_None ? NULL : resolver;
    s->d = buf.buf;
    s->n = buf.len;
    s->max_stack = lim[0];
    s->max_items = lim[1];
    s->max_memo = lim[2];
    s->max_mark = lim[3];
    s->max_tensors = lim[4];
    s->max_objects = lim[5];
    int64_t max_memo_index = lim[6];
    s->keep_graph = keep_graph;
    s->records = records;
    s->work_budget = 8 * (int64_t)s->n + 1024;
    s->probe_budget = 8 * (int64_t)s->n + 100000;
    s->seed = ht_seed;
    s->seq_keys = 1;
    const unsigned char *d = s->d;
    Py_ssize_t n = s->n;
    uint32_t e;
    int gc_was = 0;
    if (n < 4 || n >= ((Py_ssize_t)1 << 31) || d[0] != 0x80 || (d[1] != 2 && d[1] != 3) ||
        d[n - 1] != '.' || max_memo_index < (int64_t)MAX_LONG_PUT)
        goto decline;
#ifdef PC_TIMING
    double t0 = pc_now();
#endif
    /* everything built here is acyclic: the collector would only re-walk it */
    gc_was = PyGC_Disable();
    /* at most one storage per record, and each costs a persistent id of 16+ bytes: sized
     * once, never resized while filled */
#if PY_VERSION_HEX < 0x030D0000
    Py_ssize_t nrec = PyDict_GET_SIZE(records);
    s->seen = _PyDict_NewPresized(nrec < n / 16 + 8 ? nrec : n / 16 + 8);
#else
    s->seen = PyDict_New();
#endif
    /* (a kept graph shares objects exactly as the Python path's: no sharing added there) */
    /* (and a built meta load's records, which only the maker reads: see int_tuple) */
    s->shapes = keep_graph && !final ? NULL : PyDict_New();
    if (s->seen == NULL || ((!keep_graph || final) && s->shapes == NULL) ||
        new_node(s, N_TUPLE, &e))
        goto decline;
    if (run(s))
        goto decline;
    TMARK("run");
#ifdef PC_TIMING
    fprintf(stderr, "nodes %zu pool %zu memocap %zu vecs %zu ht %zu tensors %zu stores %zu ops %lld scap %zu\n", s->nn, s->plen, s->memocap, s->nv, s->htcap, s->nt, s->ns, (long long)s->n_ops, s->scap);
#endif
    /* the bounds the VM enforces, met for certain (else the VM decides) */
    if (s->n_ops > s->max_stack || s->n_ops > s->max_items || s->items > s->max_items ||
        s->n_puts > s->max_memo || 2 * s->objects > s->max_objects)
        goto decline;
    Val rootv = s->stack[0];
    /* the memo, the stack, the MARK stack and the key table serve run() only: freed before
     * the Python objects are built (they would add to the peak) */
    st_free_run(s);
    if (!storable(s, rootv))
        goto decline;
    /* an OrderedDict's state may have been filled in after BUILD checked it */
    for (size_t i = 0; i < s->nn; i++) {
        if (s->nodes[i].type == N_OD && STATE(s, &s->nodes[i]).tag != V_UNSET &&
            plain_meta(s, STATE(s, &s->nodes[i]).a, 4) != 1)
            goto decline;
    }
    int64_t depth = longest_chain(s, rootv);
    if (depth < 0 || depth + 5 > s->max_mark)
        goto decline;
    TMARK("checks");
    /* a built load: what the object reaches is marked before the records share shapes
     * (if that fails, no sharing, and build_final marks from scratch: the proof stands) */
    if (final && mark_reachable(s, rootv, 0)) {
        PyErr_Clear();
        Py_CLEAR(s->shapes);
        for (size_t i = 0; i < s->nn; i++)
            s->nodes[i].flags &= (uint8_t)~F_REACH;
    }
    /* a scan (no graph kept) makes them inside name_tensors, after its walk */
    if (keep_graph && (make_storages(s) || make_records(s)))
        goto decline;
    names = PyList_New(0);
    infos = want_infos && C_INFO.type != NULL ? PyList_New(0) : NULL;
    if (names == NULL || (want_infos && C_INFO.type != NULL && infos == NULL))
        goto decline;
    /* a scan keeps no graph: the names are collected first, the graph arrays freed, and
     * only then the Python records built (a lower peak) */
    if (name_tensors(s, rootv, names, infos, !keep_graph))
        goto decline;
    TMARK("names");
    if (final) {
        /* a built load hands out the object, not the report: without its rows the names
         * served the walk's bounds only, and are freed before the tensors are built
         * (their memory is the tensors' first) */
        if (!want_infos && PyList_SetSlice(names, 0, PyList_GET_SIZE(names), NULL) < 0)
            goto decline;
        /* the loaded object (or, when the maker or anything else fails, None: the proof
         * stands, and the loader falls back to torch.load) */
        if (build_final(s, rootv, maker, od_type) == 0)
            root = val_obj(s, rootv);
        if (root == NULL) {
            PyErr_Clear();
            root = Py_NewRef(Py_None);
        } else {
            PyObject *box = PyTuple_Pack(1, root);
            Py_SETREF(root, box);
            if (root == NULL)
                goto decline;
        }
    } else if (keep_graph) {
        if (build_graph(s, rootv))
            goto decline;
        root = val_obj(s, rootv);
        if (root == NULL)
            goto decline;
    } else {
        root = Py_None;
        Py_INCREF(root);
    }
    order = PyTuple_New(s->norder);
    if (order == NULL)
        goto decline;
    for (int i = 0; i < s->norder; i++) {
        PyObject *x = PyLong_FromLong(s->order[i]);
        if (x == NULL)
            goto decline;
        PyTuple_SET_ITEM(order, i, x);
    }
    result = Py_BuildValue("(NNNON)", order, names, infos ? infos : Py_NewRef(Py_None),
                           s->seen, root);
    order = names = infos = root = NULL;
    if (result == NULL)
        goto decline;
    Py_CLEAR(s->seen);
    st_free(s);
    TMARK("free");
    if (gc_was)
        PyGC_Enable();
    PyBuffer_Release(&buf);
    return result;
decline:
    PyErr_Clear();
    Py_XDECREF(order);
    Py_XDECREF(names);
    Py_XDECREF(infos);
    Py_XDECREF(root);
    Py_XDECREF(s->seen);
    st_free(s);
    if (gc_was)
        PyGC_Enable();
    PyBuffer_Release(&buf);
    Py_RETURN_NONE;
}

/* split_records(entries, prefix, ZipEntry) -> (records, catalog, outside, kept) | None
 *
 * torchfile.audit_zip's member split and _torch_zip's catalog loop in one C pass, for an
 * archive the zip prover accepted with no capital in any name (so ASCII lower-casing is
 * the identity): for each entry (in order) whose name starts with prefix, rel = the rest;
 * rel "data/<key>" (key not empty) goes to catalog[key] = (name, data_offset, size), any
 * other rel to records[rel] = entry; entries outside the prefix go to outside; kept: the
 * entries that are not in the catalog, in order. None (the
 * Python loops run instead) for anything else: an object that is not exactly a ZipEntry
 * with str name and int fields, a compressed tensor record (CKG305), a repeated rel or
 * key (records.setdefault would keep the first). */
static PyObject *pc_split_records(PyObject *self, PyObject *args) {
    PyObject *entries, *prefix, *cls;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!UO!", &PyList_Type, &entries, &prefix, &PyType_Type, &cls))
        return NULL;
    static const char *const names[] = {"name", "data_offset", "size", "method"};
    SlotClass sc;
    memset(&sc, 0, sizeof sc);
    if (slot_class(&sc, cls, names, 4))
        return NULL;
    PyTypeObject *type = sc.type; /* a new reference (slot_class) */
    PyObject *records = PyDict_New(), *catalog = NULL, *outside = PyList_New(0);
    PyObject *kept = PyList_New(0), *result = NULL;
    Py_ssize_t n = PyList_GET_SIZE(entries), plen = PyUnicode_GET_LENGTH(prefix);
#if PY_VERSION_HEX < 0x030D0000
    catalog = _PyDict_NewPresized(n);
#else
    catalog = PyDict_New();
#endif
    if (records == NULL || catalog == NULL || outside == NULL || kept == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PyList_GET_ITEM(entries, i);
        if (Py_TYPE(e) != type)
            goto decline;
        PyObject *name = *(PyObject **)((char *)e + sc.off[0]);
        PyObject *doff = *(PyObject **)((char *)e + sc.off[1]);
        PyObject *size = *(PyObject **)((char *)e + sc.off[2]);
        PyObject *method = *(PyObject **)((char *)e + sc.off[3]);
        if (name == NULL || !PyUnicode_CheckExact(name) || doff == NULL ||
            !PyLong_CheckExact(doff) || size == NULL || !PyLong_CheckExact(size) ||
            method == NULL || !PyLong_CheckExact(method))
            goto decline;
        Py_ssize_t len = PyUnicode_GET_LENGTH(name);
        Py_ssize_t m = PyUnicode_Tailmatch(name, prefix, 0, PY_SSIZE_T_MAX, -1);
        if (m < 0)
            goto done;
        if (!m) {
            if (PyList_Append(outside, e) < 0 || PyList_Append(kept, e) < 0)
                goto done;
            continue;
        }
        int is_data = len - plen > 5 &&
                      PyUnicode_READ_CHAR(name, plen) == 'd' &&
                      PyUnicode_READ_CHAR(name, plen + 1) == 'a' &&
                      PyUnicode_READ_CHAR(name, plen + 2) == 't' &&
                      PyUnicode_READ_CHAR(name, plen + 3) == 'a' &&
                      PyUnicode_READ_CHAR(name, plen + 4) == '/';
        PyObject *key = PyUnicode_Substring(name, is_data ? plen + 5 : plen, len);
        if (key == NULL)
            goto done;
        PyObject *target = is_data ? catalog : records;
        int has = PyDict_Contains(target, key);
        if (has) {
            Py_DECREF(key);
            if (has < 0)
                goto done;
            goto decline; /* repeated: the Python loop keeps the first */
        }
        PyObject *val;
        if (is_data) {
            int stored = PyLong_AsLong(method) == 0;
            if (!stored) {
                Py_DECREF(key);
                PyErr_Clear();
                goto decline; /* compressed tensor record: CKG305 from the Python loop */
            }
            val = PyTuple_Pack(3, name, doff, size);
        } else {
            val = Py_NewRef(e);
            if (PyList_Append(kept, e) < 0) {
                Py_DECREF(key);
                Py_DECREF(val);
                goto done;
            }
        }
        int bad = val == NULL || PyDict_SetItem(target, key, val) < 0;
        Py_DECREF(key);
        Py_XDECREF(val);
        if (bad)
            goto done;
    }
    result = PyTuple_Pack(4, records, catalog, outside, kept);
    goto done;
decline:
    PyErr_Clear();
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(records);
    Py_XDECREF(catalog);
    Py_XDECREF(outside);
    Py_XDECREF(kept);
    Py_DECREF(type);
    return result;
}

static const char *const STORAGE_FIELDS[] = {"key", "dtype", "itemsize", "numel", "location",
                                             "offset", "member", "data_offset", "record_size"};
static const char *const RECORD_FIELDS[] = {"storage", "storage_offset", "shape", "stride",
                                            "dtype", "requires_grad", "offset", "kind"};
static const char *const INFO_FIELDS[] = {"name", "dtype", "shape", "stride", "storage",
                                          "storage_offset", "nbytes", "storage_nbytes",
                                          "data_offset", "device", "requires_grad", "file"};
static const char *const FTENSOR_FIELDS[] = {"func", "args", "tensor"};
static const char *const FASTOD_FIELDS[] = {"state", "hooks"};

static PyObject *pc_init(PyObject *self, PyObject *args) {
    PyObject *storage, *record, *info, *fdict, *flist, *fod, *ftensor;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOO", &storage, &record, &info, &fdict, &flist, &fod,
                          &ftensor))
        return NULL;
    if (slot_class(&C_STORAGE, storage, STORAGE_FIELDS, 9) ||
        slot_class(&C_RECORD, record, RECORD_FIELDS, 8) ||
        slot_class(&C_FTENSOR, ftensor, FTENSOR_FIELDS, 3))
        return NULL;
    if (info == Py_None) {
        Py_CLEAR(C_INFO.type);
        C_INFO.n = 0;
    } else if (slot_class(&C_INFO, info, INFO_FIELDS, 12)) {
        return NULL;
    }
    if (!PyType_Check(fod) || ((PyTypeObject *)fod)->tp_base != &PyDict_Type ||
        slot_class(&C_FASTOD, fod, FASTOD_FIELDS, 2))
        return NULL;
    if (!PyType_Check(fdict) || !PyType_IsSubtype((PyTypeObject *)fdict, &PyDict_Type) ||
        !PyType_Check(fod) || !PyType_IsSubtype((PyTypeObject *)fod, &PyDict_Type) ||
        !PyType_Check(flist) || !PyType_IsSubtype((PyTypeObject *)flist, &PyList_Type)) {
        PyErr_SetString(PyExc_TypeError, "container classes");
        return NULL;
    }
    Py_INCREF(fdict);
    Py_XSETREF(T_FASTDICT, fdict);
    Py_INCREF(flist);
    Py_XSETREF(T_FASTLIST, flist);
    Py_INCREF(fod);
    Py_XSETREF(T_FASTOD, fod);
    Py_RETURN_NONE;
}

static PyObject *pc_tables(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    PyObject *g = PyTuple_New(N_GLOBALS), *st = PyTuple_New(N_STORAGES),
             *loc = PyTuple_New(N_LOCATIONS);
    if (g == NULL || st == NULL || loc == NULL)
        goto fail;
    for (int i = 0; i < N_GLOBALS; i++) {
        PyObject *x = PyUnicode_FromString(GLOBAL_FULL[i]);
        if (x == NULL)
            goto fail;
        PyTuple_SET_ITEM(g, i, x);
    }
    for (int i = 0; i < N_STORAGES; i++) {
        PyObject *x = Py_BuildValue("(sii)", ST_DTYPE[i], ST_ITEMSIZE[i], ST_GRAD[i]);
        if (x == NULL)
            goto fail;
        PyTuple_SET_ITEM(st, i, x);
    }
    for (int i = 0; i < N_LOCATIONS; i++) {
        PyObject *x = PyUnicode_FromString(LOCATIONS[i]);
        if (x == NULL)
            goto fail;
        PyTuple_SET_ITEM(loc, i, x);
    }
    return Py_BuildValue("(NNN)", g, st, loc);
fail:
    Py_XDECREF(g);
    Py_XDECREF(st);
    Py_XDECREF(loc);
    return NULL;
}

static PyMethodDef methods[] = {
    {"init", pc_init, METH_VARARGS,
     "init(StorageRef, TensorRecord, TensorInfo | None, FastDict, FastList, "
     "FastOrderedDict, FastTensor): the classes scan() builds"},
    {"scan", pc_scan, METH_VARARGS,
     "scan(data, records, globals, limits, keep_graph, want_infos[, maker, OrderedDict, "
     "resolver]) -> "
     "None (decline) or (global ids, [(name, TensorRecord)], [TensorInfo] | None, seen, "
     "root | None); with a maker (and keep_graph): root is (the loaded object,) built with "
     "maker(TensorRecord) per tensor, or None when that build failed. A globals entry "
     "that is Ellipsis is resolved by resolver(id) when the program first names it"},
    {"split_records", pc_split_records, METH_VARARGS,
     "split_records(entries, prefix, ZipEntry) -> None or (records without tensor data, "
     "{key: (member, data_offset, size)}, entries outside the prefix, entries not in the "
     "catalog)"},
    {"tables", pc_tables, METH_NOARGS,
     "tables() -> (global names, ((dtype, itemsize, grad), ...), location prefixes)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "picklecore",
    "Prove a torch.save state-dict pickle SAFE in one C pass, or decline (None).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit_picklecore(void) {
    PyObject *m = PyModule_Create(&moddef);
    if (m == NULL)
        return NULL;
    for (int i = 0; i < N_STORAGES; i++) {
        S_DTYPE[i] = PyUnicode_InternFromString(ST_DTYPE[i]);
        if (S_DTYPE[i] == NULL)
            goto fail;
    }
    {
        PyObject *os = PyImport_ImportModule("os");
        PyObject *r = os ? PyObject_CallMethod(os, "urandom", "i", 8) : NULL;
        Py_XDECREF(os);
        if (r == NULL || !PyBytes_Check(r) || PyBytes_GET_SIZE(r) != 8) {
            Py_XDECREF(r);
            goto fail;
        }
        memcpy(&ht_seed, PyBytes_AS_STRING(r), 8);
        Py_DECREF(r);
    }
    EMPTY_ARGS = PyTuple_New(0);
    if (EMPTY_ARGS == NULL)
        goto fail;
    S_TENSOR = PyUnicode_InternFromString("tensor");
    S_PARAMETER = PyUnicode_InternFromString("parameter");
    S_DATA = PyUnicode_InternFromString("data/");
    S_STATE = PyUnicode_InternFromString("state");
    S_HOOKS = PyUnicode_InternFromString("hooks");
    S_UNTYPED_STORAGE = PyUnicode_InternFromString("untyped_storage");
    S_NBYTES = PyUnicode_InternFromString("nbytes");
    S_SET_ = PyUnicode_InternFromString("set_");
    S_CKPT_OFFSET = PyUnicode_InternFromString("_checkpoint_offset");
    S_REQUIRES_GRAD = PyUnicode_InternFromString("requires_grad");
    S_BACKWARD_HOOKS = PyUnicode_InternFromString("_backward_hooks");
    KW_DTYPE_DEVICE = Py_BuildValue("(ss)", "dtype", "device");
    KW_DEVICE = Py_BuildValue("(s)", "device");
    if (S_UNTYPED_STORAGE == NULL || S_NBYTES == NULL || S_SET_ == NULL ||
        S_CKPT_OFFSET == NULL || S_REQUIRES_GRAD == NULL || S_BACKWARD_HOOKS == NULL ||
        KW_DTYPE_DEVICE == NULL || KW_DEVICE == NULL)
        goto fail;
    if (S_TENSOR == NULL || S_PARAMETER == NULL || S_DATA == NULL || S_STATE == NULL ||
        S_HOOKS == NULL)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
