"""Bootstrap over sequences: 95% intervals for a model's headline figures (issue 8.4).

A resample draws N of the run's N sequences with replacement (seeded); a sequence drawn twice
counts twice, exactly as if its window had been analysed twice. Every figure of a resample is
what ``harness.analyze`` would report on those windows, computed from the per-sequence
statistics of ``stats.npz`` alone:

- seed-compatible (sequence, dim) pairs of sequence n depend on sequence n only
  (``seq_site_count`` / ``seq_pos_count``), so a resample's pairs are its sequences' pairs,
  concatenated in draw order;
- pooled: dim d reaches the magnitude grid[g] at site s within a resample iff some drawn
  sequence has ``site_seq_level[s, n, d] >= g + 1``; its positions are the sum of
  ``seq_pos_count`` over the draws; positions touched by a set of dims come from the
  per-position union hits (``hits_*``; position p belongs to sequence p // T).

``figures_for_sample(stats, criteria, seq_indices)`` computes the figures of one sample with
the engine's own arithmetic (same values in the same order), so for ``arange(N)`` it equals
``harness.engine.criteria.evaluate`` exactly and for any sample a fresh ``analyze`` on those windows.
``resample_figures`` does the same for many samples at once from their multiplicity matrix
(means from integer sums, so equal up to float rounding); ``bootstrap`` turns them into
percentile intervals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from harness.engine.criteria import Criteria, meets, seed_pairs, view
from harness.engine.statistics import CapturedStats
from harness.errors import HarnessError

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0

# The headline figures, under the names the report uses.
METRICS: tuple[str, ...] = (
    "num_outliers",  # seed-compatible (sequence, dim) pairs
    "mean_layer_pct",
    "median_layer_pct",
    "mean_seq_pct",
    "median_seq_pct",
    "pooled_dims",  # distinct systematic dims over the corpus
    "pooled_layer_pct",
    "pooled_seq_pct",
    "sites_affected_pct",
    "positions_affected_pct",
)

# Cap on the size of the boolean [resamples, sites, candidate dims] block held at once.
_BLOCK_ELEMENTS = 20_000_000


@dataclass(frozen=True)
class Interval:
    """A figure on the full sample and its percentile bootstrap interval.

    ``low``/``high`` are None when the figure is undefined (a mean over no pairs) in every
    resample; ``defined`` is the fraction of resamples in which it was defined (the interval
    is taken over those)."""

    estimate: float | None
    low: float | None
    high: float | None
    defined: float

    def to_dict(self) -> dict:
        return asdict(self)


# -- the per-sequence pieces ------------------------------------------------------------------
def _pairs(stats: CapturedStats, g: int, criteria: Criteria):
    """Per-sequence systematic pairs, seq-major then dim (as the engine's ``np.nonzero``)."""
    seq, dim = seed_pairs(stats, g, criteria)
    return seq, stats.seq_site_count[g][seq, dim], stats.seq_pos_count[g][seq, dim]


def _level_hits(stats: CapturedStats, g: int) -> tuple[np.ndarray, np.ndarray]:
    """(position, dim) of every union hit that reaches grid[g], positions ascending."""
    keep = stats.hits_level >= g + 1
    return stats.hits_positions()[keep], stats.hits_dim[keep]


def _positions_per_seq(pos: np.ndarray, T: int, N: int) -> np.ndarray:
    """Distinct positions per sequence among ``pos`` (sorted ascending)."""
    if len(pos) == 0:
        return np.zeros(N, np.int64)
    first = np.ones(len(pos), bool)
    first[1:] = pos[1:] != pos[:-1]
    return np.bincount(pos[first] // T, minlength=N).astype(np.int64)


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


def _check_indices(stats: CapturedStats, seq_indices) -> np.ndarray:
    idx = np.asarray(seq_indices, dtype=np.int64).reshape(-1)
    if len(idx) == 0:
        raise HarnessError("a bootstrap sample needs at least one sequence.")
    if idx.min() < 0 or idx.max() >= stats.num_seqs:
        raise HarnessError(
            f"sequence indices must lie in 0..{stats.num_seqs - 1} (this run has "
            f"{stats.num_seqs} sequences)."
        )
    return idx


# -- one sample, exactly ----------------------------------------------------------------------
def figures_for_sample(stats: CapturedStats, criteria: Criteria, seq_indices) -> dict:
    """The headline figures (``METRICS``) of the sample made of the sequences ``seq_indices``
    (repeats allowed, in that order), as ``analyze`` would report them on those windows.

    Uses the engine's arithmetic on the same values in the same order, so
    ``figures_for_sample(stats, c, arange(N))`` equals ``evaluate(stats, c)`` exactly.
    Raises the grid's ``HarnessError`` when ``criteria.magnitude`` was not captured."""
    stats = view(stats, criteria)  # the layer unit and first position the criteria name
    g = stats.grid_index(criteria.magnitude)
    idx = _check_indices(stats, seq_indices)
    S, T, N = stats.num_sites, stats.seq_len, stats.num_seqs
    NT = len(idx) * T

    # seed-compatible: the drawn sequences' pairs, concatenated in draw order
    seq, site_count, pos_count = _pairs(stats, g, criteria)
    start = np.searchsorted(seq, np.arange(N + 1))
    sizes = start[idx + 1] - start[idx]
    take = np.repeat(start[idx] - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())
    layer_pct = 100.0 * site_count[take] / S
    seq_pct = 100.0 * pos_count[take] / T

    # pooled over the drawn sequences
    reached = (stats.site_seq_level[:, idx, :] >= g + 1).any(axis=1)  # [S, H]
    layer_count = reached.sum(axis=0)
    dim_pos = stats.seq_pos_count[g][idx].sum(axis=0, dtype=np.int64)
    ok = (
        (layer_count >= 1)
        & meets(layer_count, S, criteria.layer_frac)
        & meets(dim_pos, NT, criteria.seq_frac)
    )
    dims = np.flatnonzero(ok)
    pooled_layer = 100.0 * layer_count[dims] / S
    pooled_seq = 100.0 * dim_pos[dims] / NT
    sites_hit = reached[:, dims].any(axis=1) if len(dims) else np.zeros(S, bool)
    if len(dims):
        pos, dim = _level_hits(stats, g)
        per_seq = _positions_per_seq(pos[np.isin(dim, dims)], T, N)
        touched = int(per_seq[idx].sum())
    else:
        touched = 0
    return {
        "num_outliers": int(len(take)),
        "mean_layer_pct": _mean(layer_pct),
        "median_layer_pct": _median(layer_pct),
        "mean_seq_pct": _mean(seq_pct),
        "median_seq_pct": _median(seq_pct),
        "pooled_dims": int(len(dims)),
        "pooled_layer_pct": _mean(pooled_layer),
        "pooled_seq_pct": _mean(pooled_seq),
        "sites_affected_pct": 100.0 * float(sites_hit.sum()) / S,
        "positions_affected_pct": 100.0 * touched / NT,
    }


# -- many samples at once ---------------------------------------------------------------------
def multiplicities(num_seqs: int, resamples: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """[resamples, num_seqs] draw counts of ``resamples`` seeded bootstrap samples of size
    ``num_seqs`` (row b, column n: how often sequence n was drawn)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_seqs, size=(resamples, num_seqs))
    flat = draws + num_seqs * np.arange(resamples)[:, None]
    return np.bincount(flat.ravel(), minlength=resamples * num_seqs).reshape(resamples, num_seqs)


def _hist_median(hist: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Row-wise median of the multiset with ``hist[b, k]`` copies of ``values[k]`` (NaN if empty);
    the mean of the two middle values for an even count, as ``np.median``."""
    total = hist.sum(axis=1)
    cum = np.cumsum(hist, axis=1)
    lo_rank = np.maximum(total - 1, 0) // 2
    hi_rank = total // 2
    lo = (cum <= lo_rank[:, None]).sum(axis=1)
    hi = (cum <= hi_rank[:, None]).sum(axis=1)
    k = len(values) - 1
    out = (values[np.minimum(lo, k)] + values[np.minimum(hi, k)]) / 2.0
    return np.where(total > 0, out, np.nan)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, float)
    den = np.asarray(den, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def resample_figures(stats: CapturedStats, criteria: Criteria, counts) -> dict[str, np.ndarray]:
    """The headline figures of many samples at once: ``counts[b, n]`` = how often sequence n is
    in sample b. Returns ``{metric: array[B]}`` (NaN where a mean or median has no values).
    Equal to ``figures_for_sample`` on each sample up to float rounding of the means."""
    stats = view(stats, criteria)
    g = stats.grid_index(criteria.magnitude)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[1] != stats.num_seqs:
        raise ValueError(f"counts must be [resamples, {stats.num_seqs}]")
    S, T, N = stats.num_sites, stats.seq_len, stats.num_seqs
    B = counts.shape[0]
    NT = counts.sum(axis=1) * T  # [B]
    countsf = counts.astype(np.float64)
    out: dict[str, np.ndarray] = {}

    # seed-compatible: sums over drawn sequences of per-sequence pair statistics
    seq, site_count, pos_count = _pairs(stats, g, criteria)
    npairs = counts @ np.bincount(seq, minlength=N)
    sum_sites = countsf @ np.bincount(seq, weights=site_count, minlength=N)
    sum_pos = countsf @ np.bincount(seq, weights=pos_count, minlength=N)
    out["num_outliers"] = npairs.astype(np.float64)
    out["mean_layer_pct"] = 100.0 * _ratio(sum_sites, npairs * S)
    out["mean_seq_pct"] = 100.0 * _ratio(sum_pos, npairs * T)
    hist_sites = np.zeros((N, S + 1))
    np.add.at(hist_sites, (seq, site_count), 1)
    hist_pos = np.zeros((N, T + 1))
    np.add.at(hist_pos, (seq, pos_count), 1)
    out["median_layer_pct"] = _hist_median(countsf @ hist_sites, 100.0 * np.arange(S + 1) / S)
    out["median_seq_pct"] = _hist_median(countsf @ hist_pos, 100.0 * np.arange(T + 1) / T)

    # pooled: only dims that can pass in SOME resample (fewer sites than the full sample
    # reach, no more positions than N x its best sequence) need to be followed
    full_layer = (stats.site_seq_level >= g + 1).any(axis=1).sum(axis=0)
    best_seq_pos = stats.seq_pos_count[g].max(axis=0)
    cand = np.flatnonzero(
        (full_layer >= 1)
        & meets(full_layer, S, criteria.layer_frac)
        & meets(best_seq_pos, T, criteria.seq_frac)
    )
    C = len(cand)
    dims_n = np.zeros(B)
    layer_sum = np.zeros(B)
    pos_sum = np.zeros(B)
    sites_hit = np.zeros(B)
    masks = np.zeros((B, C), bool)
    if C:
        level = stats.site_seq_level[:, :, cand] >= g + 1  # [S, N, C]
        level_nsc = level.transpose(1, 0, 2).reshape(N, S * C).astype(np.float32)
        present = (counts > 0).astype(np.float32)
        dim_pos_all = counts @ stats.seq_pos_count[g][:, cand].astype(np.int64)  # [B, C]
        step = max(1, _BLOCK_ELEMENTS // max(1, S * C))
        for b0 in range(0, B, step):
            b1 = min(B, b0 + step)
            reached = (present[b0:b1] @ level_nsc).reshape(b1 - b0, S, C) > 0
            layer_count = reached.sum(axis=1)  # [b, C]
            dim_pos = dim_pos_all[b0:b1]
            ok = (
                (layer_count >= 1)
                & meets(layer_count, S, criteria.layer_frac)
                & meets(dim_pos, NT[b0:b1, None], criteria.seq_frac)
            )
            masks[b0:b1] = ok
            dims_n[b0:b1] = ok.sum(axis=1)
            layer_sum[b0:b1] = (layer_count * ok).sum(axis=1)
            pos_sum[b0:b1] = (dim_pos * ok).sum(axis=1)
            sites_hit[b0:b1] = (reached & ok[:, None, :]).any(axis=2).sum(axis=1)
    out["pooled_dims"] = dims_n
    out["pooled_layer_pct"] = 100.0 * _ratio(layer_sum, dims_n * S)
    out["pooled_seq_pct"] = 100.0 * _ratio(pos_sum, dims_n * NT)
    out["sites_affected_pct"] = 100.0 * sites_hit / S

    # positions touched by the resample's own dims: one union per distinct set of dims
    touched = np.zeros(B)
    if C:
        pos, dim = _level_hits(stats, g)
        col = np.searchsorted(cand, dim)
        in_cand = (col < C) & (cand[np.minimum(col, C - 1)] == dim)
        pos, col = pos[in_cand], col[in_cand]
        unique, inverse = np.unique(masks, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        for u, mask in enumerate(unique):
            if not mask.any():
                continue
            per_seq = _positions_per_seq(pos[mask[col]], T, N)
            rows = inverse == u
            touched[rows] = counts[rows] @ per_seq
    out["positions_affected_pct"] = 100.0 * touched / NT
    return out


def _percentile_interval(
    values: np.ndarray, level: float
) -> tuple[float | None, float | None, float]:
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return None, None, 0.0
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high), len(finite) / len(values)


def bootstrap(
    stats: CapturedStats,
    criteria: Criteria,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> dict[str, Interval]:
    """Percentile bootstrap intervals over sequences for every figure of ``METRICS``.

    ``estimate`` is the full-sample figure (equal to ``evaluate``); the interval is the
    (1 - level) / 2 and (1 + level) / 2 percentiles over ``resamples`` seeded resamples of the
    N sequences with replacement. With a single sequence, or identical ones, every interval has
    zero width."""
    if resamples < 1:
        raise HarnessError(f"the bootstrap needs at least one resample (got {resamples}).")
    if not 0.0 < level < 1.0:
        raise HarnessError(f"the interval level must lie between 0 and 1 (got {level}).")
    estimate = figures_for_sample(stats, criteria, np.arange(stats.num_seqs))
    counts = multiplicities(stats.num_seqs, resamples, seed)
    values = resample_figures(stats, criteria, counts)
    out = {}
    for metric in METRICS:
        low, high, defined = _percentile_interval(values[metric], level)
        est = estimate[metric]
        out[metric] = Interval(None if est is None else float(est), low, high, defined)
    return out


__all__ = [
    "DEFAULT_RESAMPLES",
    "Interval",
    "METRICS",
    "bootstrap",
    "figures_for_sample",
    "multiplicities",
    "resample_figures",
]
