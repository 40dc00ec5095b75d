/* Optional C versions of the gateway's two per-request hot spots; pure-Python fallbacks live beside their users.
 *
 * - Kernel: the classifier's numeric step (system/classifier/fastpath.py, FastPath.predict). numpy's gather
 *   and product cost ~80 us a prompt inside the gateway, where the network work between requests leaves
 *   numpy's code and data cold; this loop over the prompt's few rows touches a few KiB.
 * - ChunkedBody: a chunked-transfer-coding tracker for the upstream client (system/gateway/upstream.py). It
 *   lets a streamed answer go to the client byte for byte (the expert's own chunk framing, which is valid
 *   framing for the client too) instead of being parsed by httptools and framed again, per upstream read.
 *
 * Built by setup.py as an optional extension: without a C compiler the package installs without it. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------------ Kernel */

typedef struct {
    PyObject_HEAD
    Py_buffer rows; /* n_terms x (dim + k) float64, C-contiguous: projection rows, then their centroid dots */
    Py_ssize_t n_terms, dim, k, width;
    double *c_sq; /* k squared centroid norms */
    double *acc;  /* scratch, width doubles */
    int sublinear;
} Kernel;

static void Kernel_dealloc(Kernel *self) {
    if (self->rows.obj) PyBuffer_Release(&self->rows);
    PyMem_Free(self->c_sq);
    PyMem_Free(self->acc);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Kernel_init(Kernel *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"rows", "dim", "c_sq", "sublinear", NULL};
    PyObject *rows, *c_sq, *seq;
    Py_ssize_t dim, c;
    int sublinear;
    if (self->rows.obj) {
        PyErr_SetString(PyExc_RuntimeError, "Kernel is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OnOp", names, &rows, &dim, &c_sq, &sublinear)) return -1;
    if (PyObject_GetBuffer(rows, &self->rows, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (self->rows.ndim != 2 || self->rows.format == NULL || strcmp(self->rows.format, "d") != 0) {
        PyErr_SetString(PyExc_ValueError, "rows must be a 2-D C-contiguous float64 array");
        return -1;
    }
    self->n_terms = self->rows.shape[0];
    self->width = self->rows.shape[1];
    seq = PySequence_Fast(c_sq, "c_sq must be a sequence of floats");
    if (!seq) return -1;
    self->k = PySequence_Fast_GET_SIZE(seq);
    self->dim = dim;
    if (dim < 1 || self->k < 1 || dim + self->k != self->width) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "rows must have dim + len(c_sq) columns");
        return -1;
    }
    self->c_sq = PyMem_Malloc(sizeof(double) * (size_t)self->k);
    self->acc = PyMem_Malloc(sizeof(double) * (size_t)self->width);
    if (!self->c_sq || !self->acc) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (c = 0; c < self->k; c++) {
        self->c_sq[c] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, c));
        if (self->c_sq[c] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    self->sublinear = sublinear;
    return 0;
}

/* nearest(counts) -> int. counts: {term id: count}. z = sum of w * row over the terms, w = count (or
 * 1 + log(count) when sublinear); the answer is the argmin over centroids c of c_sq[c] - 2 <c, z> / |z|
 * (the first on ties, like numpy's argmin), or -1 when z is zero: the caller decides that case. */
