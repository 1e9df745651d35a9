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

/* The same site scan with the levels by compares, for grids of up to 16 magnitudes in
 * ascending order (every grid the harness makes). A value's level is the number of thresholds
 * it reaches, and the counts per (sequence, dim, level) come from the counts per (sequence, dim)
 * of the values that reach each threshold, ge[g] - ge[g + 1]: per threshold a compare and two
 * adds per vector of values, with no table look-up, no index and no store at an address that
 * depends on a value. The compares are on 16-bit keys, 8 (SSE2) or 16 (AVX2) a vector: a 16-bit
 * dtype's |x| patterns, or float32's top 16 bits of |x| (exact, as for the table: the thresholds'
 * low 15 bits are 0), shifted by -32768 so that signed compares order them.
 *
 * The rows are read in tiles of ROWS positions: per vector of dims, the tile's keys go to
 * registers (the first pass: the max |x| and whether any reaches grid[0]; a tile without
 * hits costs only that), then one pass per threshold counts the keys that reach it and adds
 * 1 to their level, until a threshold no key of the tile reaches. */
#define GMAX 16 /* thresholds the compares take */
#if defined(__SSE2__) && !defined(SCAN_PORTABLE)
#define GE_KERNELS 1
#define ROWS 8     /* positions per tile (4-16 measured the same) */
#define SPAN 16384 /* positions counted in 16-bit lanes before they are added up in 32 bits */
#include <string.h>
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define AVX2_KERNELS 1
#define AVX2 __attribute__((target("avx2")))
#endif

/* 16-bit lanes: X (SSE2, 8 lanes), Y (AVX2, 16) */
#define X_V __m128i
#define X_LD(p) _mm_loadu_si128((const __m128i *)(p))
#define X_ST(p, v) _mm_storeu_si128((__m128i *)(p), v)
#define X_ZERO _mm_setzero_si128
#define X_OR _mm_or_si128
#define X_GT _mm_cmpgt_epi16
#define X_ADD _mm_add_epi16
#define X_ANY(v) _mm_movemask_epi8(v)
/* the levels (minus, in nl) raise the union's 8 bytes at u */
#define X_UNION(u, nl, FIX)                                                                    \
    do {                                                                                       \
        __m128i l_ = _mm_sub_epi16(_mm_setzero_si128(), nl);                                  \
        __m128i o_ = _mm_loadl_epi64((const __m128i *)(u));                                   \
        _mm_storel_epi64((__m128i *)(u), _mm_max_epu8(o_, _mm_packus_epi16(l_, l_)));         \
    } while (0)
/* the keys of 8 values: float32 (two vectors of 4), or 16-bit patterns; sm: the max |x| */
#define X_KEYS_I32(row, sm0, sm1, key)                                                         \
    do {                                                                                       \
        __m128i a0_ = _mm_and_si128(_mm_loadu_si128((const __m128i *)(row)), vmask);          \
        __m128i a1_ = _mm_and_si128(_mm_loadu_si128((const __m128i *)(row) + 1), vmask);      \
        __m128i g0_ = _mm_cmpgt_epi32(a0_, sm0), g1_ = _mm_cmpgt_epi32(a1_, sm1);             \
        sm0 = _mm_or_si128(_mm_and_si128(g0_, a0_), _mm_andnot_si128(g0_, sm0));              \
        sm1 = _mm_or_si128(_mm_and_si128(g1_, a1_), _mm_andnot_si128(g1_, sm1));              \
        key = _mm_packs_epi32(_mm_sub_epi32(_mm_srli_epi32(a0_, 15), bias),                   \
                              _mm_sub_epi32(_mm_srli_epi32(a1_, 15), bias));                  \
    } while (0)
#define X_KEYS_I16(row, sm0, sm1, key)                                                         \
    do {                                                                                       \
        key = _mm_and_si128(_mm_loadu_si128((const __m128i *)(row)), vmask);                  \
        sm0 = _mm_max_epi16(sm0, key);                                                         \
    } while (0)
