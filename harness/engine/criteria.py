"""Dettmers' outlier criteria as pure functions over ``CapturedStats`` (METHOD.md, sections 2-3).

A dim is a *systematic outlier* when some |x| >= magnitude, it does so at >= layer_frac of the
sites, and at >= seq_frac of the token positions (a position counts when ANY site reaches the
magnitude there). Fractions are compared exactly in integers (count * q >= p * total for the
decimal fraction p / q), so that exactly 25% / 6% pass.

- ``seed_compatible``: each sequence on its own, as the original study; (sequence, dim) pairs.
- ``pooled``: over the whole corpus; distinct dims, plus Dettmers' aggregates (% of sites and %
  of positions touched by any systematic dim).
- ``per_site``: values over the magnitude and max |x| per site.

``Criteria.layer_unit`` names the layer-% denominator: "sites" (the original study's count, 2
per sequential layer) or "layers" (Dettmers' wording: a transformer layer counts for a dim when
any of its sites reaches the magnitude). ``skip_first_position`` leaves each window's first
position out. Both are views of the same statistics (``CapturedStats.by_layer``,
``without_first_position``): every figure can be recomputed either way from stats.npz.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from fractions import Fraction

import numpy as np

from harness.engine.result import Figures
from harness.engine.statistics import CapturedStats
from harness.errors import HarnessError

LAYER_UNITS = ("sites", "layers")


@dataclass(frozen=True)
class Criteria:
    magnitude: float = 6.0
    layer_frac: float = 0.25
    seq_frac: float = 0.06
    layer_unit: str = "sites"
    skip_first_position: bool = False

    def __post_init__(self):
        if self.layer_unit not in LAYER_UNITS:
            raise HarnessError(
                f"--layer-unit must be one of {', '.join(LAYER_UNITS)} (got {self.layer_unit!r}): "
                "sites = each measured tensor counts (the original study), layers = a "
                "transformer layer counts when any of its sites reaches the magnitude."
            )
        if not (np.isfinite(self.magnitude) and self.magnitude > 0):
            raise HarnessError(
                f"--magnitude must be a positive number (got {self.magnitude}); Dettmers used 6."
            )
        for name, value in (("layer-frac", self.layer_frac), ("seq-frac", self.seq_frac)):
            if not (0.0 <= value <= 1.0):
                raise HarnessError(
                    f"--{name} must be a fraction between 0 and 1 (got {value}); Dettmers used "
                    "0.25 for layers and 0.06 for sequence positions."
                )

    def to_dict(self) -> dict:
        return asdict(self)


def _fraction(value: float) -> Fraction:
    # The decimal the user typed (0.06 -> 3/50), not the binary float nearest to it.
    return Fraction(repr(float(value)))


def meets(count, total, frac: float) -> np.ndarray:
    """``count / total >= frac`` evaluated exactly in integers."""
    f = _fraction(frac)
    count = np.asarray(count, dtype=np.int64)
    return count * f.denominator >= f.numerator * np.asarray(total, dtype=np.int64)


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest, ties to even, as ``tensor.to(torch.bfloat16)``),
    returned as float32; finite values."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def bf16_rounding_threshold(magnitude: float) -> float:
    """The smallest float32 value v with bf16(v) >= bf16(magnitude): the threshold the original
    study applied, in effect, to every activation. It cast activations to bfloat16 (also in
    float32 runs) and compared ``abs(x) >= magnitude`` in bfloat16 (METHOD.md section 4), so an
    fp32 value in [5.984375, 6) counted as reaching 6. Comparing fp32 values with this threshold
    gives exactly its decisions."""
    target = to_bfloat16(np.float32(magnitude))
    lo, hi = 0, int(np.float32(np.inf).view(np.uint32))  # positive floats sort as their bits
    while lo < hi:
        mid = (lo + hi) // 2
        if to_bfloat16(np.uint32(mid).view(np.float32)) >= target:
            hi = mid
        else:
            lo = mid + 1
    return float(np.uint32(lo).view(np.float32))


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


def seed_pairs(stats: CapturedStats, g: int, criteria: Criteria) -> tuple[np.ndarray, np.ndarray]:
    """(sequence, dim) of every per-sequence systematic pair at grid index ``g``, sequence-major."""
    site_count = stats.seq_site_count[g]
    pos_count = stats.seq_pos_count[g]
    ok = (
        (site_count >= 1)
        & meets(site_count, stats.num_sites, criteria.layer_frac)
        & meets(pos_count, stats.seq_len, criteria.seq_frac)
    )
    return np.nonzero(ok)


def seed_compatible(stats: CapturedStats, criteria: Criteria, *, with_pairs: bool = True) -> dict:
    """Per-sequence analysis of the original study: systematic (sequence, dim) pairs.

    ``num_outliers`` = number of pairs (not distinct dims); layer % and seq % are averaged over
    the passing pairs only, so they have floors at layer_frac and seq_frac.
    """
    g = stats.grid_index(criteria.magnitude)
    S, T = stats.num_sites, stats.seq_len
    seq, dim = seed_pairs(stats, g, criteria)
    layer_pct = 100.0 * stats.seq_site_count[g][seq, dim] / S
    seq_pct = 100.0 * stats.seq_pos_count[g][seq, dim] / T
    out = {
        "num_outliers": int(len(seq)),
        "num_distinct_dims": int(len(np.unique(dim))),
        "num_sequences_with_outliers": int(len(np.unique(seq))),
        "mean_layer_pct": _mean(layer_pct),
        "median_layer_pct": _median(layer_pct),
        "mean_seq_pct": _mean(seq_pct),
        "median_seq_pct": _median(seq_pct),
    }
    if with_pairs:
        occ = stats.seq_occ[g][seq, dim]
        mx = stats.seq_max[seq, dim]
        # tolist: Python numbers in one step a column, not a numpy scalar per field of a pair
        columns = (seq, dim, layer_pct, seq_pct, mx.astype(np.float64), occ)
        out["pairs"] = [
            {
                "seq": n,
                "dim": d,
                "layer_pct": lp,
                "seq_pct": sp,
                "max_magnitude": m,
                "occurrences": o,
            }
            for n, d, lp, sp, m, o in zip(*(c.tolist() for c in columns), strict=True)
        ]
    return out


def pooled_dims(stats: CapturedStats, criteria: Criteria) -> tuple[np.ndarray, dict]:
    """The pooled systematic dims (ascending) and the per-dim arrays they were chosen from."""
    g = stats.grid_index(criteria.magnitude)
    S, NT = stats.num_sites, stats.num_positions
    reached = stats.site_max >= criteria.magnitude  # [S, H], exact: site_max holds x's values
    layer_count = reached.sum(axis=0)
    pos_count = stats.seq_pos_count[g].sum(axis=0, dtype=np.int64)
    ok = (
        (layer_count >= 1)
        & meets(layer_count, S, criteria.layer_frac)
        & meets(pos_count, NT, criteria.seq_frac)
    )
    return np.flatnonzero(ok), {
        "reached": reached,
        "layer_count": layer_count,
        "pos_count": pos_count,
        "g": g,
    }


def positions_affected(stats: CapturedStats, dims: np.ndarray, magnitude: float) -> int:
    """Number of positions where any of ``dims`` reaches ``magnitude`` at any site."""
    if len(dims) == 0 or len(stats.hits_dim) == 0:
        return 0
    level = stats.grid_index(magnitude) + 1
    keep = stats.hits_of(dims, level)
    starts = stats.hits_indptr[:-1][np.diff(stats.hits_indptr) > 0]  # rows with hits
    return int(np.count_nonzero(np.logical_or.reduceat(keep, starts))) if len(starts) else 0


def pooled(stats: CapturedStats, criteria: Criteria) -> dict:
    """Corpus-level view: distinct systematic dims and Dettmers' aggregates."""
    dims, arr = pooled_dims(stats, criteria)
    S, NT = stats.num_sites, stats.num_positions
    g = arr["g"]
    layer_pct = 100.0 * arr["layer_count"][dims] / S
    seq_pct = 100.0 * arr["pos_count"][dims] / NT
    max_mag = stats.site_max[:, dims].max(axis=0) if len(dims) else np.zeros(0)
    occ = stats.seq_occ[g][:, dims].sum(axis=0) if len(dims) else np.zeros(0, np.int64)
    seqs_sys = _seqs_systematic(stats, criteria, dims)
    windows = _per_window(stats, g, dims)
    sites_hit = arr["reached"][:, dims].any(axis=1) if len(dims) else np.zeros(S, bool)
    return {
        "num_dims": int(len(dims)),
        "dims": [
            {
                "dim": int(d),
                "layer_pct": float(lp),
                "seq_pct": float(sp),
                "max_magnitude": float(m),
                "occurrences": int(o),
                "num_sequences_systematic": int(ns),
                "window": w,
            }
            for d, lp, sp, m, o, ns, w in zip(
                dims, layer_pct, seq_pct, max_mag, occ, seqs_sys, windows, strict=True
            )
        ],
        "num_windows": int(stats.num_seqs),
        "mean_layer_pct": _mean(layer_pct),
        "mean_seq_pct": _mean(seq_pct),
        "sites_affected_pct": 100.0 * float(sites_hit.sum()) / S,
        "positions_affected_pct": 100.0 * positions_affected(stats, dims, criteria.magnitude) / NT,
    }