static PyObject *Kernel_nearest(Kernel *self, PyObject *counts) {
    Py_ssize_t pos = 0, i, j, c, best = 0;
    PyObject *key, *value;
    double *acc = self->acc, zz = 0.0, scale, best_v, v, w;
    const double *row;
    long n;
    if (!self->rows.obj) {
        PyErr_SetString(PyExc_RuntimeError, "Kernel is not initialised");
        return NULL;
    }
    if (!PyDict_Check(counts)) {
        PyErr_SetString(PyExc_TypeError, "counts must be a dict of term id -> count");
        return NULL;
    }
    for (j = 0; j < self->width; j++) acc[j] = 0.0;
    while (PyDict_Next(counts, &pos, &key, &value)) {
        /* exact ints only: an int subclass could run Python code (__index__) between the loop's steps */
        if (!PyLong_CheckExact(key) || !PyLong_CheckExact(value)) {
            PyErr_SetString(PyExc_TypeError, "term ids and counts must be ints");
            return NULL;
        }
        i = PyLong_AsSsize_t(key);
        if (i == -1 && PyErr_Occurred()) return NULL;
        if (i < 0 || i >= self->n_terms) {
            PyErr_SetString(PyExc_IndexError, "term id out of range");
            return NULL;
        }
        n = PyLong_AsLong(value);
        if (n == -1 && PyErr_Occurred()) return NULL;
        if (n < 1) {
            PyErr_SetString(PyExc_ValueError, "term counts must be positive");
            return NULL;
        }
        w = self->sublinear ? 1.0 + log((double)n) : (double)n;
        row = (const double *)self->rows.buf + i * self->width;
        for (j = 0; j < self->width; j++) acc[j] += w * row[j];
    }
    for (j = 0; j < self->dim; j++) zz += acc[j] * acc[j];
    if (!(zz > 0.0)) return PyLong_FromLong(-1);
    scale = 2.0 / sqrt(zz);
    best_v = self->c_sq[0] - scale * acc[self->dim];
    for (c = 1; c < self->k; c++) {
        v = self->c_sq[c] - scale * acc[self->dim + c];
        if (v < best_v) {
            best = c;
            best_v = v;
        }
    }
    return PyLong_FromSsize_t(best);
}