#ifdef AVX2_KERNELS
#define Y_V __m256i
#define Y_LD(p) _mm256_loadu_si256((const __m256i *)(p))
#define Y_ST(p, v) _mm256_storeu_si256((__m256i *)(p), v)
#define Y_ZERO _mm256_setzero_si256
#define Y_OR _mm256_or_si256
#define Y_GT _mm256_cmpgt_epi16
#define Y_ADD _mm256_add_epi16
#define Y_ANY(v) _mm256_movemask_epi8(v)
/* FIX: the lane order of Y_KEYS_I32's pack (dims 0-3, 8-11, 4-7, 12-15) put back */
#define Y_UNION(u, nl, FIX)                                                                    \
    do {                                                                                       \
        __m256i l_ = _mm256_sub_epi16(_mm256_setzero_si256(), nl);                            \
        __m128i p_ = _mm_packus_epi16(_mm256_castsi256_si128(l_),                             \
                                      _mm256_extracti128_si256(l_, 1));                       \
        if (FIX)                                                                               \
            p_ = _mm_shuffle_epi32(p_, 0xD8);                                                  \
        __m128i o_ = _mm_loadu_si128((const __m128i *)(u));                                   \
        _mm_storeu_si128((__m128i *)(u), _mm_max_epu8(o_, p_));                               \
    } while (0)
#define Y_KEYS_I32(row, sm0, sm1, key)                                                         \
    do {                                                                                       \
        __m256i a0_ = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(row)), vmask);    \
        __m256i a1_ = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(row) + 1), vmask);\
        sm0 = _mm256_max_epi32(sm0, a0_);                                                      \
        sm1 = _mm256_max_epi32(sm1, a1_);                                                      \
        key = _mm256_packs_epi32(_mm256_sub_epi32(_mm256_srli_epi32(a0_, 15), bias),          \
                                 _mm256_sub_epi32(_mm256_srli_epi32(a1_, 15), bias));         \
    } while (0)
#define Y_KEYS_I16(row, sm0, sm1, key)                                                         \
    do {                                                                                       \
        key = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(row)), vmask);            \
        sm0 = _mm256_max_epi16(sm0, key);                                                      \
    } while (0)
#endif

/* Positions [t0, t1) (at most ROWS) of one sequence's [T, H] patterns, dims [0, full) L at a
 * time (L = the 16-bit lanes of P): raises sm[d] (the sequence's max |x|), adds to
 * tot[d * GMAX + g * L + lane] minus the number of positions whose value reaches threshold g
 * (km1[g]: its key - 1 in L lanes; keys past the grid's are never reached) and raises the union
 * [T, H]. VI: the int vector of the patterns (bias, vmask), W: the patterns' vectors per key
 * vector. */