def _per_window(stats: CapturedStats, g: int, dims: np.ndarray) -> list[dict]:
    """Per systematic dim, its layer % and position % in each window on its own (every window,
    also those where it is not systematic): median and interquartile range. The pooled figures
    are unions over the corpus and grow with the number of windows; these do not."""
    if len(dims) == 0:
        return []
    lp = 100.0 * stats.seq_site_count[g][:, dims] / stats.num_sites  # [N, D]
    sp = 100.0 * stats.seq_pos_count[g][:, dims] / stats.seq_len
    q = np.percentile(np.stack([lp, sp]), [25, 50, 75], axis=1)  # [3, 2, D]
    return [
        {
            "layer_pct_median": float(q[1, 0, i]),
            "layer_pct_iqr": [float(q[0, 0, i]), float(q[2, 0, i])],
            "seq_pct_median": float(q[1, 1, i]),
            "seq_pct_iqr": [float(q[0, 1, i]), float(q[2, 1, i])],
        }
        for i in range(len(dims))
    ]


def _seqs_systematic(stats: CapturedStats, criteria: Criteria, dims: np.ndarray) -> np.ndarray:
    if len(dims) == 0:
        return np.zeros(0, np.int64)
    g = stats.grid_index(criteria.magnitude)
    sc = stats.seq_site_count[g][:, dims]
    pc = stats.seq_pos_count[g][:, dims]
    ok = (sc >= 1) & meets(sc, stats.num_sites, criteria.layer_frac)
    ok &= meets(pc, stats.seq_len, criteria.seq_frac)
    return ok.sum(axis=0)