static PyMethodDef Kernel_methods[] = {
    {"nearest", (PyCFunction)Kernel_nearest, METH_O,
     "nearest(counts: dict[int, int]) -> int: the nearest centroid, or -1 for a zero vector."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject KernelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "system._speedups.Kernel",
    .tp_basicsize = sizeof(Kernel),
    .tp_dealloc = (destructor)Kernel_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Kernel(rows, dim, c_sq, sublinear): a fitted pipeline's projection rows and centroid norms.",
    .tp_methods = Kernel_methods,
    .tp_init = (initproc)Kernel_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------------------------------- ChunkedBody */

/* RFC 9112 section 7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF; last-chunk = 1*"0" [ chunk-ext ]
 * CRLF; then trailer fields, each ending in CRLF, and a final CRLF. Line ends must be CRLF, as llhttp's
 * strict mode (httptools) wants them. */
enum {
    S_SIZE0,    /* first hex digit of a chunk size: a chunk boundary */
    S_SIZE,     /* more hex digits */
    S_SIZE_WS,  /* blanks after the size */
    S_EXT,      /* a chunk extension, up to CR */
    S_SIZE_LF,  /* LF after the size line's CR */
    S_DATA,     /* chunk data, `remaining` bytes to go */
    S_DATA_CR,  /* CR after the data */
    S_DATA_LF,  /* LF after the data */
    S_TRAILER0, /* start of a trailer line, or the final CRLF */
    S_TRAILER,  /* inside a trailer line, up to CR */
    S_TRAILER_LF,
    S_END_LF, /* the final LF */
    S_DONE,
};

#define MAX_TRAILER_BYTES 65536
#define MAX_EXT_BYTES 4096

typedef struct {
    PyObject_HEAD
    int state;
    int synced;           /* verbatim output has started at a chunk boundary: every later byte passes as is */
    unsigned long long remaining; /* chunk data left in the current chunk */
    Py_ssize_t extra;     /* bytes after the end of the body in the last feed */
    Py_ssize_t side;      /* bytes of the current extension or trailer section (bounded) */
    int digits;
} ChunkedBody;

#define BAD(msg)   \
    do {           \
        err = msg; \
        goto bad;  \
    } while (0)

static PyObject *chunk_error(const char *what) {
    PyErr_Format(PyExc_ValueError, "bad chunked body: %s", what);
    return NULL;
}

static int hexval(unsigned char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* The payload of one feed: spans of the read copied into a growing buffer (a bytes object cannot be grown
 * safely: short ones are shared singletons). */
typedef struct {
    char *buf;
    Py_ssize_t len, cap;
} Payload;

static int add_payload(Payload *pl, const char *src, Py_ssize_t a, Py_ssize_t b) {
    Py_ssize_t need;
    if (b <= a) return 0;
    need = pl->len + (b - a);
    if (need > pl->cap) {
        Py_ssize_t cap = pl->cap ? pl->cap * 2 : 256;
        char *grown;
        while (cap < need) cap *= 2;
        grown = PyMem_Realloc(pl->buf, (size_t)cap);
        if (!grown) {
            PyErr_NoMemory();
            return -1;
        }
        pl->buf = grown;
        pl->cap = cap;
    }
    memcpy(pl->buf + pl->len, src + a, (size_t)(b - a));
    pl->len = need;
    return 0;
}

/* The payload (if any) as one chunk of its own, followed by `tail` as is. */
static PyObject *frame(const Payload *payload, const char *tail, Py_ssize_t tail_len) {
    char head[32];
    Py_ssize_t plen = payload->len;
    int hl = plen ? snprintf(head, sizeof head, "%zx\r\n", plen) : 0;
    Py_ssize_t total = plen ? hl + plen + 2 + tail_len : tail_len;
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    char *dst;
    if (!out) return NULL;
    dst = PyBytes_AS_STRING(out);
    if (plen) {
        memcpy(dst, head, (size_t)hl);
        memcpy(dst + hl, payload->buf, (size_t)plen);
        memcpy(dst + hl + plen, "\r\n", 2);
        dst += hl + plen + 2;
    }
    if (tail_len) memcpy(dst, tail, (size_t)tail_len);
    return out;
}

/* feed(data, verbatim) -> bytes.
 *
 * Advances the tracker over `data` (up to the end of the body; what follows it is counted in `extra`).
 * verbatim=False: returns the chunk data (payload) in `data`.
 * verbatim=True: returns what to write to the client so that it receives a well-framed chunked body: from the
 * first chunk boundary on, the bytes themselves (`data` itself when all of it passes); payload before the first
 * boundary of a tracker that was not yet synced (it ran non-verbatim mid-chunk) goes out as one chunk of its
 * own. Raises ValueError on bad framing; the tracker is then unusable. */
static PyObject *ChunkedBody_feed(ChunkedBody *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer view;
    const unsigned char *p;
    Py_ssize_t n, i = 0, boundary = -1, end, take;
    PyObject *out = NULL, *data;
    Payload payload = {NULL, 0, 0};
    const char *err = NULL;
    int verbatim, h;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "feed(data, verbatim) takes 2 arguments");
        return NULL;
    }
    data = args[0];
    verbatim = PyObject_IsTrue(args[1]);
    if (verbatim < 0) return NULL;
    if (self->state == S_DONE) return chunk_error("data after the end of the body");
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    p = (const unsigned char *)view.buf;
    n = view.len;
    self->extra = 0;
    if (verbatim && self->synced) boundary = 0;
    while (i < n && self->state != S_DONE) {
        unsigned char ch = p[i];
        switch (self->state) {
        case S_SIZE0:
            if (verbatim && boundary < 0) boundary = i;
            h = hexval(ch);
            if (h < 0) BAD("bad chunk size line");
            self->remaining = (unsigned long long)h;
            self->digits = 1;
            self->state = S_SIZE;
            i++;
            break;
        case S_SIZE:
        case S_SIZE_WS: /* more digits (not after a blank), blanks, then an extension or the line's end */
            h = self->state == S_SIZE ? hexval(ch) : -1;
            if (h >= 0) {
                if (++self->digits > 15) BAD("bad chunk size line"); /* 15 hex digits: below 2^60 */
                self->remaining = self->remaining * 16 + (unsigned long long)h;
            } else if (ch == ' ' || ch == '\t') {
                self->state = S_SIZE_WS;
            } else if (ch == ';') {
                self->state = S_EXT;
                self->side = 0;
            } else if (ch == '\r') {
                self->state = S_SIZE_LF;
            } else {
                BAD("bad chunk size line");
            }
            i++;
            break;
        case S_EXT:
            if (ch == '\r') {
                self->state = S_SIZE_LF;
            } else if (ch == '\n' || ++self->side > MAX_EXT_BYTES) {
                BAD("bad chunk extension");
            }
            i++;
            break;
        case S_SIZE_LF:
            if (ch != '\n') BAD("bad chunk size line");
            i++;
            if (self->remaining == 0) {
                self->state = S_TRAILER0;
                self->side = 0;
            } else {
                self->state = S_DATA;
            }
            break;
        case S_DATA:
            take = n - i;
            if ((unsigned long long)take > self->remaining) take = (Py_ssize_t)self->remaining;
            /* payload leaves as payload: all of it without verbatim, the part before the first boundary with */
            if (!verbatim || boundary < 0) {
                if (add_payload(&payload, (const char *)p, i, i + take) < 0) goto fail;
            }
            self->remaining -= (unsigned long long)take;
            i += take;
            if (self->remaining == 0) self->state = S_DATA_CR;
            break;
        case S_DATA_CR:
            if (ch != '\r') BAD("chunk data not followed by CRLF");
            self->state = S_DATA_LF;
            i++;
            break;
        case S_DATA_LF:
            if (ch != '\n') BAD("chunk data not followed by CRLF");
            self->state = S_SIZE0;
            i++;
            break;
        case S_TRAILER0:
            if (ch == '\r') {
                self->state = S_END_LF;
            } else if (ch == '\n') {
                BAD("bad trailer section");
            } else {
                self->state = S_TRAILER;
                if (++self->side > MAX_TRAILER_BYTES) BAD("bad trailer section");
            }
            i++;
            break;
        case S_TRAILER:
            if (ch == '\r') {
                self->state = S_TRAILER_LF;
            } else if (ch == '\n' || ++self->side > MAX_TRAILER_BYTES) {
                BAD("bad trailer section");
            }
            i++;
            break;
        case S_TRAILER_LF:
            if (ch != '\n') BAD("bad trailer section");
            self->state = S_TRAILER0;
            i++;
            break;
        case S_END_LF:
            if (ch != '\n') BAD("bad trailer section");
            self->state = S_DONE;
            i++;
            break;
        }
    }
    end = i;
    self->extra = n - end;
    if (!verbatim) {
        PyBuffer_Release(&view);
        out = PyBytes_FromStringAndSize(payload.buf, payload.len);
        PyMem_Free(payload.buf);
        return out;
    }
    if (boundary < 0) {
        /* not synced and no boundary here: only payload, framed below; if the body ended, its last chunk began
         * before the switch to verbatim, so the client's terminating chunk is ours (trailers are dropped) */
        boundary = end;
        if (self->state == S_DONE) {
            out = frame(&payload, "0\r\n\r\n", 5);
            PyMem_Free(payload.buf);
            PyBuffer_Release(&view);
            return out;
        }
    } else {
        self->synced = 1;
    }
    if (payload.len == 0 && boundary == 0 && end == n && PyBytes_CheckExact(data)) {
        PyBuffer_Release(&view);
        Py_INCREF(data);
        return data;
    }
    out = frame(&payload, (const char *)p + boundary, end - boundary);
    PyMem_Free(payload.buf);
    PyBuffer_Release(&view);
    return out;

bad:
    self->state = S_DONE; /* unusable from here: every later feed fails too */
    PyBuffer_Release(&view);
    PyMem_Free(payload.buf);
    return chunk_error(err);
fail:
    PyBuffer_Release(&view);
    PyMem_Free(payload.buf);
    return NULL;
}

static PyObject *ChunkedBody_complete(ChunkedBody *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->state == S_DONE);
}

