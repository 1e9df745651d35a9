"""The dense scan of a CPU site activation as one fused kernel (C, ``_scan.c``).

Where hits are dense, the capture needs, for every value, its grid level, the count per
(sequence, dim, level) and the per-position max over sites (the union). With PyTorch ops that is
five passes over the chunk (sign mask, shift, table look-up, offsets' add, bincount with its own
min/max passes): ~4.5 ns per value on one CPU thread, each op at the speed of its own kernel
(docs/performance.md, "Outlier density"). The kernel does it in one read of the values' bit
patterns, with the same level table (``capture._Thresholds.table``), so its figures are the
PyTorch path's exactly (tests compare the two on every path and dtype).

It is C rather than numba: numba's import and LLVM start-up cost ~130 MiB of resident memory,
more than the harness's whole memory budget next to a small model. On the GPU the PyTorch ops
stay: there they run at memory bandwidth beside the matmuls. Where the extension was not built
(no C compiler at install time) the CPU uses them too (``dense_scan`` returns None).

``site_scan`` goes further where no observer reads a site's hits: the whole site in one read,
at any density: the max |x| per (sequence, dim) from the bit patterns (no block-max pre-pass),
and only for the values that reach grid[0] their level, count and union, so that a value under
the grid costs a read and a compare (16 at a time, SSE2 on x86-64, plain C elsewhere). On
x86-64, for grids of up to 16 magnitudes (every grid the harness makes), the levels and counts
come from compares instead: per threshold, a compare and two adds for 8 (SSE2) or 16 (AVX2,
chosen at run time) values at once, and the counts per level from the counts of values that
reach each threshold; at 50 % outlier dims that halves the kernel's time (docs/performance.md).
"""

from __future__ import annotations

import numpy as np

_SCAN = []  # the wrapped kernels (dense scan, site scan, union counts and hits, rows reaching)
SITE_ISAS = []  # the site scan's kernels this CPU runs (see site_scan's isa)


