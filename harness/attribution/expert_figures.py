"""The ``experts`` part of the attribution section (METHOD.md section 6) from the statistics
alone: what ``ExpertRouting`` (harness.attribution.experts) stored in ``stats.extra``, at any
criteria. numpy and scipy only, so that ``outliers report`` recomputes it without torch."""

from __future__ import annotations

import numpy as np

from harness.engine.architectures import ROUTER_OUTPUTS
from harness.engine.criteria import Criteria, pooled_dims
from harness.engine.statistics import CapturedStats
from harness.errors import HarnessError

PREFIX = "attr_moe_"
ALPHA = 0.01  # significance after Bonferroni over the (layer, expert) tests
MIN_SELECTIONS = 5  # an "outlier expert" needs at least this many selections at outlier positions
TOP_EXPERTS = 10


def expert_counts(stats: CapturedStats, dims, magnitude: float) -> dict | None:
    """Selections per (MoE layer, expert): over all positions, and over the positions where one
    of ``dims`` reaches ``magnitude`` in that layer's router input (= its mlp_in site)."""
    x = {k[len(PREFIX) :]: v for k, v in stats.extra.items() if k.startswith(PREFIX)}
    if "counts" not in x:
        return None
    grid = x["grid"]
    floor = float(x["floor"])
    if magnitude < floor - 1e-9:
        raise HarnessError(
            f"expert attribution was captured at magnitude {floor:g}; it cannot be recomputed "
            f"at {magnitude:g} (only at grid magnitudes >= {floor:g})."
        )
    matches = np.flatnonzero(np.isclose(grid, magnitude, rtol=0, atol=1e-9))
    if len(matches) == 0:
        raise HarnessError(f"magnitude {magnitude:g} is not on the captured grid {list(grid)}.")
    level = int(matches[0]) + 1
    L, E = x["counts"].shape
    hit_dim = x["hit_dim"].astype(np.int64)
    wanted = np.zeros(int(hit_dim.max()) + 1 if len(hit_dim) else 1, bool)
    dims = np.asarray(dims, dtype=np.int64)
    wanted[dims[dims < len(wanted)]] = True
    keep = (x["hit_level"] >= level) & wanted[hit_dim]
    rows = x["hit_row"][keep].astype(np.int64)
    if len(rows) > 1 and np.all(rows[1:] >= rows[:-1]):  # as captured: no sort needed
        rows = rows[np.concatenate(([True], rows[1:] != rows[:-1]))]
    else:
        rows = np.unique(rows)
    layer_of = np.searchsorted(x["cand_indptr"], rows, side="right") - 1
    at = np.zeros((L, E), np.int64)
    n_out = np.bincount(layer_of, minlength=L).astype(np.int64)
    if len(rows):
        ex = x["cand_experts"][rows].astype(np.int64)  # [R, k], distinct experts per row
        flat = (layer_of[:, None] * E + ex).reshape(-1)
        at = np.bincount(flat, minlength=L * E).reshape(L, E)
    return {"x": x, "counts": x["counts"], "at_outliers": at, "outlier_positions": n_out}


def _enrichment(counts, at, n_out, NT):
    """ratio = (at / n_out) / (counts / NT); one-sided binomial p-value of ``at`` successes in
    ``n_out`` trials at the overall rate counts / NT (each position selects an expert at most
    once); equal to scipy.stats.binomtest(at, n_out, rate, alternative="greater").pvalue
    (computed as the binomial survival function bdtrc(at - 1, n_out, rate))."""
    from scipy.special import bdtrc  # scipy.special imports ~4x faster than scipy.stats

    rate = counts / NT
    n = n_out[:, None].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((counts > 0) & (n > 0), (at / np.maximum(n, 1)) / rate, np.nan)
    trials = np.broadcast_to(n_out[:, None], at.shape)
    p = np.where((counts > 0) & (n > 0), bdtrc(at - 1, trials, rate), np.nan)
    return ratio, p


def _fmt(v, digits=4):
    return None if not np.isfinite(v) else float(f"{float(v):.{digits}g}")


