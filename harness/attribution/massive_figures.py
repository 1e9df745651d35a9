"""The ``massive`` part of the attribution section (Sun et al. 2024; METHOD.md section 6) from
the statistics alone: what ``MassiveActivations`` (harness.attribution.massive) stored in
``stats.extra``, at any criteria. numpy only, so that ``outliers report`` recomputes it without
torch."""

from __future__ import annotations

import math

import numpy as np

from harness.engine.criteria import Criteria, pooled_dims
from harness.engine.statistics import CapturedStats

ABS_THRESHOLD = 100.0
REL_THRESHOLD = 1000.0
EXACT_BF16, EXACT_FP16, BF16_OF_FP32 = 0, 1, 2  # what a key is (``key_kind``)
JSON_POSITIONS = 16  # massive positions listed per layer in result.json (all are in stats.npz)
PREFIX = "attr_massive_"


def key_bounds(key: int, kind: int) -> tuple[float, float]:
    """[lo, hi] of the |x| that map to ``key``: lo == hi for exact kinds, else the bf16 bin
    [lo, hi) (hi exclusive)."""
    if kind == EXACT_FP16:
        v = float(np.array([key], np.uint16).view(np.float16)[0])
        return v, v
    lo, hi = (float(v) for v in (np.array([key, key + 1], np.uint32) << 16).view(np.float32))
    return (lo, lo) if kind == EXACT_BF16 else (lo, hi)


def _median(x: dict, i: int) -> tuple[float, float, bool] | None:
    """(lo, hi, exact) bounds of layer i's median |x|, None when nothing was counted."""
    key, kind = int(x["median_key"][i]), int(x["key_kind"][i])
    if key < 0:
        return None
    lo, hi = key_bounds(key, kind)
    return lo, hi, kind != BF16_OF_FP32


