"""One forward pass per batch, hooks at every site, reductions on the device where the site runs.

For each site activation ``x`` ([B, T, H], or [B*T, H] for OPT) the hook computes, chunk by
chunk of whole sequences, on x's device and in x's dtype:

- the max |x| over blocks of K positions per dim (K = 16 when T allows), by one amax and one
  amin over x (two reads, nothing written at activation size); from it the per-sequence max per
  dim (-> how many sites each dim reaches each grid magnitude at, per sequence; the site's max
  per dim; the sequence's max per dim);
- the sparse set of values with |x| >= grid[0] and their grid level, found by re-reading only
  the blocks whose max reaches grid[0], from which the occurrence counts per (sequence, dim,
  magnitude), the per-site counts, and the per-position union over sites (a uint8 level per
  (position, dim), the only activation-sized buffer kept for a batch);
- for the dims (columns) where more than a quarter of the blocks reach grid[0] (the systematic
  outlier dims of dense models), the same counts from a uint8 level map of those columns
  (gathered from the chunk), one bincount and one elementwise max, without hit lists; the other
  columns' candidate blocks are re-read as above. When most columns qualify, the level map is
  made of the whole chunk, without the gather. On the CPU (the C extension ``_scan``) that level map, the
  counts and the union are one fused pass over the values' bit patterns (``kernels.py``),
  without the map unless an observer reads the hits.

On the CPU, at the sites whose hits no observer reads (every site of a dense model), all of the
above is one read of the site by a second kernel (``kernels.site_scan``): the max per (sequence,
dim), and for the values that reach grid[0] only, their level, counts and union; a value under
the grid costs its read and a compare whatever the density (docs/performance.md). On x86-64 the
levels come from vector compares (SSE2, or AVX2 where the CPU has it), and the merge reads the
batch's union with two more kernel passes instead of a bincount and a nonzero.

A value's grid level comes from a lookup table indexed by the high bits of |x|'s bit pattern
(whose integer order is the order of the values) when the grid allows it (any grid in 16-bit
dtypes; the default one in float32), else from one compare per magnitude; both are exact.

On the CPU a hook's reductions run on one thread (``HOOK_THREADS``): they are many small
operations, and when other processes share the cores, each multi-threaded one can wait a
scheduler time slice for its second thread (measured: up to 10x slower hooks, see
docs/performance.md).

Nothing is written to disk, no Python loop runs over values, and every hook is removed when the
capture ends, also on exceptions. Per-batch partial results are merged only when the batch's
forward pass completed, so a batch can be retried at a smaller size after an out-of-memory error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from harness.engine import kernels
from harness.engine.sites import Site, SiteMap, hook_tensor
from harness.engine.statistics import CapturedStats, FirstPosition
from harness.errors import HarnessError, NonFiniteActivations

# Elements processed per chunk: bounds the scratch memory next to the activation itself.
CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 25}
# A dim (column) of a chunk is scanned densely (a grid level for every value) instead of
# re-reading only its blocks whose max reaches grid[0] when more than this fraction of its
# blocks do: a gathered block costs ~10x a value of the dense scan (docs/performance.md).
DENSE_FRACTION = 0.25
# When more than this fraction of a chunk's columns are scanned densely, the whole chunk is,
# without gathering those columns first.
DENSE_COLUMNS = 0.25
# The CPU's dense scan as one fused kernel (harness/engine/kernels.py) instead of five PyTorch
# ops; the same figures (tests compare both), ~2.5x faster where hits are dense.
CPU_KERNEL = True
# On the CPU, where no observer reads a site's hits, all of a site's reductions in one read by
# a second kernel (kernels.site_scan) instead of the block-max pre-pass and the paths above.
SITE_KERNEL = True
# Its kernel (kernels.site_scan's isa): None, the fastest this CPU runs for the grid.
SITE_ISA: int | None = None
# On the CPU, the merge's counts and hits of a batch's union by the extension's two reads
# (kernels.union_kernels) instead of a bincount and a nonzero (the GPU's way).
UNION_KERNEL = True
# Threads for the reductions inside a hook on the CPU (None: as many as the forward pass).
HOOK_THREADS = 1


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


@dataclass
class Batch:
    """What observers learn about the batch being processed."""

    start: int  # index of its first sequence in the run
    token_ids: torch.Tensor  # [B, T] on the CPU
    index: int = 0

    @property
    def size(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.token_ids.shape[1])


class Observer:
    """Extra reductions in the same forward pass (attribution, massive activations, ...).

    Subclasses override what they need. ``attach`` may register its own hooks through
    ``register`` (they are removed with the engine's). ``on_site`` sees every site activation as
    [B, T, H] after the engine's reductions; it must reduce on the device and keep nothing of
    activation size beyond the batch. ``on_hits`` (only called when a subclass overrides it)
    gets the engine's sparse hits of a site, so that an observer need not read the activation
    again to find them: ``pos`` = flat indices into the site's [B, T, H] (b * T * H + t * H +
    d) of every value with |x| >= ``grid[0]``, ``level`` = its grid level (1..len(grid):
    |x| >= grid[level - 1], compared in the activation's dtype), in no particular order; it may
    be called more than once per site and batch (one call per chunk of sequences, with empty
    tensors for a chunk without hits).
    """

    def attach(self, sitemap: SiteMap, register: Callable) -> None: ...

    def begin_batch(self, batch: Batch) -> None: ...

    def on_site(self, site: Site, x: torch.Tensor, batch: Batch) -> None: ...

    def on_hits(
        self,
        site: Site,
        pos: torch.Tensor,
        level: torch.Tensor,
        grid: tuple[float, ...],
        batch: Batch,
    ) -> None: ...

    def wants_hits(self, site: Site) -> bool:
        """Whether ``on_hits`` should get the hits of ``site`` (asked once, after ``attach``);
        where no observer wants them, the engine builds no hit list on its dense paths."""
        return type(self).on_hits is not Observer.on_hits

    def end_batch(self, batch: Batch) -> None: ...

    def abort_batch(self, batch: Batch) -> None: ...

    def finalize(self, stats: CapturedStats) -> None: ...


class _Thresholds:
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


class _DeviceBatch:
    """Partial reductions of one batch on one device (rows of sites that ran elsewhere stay 0)."""

    def __init__(self, device, batch: Batch, hidden: int, num_grid: int, num_sites: int):
        B, T, H, G, S = batch.size, batch.seq_len, hidden, num_grid, num_sites
        self.device = device
        self.union = torch.zeros((B, T, H), dtype=torch.uint8, device=device)
        self.smax = torch.zeros((S, B, H), dtype=torch.float32, device=device)  # max |x| over T
        self.level = torch.zeros((S, B, H), dtype=torch.uint8, device=device)  # its grid level
        # the same without the window's first position, and that position's own level
        self.smax_rest = torch.zeros((S, B, H), dtype=torch.float32, device=device)
        self.level_rest = torch.zeros((S, B, H), dtype=torch.uint8, device=device)
        self.level_first = torch.zeros((S, B, H), dtype=torch.uint8, device=device)
        self.hist = torch.zeros((S, G + 1), dtype=torch.int64, device=device)
        self.occ = torch.zeros(B * H * (G + 1), dtype=torch.int64, device=device)
        self._ones = torch.ones(0, dtype=torch.int64, device=device)
        self.ints: torch.Tensor | None = None
        self.lev: torch.Tensor | None = None
        self.cols: torch.Tensor | None = None
        self._offsets: dict = {}
        self._hidden, self._levels = H, G + 1

    def buffers(self, shape):
        """Chunk-sized scratch: an int32 map and a uint8 map."""
        numel = math.prod(shape)
        if self.ints is None or self.ints.numel() < numel:
            self.ints = torch.empty(numel, dtype=torch.int32, device=self.device)
            self.lev = torch.empty(numel, dtype=torch.uint8, device=self.device)
        return self.ints[:numel].view(shape), self.lev[:numel].view(shape)

    def gathered(self, rows: int, h: int, like: torch.Tensor) -> torch.Tensor:
        """Scratch of ``like``'s dtype for the chunk's dense columns side by side, [rows, h]."""
        numel = rows * h
        buf = self.cols
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype:
            buf = self.cols = torch.empty(numel, dtype=like.dtype, device=self.device)
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
        """n int64 ones (a view of one buffer that grows when needed)."""
        if self._ones.numel() < n:
            self._ones = torch.ones(
                max(n, 2 * self._ones.numel()), dtype=torch.int64, device=self.device
            )
        return self._ones[:n]

    def offsets(self, K: int, H: int) -> torch.Tensor:
        """[0, H, ..., (K-1) H]: flat offsets of the K positions of a block."""
        if (K, H) not in self._offsets:
            self._offsets[K, H] = torch.arange(0, K * H, H, device=self.device)
        return self._offsets[K, H]


class Capture:
    """Hooks on the sites of one model; use as a context manager, then ``run(batch)``."""

    def __init__(
        self,
        sitemap: SiteMap,
        grid: Sequence[float],
        num_seqs: int,
        seq_len: int,
        observers: Iterable[Observer] = (),
        chunk_elements: int | None = None,
    ):
        self.sitemap = sitemap
        self.sites = sitemap.sites
        self.grid = tuple(float(g) for g in grid)
        self.G = len(self.grid)
        self.H = sitemap.hidden_size
        self.N, self.T = num_seqs, seq_len
        self.observers = list(observers)
        self._hit_observers: dict[int, list[Observer]] = {}  # per site index, set on entering
        self.chunk_elements = chunk_elements
        self.thresholds = _Thresholds(self.grid)
        self._handles: list = []
        self._batch: Batch | None = None
        self._parts: dict[torch.device, _DeviceBatch] = {}
        self._calls = np.zeros(len(self.sites), dtype=np.int64)
        S, G, N, H = len(self.sites), self.G, num_seqs, self.H
        self.site_max = np.zeros((S, H), dtype=np.float32)
        self.site_counts = np.zeros((S, G), dtype=np.int64)
        self.seq_max = np.zeros((N, H), dtype=np.float32)
        self.seq_site_count = np.zeros((G, N, H), dtype=np.int32)
        self.site_seq_level = np.zeros((S, N, H), dtype=np.uint8)
        self.site_max_rest = np.zeros((S, H), dtype=np.float32)
        self.seq_max_rest = np.zeros((N, H), dtype=np.float32)
        self.site_seq_level_rest = np.zeros((S, N, H), dtype=np.uint8)
        self.site_seq_level_first = np.zeros((S, N, H), dtype=np.uint8)
        self.seq_pos_count = np.zeros((G, N, H), dtype=np.int32)
        self.seq_occ = np.zeros((G, N, H), dtype=np.int64)
        # per batch: its first window, hits per position, their dims and levels
        self._hits: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        self.token_ids = np.zeros((N, seq_len), dtype=np.int32)
        self.done = np.zeros(N, dtype=bool)
        self.forward_calls = 0
        self.activation_dtypes: set[str] = set()

    # -- hooks -----------------------------------------------------------------------------
    def register(self, module: torch.nn.Module, fn: Callable, mode: str = "output"):
        """Register a hook that ``close`` removes; ``fn(x)`` gets the site tensor (``mode``
        "input" / "output", see ``hook_tensor``), or the raw forward-hook arguments ("raw")."""
        if mode == "raw":
            handle = module.register_forward_hook(fn)
        else:
            handle = hook_tensor(module, fn, mode)
        self._handles.append(handle)
        return handle

    def __enter__(self) -> Capture:
        try:
            for site in self.sites:
                self.register(site.module, self._site_fn(site), site.mode)
            for obs in self.observers:
                obs.attach(self.sitemap, self.register)
            # hit lists are built only for the sites where an observer reads them
            self._hit_observers = {
                site.index: [o for o in self.observers if o.wants_hits(site)] for site in self.sites
            }
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        self._parts.clear()
        self._batch = None

    def _site_fn(self, site: Site):
        def fn(x):
            if self._batch is None or not isinstance(x, torch.Tensor):
                return
            self._calls[site.index] += 1
            self.activation_dtypes.add(str(x.dtype).replace("torch.", ""))
            x = self._as_bth(x, site)
            with hook_threads(x.device):
                self._reduce(site, x)
                self._first_position(site, x)
            for obs in self.observers:
                obs.on_site(site, x, self._batch)

        return fn

    def _as_bth(self, x: torch.Tensor, site: Site) -> torch.Tensor:
        B, T = self._batch.size, self._batch.seq_len
        if x.shape[-1] != self.H or x.numel() != B * T * self.H:
            raise HarnessError(
                f"site {site.name} ({site.module_name}) holds a tensor of shape "
                f"{tuple(x.shape)}, not the {B} x {T} positions x {self.H} dims of the batch "
                "(the model adds positions or residual streams of its own); this model's "
                "sites cannot be measured by the definition: please report it with the model id."
            )
        if x.dim() == 2 or x.shape[:2] != (B, T):  # OPT flattens to [B*T, H]
            x = x.reshape(B, T, x.shape[-1])
        return x

    # -- the reductions --------------------------------------------------------------------
    def _part(self, device) -> _DeviceBatch:
        part = self._parts.get(device)
        if part is None:
            part = _DeviceBatch(device, self._batch, self.H, self.G, len(self.sites))
            self._parts[device] = part
        return part

    def _reduce(self, site: Site, x: torch.Tensor) -> None:
        part = self._part(x.device)
        thr, t0 = self.thresholds.get(x.device, x.dtype)
        x = x.contiguous()
        B, T, H, G, s = x.shape[0], x.shape[1], self.H, self.G, site.index
        K = _block(T)
        per_chunk = max(1, min(B, _chunk_budget(self.chunk_elements, x.device) // (T * H)))
        union = part.union.view(-1)
        hit_observers = self._hit_observers.get(s, ())
        table = self.thresholds.table(x.device, x.dtype)
        if table is not None and not hit_observers and x.device.type == "cpu" and SITE_KERNEL:
            scan = kernels.site_scan()
            if scan is not None:
                self._reduce_cpu(scan, site, part, x, thr, table, per_chunk)
                return
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
            cols = (per_dim > DENSE_FRACTION * (qual.numel() // H)).nonzero().squeeze(1)
            if cols.numel() > DENSE_COLUMNS * H:  # dense nearly everywhere: the whole chunk
                self._reduce_dense(site, part, xc, b0)
                continue
            if cols.numel():  # systematic outlier dims: those columns by reductions
                self._reduce_dense(site, part, xc, b0, cols)
                qual.index_fill_(2, cols, False)
            cand = qual.view(-1).nonzero().squeeze(1)  # (b * T/K + tb) * H + d
            found = self._values_over(part, xc, cand, t0, K)
            if found is None:
                for obs in hit_observers:  # "no hit here" is news too
                    none = part.ones(0)
                    obs.on_hits(site, none, none, self.grid, self._batch)
                continue
            pos, vals, bd = found  # flat index into xc, |x| there, b * H + d (b within xc)
            level = self.thresholds.levels(vals)  # 1..G, uint8
            part.hist[s] += torch.bincount(level, minlength=G + 1)
            if b0:
                bd, pos = bd + b0 * H, pos + b0 * T * H
            part.occ.index_add_(0, bd * (G + 1) + level, part.ones(level.numel()))
            if hit_observers:
                wide = level.long()
                for obs in hit_observers:
                    obs.on_hits(site, pos, wide, self.grid, self._batch)
            level = torch.maximum(union.index_select(0, pos), level)
            union.index_copy_(0, pos, level)  # positions are distinct within a site

    def _first_position(self, site: Site, x: torch.Tensor) -> None:
        """The window's first position apart (massive activations live there): its level per
        (sequence, dim), and the max |x| over the other positions. That max equals the one
        ``_reduce`` found except where the first position holds it; only those (sequence, dim)
        columns are read again (a few dims of a few windows, except at sites where the first
        position is the largest nearly everywhere: then about one more read of the tensor)."""
        part = self._part(x.device)
        thr, _ = self.thresholds.get(x.device, x.dtype)
        s = site.index
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

    def _reduce_cpu(self, scan, site: Site, part: _DeviceBatch, x, thr, table, per_chunk) -> None:
        """Every reduction of ``_reduce`` at once, a chunk at a time, by the CPU's one-read
        kernel (``kernels.site_scan``): the max |x| per (sequence, dim), the counts per
        (sequence, dim, level) and the union, at any density, without the block-max pre-pass,
        candidate blocks or hit lists (no observer reads this site's hits)."""
        B, H, G, s = x.shape[0], self.H, self.G, site.index
        lut, shift = table
        ints, mask = _bit_pattern(x.dtype)
        keys = thr.view(ints).numpy()  # |x| >= grid[g] iff (bits & mask) >= keys[g]
        bits = x.view(ints)
        smax = torch.zeros((B, H), dtype=ints)
        counts = torch.zeros((B, H, G + 1), dtype=torch.int32)
        for b0 in range(0, B, per_chunk):  # chunks of whole sequences, as on the other paths
            b1 = min(B, b0 + per_chunk)
            scan(
                bits[b0:b1].numpy(),
                mask,
                shift,
                lut.numpy(),
                keys,
                smax[b0:b1].numpy(),
                counts[b0:b1].numpy(),
                part.union[b0:b1].numpy(),
                isa=SITE_ISA,
            )
        smax = smax.view(x.dtype)
        part.smax[s] = smax
        part.level[s] = torch.bucketize(smax, thr, right=True)
        part.occ += counts.view(-1)
        part.hist[s] += counts.view(-1, G + 1).sum(dim=0)

    def _reduce_dense(
        self, site: Site, part: _DeviceBatch, xc: torch.Tensor, b0: int, cols=None
    ) -> None:
        """The chunk's counts where hits are dense, in the columns ``cols`` (every column when
        None): a grid level per value (a uint8 map, see ``_Thresholds.levels``), then the
        per-(sequence, dim, level) counts by one bincount and the union by one elementwise max.
        No hit list is built (unless an observer asks for the hits): where a quarter of the
        blocks or more reach the grid, the index arithmetic of sparse hits costs more than
        these few passes over the values. On the CPU the passes are one compiled loop
        (``kernels.dense_scan``, same table, same figures)."""
        b, T, H = xc.shape
        G, s = self.G, site.index
        hit_observers = self._hit_observers.get(s, ())
        table = self.thresholds.table(xc.device, xc.dtype)
        scan = kernels.dense_scan() if CPU_KERNEL and xc.device.type == "cpu" else None
        if scan is not None and table is not None:  # one fused pass on the CPU (kernels.py)
            h = H if cols is None else cols.numel()
            counts = torch.zeros((b, H, G + 1), dtype=torch.int64)
            lev = part.buffers((b, T, h))[1] if hit_observers else None
            lut, shift = table
            ints, mask = _bit_pattern(xc.dtype)
            scan(
                xc.view(ints).numpy(),
                mask,
                shift,
                lut.numpy(),
                (part.ones(0) if cols is None else cols).numpy(),
                cols is None,
                counts.numpy(),
                part.union[b0 : b0 + b].numpy(),
                kernels.NO_LEVELS if lev is None else lev.numpy(),
                lev is not None,
            )
            counts = counts.view(-1)
            first = b0 * H * (G + 1)
            part.occ[first : first + counts.numel()] += counts
            part.hist[s] += counts.view(-1, G + 1).sum(dim=0)
            if hit_observers:
                self._dense_hits(site, lev, b0, H, cols, hit_observers)
            return
        if cols is None:
            h, xd = H, xc
            offsets = part.level_offsets(b, H, G)  # ((b * H + d) * (G + 1)), [b, 1, H]
        else:  # the columns side by side, [b * T, h]: torch.gather reads rows, not columns
            h = cols.numel()
            index = cols.expand(b * T, h)
            xd = torch.gather(xc.view(b * T, H), 1, index, out=part.gathered(b * T, h, xc))
            offsets = part.level_offsets(b, H, G)[:, :, cols]
        ints, lev = part.buffers((b, T, h))
        self.thresholds.levels(xd.view(b, T, h), ints=ints, out=lev)
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
        if hit_observers:
            self._dense_hits(site, lev, b0, H, cols, hit_observers)

    def _dense_hits(self, site: Site, lev, b0: int, H: int, cols, hit_observers) -> None:
        """The hits of a dense scan's level map ``lev`` [b, T, h] for the observers that read
        them (flat positions into the batch's [B, T, H] and levels, see ``Observer.on_hits``)."""
        b, T, h = lev.shape
        bt_j = lev.view(b * T, h).nonzero()
        bt, j = bt_j[:, 0], bt_j[:, 1]
        level = lev.view(b * T, h)[bt, j].long()
        d = j if cols is None else cols.index_select(0, j)
        pos = (bt + b0 * T) * H + d
        for obs in hit_observers:
            obs.on_hits(site, pos, level, self.grid, self._batch)

    def _values_over(self, part: _DeviceBatch, xc: torch.Tensor, cand: torch.Tensor, t0, K: int):
        """Every value of ``xc`` with |x| >= t0 as (flat index, |x|, b * H + d), or None: only
        the candidate blocks (``cand``: flat indices of block maxima >= t0) are read again."""
        b, T, H = xc.shape
        n = cand.numel()
        if n == 0:
            return None
        q = cand // H  # b * T/K + tb
        base = cand + q * ((K - 1) * H)  # flat index of (b, tb * K, d)
        pos = (base.unsqueeze(1) + part.offsets(K, H)).view(-1)  # the K positions of each block
        vals = xc.reshape(-1).index_select(0, pos).abs_()
        hit = (vals >= t0).nonzero().squeeze(1)
        bd = (cand + (q // (T // K) - q) * H).index_select(0, hit // K)
        return pos.index_select(0, hit), vals.index_select(0, hit), bd

    # -- batches ---------------------------------------------------------------------------
    def run(self, forward: Callable[[torch.Tensor], object], batch: Batch) -> None:
        """Run ``forward(token_ids)`` once and merge this batch's reductions."""
        run_together([self], forward, batch)

    def _begin(self, batch: Batch) -> None:
        self._batch = batch
        self._parts = {}
        self._calls[:] = 0
        self.forward_calls += 1
        for obs in self.observers:
            obs.begin_batch(batch)

    def _end(self, batch: Batch, ok: bool) -> None:
        self._parts = {}
        self._batch = None
        for obs in self.observers:
            (obs.end_batch if ok else obs.abort_batch)(batch)

    def _merged_parts(self, batch: Batch):
        """Reduce this batch's device parts; returns the function that commits them."""
        wrong = [s for s in self.sites if self._calls[s.index] != 1]
        if wrong:
            s = wrong[0]
            raise HarnessError(
                f"site {s.name} ({s.module_name}) ran {int(self._calls[s.index])} times in one "
                "forward pass instead of once; the structural site discovery does not fit this "
                f"model ({self.sitemap.model_type}): please report it with the model id."
            )
        B, T, H, G = batch.size, batch.seq_len, self.H, self.G
        n0, n1 = batch.start, batch.start + B
        parts = list(self._parts.values())
        smax = np.maximum.reduce([p.smax.cpu().numpy() for p in parts])  # [S, B, H]
        site_level = np.maximum.reduce([p.level.cpu().numpy() for p in parts])
        site_hist = sum(p.hist.cpu().numpy() for p in parts)
        site_max = smax.max(axis=1)
        bad = ~np.isfinite(site_max).all(axis=1)
        if bad.any():
            name = self.sites[int(np.flatnonzero(bad)[0])].name
            advice = (
                "float16 may be too narrow for this model: try --dtype bfloat16 or float32"
                if "float16" in self.activation_dtypes
                else "the weights are probably broken (NaN or inf in the model's parameters): "
                "check the checkpoint"
            )
            raise NonFiniteActivations(
                f"the model produced NaN or inf activations at site {name} (sequences {n0}-"
                f"{n1 - 1}); {advice}."
            )
        seq_max = smax.max(axis=0)
        rest = np.maximum.reduce([p.smax_rest.cpu().numpy() for p in parts])  # [S, B, H]
        level_rest = np.maximum.reduce([p.level_rest.cpu().numpy() for p in parts])
        level_first = np.maximum.reduce([p.level_first.cpu().numpy() for p in parts])
        # number of sites at which each (sequence, dim) reaches grid[g]
        site_count = sum(
            torch.stack([(p.level > g).sum(dim=0, dtype=torch.int32) for g in range(G)])
            .cpu()
            .numpy()
            for p in parts
        )
        # union over devices, then over sites: the per-position level
        union = parts[0].union
        for part in parts[1:]:
            union = torch.maximum(union, part.union.to(union.device))
        pos_ge, hits = self._union_figures(parts[0], union, B, T)
        occ = sum(p.occ.cpu().numpy() for p in parts)
        occ_ge = _at_least(occ.reshape(B, H, G + 1))
        hits = (n0, *hits)

        # commit (nothing above touched the run's arrays)
        def commit() -> None:
            np.maximum(self.site_max, site_max, out=self.site_max)
            self.site_counts += _at_least(site_hist)
            self.seq_max[n0:n1] = np.maximum(self.seq_max[n0:n1], seq_max)
            self.seq_site_count[:, n0:n1] += site_count.astype(np.int32)
            self.site_seq_level[:, n0:n1] = site_level
            np.maximum(self.site_max_rest, rest.max(axis=1), out=self.site_max_rest)
            self.seq_max_rest[n0:n1] = np.maximum(self.seq_max_rest[n0:n1], rest.max(axis=0))
            self.site_seq_level_rest[:, n0:n1] = level_rest
            self.site_seq_level_first[:, n0:n1] = level_first
            self.seq_pos_count[:, n0:n1] += pos_ge.transpose(2, 0, 1).astype(np.int32)
            self.seq_occ[:, n0:n1] += occ_ge.transpose(2, 0, 1)
            self._hits.append(hits)
            self.token_ids[n0:n1] = batch.token_ids.numpy()
            self.done[n0:n1] = True

        return commit

    def _union_figures(self, part: _DeviceBatch, union: torch.Tensor, B: int, T: int):
        """From a batch's union [B, T, H]: the positions per (sequence, dim) at each grid level
        or above ([B, H, G]), and its hits as the count per position (B * T), their dims (in
        position then dim order) and levels. On the CPU by the extension's two reads of the
        union; elsewhere a dense bincount (see _reduce_dense), a chunk of sequences at a time
        in the capture's scratch, and a nonzero."""
        H, G = self.H, self.G
        dim_dtype = np.uint16 if H <= np.iinfo(np.uint16).max + 1 else np.int32
        counts, hits = kernels.union_kernels()
        if union.device.type == "cpu" and counts is not None and G <= 254 and UNION_KERNEL:
            u = union.numpy()
            pos_ge = np.zeros((B, H, G), dtype=np.int32)
            rows = np.zeros(B * T, dtype=np.int64)
            counts(u, G, pos_ge, rows)
            dims, level = hits(u.reshape(B * T, H), int(rows.sum()), dim_dtype)
            return pos_ge, (rows, dims, level)
        pos_counts = torch.zeros(B * H * (G + 1), dtype=torch.int64, device=union.device)
        per_chunk = max(1, min(B, _chunk_budget(self.chunk_elements, union.device) // (T * H)))
        for b0 in range(0, B, per_chunk):
            b = min(B, b0 + per_chunk) - b0
            ints, _ = part.buffers((b, T, H))
            offsets = part.level_offsets(b, H, G)
            first = b0 * H * (G + 1)
            c = part.level_counts(union[b0 : b0 + b], offsets, ints)
            pos_counts[first : first + c.numel()] += c
        pos_ge = _at_least(pos_counts.view(B, H, G + 1).cpu().numpy())
        flat = union.view(-1).nonzero().squeeze(1)
        level = union.view(-1).index_select(0, flat)
        pos = flat // H
        rows = torch.bincount(pos, minlength=B * T)
        # int32 on the device: half the bytes to the host of the int64 indices
        dims = (flat - pos * H).to(torch.int32).cpu().numpy().astype(dim_dtype)
        return pos_ge, (rows.cpu().numpy(), dims, level.cpu().numpy())

    def stats(self) -> CapturedStats:
        if not self.done.all():
            raise HarnessError(
                f"only {int(self.done.sum())} of {self.N} windows were processed; the result is "
                "incomplete and was not written."
            )
        NT = self.N * self.T
        # each batch's hits are in (position, dim) order and batches hold disjoint ranges of
        # positions that cover the run: in the order of their first window (batches may have
        # been committed out of order after a retry), they are all in order, unsorted
        none = (0, np.zeros(0, np.int64), np.zeros(0, np.uint16), np.zeros(0, np.uint8))
        parts = sorted(self._hits, key=lambda h: h[0]) or [none]
        rows, dim, lev = (np.concatenate([h[k] for h in parts]) for k in (1, 2, 3))
        if rows.shape != (NT,):
            raise HarnessError(
                f"the batches' hits cover {rows.size} positions, not the run's {NT}; please "
                "report this with the command line."
            )
        indptr = np.zeros(NT + 1, dtype=np.int64)
        np.cumsum(rows, out=indptr[1:])
        stats = CapturedStats(
            grid=np.asarray(self.grid, dtype=np.float64),
            site_names=[s.name for s in self.sites],
            num_seqs=self.N,
            seq_len=self.T,
            hidden_size=self.H,
            site_max=self.site_max,
            site_counts=self.site_counts,
            seq_max=self.seq_max,
            seq_site_count=self.seq_site_count,
            site_seq_level=self.site_seq_level,
            seq_pos_count=self.seq_pos_count,
            seq_occ=self.seq_occ,
            hits_indptr=indptr,
            hits_dim=dim,
            hits_level=lev,
            token_ids=self.token_ids,
            first_position=FirstPosition(
                self.site_max_rest,
                self.seq_max_rest,
                self.site_seq_level_rest,
                self.site_seq_level_first,
            ),
        )
        for obs in self.observers:
            obs.finalize(stats)
        return stats


def run_together(
    captures: Sequence[Capture], forward: Callable, batch: Batch, check: Callable | None = None
) -> None:
    """One ``forward(token_ids)`` for several captures on one model (``--sites all`` measures
    each site kind apart in the same pass); each merges the batch only when the pass, ``check()``
    (called after the pass, e.g. the site self-check) and every merge before it completed, so a
    failed batch leaves every capture as it was."""
    for cap in captures:
        cap._begin(batch)
    ok = False
    try:
        forward(batch.token_ids)
        if check is not None:
            check()
        for commit in [cap._merged_parts(batch) for cap in captures]:
            commit()
        ok = True
    finally:
        for cap in captures:
            cap._end(batch, ok)


@contextmanager
def hook_threads(device: torch.device):
    """On the CPU, run a hook's reductions on HOOK_THREADS threads (then restore the count);
    observers that reduce activations in their hooks use it too."""
    n = torch.get_num_threads()
    if device.type != "cpu" or HOOK_THREADS is None or n == HOOK_THREADS:
        yield
        return
    torch.set_num_threads(HOOK_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _chunk_budget(chunk_elements: int | None, device: torch.device) -> int:
    """Elements per chunk on ``device``: the capture's own setting, else CHUNK_ELEMENTS."""
    return chunk_elements or CHUNK_ELEMENTS.get(device.type, 1 << 25)


def _bit_pattern(dtype: torch.dtype) -> tuple[torch.dtype, int]:
    """The integer dtype that views ``dtype``'s bit patterns for the C kernels, and the mask
    that clears their sign bit."""
    return (torch.int16, 0x7FFF) if dtype.itemsize == 2 else (torch.int32, 0x7FFFFFFF)


def _block(T: int) -> int:
    """Positions per block of the max-|x| pre-pass: the largest of 16, 8, 4, 2, 1 dividing T."""
    return next(k for k in (16, 8, 4, 2, 1) if T % k == 0)


def _at_least(counts: np.ndarray) -> np.ndarray:
    """counts[..., l] for levels l = 0..G  ->  number at level >= g for g = 1..G."""
    return np.flip(np.cumsum(np.flip(counts[..., 1:], axis=-1), axis=-1), axis=-1)