def _wrap(kernel):
    def scan(bits, mask, shift, lut, cols, full, counts, union, lev, write_lev):
        """bits [b, T, H] (int32 or int16: the values' bit patterns, any strides); a value's
        level is lut[(bits & mask) >> shift]; for the columns ``cols`` (int64; every column when
        ``full``) adds 1 to counts[i, d, level] (int64, C-contiguous [b, H, G + 1]), raises
        union[i, t, d] (uint8 [b, T, H], any strides) to the level and, when ``write_lev``,
        stores it in lev[i, t, j] (uint8, C-contiguous [b, T, len(cols)])."""
        b, T, H = bits.shape
        G1, shift = counts.shape[-1], int(shift)
        h = H if full else cols.shape[0]
        # the C loop trusts these: a wrong array here would write outside its buffers
        if not (
            bits.dtype in (np.int16, np.int32)
            and lut.dtype == np.uint8
            and lut.flags.c_contiguous
            and lut.shape[0] > (np.iinfo(bits.dtype).max >> shift)
            and counts.dtype == np.int64
            and counts.flags.c_contiguous
            and counts.shape == (b, H, G1)
            and union.dtype == np.uint8
            and union.shape == (b, T, H)
            and (full or (cols.dtype == np.int64 and cols.flags.c_contiguous))
            and (not write_lev or (lev.dtype == np.uint8 and lev.flags.c_contiguous))
            and (not write_lev or lev.shape == (b, T, h))
        ):
            raise ValueError("dense scan: arrays of the wrong dtype, shape or layout")
        if not full and h and (cols.min() < 0 or cols.max() >= H):
            raise ValueError("dense scan: a column index outside the chunk")
        if lut[: (np.iinfo(bits.dtype).max >> shift) + 1].max(initial=0) >= G1:
            raise ValueError("dense scan: a level beyond the counts' last")
        item = bits.itemsize
        kernel(
            bits.ctypes.data,
            item,
            *(s // item for s in bits.strides),
            b,
            T,
            H,
            int(mask),
            int(shift),
            lut.ctypes.data,
            cols.ctypes.data if not full else 0,
            h,
            bool(full),
            counts.ctypes.data,
            G1,
            union.ctypes.data,
            *union.strides,
            lev.ctypes.data if write_lev else 0,
        )

    return scan


def _wrap_site(kernel, best: int):
    def site_scan(bits, mask, shift, lut, keys, smax, counts, union, isa=None):
        """bits [b, T, H] (int32 or int16, C-contiguous: the values' bit patterns); raises
        smax[i, d] (bits' dtype, [b, H]) to the max of bits & mask over t; for every value
        whose bits & mask >= keys[0], of level lv = lut[(bits & mask) >> shift] (= the number
        of ``keys``, the thresholds' patterns in ascending order, that it reaches): adds 1 to
        counts[i, d, lv] (int32, [b, H, G + 1]; level 0 is not counted) and raises
        union[i, t, d] (uint8, [b, T, H]) to lv. All C-contiguous. ``isa``: the kernel (0:
        table look-ups, 1: SSE2 compares, 2: AVX2 compares); default the best this CPU runs
        for the grid (compares for up to 16 thresholds)."""
        b, T, H = bits.shape
        G1, shift = counts.shape[-1], int(shift)
        top = np.iinfo(bits.dtype).max >> shift
        keys = np.ascontiguousarray(keys, dtype=bits.dtype)
        G = keys.shape[0]
        # the C loop trusts these: a wrong array here would write outside its buffers
        if not (
            bits.dtype in (np.int16, np.int32)
            and bits.flags.c_contiguous
            and lut.dtype == np.uint8
            and lut.flags.c_contiguous
            and lut.shape[0] > top
            and smax.dtype == bits.dtype
            and smax.flags.c_contiguous
            and smax.shape == (b, H)
            and counts.dtype == np.int32
            and counts.flags.c_contiguous
            and counts.shape == (b, H, G1)
            and union.dtype == np.uint8
            and union.flags.c_contiguous
            and union.shape == (b, T, H)
            and G >= 1
            and G1 == G + 1
            and (keys > 0).all()
        ):
            raise ValueError("site scan: arrays of the wrong dtype, shape or layout")
        if lut[: top + 1].max(initial=0) >= G1:
            raise ValueError("site scan: a level beyond the counts' last")
        if ((keys.astype(np.int64) & ((1 << shift) - 1)) != 0).any():
            raise ValueError("site scan: thresholds not exact at the table's resolution")
        compares = G <= 16 and bool((np.diff(keys) >= 0).all())
        if isa is None:
            isa = best if compares else 0
        elif isa and not compares:
            raise ValueError("site scan: compares need at most 16 thresholds, in ascending order")
        kernel(
            bits.ctypes.data,
            bits.itemsize,
            b,
            T,
            H,
            int(mask),
            shift,
            lut.ctypes.data,
            int(keys[0]),
            smax.ctypes.data,
            counts.ctypes.data,
            G1,
            union.ctypes.data,
            keys.ctypes.data,
            G,
            int(isa),
        )

    return site_scan


def _wrap_union(counts_kernel, hits_kernel):
    def union_counts(union, G, ge, rows):
        """union (uint8 [B, T, H], C-contiguous: levels 0..G): adds to ge[i, d, g] (int32
        [B, H, G]) the number of positions whose level in dim d of sequence i is > g, and to
        rows[i * T + t] (int64 [B * T]) the number of nonzero levels of that position."""
        B, T, H = union.shape
        if not (
            union.dtype == np.uint8
            and union.flags.c_contiguous
            and 1 <= G <= 254
            and ge.dtype == np.int32
            and ge.flags.c_contiguous
            and ge.shape == (B, H, G)
            and rows.dtype == np.int64
            and rows.flags.c_contiguous
            and rows.shape == (B * T,)
        ):
            raise ValueError("union counts: arrays of the wrong dtype, shape or layout")
        counts_kernel(union.ctypes.data, B, T, H, int(G), ge.ctypes.data, rows.ctypes.data)

    def union_hits(union, total, dim_dtype):
        """The dims (``dim_dtype``: uint16 or int32) and levels (uint8) of the nonzero levels
        of union ([n, H] rows, uint8, C-contiguous), in (row, dim) order; ``total``: their
        number (from union_counts' rows)."""
        n, H = union.shape
        dim_dtype = np.dtype(dim_dtype)
        if not (
            union.dtype == np.uint8
            and union.flags.c_contiguous
            and dim_dtype in (np.dtype(np.uint16), np.dtype(np.int32))
            and H - 1 <= np.iinfo(dim_dtype).max
        ):
            raise ValueError("union hits: arrays of the wrong dtype, shape or layout")
        # the kernel writes whole blocks of 16 and counts only their hits: 16 of slack
        dims = np.empty(total + 16, dim_dtype)
        levels = np.empty(total + 16, np.uint8)
        k = hits_kernel(
            union.ctypes.data,
            n,
            H,
            dims.ctypes.data,
            dim_dtype.itemsize,
            levels.ctypes.data,
            dims.shape[0],
        )
        if k != total:  # -1: more than total, stopped before the arrays' end
            raise ValueError(f"union hits: not the {total} nonzero levels counted")
        return dims[:total], levels[:total]

    return union_counts, union_hits


def _wrap_rows(kernel):
    def rows_reaching(indptr, dims, levels, need):
        """The number of rows of the CSR (indptr int64 [n + 1]; dims uint16 or int32 and levels
        uint8, aligned) with some hit at a level >= need[dim] (need: uint8 [H]; 255 for a dim
        not asked for, above every level a grid gives)."""
        indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        dims, levels = np.ascontiguousarray(dims), np.ascontiguousarray(levels)
        need = np.ascontiguousarray(need, dtype=np.uint8)
        n = indptr.shape[0] - 1
        # the C loop trusts the row bounds: they must lie inside the hits, in order
        if not (
            dims.dtype in (np.uint16, np.int32)
            and levels.dtype == np.uint8
            and dims.shape == levels.shape
            and dims.ndim == 1
            and n >= 0
            and indptr[0] >= 0
            and indptr[-1] <= dims.shape[0]
            and bool(np.all(indptr[1:] >= indptr[:-1]))
        ):
            raise ValueError("rows reaching: arrays of the wrong dtype, shape or order")
        rows = kernel(
            indptr.ctypes.data,
            n,
            dims.ctypes.data,
            dims.itemsize,
            levels.ctypes.data,
            need.ctypes.data,
            need.shape[0],
        )
        if rows < 0:
            raise ValueError("rows reaching: a hit's dim outside the dims")
        return rows

    return rows_reaching


def _load():
    if not _SCAN:
        try:
            from harness.engine import _scan
        except ImportError:  # the PyTorch ops compute the same figures, slower
            _SCAN.extend((None, None, None, None, None))
        else:
            _SCAN.extend((_wrap(_scan.scan), _wrap_site(_scan.site_scan, _scan.isa())))
            _SCAN.extend(_wrap_union(_scan.union_counts, _scan.union_hits))
            _SCAN.append(_wrap_rows(_scan.rows_reaching))
            SITE_ISAS.extend(range(_scan.isa() + 1))
    return _SCAN


def dense_scan():
    """The kernel (single-threaded, releases the GIL), or None where it was not built."""
    return _load()[0]


def site_scan():
    """The one-read kernel of a whole site chunk (single-threaded, releases the GIL), or None
    where the extension was not built."""
    return _load()[1]


def union_kernels():
    """(union_counts, union_hits): the CPU merge's reads of a batch's union, or (None, None)
    where the extension was not built."""
    return tuple(_load()[2:4])


def rows_reaching():
    """The count of rows of a CSR of hits with a hit of the asked dims at their levels (for
    "% of positions affected"), or None where the extension was not built."""
    return _load()[4]


NO_LEVELS = np.zeros((0, 0, 0), dtype=np.uint8)
