/* The CPU's scans of a site activation chunk in one read (harness/engine/kernels.py): the dense
 * scan of the capture's column paths, and the site scan of a whole site at any density.
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

/* A whole site chunk bits[b, T, H] (C-contiguous) in one read, at any density of hits:
 * smax[i, d] = max over t of bits & mask (the max |x| of sequence i in dim d, as a bit pattern:
 * the order of non-negative floats is the order of their patterns, a NaN's above inf's); for
 * every value with (bits & mask) >= key0 (|x| >= grid[0]) of level lv = lut[...]:
 * counts[i, d, lv] += 1 (int32, contiguous [b, H, G1]; level 0 is never counted) and
 * union[i, t, d] = max(union, lv) (uint8, contiguous [b, T, H]).
 * The values are read 16 at a time (SSE2, or plain C: the max, and a bit mask of the values that
 * reach grid[0]); only the values of the mask are visited, so a value under the grid costs its
 * read and a compare at any density, and no branch depends on a value (at the densities of real
 * models a branch per value is mispredicted often). */
#define BLOCK 16
#if defined(__SSE2__) && !defined(SCAN_PORTABLE)
#include <emmintrin.h>
/* 16 values: raise sm (SSE2 has no 32-bit max: compare and blend; the patterns are >= 0, so the
 * signed compare orders them), and the bit mask of those > key0 - 1 */
static inline uint32_t block_i32(const int32_t *row, int32_t *sm, int32_t mask, int32_t key0)
{
    const __m128i vmask = _mm_set1_epi32(mask), vkey = _mm_set1_epi32(key0 - 1);
    uint32_t hits = 0;
    for (int k = 0; k < 4; k++) {
        __m128i a = _mm_and_si128(_mm_loadu_si128((const __m128i *)(row + 4 * k)), vmask);
        __m128i m = _mm_loadu_si128((const __m128i *)(sm + 4 * k));
        __m128i gt = _mm_cmpgt_epi32(a, m);
        m = _mm_or_si128(_mm_and_si128(gt, a), _mm_andnot_si128(gt, m));
        _mm_storeu_si128((__m128i *)(sm + 4 * k), m);
        __m128i hit = _mm_cmpgt_epi32(a, vkey);
        hits |= (uint32_t)_mm_movemask_ps(_mm_castsi128_ps(hit)) << (4 * k);
    }
    return hits;
}
static inline uint32_t block_i16(const int16_t *row, int16_t *sm, int16_t mask, int16_t key0)
{
    const __m128i vmask = _mm_set1_epi16(mask), vkey = _mm_set1_epi16((int16_t)(key0 - 1));
    __m128i a0 = _mm_and_si128(_mm_loadu_si128((const __m128i *)row), vmask);
    __m128i a1 = _mm_and_si128(_mm_loadu_si128((const __m128i *)(row + 8)), vmask);
    _mm_storeu_si128((__m128i *)sm, _mm_max_epi16(_mm_loadu_si128((const __m128i *)sm), a0));
    _mm_storeu_si128((__m128i *)(sm + 8),
                     _mm_max_epi16(_mm_loadu_si128((const __m128i *)(sm + 8)), a1));
    __m128i hit = _mm_packs_epi16(_mm_cmpgt_epi16(a0, vkey), _mm_cmpgt_epi16(a1, vkey));
    return (uint32_t)_mm_movemask_epi8(hit);
}
#else /* the same in plain C (built with -DSCAN_PORTABLE by a test, and where there is no SSE2) */
#define BLOCK_C(NAME, INT)                                                                     \
    static inline uint32_t NAME(const INT *row, INT *sm, INT mask, INT key0)                  \
    {                                                                                          \
        uint32_t hits = 0;                                                                     \
        for (int j = 0; j < BLOCK; j++) {                                                      \
            INT a = row[j] & mask;                                                             \
            sm[j] = a > sm[j] ? a : sm[j];                                                     \
            hits |= (uint32_t)(a >= key0) << j;                                                \
        }                                                                                      \
        return hits;                                                                           \
    }
BLOCK_C(block_i32, int32_t)
BLOCK_C(block_i16, int16_t)
#endif

/* the level of a value from its raw pattern: the sign bit shifted out, the top bits kept (the
 * same index as lut[(bits & mask) >> shift] of the other kernel, without the mask's register) */
#define KEY(UINT, v, SHIFT) ((uint32_t)(UINT)((UINT)(v) << 1) >> ((SHIFT) + 1))
/* One position's row of H values. The positions of its hits are first written side by side in
 * idx (a fixed 16 steps per block that has any: no branch on a value), then visited in one loop
 * whose steps do not depend on each other (a loop over the set bits of each block's mask would
 * mispredict its end at every block and chain every step on the last). */
