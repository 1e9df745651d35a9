"""One forward pass per batch, hooks at every site, reductions on the device where the site runs.

``Capture`` registers a hook on every site of a ``SiteMap``; each hook hands the activation to
the one torch path of ``reductions`` (the same on every device), keeps the window's first
position apart, then shows the activation to the observers (attribution, massive activations,
...) that share the pass. After the pass, a batch's partial results are merged into the run's
arrays (``CapturedStats``, KB to MB). Sizes and thresholds come from one ``CaptureTuning``.

Nothing is written to disk, no Python loop runs over values, and every hook is removed when the
capture ends, also on exceptions. Per-batch partial results are merged only when the batch's
forward pass completed, so a batch can be retried at a smaller size after an out-of-memory error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from harness.engine import host_memory
from harness.engine.observer import Batch, Observer
from harness.engine.reductions import (
    DeviceBatch,
    Thresholds,
    at_least,
    first_position,
    reduce_site,
    union_figures,
)
from harness.engine.sites import Site, SiteMap, hook_tensor
from harness.engine.statistics import CapturedStats, FirstPosition
from harness.engine.tuning import CaptureTuning
from harness.errors import HarnessError, NonFiniteActivations


class Capture:
    """Hooks on the sites of one model; use as a context manager, then ``run(batch)``."""

    def __init__(
        self,
        sitemap: SiteMap,
        grid: Sequence[float],
        num_seqs: int,
        seq_len: int,
        observers: Iterable[Observer] = (),
        tuning: CaptureTuning | None = None,
    ):
        self.sitemap = sitemap
        self.sites = sitemap.sites
        self.grid = tuple(float(g) for g in grid)
        self.G = len(self.grid)
        self.H = sitemap.hidden_size
        self.N, self.T = num_seqs, seq_len
        self.observers = list(observers)
        self._on_hits: dict[int, Callable | None] = {}  # per site index, set on entering
        self._homes = _tensor_homes(m for m in (s.module for s in self.sites))
        self.tuning = CaptureTuning() if tuning is None else tuning
        self.thresholds = Thresholds(self.grid)
        self._handles: list = []
        self._batch: Batch | None = None
        self._parts: dict[torch.device, DeviceBatch] = {}
        self._heap = host_memory.HeapWatch()
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
        threads = self.tuning.hook_threads
        if mode == "raw":
            handle = module.register_forward_hook(_on_threads(fn, threads, raw=True))
        else:
            handle = hook_tensor(module, _on_threads(fn, threads), mode)
        self._handles.append(handle)
        return handle

    def __enter__(self) -> Capture:
        try:
            for site in self.sites:
                self.register(site.module, self._site_fn(site), site.mode)
            for obs in self.observers:
                obs.tuning = self.tuning
                obs.attach(self.sitemap, self.register)
            # hit lists are built only for the sites where an observer reads them
            self._on_hits = {site.index: self._hits_to_observers(site) for site in self.sites}
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
            part = self._part(x.device)
            on_hits = self._on_hits.get(site.index)
            reduce_site(part, site.index, x, self.thresholds, self.tuning, on_hits)
            first_position(part, site.index, x, self.thresholds)
            for obs in self.observers:
                obs.on_site(site, x, self._batch)
            slack = self.tuning.heap_slack
            if slack is not None and x.device.type == "cpu":
                self._heap.check(int(slack * x.numel() * x.element_size()) + (64 << 20))

        return fn

    def _hits_to_observers(self, site: Site):
        """The callback that hands ``site``'s hits to the observers that read them, or None."""
        readers = [o for o in self.observers if o.wants_hits(site)]
        if not readers:
            return None

        def on_hits(pos, level):
            for obs in readers:
                obs.on_hits(site, pos, level, self.grid, self._batch)

        return on_hits

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

    # -- the reductions' home on each device ----------------------------------------------
    def _part(self, device, dtype: torch.dtype = torch.float32) -> DeviceBatch:
        part = self._parts.get(device)
        if part is None:
            B, T = self._batch.size, self._batch.seq_len
            part = DeviceBatch(device, B, T, self.H, self.G, len(self.sites), self.tuning, dtype)
            self._parts[device] = part
        return part

    # -- batches ---------------------------------------------------------------------------
    def run(self, forward: Callable[[torch.Tensor], object], batch: Batch) -> None:
        """Run ``forward(token_ids)`` once and merge this batch's reductions."""
        run_together([self], forward, batch)

    def _begin(self, batch: Batch) -> None:
        self._batch = batch
        self._parts = {}
        # what the batch keeps is made before its pass, not by the first hook: on the CPU it
        # would sit in the heap between the activations the pass frees, which then no longer
        # merge into space the next ones fit (docs/performance.md, "The CPU heap")
        for device, dtype in self._homes:
            self._part(device, dtype)
            self.thresholds.get(device, dtype)
            if self.thresholds.table(device, dtype) is None:
                self.thresholds.floats(device, dtype)
        self._calls[:] = 0
        self.forward_calls += 1
        self._heap.start()
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
        B, H, G = batch.size, self.H, self.G
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
        pos_ge, hits = union_figures(parts[0], union, G, self.tuning)
        occ = sum(p.occ.cpu().numpy() for p in parts)
        occ_ge = at_least(occ.reshape(B, H, G + 1))
        hits = (n0, *hits)

        # commit (nothing above touched the run's arrays)
        def commit() -> None:
            np.maximum(self.site_max, site_max, out=self.site_max)
            self.site_counts += at_least(site_hist)
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


def _tensor_homes(modules: Iterable[torch.nn.Module]) -> list[tuple[torch.device, torch.dtype]]:
    """(device, dtype) of the first floating-point parameter or buffer of each module, once
    each: where its sites' activations will be (a module without one: found by its hook)."""
    homes: dict = {}
    for module in modules:
        tensors = (t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point())
        t = next(tensors, None)
        if t is not None:
            homes.setdefault((t.device, t.dtype), None)
    return list(homes)


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


def _on_threads(fn: Callable, threads: int | None, raw: bool = False) -> Callable:
    """``fn`` run on ``threads`` CPU threads where its tensor is on the CPU (then the count is
    restored); ``raw``: a forward hook's (module, args, output) arguments."""
    if threads is None:
        return fn

    def hook(*args):
        x = args[0]
        if raw:  # the first tensor among the inputs, else the output (or its first element)
            out = args[2][0] if isinstance(args[2], (tuple, list)) and args[2] else args[2]
            x = next((a for a in args[1] if isinstance(a, torch.Tensor)), out)
        on_cpu = isinstance(x, torch.Tensor) and x.device.type == "cpu"
        with _threads(threads if on_cpu else None):
            return fn(*args)

    return hook


@contextmanager
def _threads(n: int | None):
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
