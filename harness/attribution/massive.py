"""Massive activations (Sun et al. 2024; METHOD.md section 6) on the residual stream.

``MassiveActivations`` hooks every decoder layer's output (the residual stream after layer l) and
keeps, per layer and on the layer's device, only small running tables:

- ``dim_max[H]``: max |x| per dim over the positions whose max_d |x| > 100 (0 if none): exact
  for every value > 100, i.e. every candidate massive value, at the cost of reading only those
  rows;
- the top ``top_positions`` positions by max_d |x| (value, arg-max dim, signed value, position);
- the exact top ``top`` values by |x| (signed value, dim, position): the top values lie in at
  most ``top`` distinct positions, each of which is among the top positions by max_d |x|;
- a histogram of |x| over EVERY value (2^15 bins), keyed by the bit pattern of |x| as a 16-bit
  float (``abs_keys``): the value itself in bf16 and fp16 runs, the bf16 truncation (the upper
  half-word) in fp32 runs. Bit patterns of non-negative floats sort as their values, so the
  rank of a key is the rank of a value. Only the median's key leaves the device (stats.npz).

Median (documented choice): the median |x| of layer l = the lower median (the value of rank
ceil(n / 2)) of all |x| of the layer's output over the WHOLE corpus (every window, position and
dim), counted, never sampled. In bf16 and fp16 runs it is exact; in fp32 runs it lies in one
bf16 bin [lo, hi), hi / lo <= 1 + 2^-7, and both bounds are reported. Unlike "the mean of
per-batch medians" it is one median over the corpus; the counts merge exactly across batches
and devices.

A value is *massive* when |x| > 100 and |x| > 1000 x the layer's median |x| (Sun et al.). When the
median is only bounded, a value is massive when it passes at the upper bound, and *borderline*
(labelled, never counted as massive) when it passes at the lower bound only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch

from harness.attribution.massive_figures import (
    ABS_THRESHOLD,
    BF16_OF_FP32,
    EXACT_BF16,
    EXACT_FP16,
    PREFIX,
    key_bounds,
    massive_section,
)
from harness.engine.observer import Batch, Observer
from harness.engine.sites import SiteMap
from harness.engine.statistics import CapturedStats
from harness.errors import HarnessError

__all__ = ["MassiveActivations", "abs_keys", "decoder_layers", "key_bounds", "massive_section"]

KEYS = 1 << 15  # 16-bit float bit patterns without the sign
_HIGH_HALF = 1 if sys.byteorder == "little" else 0  # the int16 holding an fp32's sign/exponent


def decoder_layers(sitemap: SiteMap) -> list[torch.nn.Module] | None:
    """The decoder-layer modules, from ``SiteMap.layers`` when it exists, else from the
    ``resid_out`` sites (the layers themselves); None when neither is available."""
    layers = getattr(sitemap, "layers", None)
    if layers:
        return list(layers)
    resid = [s.module for s in sitemap.sites if s.kind == "resid_out"]
    return resid if len(resid) == sitemap.num_layers else None


def abs_keys(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """|x| as 15-bit keys (int16, flat) and the key kind: the bit pattern of |x| when x is bf16 or
    fp16, else of |x| truncated to bf16 (the upper half-word of each fp32)."""
    if x.dtype in (torch.bfloat16, torch.float16):
        kind = EXACT_BF16 if x.dtype == torch.bfloat16 else EXACT_FP16
        bits = x.reshape(-1).view(torch.int16)
    else:
        kind = BF16_OF_FP32
        bits = x.reshape(-1).float().view(torch.int16)[_HIGH_HALF::2]
    return bits & 0x7FFF, kind


def _top(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest values and their indices; ties go to the lower index."""
    v, i = torch.sort(values, descending=True, stable=True)
    return v[:k], i[:k]


