"""What must hold for any honest run, checked on a result (and its statistics).

Each check returns failure sentences; an empty list means the run is sound. These are
invariants of the method, not expectations about a model: they hold for every model and data.

The outlier sets of the result (seed-compatible pairs, pooled dims) are recomputed here from
OTHER arrays of the statistics than the criteria read (the per-site levels ``site_seq_level``
and the per-position hit lists, where ``criteria.py`` reads the per-sequence counts and
``site_max``), with float division instead of ``outliers.meets``' integer arithmetic: a bug in
either the criteria or the capture's counts shows as a disagreement. The remaining checks
(ranges, denominators, the two views against each other) are consistency checks.
"""

from __future__ import annotations

import math

import numpy as np

from harness.engine.criteria import Criteria
from harness.engine.result import AnalysisResult, as_result
from harness.engine.statistics import CapturedStats


def independent_outliers(stats: CapturedStats, c: Criteria) -> tuple[set, set]:
    """(seed-compatible (seq, dim) pairs, pooled dims), from the per-site levels and the hit
    lists, by float division (exact here: a count ratio and a short decimal fraction that
    differ, differ by far more than one rounding step)."""
    g = stats.grid_index(c.magnitude)
    S, N, T = stats.num_sites, stats.num_seqs, stats.seq_len
    reach = stats.site_seq_level > g  # [S, N, H]: dim d reaches the magnitude at site s in seq n
    sites = reach.sum(axis=0)  # [N, H]
    keep = stats.hits_level > g
    pos = np.zeros((N, stats.hidden_size), dtype=np.int64)
    where = stats.hits_positions()[keep]
    np.add.at(pos, (where // T, stats.hits_dim[keep].astype(np.int64)), 1)
    pairs = (sites > 0) & (sites / S >= c.layer_frac) & (pos / T >= c.seq_frac)
    seq, dim = np.nonzero(pairs)
    pooled_sites = reach.any(axis=1).sum(axis=0)  # [H]
    pooled_pos = pos.sum(axis=0)
    dims = np.flatnonzero(
        (pooled_sites > 0)
        & (pooled_sites / S >= c.layer_frac)
        & (pooled_pos / (N * T) >= c.seq_frac)
    )
    return set(zip(seq.tolist(), dim.tolist(), strict=True)), set(dims.tolist())


def honest_run_failures(
    result: AnalysisResult | dict, stats: CapturedStats, expected_sites: int | None = None
):
    result = as_result(result)
    fails: list[str] = []
    crit, c = result.criteria, result.criteria_tuple
    N, T, S = result.data.num_seqs, result.data.seq_len, crit.num_sites
    if stats.num_seqs != N or stats.seq_len != T:
        fails.append(f"statistics cover {stats.num_seqs} x {stats.seq_len}, not {N} x {T}")
    if result.timing.get("forward_calls") != result.timing.batches:
        fails.append("the number of forward passes differs from the number of batches")
    if expected_sites is not None and S != expected_sites:
        fails.append(f"{S} sites captured, {expected_sites} expected")
    check = crit.get("site_self_check")
    if check is not None and not (check.get("ran") and check.get("passed")):
        fails.append("the site self-check did not run and pass")
    if len(stats.site_names) != S:
        fails.append("site list and site count disagree")
    if not np.isfinite(stats.site_max).all() or not np.isfinite(stats.seq_max).all():
        fails.append("non-finite activation maxima")
    if (stats.seq_pos_count > T).any() or (stats.seq_site_count > S).any():
        fails.append("a per-sequence count exceeds its denominator")
    # every (token) position counted in a window must be a real token of that window
    if int((stats.token_ids < 0).sum()):
        fails.append("negative token ids in the windows")
    sc = result.seed_compatible
    if sc.num_outliers != len(sc.pairs):
        fails.append("num_outliers differs from the number of listed pairs")
    want_pairs, want_dims = independent_outliers(stats, c)
    got_pairs = {(p["seq"], p["dim"]) for p in sc.pairs}
    if got_pairs != want_pairs:
        extra, missing = sorted(got_pairs - want_pairs), sorted(want_pairs - got_pairs)
        fails.append(
            f"the systematic pairs disagree with the per-site levels and hit lists "
            f"({len(extra)} extra, e.g. {extra[:2]}; {len(missing)} missing, e.g. {missing[:2]})"
        )
    if sc.num_outliers != len(want_pairs):
        fails.append(f"num_outliers is {sc.num_outliers}, the statistics give {len(want_pairs)}")
    po = result.pooled
    got_dims = {d["dim"] for d in po.dims}
    if got_dims != want_dims:
        fails.append(
            f"the pooled systematic dims {sorted(got_dims)[:5]} disagree with the per-site levels "
            f"and hit lists {sorted(want_dims)[:5]}"
        )
    for p in sc.pairs:
        if not (
            p["max_magnitude"] >= c.magnitude
            and 0 <= p["layer_pct"] <= 100
            and 0 <= p["seq_pct"] <= 100
        ):
            fails.append(f"pair (seq {p['seq']}, dim {p['dim']}) has values out of range")
            break
    for key in ("sites_affected_pct", "positions_affected_pct"):
        if not (0 <= getattr(po, key) <= 100):
            fails.append(f"{key} = {getattr(po, key)} is outside 0-100")
    # consistency of the two views: a dim systematic in EVERY sequence is pooled-systematic,
    # and each pooled dim's sequence count equals its number of seed-compatible pairs
    per_dim: dict[int, int] = {}
    for p in sc.pairs:
        per_dim[p["dim"]] = per_dim.get(p["dim"], 0) + 1
    pooled_dims = {d["dim"]: d for d in po.dims}
    for dim, n in per_dim.items():
        if n == N and dim not in pooled_dims:
            fails.append(f"dim {dim} is systematic in every sequence but not pooled-systematic")
            break
    for dim, d in pooled_dims.items():
        if d["num_sequences_systematic"] != per_dim.get(dim, 0):
            fails.append(f"pooled dim {dim}: sequence count disagrees with the pairs")
            break
    for key in ("mean_layer_pct", "median_layer_pct", "mean_seq_pct", "median_seq_pct"):
        v = getattr(sc, key)
        if v is not None and (math.isnan(v) or not 0 <= v <= 100):
            fails.append(f"{key} = {v} is outside 0-100")
    if sc.num_outliers:
        if sc.mean_layer_pct + 1e-9 < 100 * c.layer_frac:
            fails.append("mean layer % of passing pairs is below the layer criterion")
        if sc.mean_seq_pct + 1e-9 < 100 * c.seq_frac:
            fails.append("mean seq % of passing pairs is below the sequence criterion")
    return fails


_SETTING_DEFAULTS = {"layer_unit": "sites", "skip_first_position": False}


def as_original_count(result: AnalysisResult) -> tuple[int | None, str]:
    """Our seed-compatible count as the original study computed it (every activation rounded
    to bf16 before the magnitude test), and which figure that is."""
    orig = result.sections.get("seed_compatible_as_original") or {}
    if orig.get("same_as_exact"):
        return result.seed_compatible.num_outliers, "exact (the activations are bf16 already)"
    if "num_outliers" in orig:
        return int(
            orig["num_outliers"]
        ), f"as the original computed it (|x| >= {orig['threshold']:g})"
    return None, "the as-original (bf16-rounded) count was not recorded"


def published_deviation(result: AnalysisResult | dict, entry) -> dict | None:
    """Our seed-compatible count, as the original computed it (bf16 rounding), beside the
    published one, when the settings match: the published settings (named as the data and
    criteria fields are) and the weights' dtype the entry names."""
    pub = getattr(entry, "published", None)
    if pub is None or pub.num_outliers is None:
        return None
    result = as_result(result)

    def ours(name):
        if name == "dtype":
            return result.model.dtype
        section = result.data if name in result.data.names() else result.criteria
        value = getattr(section, name, None)
        if value is None and name not in section.names():
            value = section.get(name, _SETTING_DEFAULTS.get(name))
        return value

    settings = (*pub.settings, ("dtype", getattr(entry, "dtype", None)))
    differs = [k for k, v in settings if v is not None and ours(k) != v]
    count, figure = as_original_count(result)
    out = {
        "published": pub.num_outliers,
        "ours": count,
        "ours_figure": figure,
        "source": pub.source,
        "settings": dict(settings),
        "rounding": pub.rounding,
    }
    if count is None:
        differs.append("rounding")
    if differs:
        out["comparable"] = False
        out["differs"] = differs
        return out
    out["comparable"] = True
    out["relative_deviation"] = (out["ours"] - pub.num_outliers) / pub.num_outliers
    return out
