"""The reductions of one site activation, on its device: the one torch path every device runs.

For each site activation ``x`` ([B, T, H]) ``reduce_site`` computes, chunk by chunk of whole
sequences, on x's device and in x's dtype:

- the max |x| over blocks of K positions per dim (K = 16 when T allows), by one amax and one
  amin over x (two reads, nothing written at activation size); from it the per-sequence max per
  dim (-> how many sites each dim reaches each grid magnitude at, per sequence; the site's max
  per dim; the sequence's max per dim);
- for the dims (columns) where more than ``CaptureTuning.dense_fraction`` of the blocks reach
  grid[0] (the systematic outlier dims of dense models), a uint8 grid level for every value of
  those columns, the counts per (sequence, dim, level) by one bincount and the per-position union
  over sites by one elementwise max; when most columns qualify, of the whole chunk without the
  gather;
- for the other columns, the sparse set of values with |x| >= grid[0] and their grid level,
  found by re-reading only the blocks whose max reaches grid[0]: the same counts and union.

Both strategies give the same figures (tests run each alone against a brute-force oracle); the
density of the chunk chooses, never the device. A value's grid level comes from a lookup table
indexed by the high bits of |x|'s bit pattern (whose integer order is the order of the values)
when the grid allows it (any grid in 16-bit dtypes; the default one in float32), else from one
compare per magnitude; both are exact. ``first_position`` keeps the window's first position
apart; ``union_figures`` reads a batch's union once it is complete.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from harness.engine import host_memory
from harness.engine.tuning import CaptureTuning


def dtype_threshold(m: float, dtype: torch.dtype) -> torch.Tensor:
    """The smallest value representable in ``dtype`` that is >= m, as a 0-d tensor of ``dtype``.

    With it, ``|x| >= t`` evaluated in ``dtype`` equals ``|x| >= m`` over the real numbers for
    every x representable in ``dtype``: thresholds never round down into a pass.
    """
    t = torch.tensor(float(m), dtype=torch.float64).to(dtype)
    if float(t) < m:
        int_type = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        t = (t.view(int_type) + 1).view(dtype)  # next representable value up (m > 0)
    return t


class Thresholds:
    """Grid thresholds per (device, dtype), cached, and the grid level of |x| values."""

    def __init__(self, grid: Sequence[float]):
        self.grid = tuple(grid)
        self._cache: dict = {}

    def floats(self, device: torch.device, dtype: torch.dtype) -> tuple[float, ...]:
        """The thresholds of ``get`` as Python floats (exact: each is a value of ``dtype``)."""
        key = ("floats", device, dtype)
        if key not in self._cache:
            self._cache[key] = tuple(float(t) for t in self.get(device, dtype)[0].cpu())
        return self._cache[key]

    def get(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, float]:
        key = (device, dtype)
        if key not in self._cache:
            thr = torch.stack([dtype_threshold(m, dtype) for m in self.grid]).to(device)
            self._cache[key] = (thr, float(thr[0]))
        return self._cache[key]

    def table(self, device: torch.device, dtype: torch.dtype):
        """(lut, shift) with level(x) = lut[(bits(x) & ~sign) >> shift] for every value x of
        ``dtype``, or None when the grid does not allow it.

        For non-negative floats (+inf included) the order of the values is the order of their
        bit patterns read as integers, so |x| >= t iff bits(|x|) >= bits(t), and iff
        bits(|x|) >> shift >= bits(t) >> shift when the low ``shift`` bits of bits(t) are 0.
        16-bit dtypes: shift 0, a table of 2^15 entries, any grid. float32: shift 15, 2^16
        entries, thresholds with at most 8 significant bits (3..100, and the bf16-rounded
        threshold 5.984375 of float32 runs). A NaN reads as the top level; its batch fails at
        the merge, which checks every site's max.
        """
        key = ("table", device, dtype)
        if key not in self._cache:
            self._cache[key] = None
            ints = {2: torch.int16, 4: torch.int32}.get(dtype.itemsize)
            shift = {2: 0, 4: 15}.get(dtype.itemsize)
            if ints is not None and dtype.is_floating_point:
                thr = self.get(torch.device("cpu"), dtype)[0]
                bits = thr.view(ints).to(torch.int64)
                if bool((bits % (1 << shift) == 0).all()):
                    keys = torch.arange(1 << (8 * dtype.itemsize - 1 - shift), dtype=torch.int64)
                    lut = (keys.unsqueeze(1) >= (bits >> shift).unsqueeze(0)).sum(dim=1)
                    self._cache[key] = (lut.to(torch.uint8).to(device), shift)
        return self._cache[key]

    def levels(self, x: torch.Tensor, ints=None, out=None) -> torch.Tensor:
        """The grid level (0..G, uint8) of every value of ``x`` (contiguous); ``ints`` (int32)
        and ``out`` (uint8): optional buffers of x's shape. Two passes and one table look-up
        (``table``), instead of one compare per magnitude or a binary search per value."""
        table = self.table(x.device, x.dtype)
        out = torch.empty(x.shape, dtype=torch.uint8, device=x.device) if out is None else out
        if table is None:  # any grid: one exact compare per magnitude
            a = x.abs()
            t = self.floats(x.device, x.dtype)
            mask = torch.empty(x.shape, dtype=torch.bool, device=x.device)
            torch.ge(a, t[0], out=out.view(torch.bool))  # bool and uint8 share a layout
            for g in range(1, len(t)):
                torch.ge(a, t[g], out=mask)
                out.add_(mask.view(torch.uint8))
            return out
        lut, shift = table
        ints = torch.empty(x.shape, dtype=torch.int32, device=x.device) if ints is None else ints
        if x.element_size() == 2:
            torch.bitwise_and(x.view(torch.int16), 0x7FFF, out=ints)
        else:
            torch.bitwise_and(x.view(torch.int32), 0x7FFFFFFF, out=ints)
            ints.bitwise_right_shift_(shift)
        torch.index_select(lut, 0, ints.view(-1), out=out.view(-1))
        return out


class DeviceBatch:
    """Partial reductions of one batch on one device (rows of sites that ran elsewhere stay 0)."""

    def __init__(
        self,
        device,
        B: int,
        T: int,
        hidden: int,
        num_grid: int,
        num_sites: int,
        tuning: CaptureTuning | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        H, G, S = hidden, num_grid, num_sites
        tuning = tuning or CaptureTuning()
        self.device = device
        # kept for the whole batch: outside the CPU heap (harness.engine.host_memory)
        self.union = host_memory.zeros((B, T, H), torch.uint8, device)
        self.smax = host_memory.zeros((S, B, H), torch.float32, device)  # max |x| over T
        self.level = host_memory.zeros((S, B, H), torch.uint8, device)  # its grid level
        # the same without the window's first position, and that position's own level
        self.smax_rest = host_memory.zeros((S, B, H), torch.float32, device)
        self.level_rest = host_memory.zeros((S, B, H), torch.uint8, device)
        self.level_first = host_memory.zeros((S, B, H), torch.uint8, device)
        self.hist = host_memory.zeros((S, G + 1), torch.int64, device)
        self.occ = host_memory.zeros(B * H * (G + 1), torch.int64, device)
        self._one = torch.ones(1, dtype=torch.int64, device=device)
        self._offsets: dict = {}
        self._hidden, self._levels = H, G + 1
        # every scratch the hooks use, at its largest, made here, before the pass: grown by a
        # hook it would sit in the CPU heap between the activations the pass frees
        # (docs/performance.md, "The CPU heap")
        per_chunk = tuning.sequences_per_chunk(torch.device(device).type, B, T * H)
        numel = per_chunk * T * H
        self.ints = host_memory.empty(numel, torch.int32, device)
        self.lev = host_memory.empty(numel, torch.uint8, device)
        # gathered dense columns: at most ``dense_columns`` of them, else the whole chunk is
        cols = per_chunk * T * (H if tuning.dense_columns >= 1 else int(tuning.dense_columns * H))
        self.cols = host_memory.empty(cols, dtype, device)
        for b in {per_chunk, B % per_chunk or per_chunk}:
            self.level_offsets(b, H, G)
        self.offsets(block(T), H)

    def buffers(self, shape):
        """Chunk-sized scratch: an int32 map and a uint8 map."""
        numel = math.prod(shape)
        if self.ints is None or self.ints.numel() < numel:
            self.ints = host_memory.empty(numel, torch.int32, self.device)
            self.lev = host_memory.empty(numel, torch.uint8, self.device)
        return self.ints[:numel].view(shape), self.lev[:numel].view(shape)

    def gathered(self, rows: int, h: int, like: torch.Tensor) -> torch.Tensor:
        """Scratch of ``like``'s dtype for the chunk's dense columns side by side, [rows, h]."""
        numel = rows * h
        buf = self.cols
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype:
            buf = self.cols = host_memory.empty(numel, like.dtype, self.device)
        return buf[:numel].view(rows, h)

    def level_offsets(self, b: int, H: int, G: int) -> torch.Tensor:
        """(bi * H + d) * (G + 1) as int32 [b, 1, H]: a level map plus these is the flat index
        of (sequence, dim, level) in ``occ``."""
        key = ("levels", b, H, G)
        if key not in self._offsets:
            idx = torch.arange(b * H, dtype=torch.int32, device=self.device) * (G + 1)
            self._offsets[key] = idx.view(b, 1, H)
        return self._offsets[key]

    def level_counts(self, lev: torch.Tensor, offsets: torch.Tensor, ints: torch.Tensor):
        """Counts per (sequence, dim, level) of a uint8 level map ``lev`` [b, T, h]: one
        bincount of ``offsets`` ([b, 1, h], from ``level_offsets``) plus the levels, formed in
        ``ints`` (int32 scratch of lev's shape); b * H * (G + 1) int64 counts."""
        torch.add(offsets, lev, out=ints)
        b, H, G1 = lev.shape[0], self._hidden, self._levels
        return torch.bincount(ints.view(-1), minlength=b * H * G1)

    def ones(self, n: int) -> torch.Tensor:
        """n int64 ones (one value, expanded: nothing allocated)."""
        return self._one.expand(n)

    def offsets(self, K: int, H: int) -> torch.Tensor:
        """[0, H, ..., (K-1) H]: flat offsets of the K positions of a block."""
        if (K, H) not in self._offsets:
            self._offsets[K, H] = torch.arange(0, K * H, H, device=self.device)
        return self._offsets[K, H]


Hits = Callable[[torch.Tensor, torch.Tensor], None]


def reduce_site(
    part: DeviceBatch,
    s: int,
    x: torch.Tensor,
    thresholds: Thresholds,
    tuning: CaptureTuning,
    on_hits: Hits | None = None,
) -> None:
    """Site ``s``'s maxima, counts and share of the union in ``part``; ``on_hits(pos, level)``
    (when given) gets every value with |x| >= grid[0]: its flat index into the batch's [B, T, H]
    and its grid level (int64), a chunk at a time (empty tensors for a chunk without one)."""
    thr, t0 = thresholds.get(x.device, x.dtype)
    x = x.contiguous()
    B, T, H = x.shape
    G = len(thresholds.grid)
    K = block(T)
    per_chunk = tuning.sequences_per_chunk(x.device.type, B, T * H)
    union = part.union.view(-1)
    for b0 in range(0, B, per_chunk):  # a few chunks of whole sequences, not values
        b1 = min(B, b0 + per_chunk)
        xc = x[b0:b1]
        # max |x| over blocks of K positions: reads x once, no activation-sized scratch
        x4 = xc.view(b1 - b0, T // K, K, H)
        bmax = torch.maximum(x4.amax(dim=2), x4.amin(dim=2).neg_())  # [b, T/K, H], exact
        smax = bmax.amax(dim=1)  # [b, H], in x's dtype
        part.smax[s, b0:b1] = smax
        part.level[s, b0:b1] = torch.bucketize(smax, thr, right=True)
        qual = bmax >= t0  # [b, T/K, H]: blocks holding a value over the grid
        per_dim = qual.sum(dim=(0, 1))
        cols = (per_dim > tuning.dense_fraction * (qual.numel() // H)).nonzero().squeeze(1)
        if cols.numel() > tuning.dense_columns * H:  # dense nearly everywhere: the whole chunk
            _reduce_dense(part, s, xc, b0, thresholds, None, on_hits)
            continue
        if cols.numel():  # systematic outlier dims: those columns densely
            _reduce_dense(part, s, xc, b0, thresholds, cols, on_hits)
            qual.index_fill_(2, cols, False)
        cand = qual.view(-1).nonzero().squeeze(1)  # (b * T/K + tb) * H + d
        found = _values_over(part, xc, cand, t0, K)
        if found is None:
            if on_hits is not None:  # "no hit here" is news too
                on_hits(part.ones(0), part.ones(0))
            continue
        pos, vals, bd = found  # flat index into xc, |x| there, b * H + d (b within xc)
        level = thresholds.levels(vals)  # 1..G, uint8
        part.hist[s] += torch.bincount(level, minlength=G + 1)
        if b0:
            bd, pos = bd + b0 * H, pos + b0 * T * H
        part.occ.index_add_(0, bd * (G + 1) + level, part.ones(level.numel()))
        if on_hits is not None:
            on_hits(pos, level.long())
        level = torch.maximum(union.index_select(0, pos), level)
        union.index_copy_(0, pos, level)  # positions are distinct within a site


def _reduce_dense(
    part: DeviceBatch, s: int, xc, b0: int, thresholds: Thresholds, cols, on_hits
) -> None:
    """The chunk's counts where hits are dense, in the columns ``cols`` (every column when
    None): a grid level per value (a uint8 map, see ``Thresholds.levels``), then the
    per-(sequence, dim, level) counts by one bincount and the union by one elementwise max.
    No hit list is built unless ``on_hits`` asks for it: where a quarter of the blocks or more
    reach the grid, the index arithmetic of sparse hits costs more than these few passes."""
    b, T, H = xc.shape
    G = len(thresholds.grid)
    if cols is None:
        h, xd = H, xc
        offsets = part.level_offsets(b, H, G)  # ((b * H + d) * (G + 1)), [b, 1, H]
    else:  # the columns side by side, [b * T, h]: torch.gather reads rows, not columns
        h = cols.numel()
        index = cols.expand(b * T, h)
        xd = torch.gather(xc.view(b * T, H), 1, index, out=part.gathered(b * T, h, xc))
        offsets = part.level_offsets(b, H, G)[:, :, cols]
    ints, lev = part.buffers((b, T, h))
    thresholds.levels(xd.view(b, T, h), ints=ints, out=lev)
    counts = part.level_counts(lev, offsets, ints)
    first = b0 * H * (G + 1)
    part.occ[first : first + counts.numel()] += counts
    part.hist[s] += counts.view(-1, G + 1).sum(dim=0)
    union = part.union[b0 : b0 + b]
    if cols is None:
        torch.maximum(union, lev, out=union)
    else:  # positions are distinct within a row: gather, max, scatter back
        union = union.view(b * T, H)
        merged = torch.gather(union, 1, index)
        torch.maximum(merged, lev.view(b * T, h), out=merged)
        union.scatter_(1, index, merged)
    if on_hits is not None:
        bt_j = lev.view(b * T, h).nonzero()
        bt, j = bt_j[:, 0], bt_j[:, 1]
        level = lev.view(b * T, h)[bt, j].long()
        d = j if cols is None else cols.index_select(0, j)
        on_hits((bt + b0 * T) * H + d, level)


def _values_over(part: DeviceBatch, xc: torch.Tensor, cand: torch.Tensor, t0, K: int):
    """Every value of ``xc`` with |x| >= t0 as (flat index, |x|, b * H + d), or None: only the
    candidate blocks (``cand``: flat indices of block maxima >= t0) are read again."""
    b, T, H = xc.shape
    if cand.numel() == 0:
        return None
    q = cand // H  # b * T/K + tb
    base = cand + q * ((K - 1) * H)  # flat index of (b, tb * K, d)
    pos = (base.unsqueeze(1) + part.offsets(K, H)).view(-1)  # the K positions of each block
    vals = xc.reshape(-1).index_select(0, pos).abs_()
    hit = (vals >= t0).nonzero().squeeze(1)
    bd = (cand + (q // (T // K) - q) * H).index_select(0, hit // K)
    return pos.index_select(0, hit), vals.index_select(0, hit), bd


def first_position(part: DeviceBatch, s: int, x: torch.Tensor, thresholds: Thresholds) -> None:
    """The window's first position apart (massive activations live there): its level per
    (sequence, dim), and the max |x| over the other positions. That max equals the one
    ``reduce_site`` found except where the first position holds it; only those (sequence, dim)
    columns are read again (a few dims of a few windows, except at sites where the first
    position is the largest nearly everywhere: then about one more read of the tensor)."""
    thr, _ = thresholds.get(x.device, x.dtype)
    first = x[:, 0, :].abs()  # [B, H], exact in x's dtype
    part.level_first[s] = torch.bucketize(first, thr, right=True)
    smax, rest = part.smax[s], part.smax_rest[s]
    if x.shape[1] == 1:
        rest.zero_()
    else:
        rest.copy_(smax)
        bd = (first.float() >= smax).nonzero()
        if bd.numel():
            cols = x[bd[:, 0], 1:, bd[:, 1]]  # [k, T - 1]
            vals = torch.maximum(cols.amax(dim=1), cols.amin(dim=1).neg())
            rest[bd[:, 0], bd[:, 1]] = vals.float()
    part.level_rest[s] = torch.bucketize(rest.to(x.dtype), thr, right=True)


def union_figures(part: DeviceBatch, union: torch.Tensor, G: int, tuning: CaptureTuning):
    """From a batch's union [B, T, H]: the positions per (sequence, dim) at each grid level or
    above ([B, H, G]), and its hits as the count per position (B * T), their dims (in position
    then dim order) and levels: a bincount of the level map a chunk of sequences at a time in
    the capture's scratch, and one nonzero."""
    B, T, H = union.shape
    dim_dtype = np.uint16 if H <= np.iinfo(np.uint16).max + 1 else np.int32
    pos_counts = torch.zeros(B * H * (G + 1), dtype=torch.int64, device=union.device)
    per_chunk = tuning.sequences_per_chunk(union.device.type, B, T * H)
    for b0 in range(0, B, per_chunk):
        b = min(B, b0 + per_chunk) - b0
        ints, _ = part.buffers((b, T, H))
        offsets = part.level_offsets(b, H, G)
        first = b0 * H * (G + 1)
        c = part.level_counts(union[b0 : b0 + b], offsets, ints)
        pos_counts[first : first + c.numel()] += c
    pos_ge = at_least(pos_counts.view(B, H, G + 1).cpu().numpy())
    flat = union.view(-1).nonzero().squeeze(1)
    level = union.view(-1).index_select(0, flat)
    pos = flat // H
    rows = torch.bincount(pos, minlength=B * T)
    # int32 on the device: half the bytes to the host of the int64 indices
    dims = (flat - pos * H).to(torch.int32).cpu().numpy().astype(dim_dtype)
    return pos_ge, (rows.cpu().numpy(), dims, level.cpu().numpy())


def block(T: int) -> int:
    """Positions per block of the max-|x| pre-pass: the largest of 16, 8, 4, 2, 1 dividing T."""
    return next(k for k in (16, 8, 4, 2, 1) if T % k == 0)


def at_least(counts: np.ndarray) -> np.ndarray:
    """counts[..., l] for levels l = 0..G  ->  number at level >= g for g = 1..G."""
    return np.flip(np.cumsum(np.flip(counts[..., 1:], axis=-1), axis=-1), axis=-1)