#define SITE_ROW(NAME, INT, UINT, SHIFT, BLOCK_FN)                                             \
    static void NAME(const INT *row, INT *sm, int32_t *ci, uint8_t *urow, Py_ssize_t H,       \
                     INT mask, INT key0, const uint8_t *lut, Py_ssize_t G1, int32_t *idx)     \
    {                                                                                          \
        Py_ssize_t full = H - H % BLOCK, n = 0;                                                \
        for (Py_ssize_t d0 = 0; d0 < full; d0 += BLOCK) {                                      \
            uint32_t hits = BLOCK_FN(row + d0, sm + d0, mask, key0);                           \
            if (hits)                                                                          \
                for (int j = 0; j < BLOCK; j++) {                                              \
                    idx[n] = (int32_t)(d0 + j);                                                \
                    n += (hits >> j) & 1;                                                      \
                }                                                                              \
        }                                                                                      \
        for (Py_ssize_t d = full; d < H; d++) {                                                \
            INT a = row[d] & mask;                                                             \
            sm[d] = a > sm[d] ? a : sm[d];                                                     \
            idx[n] = (int32_t)d;                                                               \
            n += a >= key0;                                                                    \
        }                                                                                      \
        if (2 * n > H) { /* most of the row: every value, branch-free (level 0 not counted) */ \
            for (Py_ssize_t d = 0; d < H; d++) {                                               \
                uint8_t lv = lut[KEY(UINT, row[d], SHIFT)];                                    \
                ci[d * G1 + lv] += lv != 0;                                                    \
                RAISE(urow[d], lv);                                                            \
            }                                                                                  \
            return;                                                                            \
        }                                                                                      \
        for (Py_ssize_t k = 0; k < n; k++) {                                                   \
            Py_ssize_t d = idx[k];                                                             \
            uint8_t lv = lut[KEY(UINT, row[d], SHIFT)];                                        \
            ci[d * G1 + lv] += 1;                                                              \
            RAISE(urow[d], lv);                                                                \
        }                                                                                      \
    }
#define SITE_SCAN(NAME, INT, ROW_FN)                                                           \
    static void NAME(const INT *bits, Py_ssize_t b, Py_ssize_t T, Py_ssize_t H, INT mask,     \
                     const uint8_t *lut, INT key0, INT *smax, int32_t *counts, Py_ssize_t G1, \
                     uint8_t *uni, int32_t *idx)                                              \
    {                                                                                          \
        for (Py_ssize_t i = 0; i < b; i++)                                                     \
            for (Py_ssize_t t = 0; t < T; t++)                                                 \
                ROW_FN(bits + (i * T + t) * H, smax + i * H, counts + i * H * G1,              \
                       uni + (i * T + t) * H, H, mask, key0, lut, G1, idx);                    \
    }

SITE_ROW(site_row_i32, int32_t, uint32_t, 15, block_i32)
SITE_ROW(site_row_i16, int16_t, uint16_t, 0, block_i16)
SITE_SCAN(site_scan_i32, int32_t, site_row_i32)
SITE_SCAN(site_scan_i16, int16_t, site_row_i16)

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

static PyObject *site_scan(PyObject *self, PyObject *args)
{
    Py_ssize_t bits, itemsize, b, T, H, mask, lut, key0, smax, counts, G1, uni;
    int shift;
    if (!PyArg_ParseTuple(args, "nnnnnninnnnnn", &bits, &itemsize, &b, &T, &H, &mask, &shift,
                          &lut, &key0, &smax, &counts, &G1, &uni))
        return NULL;
    if ((itemsize != 2 || shift != 0 || mask != 0x7FFF) &&
        (itemsize != 4 || shift != 15 || mask != 0x7FFFFFFF)) {
        PyErr_SetString(PyExc_ValueError,
                        "site scan: 2-byte patterns take shift 0, 4-byte ones shift 15");
        return NULL;
    }
    int32_t *idx = PyMem_RawMalloc((H + BLOCK) * sizeof(int32_t)); /* a row's hits */
    if (idx == NULL)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    if (itemsize == 4)
        site_scan_i32((const int32_t *)bits, b, T, H, (int32_t)mask, (const uint8_t *)lut,
                      (int32_t)key0, (int32_t *)smax, (int32_t *)counts, G1, (uint8_t *)uni, idx);
    else
        site_scan_i16((const int16_t *)bits, b, T, H, (int16_t)mask, (const uint8_t *)lut,
                      (int16_t)key0, (int16_t *)smax, (int32_t *)counts, G1, (uint8_t *)uni, idx);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(idx);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "The dense scan of one chunk (see harness/engine/kernels.py)."},
    {"site_scan", site_scan, METH_VARARGS,
     "A site chunk at any density in one read (see harness/engine/kernels.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