#define GE_ROWS(NAME, ATTR, P, INT, VI, SET1, W, KEYS, FIX)                                    \
    ATTR static void NAME(const INT *bits, Py_ssize_t t0, Py_ssize_t t1, Py_ssize_t H,        \
                          Py_ssize_t full, INT mask, const int16_t *km1, int G, INT *sm,      \
                          int16_t *tot, uint8_t *uni)                                          \
    {                                                                                          \
        enum { L = sizeof(P##_V) / 2 };                                                        \
        const VI vmask = SET1(mask), bias = SET1(32768);                                       \
        const P##_V k0 = P##_LD(km1);                                                          \
        const int n = (int)(t1 - t0);                                                          \
        P##_V key[ROWS], nl[ROWS];                                                             \
        (void)bias;                                                                            \
        for (Py_ssize_t d = 0; d < full; d += L) {                                             \
            VI m0 = P##_LD(sm + d), m1 = W == 2 ? P##_LD(sm + d + L / 2) : m0;                 \
            P##_V hit = P##_ZERO();                                                            \
            for (int r = 0; r < n; r++) {                                                      \
                KEYS(bits + (t0 + r) * H + d, m0, m1, key[r]);                                 \
                hit = P##_OR(hit, P##_GT(key[r], k0));                                         \
            }                                                                                  \
            P##_ST(sm + d, m0);                                                                \
            if (W == 2)                                                                        \
                P##_ST(sm + d + L / 2, m1);                                                    \
            if (!P##_ANY(hit))                                                                 \
                continue;                                                                      \
            int16_t *o = tot + d * GMAX;                                                       \
            for (int r = 0; r < n; r++) nl[r] = P##_ZERO();                                    \
            for (int g = 0; g < G; g++) {                                                      \
                P##_V k = P##_LD(km1 + g * L), acc = P##_ZERO(), any = P##_ZERO();             \
                for (int r = 0; r < n; r++) {                                                  \
                    P##_V c = P##_GT(key[r], k);                                               \
                    acc = P##_ADD(acc, c);                                                     \
                    nl[r] = P##_ADD(nl[r], c);                                                 \
                    any = P##_OR(any, c);                                                      \
                }                                                                              \
                if (!P##_ANY(any))                                                             \
                    break; /* no key of the tile reaches it, nor a higher threshold */         \
                P##_ST(o + g * L, P##_ADD(P##_LD(o + g * L), acc));                            \
            }                                                                                  \
            for (int r = 0; r < n; r++) P##_UNION(uni + (t0 + r) * H + d, nl[r], FIX);         \
        }                                                                                      \
    }

GE_ROWS(ge_x_i32, , X, int32_t, __m128i, _mm_set1_epi32, 2, X_KEYS_I32, 0)
GE_ROWS(ge_x_i16, , X, int16_t, __m128i, _mm_set1_epi16, 1, X_KEYS_I16, 0)
#ifdef AVX2_KERNELS
GE_ROWS(ge_y_i32, AVX2, Y, int32_t, __m256i, _mm256_set1_epi32, 2, Y_KEYS_I32, 1)
GE_ROWS(ge_y_i16, AVX2, Y, int16_t, __m256i, _mm256_set1_epi16, 1, Y_KEYS_I16, 0)
#else
#define ge_y_i32 ge_x_i32
#define ge_y_i16 ge_x_i16
#endif

/* The whole chunk: per sequence, tiles of ROWS positions by the kernel of `isa` (1: SSE2, 2:
 * AVX2; L 16-bit lanes), the dims after the last full vector one value at a time with the
 * table (as site_row's), then the counts per level from the per-threshold counts. tot (int16,
 * [vector][g][lane], GMAX thresholds a vector) is added up in ge (int32, [d][g]) every SPAN
 * positions. km1: GMAX * 16 int16 of scratch. */
#define GE_SCAN(NAME, INT, UINT, SHIFT, KX, KY, FIX)                                           \
    static void NAME(const INT *bits, Py_ssize_t b, Py_ssize_t T, Py_ssize_t H, INT mask,     \
                     const uint8_t *lut, const INT *keys, int G, INT *smax, int32_t *counts,  \
                     Py_ssize_t G1, uint8_t *uni, int isa, int16_t *km1, int16_t *tot,        \
                     int32_t *ge)                                                              \
    {                                                                                          \
        const int L = isa == 2 ? 16 : 8, fix = isa == 2 && FIX;                                \
        for (int g = 0; g < GMAX; g++)                                                         \
            for (int j = 0; j < L; j++) /* |x| >= key iff its 16-bit key > km1 */             \
                km1[g * L + j] = g >= G ? INT16_MAX                                            \
                                 : SHIFT ? (int16_t)(((UINT)keys[g] >> SHIFT) - 32768 - 1)     \
                                         : (int16_t)(keys[g] - 1);                             \
        Py_ssize_t full = H - H % L;                                                           \
        for (Py_ssize_t i = 0; i < b; i++) {                                                   \
            const INT *x = bits + i * T * H;                                                   \
            uint8_t *u = uni + i * T * H;                                                      \
            int32_t *ci = counts + i * H * G1;                                                 \
            INT *sm = smax + i * H;                                                            \
            memset(ge, 0, full * GMAX * sizeof(int32_t));                                      \
            for (Py_ssize_t r0 = 0; r0 < T; r0 += SPAN) {                                      \
                Py_ssize_t r1 = r0 + SPAN < T ? r0 + SPAN : T;                                 \
                memset(tot, 0, full * GMAX * sizeof(int16_t));                                 \
                for (Py_ssize_t t0 = r0; t0 < r1; t0 += ROWS) {                                \
                    Py_ssize_t t1 = t0 + ROWS < r1 ? t0 + ROWS : r1;                           \
                    (isa == 2 ? KY : KX)(x, t0, t1, H, full, mask, km1, G, sm, tot, u);        \
                }                                                                              \
                for (Py_ssize_t v = 0; v < full; v += L)                                       \
                    for (int j = 0; j < L; j++) {                                              \
                        /* the pack's lane order: lanes 4-7 hold dims 8-11 and 8-11 dims 4-7 */\
                        int dj = fix && (j & 12) == 4 ? j + 4 : fix && (j & 12) == 8 ? j - 4 : j;  \
                        int32_t *e = ge + (v + dj) * GMAX;                                     \
                        for (int g = 0; g < G; g++)                                            \
                            e[g] -= tot[v * GMAX + g * L + j];                                 \
                    }                                                                          \
            }                                                                                  \
            for (Py_ssize_t d = 0; d < full; d++) {                                            \
                int32_t *c = ci + d * G1, *e = ge + d * GMAX;                                  \
                for (int g = 0; g < G; g++)                                                    \
                    c[g + 1] += e[g] - (g + 1 < G ? e[g + 1] : 0);                             \
            }                                                                                  \
            for (Py_ssize_t t = 0; t < T; t++)                                                 \
                for (Py_ssize_t d = full; d < H; d++) {                                        \
                    INT v = x[t * H + d], a = v & mask;                                        \
                    sm[d] = a > sm[d] ? a : sm[d];                                             \
                    uint8_t lv = lut[KEY(UINT, v, SHIFT)];                                     \
                    ci[d * G1 + lv] += lv != 0;                                                \
                    RAISE(u[t * H + d], lv);                                                   \
                }                                                                              \
        }                                                                                      \
    }
GE_SCAN(ge_scan_i32, int32_t, uint32_t, 15, ge_x_i32, ge_y_i32, 1)
GE_SCAN(ge_scan_i16, int16_t, uint16_t, 0, ge_x_i16, ge_y_i16, 0)
#endif

/* The batch's union (uint8 levels [B, T, H], C-contiguous) after its last site, for the CPU's
 * merge (kernels.union_counts and union_hits), in place of a bincount of (sequence, dim, level)
 * offsets, a nonzero and the hits' divisions by H: passes over int64 arrays the size of the
 * hits, where these read the union 16 levels at a time and write 3 bytes a hit.
 * union_counts adds to ge[i, d, g] the number of positions t with union[i, t, d] > g (int32
 * [B, H, G], G <= 254) and to rows[i * T + t] the number of nonzero levels in that row (int64).
 * union_hits: the dims (uint16 or int32) and levels (uint8) of the nonzero levels of n rows of
 * H, in (row, dim) order, their number returned (-1 where they would not fit in cap entries:
 * whole blocks of 16 are written, the count advanced by their hits). */
#define UBLOCK 16
#define UROWS 255 /* positions counted in 8-bit lanes before they are added up in 32 bits */
#if defined(__SSE2__) && !defined(SCAN_PORTABLE)
static void union_counts_c(const uint8_t *uni, Py_ssize_t B, Py_ssize_t T, Py_ssize_t H, int G,
                           int32_t *ge, int64_t *rows)
{
    Py_ssize_t full = H - H % UBLOCK;
    __m128i at[254], acc[254]; /* at[g]: g + 1 in every lane */
    for (int g = 0; g < G; g++) at[g] = _mm_set1_epi8((char)(g + 1));
    for (Py_ssize_t i = 0; i < B; i++) {
        const uint8_t *u = uni + i * T * H;
        int32_t *gi = ge + i * H * G;
        int64_t *ri = rows + i * T;
        for (Py_ssize_t d = 0; d < full; d += UBLOCK)
            for (Py_ssize_t t0 = 0; t0 < T; t0 += UROWS) {
                Py_ssize_t t1 = t0 + UROWS < T ? t0 + UROWS : T;
                int any = 0;
                for (int g = 0; g < G; g++) acc[g] = _mm_setzero_si128();
                for (Py_ssize_t t = t0; t < t1; t++) {
                    __m128i v = _mm_loadu_si128((const __m128i *)(u + t * H + d));
                    int nz = 0xFFFF ^ _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128()));
                    if (!nz)
                        continue;
                    any = 1;
                    ri[t] += __builtin_popcount(nz);
                    for (int g = 0; g < G; g++) /* v >= g + 1 (unsigned): max(v, g + 1) == v */
                        acc[g] = _mm_sub_epi8(acc[g], _mm_cmpeq_epi8(_mm_max_epu8(v, at[g]), v));
                }
                if (!any)
                    continue;
                for (int g = 0; g < G; g++) {
                    uint8_t lanes[UBLOCK];
                    _mm_storeu_si128((__m128i *)lanes, acc[g]);
                    for (int j = 0; j < UBLOCK; j++) gi[(d + j) * G + g] += lanes[j];
                }
            }
        for (Py_ssize_t t = 0; t < T; t++)
            for (Py_ssize_t d = full; d < H; d++) {
                uint8_t v = u[t * H + d];
                ri[t] += v != 0;
                for (int g = 0; g < v && g < G; g++) gi[d * G + g] += 1;
            }
    }
}
#define NONZERO(p) (0xFFFF ^ _mm_movemask_epi8(_mm_cmpeq_epi8(                                 \
                                 _mm_loadu_si128((const __m128i *)(p)), _mm_setzero_si128())))