def expert_section(stats: CapturedStats, criteria: Criteria) -> dict | None:
    """Expert attribution at ``criteria`` from ``stats.extra`` (None if not captured).

    Guarantees: ``layers[i].selections[e]`` = positions of the corpus that selected expert e at
    that MoE layer; ``selections_at_outliers[e]`` = those among the ``outlier_positions``
    (positions where a pooled systematic dim reaches the magnitude at that layer's mlp_in);
    ``enrichment`` = share at outlier positions / share overall (None when undefined);
    ``top_outlier_experts`` = (layer, expert) pairs with >= MIN_SELECTIONS selections at outlier
    positions and Bonferroni-adjusted one-sided binomial p < ALPHA, by enrichment.
    """
    dims, _ = pooled_dims(stats, criteria)
    try:
        got = expert_counts(stats, dims, criteria.magnitude)
    except HarnessError as err:
        return {"unavailable": str(err)}
    if got is None:
        return None
    x, counts, at, n_out = got["x"], got["counts"], got["at_outliers"], got["outlier_positions"]
    NT = stats.num_positions
    ratio, p = _enrichment(counts, at, n_out, NT)
    tests = int(np.isfinite(p).sum())
    p_adj = np.minimum(1.0, p * max(tests, 1))
    layers_idx = [int(v) for v in x["layers"]]
    info = dict(
        zip(
            (
                "architecture",
                "router_class",
                "experts_class",
                "experts_implementation",
                "shared_class",
            ),
            (str(s) for s in x["info"]),
            strict=True,
        )
    )

    rows = _layer_rows(x, layers_idx, counts, at, n_out, ratio, p)
    top = _top_experts(x, layers_idx, counts, at, n_out, ratio, p, p_adj)
    experts_class = info["experts_class"] or "the experts module"
    return {
        "architecture": info["architecture"],
        "router": {"class": info["router_class"], **ROUTER_OUTPUTS[info["architecture"]].__dict__}
        if info["architecture"] in ROUTER_OUTPUTS
        else {"class": info["router_class"]},
        "magnitude": criteria.magnitude,
        "systematic_dims": [int(d) for d in dims],
        "outlier_position_definition": "positions where a pooled systematic dim reaches the "
        "magnitude in the layer's router input (= its mlp_in site)",
        "test": f"one-sided binomial (selections at outlier positions vs the layer's overall "
        f"rate), Bonferroni over {tests} (layer, expert) tests; outlier expert: >= "
        f"{MIN_SELECTIONS} selections at outlier positions and adjusted p < {ALPHA}",
        "per_expert_output": {
            "exposed": False,
            "note": f"not exposed by {experts_class} (experts_implementation="
            f"{info['experts_implementation']}): fused 3-D expert weights, per-expert outputs are "
            "intermediates of one forward. Reported instead: routed_output_max = max |experts "
            "output| (the weighted sum of the token's k experts) over the tokens that selected "
            "the expert (in the top lists; per layer: over all tokens; every expert: stats.npz "
            "attr_moe_routed_max)",
        },
        "shared_expert": {
            "class": info["shared_class"] or None,
            "note": "raw shared-expert output (Qwen3-Next: before its sigmoid gate)",
        }
        if info["shared_class"]
        else None,
        "top_outlier_experts": top,
        "layers": rows,
    }


def _routed(x, j: int, e: int):
    v = float(x["routed_max"][j, e])
    return _fmt(v, 6) if v >= 0 else None


def _layer_rows(x, layers_idx, counts, at, n_out, ratio, p) -> list[dict]:
    """The ``layers`` of the experts section: selections, enrichment and the top 3 per layer."""
    rows = []
    for j, layer in enumerate(layers_idx):
        E = int(x["num_experts"][j])
        order = [
            e
            for e in np.argsort(-np.nan_to_num(ratio[j, :E], nan=-1), kind="stable")[:3]
            if np.isfinite(ratio[j, e])
        ]
        shared = x["shared_max"][j] >= 0
        rows.append(
            {
                "layer": layer,
                "outlier_positions": int(n_out[j]),
                "selections": [int(v) for v in counts[j, :E]],
                "selections_at_outliers": [int(v) for v in at[j, :E]],
                "enrichment": [_fmt(v) for v in ratio[j, :E]],
                "top": [
                    {
                        "expert": int(e),
                        "enrichment": _fmt(ratio[j, e]),
                        "at_outliers": int(at[j, e]),
                        "p_value": _fmt(p[j, e], 3),
                        "routed_output_max": _routed(x, j, e),
                    }
                    for e in order
                ],
                "routed_output_max": _fmt(float(x["routed_max"][j, :E].max()), 6),
                "shared_expert_max_abs": _fmt(x["shared_max"][j], 6) if shared else None,
                "shared_expert_argmax_dim": int(x["shared_dim"][j]) if shared else None,
            }
        )
    return rows


def _top_experts(x, layers_idx, counts, at, n_out, ratio, p, p_adj) -> list[dict]:
    """(layer, expert) pairs that pass the test, most enriched first (at most TOP_EXPERTS)."""
    ok = (at >= MIN_SELECTIONS) & (p_adj < ALPHA) & np.isfinite(ratio)
    cand = sorted(
        np.argwhere(ok).tolist(),
        key=lambda je: (-ratio[je[0], je[1]], p[je[0], je[1]], je[0], je[1]),
    )
    return [
        {
            "layer": layers_idx[j],
            "expert": int(e),
            "enrichment": _fmt(ratio[j, e]),
            "at_outliers": int(at[j, e]),
            "outlier_positions": int(n_out[j]),
            "selections": int(counts[j, e]),
            "p_value": _fmt(p[j, e], 3),
            "p_adjusted": _fmt(p_adj[j, e], 3),
            "routed_output_max": _routed(x, j, e),
        }
        for j, e in cand[:TOP_EXPERTS]
    ]