static PyObject *ChunkedBody_extra(ChunkedBody *self, void *closure) {
    (void)closure;
    return PyLong_FromSsize_t(self->extra);
}

static PyGetSetDef ChunkedBody_getset[] = {
    {"complete", (getter)ChunkedBody_complete, NULL, "The body's last chunk and trailer section were read.", NULL},
    {"extra", (getter)ChunkedBody_extra, NULL, "Bytes after the end of the body in the last feed.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef ChunkedBody_methods[] = {
    {"feed", (PyCFunction)(void (*)(void))ChunkedBody_feed, METH_FASTCALL,
     "feed(data, verbatim) -> bytes: the payload (verbatim=False) or the client's bytes (verbatim=True)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ChunkedBodyType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "system._speedups.ChunkedBody",
    .tp_basicsize = sizeof(ChunkedBody),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ChunkedBody(): tracks one chunked-coded body (the bytes after the head) read by read.",
    .tp_methods = ChunkedBody_methods,
    .tp_getset = ChunkedBody_getset,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------------------------------------ module */

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "_speedups", "Optional C hot paths of the gateway.", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    PyObject *m;
    if (PyType_Ready(&KernelType) < 0 || PyType_Ready(&ChunkedBodyType) < 0) return NULL;
    m = PyModule_Create(&speedups_module);
    if (!m) return NULL;
    Py_INCREF(&KernelType);
    if (PyModule_AddObject(m, "Kernel", (PyObject *)&KernelType) < 0) goto fail;
    Py_INCREF(&ChunkedBodyType);
    if (PyModule_AddObject(m, "ChunkedBody", (PyObject *)&ChunkedBodyType) < 0) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