#else
static void union_counts_c(const uint8_t *uni, Py_ssize_t B, Py_ssize_t T, Py_ssize_t H, int G,
                           int32_t *ge, int64_t *rows)
{
    for (Py_ssize_t i = 0; i < B; i++)
        for (Py_ssize_t t = 0; t < T; t++)
            for (Py_ssize_t d = 0; d < H; d++) {
                uint8_t v = uni[(i * T + t) * H + d];
                rows[i * T + t] += v != 0;
                for (int g = 0; g < v && g < G; g++) ge[(i * H + d) * G + g] += 1;
            }
}
#define NONZERO(p) 1
#endif

#define UNION_HITS(NAME, DIM)                                                                  \
    static Py_ssize_t NAME(const uint8_t *uni, Py_ssize_t n, Py_ssize_t H, DIM *dims,         \
                           uint8_t *levels, Py_ssize_t cap)                                    \
    {                                                                                          \
        Py_ssize_t full = H - H % UBLOCK, k = 0;                                               \
        for (Py_ssize_t r = 0; r < n; r++) {                                                   \
            const uint8_t *u = uni + r * H;                                                    \
            for (Py_ssize_t d0 = 0; d0 < full; d0 += UBLOCK) {                                 \
                if (!NONZERO(u + d0))                                                          \
                    continue;                                                                  \
                if (k + UBLOCK > cap)                                                          \
                    return -1; /* more hits than the arrays hold */                           \
                for (int j = 0; j < UBLOCK; j++) {                                             \
                    uint8_t v = u[d0 + j];                                                     \
                    dims[k] = (DIM)(d0 + j);                                                   \
                    levels[k] = v;                                                             \
                    k += v != 0;                                                               \
                }                                                                              \
            }                                                                                  \
            for (Py_ssize_t d = full; d < H; d++) {                                            \
                if (k >= cap)                                                                  \
                    return -1;                                                                 \
                dims[k] = (DIM)d;                                                              \
                levels[k] = u[d];                                                              \
                k += u[d] != 0;                                                                \
            }                                                                                  \
        }                                                                                      \
        return k;                                                                              \
    }