class MassiveActivations(Observer):
    """Per-layer massive-activation tables, reduced on the device in the engine's forward pass."""

    def __init__(
        self,
        layers: Sequence[torch.nn.Module] | None = None,
        *,
        top: int = 8,
        top_positions: int = 64,
    ):
        if top > top_positions:
            raise ValueError("top must not exceed top_positions (the exact top-k needs it)")
        self.layers = list(layers) if layers is not None else None
        self.top, self.P = int(top), int(top_positions)
        self._batch: Batch | None = None
        self._part: dict[int, dict] = {}
        self._state: dict[int, dict] = {}
        self._kind: dict[int, int] = {}
        self.H = 0

    # -- observer API --------------------------------------------------------------------
    def attach(self, sitemap: SiteMap, register: Callable) -> None:
        layers = self.layers or decoder_layers(sitemap)
        if not layers:
            raise HarnessError(
                "massive activations need the decoder layers: pass layers= (e.g. "
                "harness.attribution.observer.attribution_observers(model)) or a SiteMap with .layers."
            )
        self.H = sitemap.hidden_size
        self.num_layers = len(layers)
        for i, module in enumerate(layers):
            register(module, self._hook(i), "output")

    def begin_batch(self, batch: Batch) -> None:
        self._batch, self._part = batch, {}

    def end_batch(self, batch: Batch) -> None:
        for i, part in self._part.items():
            self._state[i] = part if i not in self._state else self._merge(self._state[i], part)
        self._batch, self._part = None, {}

    def abort_batch(self, batch: Batch) -> None:
        self._batch, self._part = None, {}

    def finalize(self, stats: CapturedStats) -> None:
        stats.extra.update(self.arrays())

    # -- reductions ----------------------------------------------------------------------
    def _hook(self, layer: int):
        def fn(x):
            if self._batch is None or not isinstance(x, torch.Tensor):
                return
            part = self._reduce(x, self._batch, layer)
            prev = self._part.get(layer)
            self._part[layer] = part if prev is None else self._merge(prev, part)

        return fn

    def _reduce(self, x: torch.Tensor, batch: Batch, layer: int) -> dict:
        B, T, H = batch.size, batch.seq_len, self.H
        if x.shape[-1] != H or x.numel() != B * T * H:
            raise HarnessError(
                f"a decoder layer returned shape {tuple(x.shape)}, not [{B}, {T}, {H}]; the "
                "layer list given to MassiveActivations does not fit this model."
            )
        x2 = x.reshape(B * T, H)
        # max_d |x| per position from amax / amin along the contiguous dim: no |x| copy of the
        # activation (abs + amax costs ~3x more, linalg.vector_norm(ord=inf) ~30x on the CPU)
        pmax = torch.maximum(x2.amax(dim=1), x2.amin(dim=1).neg_()).float()  # [BT]
        # per-dim max over the positions holding a value > 100 (every candidate massive value)
        big = (pmax > ABS_THRESHOLD).nonzero().squeeze(1)
        dim_max = torch.zeros(H, dtype=torch.float32, device=x.device)
        step = max(1, self.tuning.chunk(x.device.type) // H)
        for r0 in range(0, big.numel(), step):
            rows_big = x2.index_select(0, big[r0 : r0 + step]).abs().amax(dim=0).float()
            torch.maximum(dim_max, rows_big, out=dim_max)
        # every value counted (NaN keys sort above inf: the engine stops a NaN batch anyway)
        keys, self._kind[layer] = abs_keys(x)
        hist = torch.bincount(keys, minlength=KEYS)
        k = min(self.P, B * T)
        # stable sorts, not topk: among equal values the lower position (then dim) wins, so
        # the tables do not depend on the batch size
        pval, prow = _top(pmax, k)
        rows = x2.index_select(0, prow).float()  # [k, H]
        ra = rows.abs()
        pdim = ra.argmax(dim=1)
        psigned = rows.gather(1, pdim[:, None]).squeeze(1)
        # the top values lie in the top `top` positions by max_d |x|
        kr = min(self.top, k)
        kk = min(self.top, kr * H)
        by_pos = torch.argsort(prow[:kr])  # rows in position order: value ties go to (pos, dim)
        vabs, vi = _top(ra.index_select(0, by_pos).reshape(-1), kk)
        vrow, vdim = by_pos[vi // H], vi % H
        offset = batch.start * T
        return {
            "dim_max": dim_max,
            "pos_val": pval,
            "pos_pos": prow + offset,
            "pos_dim": pdim,
            "pos_signed": psigned,
            "val_abs": vabs,
            "val_signed": rows[vrow, vdim],
            "val_pos": prow[vrow] + offset,
            "val_dim": vdim,
            "hist": hist,
            "over100": torch.tensor(big.numel(), device=x.device),
        }

    def _merge(self, a: dict, b: dict) -> dict:
        out = {
            "dim_max": torch.maximum(a["dim_max"], b["dim_max"]),
            "hist": a["hist"] + b["hist"],
            "over100": a["over100"] + b["over100"],
        }
        for key, keys, k in (
            ("pos_val", ("pos_pos", "pos_dim", "pos_signed"), self.P),
            ("val_abs", ("val_signed", "val_pos", "val_dim"), self.top),
        ):
            vals = torch.cat([a[key], b[key]])  # a: earlier positions than b
            top, idx = _top(vals, min(k, len(vals)))
            out[key] = top
            for other in keys:
                out[other] = torch.cat([a[other], b[other]])[idx]
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """The tables as numpy arrays for ``stats.extra`` (keys ``attr_massive_*``)."""
        L, H, P, K = self.num_layers, self.H, self.P, self.top
        out = {
            "layers": np.arange(L, dtype=np.int32),
            "dim_max": np.zeros((L, H), np.float32),
            "pos_val": np.full((L, P), -1.0, np.float32),
            "pos_pos": np.full((L, P), -1, np.int64),
            "pos_dim": np.full((L, P), -1, np.int32),
            "pos_signed": np.zeros((L, P), np.float32),
            "val_abs": np.full((L, K), -1.0, np.float32),
            "val_signed": np.zeros((L, K), np.float32),
            "val_pos": np.full((L, K), -1, np.int64),
            "val_dim": np.full((L, K), -1, np.int32),
            "median_key": np.full(L, -1, np.int64),
            "key_kind": np.full(L, -1, np.int8),
            "values": np.zeros(L, np.int64),
            "over100": np.zeros(L, np.int64),
        }
        for i, st in self._state.items():
            # the lower median's key: the first key whose cumulative count reaches ceil(n / 2)
            cum = torch.cumsum(st["hist"], 0)
            n = int(cum[-1])
            out["values"][i] = n
            out["median_key"][i] = int(torch.searchsorted(cum, (n + 1) // 2)) if n else -1
            out["key_kind"][i] = self._kind[i]
            for key, value in st.items():
                if key == "hist":
                    continue
                v = value.detach().cpu().numpy()
                if v.ndim == 0:
                    out[key][i] = v
                else:
                    out[key][i, : v.shape[0]] = v
        return {PREFIX + k: v for k, v in out.items()}
