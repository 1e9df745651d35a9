"""MoE expert attribution: which experts the outlier positions are routed to.

During the forward pass, ``ExpertRouting`` hooks every router (``SiteMap.routers``) and keeps,
per MoE layer:

- ``counts[E]``: how many positions selected each expert (exact, accumulated on the device);
- the *candidate positions*: positions where SOME dim reaches the floor magnitude (the run's
  magnitude) in the router's input, with the k experts selected there (uint8 when E <= 256),
  and the sparse hits (candidate row, dim, grid level) that put them there.

The router's input IS the layer's ``mlp_in`` site (the post-attention norm's output) in every
architecture below, so this works whatever site set the run captures: when the run captures mlp_in
(the default ``ln`` set), the hits come from the engine's own reduction of that site
(``Observer.on_hits``) and the router hook only reads the router's outputs; otherwise the hook
finds them in the router's input itself. Both ways give identical arrays (tested). Because the systematic dims are
known only after the run, the conditional counts are computed at the end for ANY set of dims at
any grid magnitude >= the floor: positions where a systematic dim reaches the magnitude at that
layer's mlp_in = candidate rows holding such a hit.

Size (worst case: every position a candidate): layers x N*T x k bytes, e.g. Qwen3-30B-A3B at
16 x 2048: 48 x 32768 x 8 = 12.6 MB, Qwen3-Next-80B (512 experts, uint16, k=10): 31 MB; typical
runs keep only the positions with a value >= 6 at that layer, plus 7 bytes per hit.

Per-expert outputs: every architecture here uses fused 3-D expert weights (``@use_experts_implementation``:
eager loop, ``grouped_mm`` or ``batched_mm``); an expert's own output is an intermediate tensor
of that one forward, never a module output, so no hook can see it without recomputing the
experts (a second pass). Reported instead, and labelled so: max |routed output| (the experts
module's output = the routing-weighted sum of the token's k experts) over the tokens that
selected each expert. Shared experts are modules: their output max |x| is reported directly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from harness.attribution.expert_figures import PREFIX, expert_counts, expert_section
from harness.engine.architectures import ROUTER_OUTPUTS
from harness.engine.observer import Batch, Observer
from harness.engine.reductions import dtype_threshold
from harness.engine.sites import SiteMap
from harness.engine.statistics import CapturedStats
from harness.errors import HarnessError

__all__ = ["ExpertRouting", "expert_counts", "expert_section", "parse_router_output"]


def parse_router_output(architecture: str, output, num_rows: int) -> tuple[torch.Tensor, int]:
    """(top-k expert ids [num_rows, k], number of experts) from a router's forward output."""
    fmt = ROUTER_OUTPUTS.get(architecture)
    if fmt is None or not isinstance(output, (tuple, list)) or len(output) != 3:
        raise HarnessError(
            f"the router of architecture {architecture!r} returned {type(output).__name__}"
            f"{'' if not isinstance(output, (tuple, list)) else f' of {len(output)}'}; expert "
            "attribution expects (logits, top-k weights, top-k indices): add or fix the router_output of "
            "its row in harness/engine/architectures.py."
        )
    idx, logits = output[fmt.indices], output[fmt.logits]
    if idx.dtype.is_floating_point or idx.numel() % num_rows:
        raise HarnessError(
            f"the router of architecture {architecture!r} returned indices of dtype {idx.dtype} and shape "
            f"{tuple(idx.shape)} for {num_rows} positions; the router_output of its row in "
            "harness/engine/sites.py is wrong."
        )
    return idx.reshape(num_rows, -1), int(logits.shape[-1])