def _r(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def massive_section(stats: CapturedStats, criteria: Criteria, *, positions: int = JSON_POSITIONS):
    """Per-layer and per-model massive activations from ``stats.extra`` (None if not captured).

    Guarantees: ``layers[l].top`` holds the exact top values by |x| of layer l's output over
    the corpus with their dim, window, position and token id; ``massive`` flags |x| > 100 and
    |x| > 1000 x the layer's median |x|, counted over every value (exact in bf16/fp16 runs;
    in fp32 runs a value passing at the median's lower bound only is ``borderline``, not massive);
    ``massive_dims`` lists every dim whose max |x| at that layer is massive (exact, from the
    per-dim max); ``dims`` summarises them per model with ``systematic`` = the dim is a pooled
    Dettmers-systematic dim at the run's sites (``systematic_sites``) at ``criteria``.
    """
    x = {k[len(PREFIX) :]: v for k, v in stats.extra.items() if k.startswith(PREFIX)}
    if "median_key" not in x:  # not captured, or stats.npz from before the counted median
        return None
    T = stats.seq_len
    flat_ids = np.asarray(stats.token_ids).reshape(-1)
    sys_dims = set(int(d) for d in pooled_dims(stats, criteria)[0])

    def where(p):
        p = int(p)
        return {"seq": p // T, "pos": p % T, "token_id": int(flat_ids[p])}

    layers, model_dims, massive_pos_ids = [], {}, []
    for i in range(len(x["layers"])):
        layers.append(_layer(x, i, where, positions, model_dims, massive_pos_ids, flat_ids))
    for entry in model_dims.values():
        entry["systematic"] = entry["dim"] in sys_dims
    kinds = sorted({n.rsplit(".", 1)[-1] for n in stats.site_names})
    uid, cnt = np.unique(np.array(massive_pos_ids, dtype=np.int64), return_counts=True)
    order = np.lexsort((uid, -cnt))[:10]
    return {
        "site": "decoder layer output (residual stream)",
        "criterion": f"|x| > {ABS_THRESHOLD:g} and |x| > {REL_THRESHOLD:g} x median |x| of the "
        "layer's output",
        "median": "lower median of |x| over every value of the layer's output in the corpus, "
        "counted by 16-bit float bit pattern: exact in bf16 / fp16 runs; in fp32 runs it lies in "
        "median_abs_bounds (one bf16 bin, relative width <= 2^-7), median_abs is their midpoint, "
        "and a value massive at the lower bound only is labelled borderline",
        "layers_with_massive": [row["layer"] for row in layers if row["has_massive"]],
        "dims": sorted(model_dims.values(), key=lambda e: -e["max_abs"]),
        "systematic_sites": kinds,
        # per token id: how many (layer, position) pairs hold a massive value there
        "massive_position_tokens": [
            {"id": int(uid[j]), "layer_positions": int(cnt[j])} for j in order
        ],
        "layers": layers,
    }


def _layer(x, i, where, positions, model_dims, massive_pos_ids, flat_ids) -> dict:
    """Layer ``i``'s row of the massive section; its massive dims and massive positions' token
    ids are added to ``model_dims`` / ``massive_pos_ids``."""
    med = _median(x, i)
    # a value is massive when it passes at the median's upper bound; borderline when only
    # at the lower bound (the bounds are equal in bf16 / fp16 runs)
    lo, hi, exact = med if med else (math.inf, math.inf, True)
    median = (lo + hi) / 2 if med and hi > 0 else None

    def verdict(v, lo=lo, hi=hi, exact=exact):
        """(massive, borderline) for values |x| ``v`` (arrays)."""
        v = np.asarray(v, np.float64)
        # the median is < hi when inexact, so v >= 1000 * hi is enough
        over = (v > REL_THRESHOLD * hi) | (not exact and v >= REL_THRESHOLD * hi)
        massive = (v > ABS_THRESHOLD) & over
        return massive, (v > ABS_THRESHOLD) & (v > REL_THRESHOLD * lo) & ~massive

    top = []
    for v, s, p, d in zip(
        x["val_abs"][i], x["val_signed"][i], x["val_pos"][i], x["val_dim"][i], strict=True
    ):
        if p < 0:
            continue
        massive, borderline = (bool(f) for f in verdict(v))
        top.append(
            {
                "value": _r(s),
                "dim": int(d),
                **where(p),
                "ratio_to_median": _r(v / median, 4) if median else None,
                "massive": massive,
                **({"borderline": True} if borderline else {}),
            }
        )
    dmax = x["dim_max"][i]
    layer_max = float(max(x["pos_val"][i].max(), 0.0))
    dim_massive, dim_borderline = verdict(dmax)
    mdims, bdims = np.flatnonzero(dim_massive), np.flatnonzero(dim_borderline)
    for d in mdims:
        entry = model_dims.setdefault(int(d), {"dim": int(d), "layers": [], "max_abs": 0.0})
        entry["layers"].append(i)
        entry["max_abs"] = max(entry["max_abs"], _r(dmax[d]))
    mpos = [
        (float(v), int(p), int(d), float(s))
        for v, p, d, s in zip(
            x["pos_val"][i], x["pos_pos"][i], x["pos_dim"][i], x["pos_signed"][i], strict=True
        )
        if p >= 0 and verdict(v)[0]
    ]  # positions are ranked by max_d |x|: a position past the table's size is not listed
    massive_pos_ids.extend(int(flat_ids[p]) for _, p, _, _ in mpos)
    return {
        "layer": i,
        "max_abs": _r(layer_max),
        # full precision: the bounds are exact statements about the data
        "median_abs": median,
        "median_abs_bounds": [lo, hi] if med else None,
        "median_exact": exact if med else None,
        "median_values": int(x["values"][i]),
        "max_over_median": _r(layer_max / median, 4) if median else None,
        "has_massive": bool(len(mdims)),
        "massive_dims": [
            {
                "dim": int(d),
                "max_abs": _r(dmax[d]),
                "ratio_to_median": _r(dmax[d] / median, 4),
            }
            for d in mdims
        ],
        "borderline_dims": [int(d) for d in bdims],
        "positions_over_100": int(x["over100"][i]),
        "massive_positions": [
            {"value": _r(s), "dim": d, **where(p)} for _, p, d, s in mpos[:positions]
        ],
        "massive_positions_truncated": len(mpos) >= x["pos_val"].shape[1] or len(mpos) > positions,
        "top": top,
    }
