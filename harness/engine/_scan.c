/* The CPU's dense scan of a site activation chunk in one read (harness/engine/kernels.py).
 *
 * Plain C behind the smallest CPython interface: the arrays come as addresses and element
 * strides, so the module needs neither numpy's nor torch's headers, and a failed build (no C
 * compiler) only leaves the PyTorch ops in use. numba computed the same in ~2 ns per value but
 * its import and LLVM start-up add ~130 MiB to the process, more than the harness's whole
 * memory budget on a small model (docs/performance.md). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* For every value of bits[b, T, H] (strided) in the columns cols[h] (every column when full):
 * level = lut[(bits & mask) >> shift]; counts[i, d, level] += 1 (int64, contiguous [b, H, G1]);
 * union[i, t, d] = max(union, level) (uint8, strided); lev[i, t, j] = level when lev != NULL
 * (uint8, contiguous [b, T, h]). */
#define LEVEL(v) lut[(uint32_t)((v) & mask) >> shift]
/* branch-free max: at the densities where this kernel runs, whether a level raises the union is
 * a coin toss, and a mispredicted branch costs more than the store */
#define RAISE(u, lv) ((u) = (lv) > (u) ? (lv) : (u))

#define SCAN(NAME, INT)                                                                        \
    static void NAME(const INT *bits, Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t s2,            \
                     Py_ssize_t b, Py_ssize_t T, Py_ssize_t H, INT mask, int shift,           \
                     const uint8_t *lut, const int64_t *cols, Py_ssize_t h, int full,         \
                     int64_t *counts, Py_ssize_t G1, uint8_t *uni, Py_ssize_t u0,             \
                     Py_ssize_t u1, Py_ssize_t u2, uint8_t *lev)                              \
    {                                                                                          \
        for (Py_ssize_t i = 0; i < b; i++) {                                                   \
            int64_t *ci = counts + i * H * G1;                                                 \
            for (Py_ssize_t t = 0; t < T; t++) {                                               \
                const INT *row = bits + i * s0 + t * s1;                                       \
                uint8_t *urow = uni + i * u0 + t * u1;                                         \
                if (full && !lev && s2 == 1 && u2 == 1) { /* the common case, kept simple */   \
                    for (Py_ssize_t d = 0; d < H; d++) {                                       \
                        uint8_t lv = LEVEL(row[d]);                                            \
                        ci[d * G1 + lv] += 1;                                                  \
                        RAISE(urow[d], lv);                                                    \
                    }                                                                          \
                    continue;                                                                  \
                }                                                                              \
                uint8_t *lrow = lev ? lev + (i * T + t) * h : NULL;                            \
                Py_ssize_t n = full ? H : h;                                                   \
                for (Py_ssize_t j = 0; j < n; j++) {                                           \
                    Py_ssize_t d = full ? j : (Py_ssize_t)cols[j];                             \
                    uint8_t lv = LEVEL(row[d * s2]);                                           \
                    ci[d * G1 + lv] += 1;                                                      \
                    RAISE(urow[d * u2], lv);                                                   \
                    if (lrow) lrow[j] = lv;                                                    \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }

SCAN(scan_i32, int32_t)
SCAN(scan_i16, int16_t)

static PyObject *scan(PyObject *self, PyObject *args)
{
    Py_ssize_t bits, s0, s1, s2, b, T, H, itemsize, mask, lut, cols, h, counts, G1, uni, u0, u1,
        u2, lev;
    int shift, full;
    if (!PyArg_ParseTuple(args, "nnnnnnnnninnnpnnnnnnn", &bits, &itemsize, &s0, &s1, &s2, &b, &T,
                          &H, &mask, &shift, &lut, &cols, &h, &full, &counts, &G1, &uni, &u0,
                          &u1, &u2, &lev))
        return NULL;
    if (itemsize != 2 && itemsize != 4) {
        PyErr_SetString(PyExc_ValueError, "bit patterns must be 2 or 4 bytes wide");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (itemsize == 4)
        scan_i32((const int32_t *)bits, s0, s1, s2, b, T, H, (int32_t)mask, shift,
                 (const uint8_t *)lut, (const int64_t *)cols, h, full, (int64_t *)counts, G1,
                 (uint8_t *)uni, u0, u1, u2, (uint8_t *)lev);
    else
        scan_i16((const int16_t *)bits, s0, s1, s2, b, T, H, (int16_t)mask, shift,
                 (const uint8_t *)lut, (const int64_t *)cols, h, full, (int64_t *)counts, G1,
                 (uint8_t *)uni, u0, u1, u2, (uint8_t *)lev);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "The dense scan of one chunk (see harness/engine/kernels.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