class ExpertRouting(Observer):
    """Expert selections per MoE layer, with the sparse hits of its input (see module doc)."""

    def __init__(self, magnitude: float = 6.0, grid: tuple[float, ...] | None = None):
        from harness.engine.statistics import make_grid

        self.floor = float(magnitude)
        self.grid = make_grid(self.floor, tuple(grid) if grid is not None else None)
        self._floor_level = self.grid.index(self.floor) + 1  # grid levels 1..G
        self._mlp_in: dict[int, int] = {}  # site index -> MoE layer, for on_hits
        self._batch: Batch | None = None
        self._part: dict[int, dict] = {}
        self._thr: dict = {}
        self.layers: list[int] = []
        self.info: dict = {}

    # -- observer API --------------------------------------------------------------------
    def attach(self, sitemap: SiteMap, register: Callable) -> None:
        self.architecture = sitemap.architecture
        self.H = sitemap.hidden_size
        self.layers = [r.layer for r in sitemap.routers]
        self.slot = {layer: j for j, layer in enumerate(self.layers)}
        L = len(self.layers)
        self.counts = [None] * L
        self.num_experts = np.zeros(L, np.int32)
        self.top_k = np.zeros(L, np.int32)
        self.routed_max = [None] * L
        self.shared_max = np.full(L, -1.0, np.float32)
        self.shared_dim = np.full(L, -1, np.int32)
        self._cand: list[list] = [[] for _ in range(L)]  # per slot: (pos, experts, hit rows...)
        experts = sitemap.experts
        self.info = {
            "architecture": sitemap.architecture,
            "router_class": type(sitemap.routers[0].module).__name__ if L else "",
            "experts_class": type(next(iter(experts.values()))).__name__ if experts else "",
            "experts_implementation": str(
                getattr(
                    getattr(next(iter(experts.values())), "config", None),
                    "_experts_implementation",
                    None,
                )
            )
            if experts
            else "",
            "shared_class": type(next(iter(sitemap.shared_experts.values()))).__name__
            if sitemap.shared_experts
            else "",
        }
        if L and self.architecture not in ROUTER_OUTPUTS:
            raise HarnessError(
                f"architecture {self.architecture!r} has routers but no router_output in its row "
                "(harness/engine/sites.py); add one."
            )
        # when the run captures a router's input (its layer's mlp_in site), the engine's hits
        # there come through on_hits and the router hook does not read the activation again
        moe = set(self.layers)
        self._mlp_in = {
            s.index: s.layer for s in sitemap.sites if s.kind == "mlp_in" and s.layer in moe
        }
        for r in sitemap.routers:
            register(r.module, self._router_hook(r.layer), "raw")
            if r.layer in experts:
                register(experts[r.layer], self._experts_hook(r.layer), "raw")
            if r.layer in sitemap.shared_experts:
                register(sitemap.shared_experts[r.layer], self._shared_hook(r.layer), "output")

    def begin_batch(self, batch: Batch) -> None:
        self._batch, self._part = batch, {}

    def abort_batch(self, batch: Batch) -> None:
        self._batch, self._part = None, {}

    def end_batch(self, batch: Batch) -> None:
        for layer, p in self._part.items():
            j = self.slot[layer]
            if "counts" in p:
                c = p["counts"].cpu().numpy().astype(np.int64)
                self.counts[j] = c if self.counts[j] is None else self.counts[j] + c
                self.num_experts[j], self.top_k[j] = p["E"], p["k"]
                self._cand[j].append(
                    (
                        p["cand"].cpu().numpy() + batch.start * batch.seq_len,
                        p["cand_experts"].cpu().numpy(),
                        p["hit_row"].cpu().numpy(),
                        p["hit_dim"].cpu().numpy(),
                        p["hit_level"].cpu().numpy(),
                    )
                )
            if "routed_max" in p:
                r = p["routed_max"].cpu().numpy()
                old = self.routed_max[j]
                self.routed_max[j] = r if old is None else np.maximum(old, r)
            if "shared_max" in p:
                v, d = float(p["shared_max"]), int(p["shared_dim"])
                if v > self.shared_max[j]:
                    self.shared_max[j], self.shared_dim[j] = v, d
        self._batch, self._part = None, {}

    def finalize(self, stats: CapturedStats) -> None:
        stats.extra.update(self.arrays())

    # -- hooks ---------------------------------------------------------------------------
    def _thresholds(self, x: torch.Tensor):
        key = (x.device, x.dtype)
        if key not in self._thr:
            thr = torch.stack([dtype_threshold(m, x.dtype) for m in self.grid]).to(x.device)
            self._thr[key] = (thr.float(), dtype_threshold(self.floor, x.dtype).to(x.device))
        return self._thr[key]

    def wants_hits(self, site) -> bool:
        return site.index in self._mlp_in  # a router's input

    def on_hits(self, site, pos, level, grid, batch) -> None:
        layer = self._mlp_in.get(site.index)
        if layer is None or self._batch is None or not set(self.grid) <= set(grid):
            return
        if tuple(grid) != self.grid:  # the run captures extra levels (e.g. the as-original one)
            level = self._level_map(tuple(grid), level.device).index_select(0, level.long())
        keep = (level >= self._floor_level).nonzero().squeeze(1)
        hits = self._part.setdefault(layer, {}).setdefault("hits", [])
        hits.append((pos.index_select(0, keep), level.index_select(0, keep)))

    def _level_map(self, grid: tuple[float, ...], device) -> torch.Tensor:
        """Engine level l (|x| >= grid[l - 1]) -> this observer's level: the number of its own
        magnitudes <= grid[l - 1], exact because its grid is a subset of the engine's."""
        key = ("map", grid, device)
        if key not in self._thr:
            levels = [0] + [sum(1 for g in self.grid if g <= m) for m in grid]
            self._thr[key] = torch.tensor(levels, dtype=torch.int64, device=device)
        return self._thr[key]

    def _router_hook(self, layer: int):
        def hook(_module, args, output):
            batch = self._batch
            if batch is None:
                return
            if not args:
                raise HarnessError(
                    f"the router of layer {layer} was called without a positional input; "
                    "expert attribution cannot see its hidden states."
                )
            self._route(layer, args[0], output, batch)

        return hook

    def _route(self, layer: int, x: torch.Tensor, output, batch: Batch) -> None:
        rows = batch.size * batch.seq_len
        h = x.reshape(rows, self.H)
        idx, E = parse_router_output(self.architecture, output, rows)
        part = self._part.setdefault(layer, {})
        part["idx"], part["E"], part["k"] = idx, E, idx.shape[1]
        part["counts"] = torch.bincount(idx.reshape(-1), minlength=E)
        hits = part.pop("hits", None)
        if hits is not None:  # the engine found them at this layer's mlp_in site: no new pass
            pos = torch.cat([p for p, _ in hits])
            pos, order = torch.sort(pos)  # (row, dim) ascending, as below
            rows = pos // self.H
            d = pos - rows * self.H
            cand, r = torch.unique_consecutive(rows, return_inverse=True)
            part["hit_level"] = torch.cat([v for _, v in hits])[order].to(torch.uint8)
        else:
            thr_f, floor = self._thresholds(h)
            # candidate rows first (max_d |x| >= floor, two cheap passes along the contiguous
            # dim), then the hits inside those rows only
            rmax = torch.maximum(h.amax(dim=1), h.amin(dim=1).neg_())
            cand = (rmax >= floor).nonzero().squeeze(1)  # rows ascending
            a = h.index_select(0, cand).abs_()
            hit = (a >= floor).nonzero()  # [n, 2]: (index into cand, dim), ascending
            r, d = hit[:, 0], hit[:, 1]
            level = torch.bucketize(a[r, d].float(), thr_f, right=True)
            part["hit_level"] = level.to(torch.uint8)
        part["cand"], part["hit_row"], part["hit_dim"] = cand, r, d
        part["cand_experts"] = idx.index_select(0, cand).to(
            torch.uint8 if E <= 256 else torch.int16 if E <= 32768 else torch.int32
        )

    def _experts_hook(self, layer: int):
        def hook(_module, _args, output):
            part = self._part.get(layer)
            if self._batch is None or part is None or "idx" not in part:
                return
            out = output[0] if isinstance(output, (tuple, list)) else output
            idx = part["idx"]
            out = out.reshape(idx.shape[0], -1)
            # max |x| per token
            tok_max = torch.maximum(out.amax(dim=1), out.amin(dim=1).neg_())
            src = tok_max.float().repeat_interleave(idx.shape[1])
            m = torch.zeros(part["E"], dtype=torch.float32, device=out.device)
            part["routed_max"] = m.scatter_reduce_(0, idx.reshape(-1), src, "amax")

        return hook

    def _shared_hook(self, layer: int):
        def hook(x):
            if self._batch is None:
                return
            x2 = x.reshape(-1, x.shape[-1])
            dmax = torch.maximum(x2.amax(dim=0), x2.amin(dim=0).neg_())
            part = self._part.setdefault(layer, {})
            part["shared_max"], part["shared_dim"] = dmax.max().float(), dmax.argmax()

        return hook

    # -- storage -------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """The representation as numpy arrays for ``stats.extra`` (keys ``attr_moe_*``)."""
        L = len(self.layers)
        E = int(self.num_experts.max()) if L else 0
        k = int(self.top_k.max()) if L else 0
        counts = np.zeros((L, E), np.int64)
        routed = np.full((L, E), -1.0, np.float32)
        pos, ex, hrow, hdim, hlev, indptr = [], [], [], [], [], [0]
        for j in range(L):
            if self.counts[j] is not None:
                counts[j, : len(self.counts[j])] = self.counts[j]
            if self.routed_max[j] is not None:
                routed[j, : len(self.routed_max[j])] = self.routed_max[j]
            for p, e, r, d, lv in self._cand[j]:
                base = sum(len(a) for a in pos)
                pos.append(p.astype(np.int64))
                ex.append(e.astype(np.int64))
                hrow.append(r.astype(np.int64) + base)
                hdim.append(d.astype(np.int64))
                hlev.append(lv.astype(np.uint8))
            indptr.append(sum(len(a) for a in pos))
        cat = np.concatenate
        pos = cat(pos) if pos else np.zeros(0, np.int64)
        ex = cat(ex) if ex else np.zeros((0, k), np.int64)
        id_dtype = np.uint8 if E <= 256 else np.uint16 if E <= 65536 else np.int32
        pos_dtype = np.uint32 if (len(pos) == 0 or pos.max() < 2**32) else np.int64
        row_dtype = np.uint32 if len(pos) < 2**32 else np.int64
        info = self.info
        return {
            PREFIX + "layers": np.asarray(self.layers, np.int32),
            PREFIX + "num_experts": self.num_experts,
            PREFIX + "top_k": self.top_k,
            PREFIX + "counts": counts,
            PREFIX + "cand_indptr": np.asarray(indptr, np.int64),
            PREFIX + "cand_pos": pos.astype(pos_dtype),
            PREFIX + "cand_experts": ex.reshape(len(pos), k).astype(id_dtype),
            PREFIX + "hit_row": (cat(hrow) if hrow else np.zeros(0, np.int64)).astype(row_dtype),
            PREFIX + "hit_dim": (cat(hdim) if hdim else np.zeros(0, np.int64)).astype(
                np.uint16 if self.H <= 65536 else np.int32
            ),
            PREFIX + "hit_level": cat(hlev) if hlev else np.zeros(0, np.uint8),
            PREFIX + "grid": np.asarray(self.grid, np.float64),
            PREFIX + "floor": np.asarray(self.floor, np.float64),
            PREFIX + "routed_max": routed,
            PREFIX + "shared_max": self.shared_max,
            PREFIX + "shared_dim": self.shared_dim,
            PREFIX + "info": np.array(
                [
                    info.get(key, "")
                    for key in (
                        "architecture",
                        "router_class",
                        "experts_class",
                        "experts_implementation",
                        "shared_class",
                    )
                ],
                dtype=np.str_,
            ),
        }