def per_site(stats: CapturedStats, criteria: Criteria, dims=None) -> list[dict]:
    g = stats.grid_index(criteria.magnitude)
    if dims is None:
        dims, _ = pooled_dims(stats, criteria)
    out = []
    for s, name in enumerate(stats.site_names):
        row = stats.site_max[s]
        out.append(
            {
                "site": name,
                "num_over_magnitude": int(stats.site_counts[s, g]),
                "max_magnitude": float(row.max()),
                "argmax_dim": int(row.argmax()),
                "num_dims_over_magnitude": int((row >= criteria.magnitude).sum()),
                "systematic_dims_here": int((row[dims] >= criteria.magnitude).sum()),
            }
        )
    return out


def view(stats: CapturedStats, criteria: Criteria) -> CapturedStats:
    """The statistics the criteria read: by layer and / or without the first position."""
    if criteria.skip_first_position:
        stats = stats.without_first_position()
    return stats.by_layer() if criteria.layer_unit == "layers" else stats


def _headline(seen: CapturedStats, criteria: Criteria, with_pairs: bool) -> dict:
    """The seed-compatible and pooled figures of ``seen`` (a ``view``), labelled with the
    definition they were made under."""
    out = {
        "seed_compatible": seed_compatible(seen, criteria, with_pairs=with_pairs),
        "pooled": pooled(seen, criteria),
    }
    for part in out.values():
        part.update(
            layer_unit=criteria.layer_unit,
            layer_denominator=seen.num_sites,
            first_position="left out" if criteria.skip_first_position else "included",
        )
    return out


def evaluate(stats: CapturedStats, criteria: Criteria, *, with_pairs: bool = True) -> Figures:
    """All figures at ``criteria``, as the records ``analyze`` returns them: ``seed_compatible``,
    ``pooled`` and ``per_site`` (one row per site under either layer unit, its systematic dims
    the unit's)."""
    sites = stats.without_first_position() if criteria.skip_first_position else stats
    seen = sites.by_layer() if criteria.layer_unit == "layers" else sites
    out = _headline(seen, criteria, with_pairs)
    return Figures(
        seed_compatible=out["seed_compatible"],
        pooled=out["pooled"],
        per_site=per_site(sites, criteria, pooled_dims(seen, criteria)[0]),
    )


def summary(figures: dict) -> dict:
    """The figures of ``evaluate`` without their long lists (pairs; a dim list of numbers)."""
    sc = {k: v for k, v in figures["seed_compatible"].items() if k != "pairs"}
    po = dict(figures["pooled"])
    po["dims"] = [
        {k: d[k] for k in ("dim", "layer_pct", "seq_pct", "window")} for d in po.get("dims", [])
    ]
    return {"seed_compatible": sc, "pooled": po}


def by_definition(stats: CapturedStats, criteria: Criteria) -> dict:
    """The headline figures under every choice the definitions leave open, side by side: the
    layer unit (sites, layers) x the first position (included, left out). ``None`` for the
    first-position-less figures of statistics captured before it was kept apart."""
    out = {}
    for skip in (False, True):
        usable = not skip or (stats.first_position is not None and stats.seq_len >= 2)
        base = (stats.without_first_position() if skip else stats) if usable else None
        for unit in LAYER_UNITS:
            key = f"{unit}{'_without_first_position' if skip else ''}"
            if base is None:
                out[key] = None
                continue
            c = replace(criteria, layer_unit=unit, skip_first_position=skip)
            seen = base.by_layer() if unit == "layers" else base
            out[key] = summary(_headline(seen, c, with_pairs=False))  # no per-site rows
    return out