UNION_HITS(union_hits_u16, uint16_t)
UNION_HITS(union_hits_i32, int32_t)

static PyObject *union_counts(PyObject *self, PyObject *args)
{
    Py_ssize_t uni, B, T, H, ge, rows;
    int G;
    if (!PyArg_ParseTuple(args, "nnnninn", &uni, &B, &T, &H, &G, &ge, &rows))
        return NULL;
    if (G < 1 || G > 254) {
        PyErr_SetString(PyExc_ValueError, "union counts: 1 to 254 levels");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    union_counts_c((const uint8_t *)uni, B, T, H, G, (int32_t *)ge, (int64_t *)rows);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *union_hits(PyObject *self, PyObject *args)
{
    Py_ssize_t uni, n, H, dims, dim_size, levels, cap, k;
    if (!PyArg_ParseTuple(args, "nnnnnnn", &uni, &n, &H, &dims, &dim_size, &levels, &cap))
        return NULL;
    if (dim_size != 2 && dim_size != 4) {
        PyErr_SetString(PyExc_ValueError, "union hits: dims are 2 or 4 bytes wide");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (dim_size == 2)
        k = union_hits_u16((const uint8_t *)uni, n, H, (uint16_t *)dims, (uint8_t *)levels, cap);
    else
        k = union_hits_i32((const uint8_t *)uni, n, H, (int32_t *)dims, (uint8_t *)levels, cap);
    Py_END_ALLOW_THREADS
    return PyLong_FromSsize_t(k);
}


/* For Dettmers' "% of positions affected" (criteria.positions_affected): the number of rows of a
 * CSR of hits (indptr int64 [n + 1], dims uint16 or int32, levels uint8) with some hit at a level
 * >= need[dim] (uint8 [H]; 255, above every level, for a dim not asked for), each row read up to
 * its first such hit; -1 where a dim lies outside need. Where outliers are dense that is a few
 * hits a row, in place of a mask, a gather and a running count over millions of hits. */
#define ROWS_REACHING(NAME, DIM)                                                               \
    static Py_ssize_t NAME(const int64_t *indptr, Py_ssize_t n, const DIM *dims,              \
                           const uint8_t *levels, const uint8_t *need, Py_ssize_t H)           \
    {                                                                                          \
        Py_ssize_t rows = 0;                                                                   \
        for (Py_ssize_t r = 0; r < n; r++)                                                     \
            for (int64_t k = indptr[r]; k < indptr[r + 1]; k++) {                              \
                int64_t d = (int64_t)dims[k];                                                  \
                if (d < 0 || d >= H)                                                           \
                    return -1;                                                                 \
                if (levels[k] >= need[d]) {                                                    \
                    rows++;                                                                    \
                    break;                                                                     \
                }                                                                              \
            }                                                                                  \
        return rows;                                                                           \
    }
ROWS_REACHING(rows_reaching_u16, uint16_t)
ROWS_REACHING(rows_reaching_i32, int32_t)

static PyObject *rows_reaching(PyObject *self, PyObject *args)
{
    Py_ssize_t indptr, n, dims, dim_size, levels, need, H, rows;
    if (!PyArg_ParseTuple(args, "nnnnnnn", &indptr, &n, &dims, &dim_size, &levels, &need, &H))
        return NULL;
    if (dim_size != 2 && dim_size != 4) {
        PyErr_SetString(PyExc_ValueError, "rows reaching: dims are 2 or 4 bytes wide");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (dim_size == 2)
        rows = rows_reaching_u16((const int64_t *)indptr, n, (const uint16_t *)dims,
                                 (const uint8_t *)levels, (const uint8_t *)need, H);
    else
        rows = rows_reaching_i32((const int64_t *)indptr, n, (const int32_t *)dims,
                                 (const uint8_t *)levels, (const uint8_t *)need, H);
    Py_END_ALLOW_THREADS
    return PyLong_FromSsize_t(rows);
}

/* 0: the table look-ups of site_scan_*; 1: the compares on SSE2; 2: on AVX2 (this CPU's) */
static int best_isa(void)
{
#ifdef AVX2_KERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2"))
        return 2;
#endif
#ifdef GE_KERNELS
    return 1;
#else
    return 0;
#endif
}

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
    Py_ssize_t bits, itemsize, b, T, H, mask, lut, key0, smax, counts, G1, uni, keys;
    int shift, G, isa;
    if (!PyArg_ParseTuple(args, "nnnnnninnnnnnnii", &bits, &itemsize, &b, &T, &H, &mask, &shift,
                          &lut, &key0, &smax, &counts, &G1, &uni, &keys, &G, &isa))
        return NULL;
    if ((itemsize != 2 || shift != 0 || mask != 0x7FFF) &&
        (itemsize != 4 || shift != 15 || mask != 0x7FFFFFFF)) {
        PyErr_SetString(PyExc_ValueError,
                        "site scan: 2-byte patterns take shift 0, 4-byte ones shift 15");
        return NULL;
    }
    if (isa < 0 || isa > best_isa() || (isa > 0 && (G < 1 || G > 16 || G1 != G + 1))) {
        PyErr_SetString(PyExc_ValueError, "site scan: no such kernel for this grid or CPU");
        return NULL;
    }
    /* scratch: a row's hits (the table look-ups); or the keys in lanes, the per-threshold
     * counts of a span of positions in the bits' width and in int32 (the compares) */
    void *idx = PyMem_RawMalloc(isa == 0 ? (H + BLOCK) * sizeof(int32_t)
                                         : GMAX * 32 + (size_t)H * GMAX * (2 + 4));
    if (idx == NULL)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    if (isa == 0 && itemsize == 4)
        site_scan_i32((const int32_t *)bits, b, T, H, (int32_t)mask, (const uint8_t *)lut,
                      (int32_t)key0, (int32_t *)smax, (int32_t *)counts, G1, (uint8_t *)uni,
                      (int32_t *)idx);
    else if (isa == 0)
        site_scan_i16((const int16_t *)bits, b, T, H, (int16_t)mask, (const uint8_t *)lut,
                      (int16_t)key0, (int16_t *)smax, (int32_t *)counts, G1, (uint8_t *)uni,
                      (int32_t *)idx);
#ifdef GE_KERNELS
    else if (itemsize == 4)
        ge_scan_i32((const int32_t *)bits, b, T, H, (int32_t)mask, (const uint8_t *)lut,
                    (const int32_t *)keys, G, (int32_t *)smax, (int32_t *)counts, G1,
                    (uint8_t *)uni, isa, (int16_t *)idx, (int16_t *)((char *)idx + GMAX * 32),
                    (int32_t *)((char *)idx + GMAX * 32 + (size_t)H * GMAX * 2));
    else
        ge_scan_i16((const int16_t *)bits, b, T, H, (int16_t)mask, (const uint8_t *)lut,
                    (const int16_t *)keys, G, (int16_t *)smax, (int32_t *)counts, G1,
                    (uint8_t *)uni, isa, (int16_t *)idx, (int16_t *)((char *)idx + GMAX * 32),
                    (int32_t *)((char *)idx + GMAX * 32 + (size_t)H * GMAX * 2));
#endif
    Py_END_ALLOW_THREADS
    PyMem_RawFree(idx);
    Py_RETURN_NONE;
}

static PyObject *isa(PyObject *self, PyObject *args) { return PyLong_FromLong(best_isa()); }

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "The dense scan of one chunk (see harness/engine/kernels.py)."},
    {"site_scan", site_scan, METH_VARARGS,
     "A site chunk at any density in one read (see harness/engine/kernels.py)."},
    {"union_counts", union_counts, METH_VARARGS,
     "A union's counts per (sequence, dim, level) and per row (see harness/engine/kernels.py)."},
    {"union_hits", union_hits, METH_VARARGS,
     "A union's nonzero levels and their dims (see harness/engine/kernels.py)."},
    {"rows_reaching", rows_reaching, METH_VARARGS,
     "Rows of a CSR of hits with a hit at its dim's level (see harness/engine/kernels.py)."},
    {"isa", isa, METH_NOARGS,
     "The best site scan this CPU runs: 0 table look-ups, 1 SSE2 compares, 2 AVX2 compares."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
