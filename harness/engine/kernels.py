"""The dense scan of a CPU site activation as one fused kernel (compiled by numba).

Where hits are dense, the capture needs, for every value, its grid level, the count per
(sequence, dim, level) and the per-position max over sites (the union). With PyTorch ops that is
five passes over the chunk (sign mask, shift, table look-up, offsets' add, bincount with its own
min/max passes): ~4.5 ns per value on one CPU thread, each op at the speed of its own kernel
(docs/performance.md, "Outlier density"). This kernel does it in one read of the values' bit
patterns, with the same level table (``capture._Thresholds.table``), so its figures are the
PyTorch path's exactly (tests compare the two on every path and dtype).

On the GPU the PyTorch ops stay: there they run at memory bandwidth beside the matmuls. When
numba cannot be imported the CPU uses them too (``dense_scan`` returns None).
"""

from __future__ import annotations

import numpy as np

_SCAN = []  # the compiled kernel, or None when numba is unavailable; built on first use


def _scan(bits, mask, shift, lut, cols, full, counts, union, lev, write_lev):
    """bits [b, T, H] (int32 or int16: the values' bit patterns); a value's level is
    lut[(bits & mask) >> shift]; for the columns ``cols`` (every column when ``full``) adds 1 to
    counts[i, d, level] (int64 [b, H, G + 1]), raises union[i, t, d] (uint8 [b, T, H]) to the
    level and, when ``write_lev``, stores it in lev[i, t, j] (uint8 [b, T, len(cols)])."""
    b, T, H = bits.shape
    h = H if full else cols.shape[0]
    for i in range(b):
        ci = counts[i]
        for t in range(T):
            row = bits[i, t]
            urow = union[i, t]
            for j in range(h):
                d = j if full else cols[j]
                lv = lut[(row[d] & mask) >> shift]
                ci[d, lv] += 1
                if lv > urow[d]:
                    urow[d] = lv
                if write_lev:
                    lev[i, t, j] = lv


def dense_scan():
    """The compiled ``_scan`` (single-threaded, releases the GIL), or None without numba."""
    if not _SCAN:
        try:
            import numba
        except ImportError:  # the PyTorch ops compute the same figures, slower
            _SCAN.append(None)
        else:
            _SCAN.append(numba.njit(nogil=True, cache=True)(_scan))
    return _SCAN[0]


NO_LEVELS = np.zeros((0, 0, 0), dtype=np.uint8)
