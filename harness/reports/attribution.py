"""What is shown of the attribution section: token decoding, tables, the enrichment heatmap.

Reads only result.json dicts (the ``attribution`` section), never a model or statistics.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

TABLE_TOKENS = 5  # tokens shown per cell (result.json keeps 10)


def _section(result: dict) -> dict | None:
    return result.get("attribution", result if "tokens" in result else None)


def _token_text(tokenizer, token_id: int) -> str:
    try:
        text = tokenizer.decode([int(token_id)])
    except Exception:  # a tokenizer without decode, or an id outside its vocabulary
        return f"<{int(token_id)}>"
    return repr(text)


def decode_tables(section: dict, tokenizer) -> dict:
    """A copy of the ``attribution`` section where every token id (``id`` in token lists,
    ``token_id`` in massive-activation entries) gets a ``token`` field: ``repr`` of the
    tokenizer's decoding of that single id (so whitespace and newlines stay visible)."""
    out = copy.deepcopy(section)
    cache: dict[int, str] = {}

    def text(i):
        if i not in cache:
            cache[i] = _token_text(tokenizer, i)
        return cache[i]

    def walk(node):
        if isinstance(node, dict):
            for key in ("id", "token_id"):
                if isinstance(node.get(key), int) and key in node:
                    node["token"] = text(node[key])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    if tokenizer is not None:
        walk(out.get("tokens"))
        walk(out.get("massive"))
        if out.get("tokens") and out["tokens"].get("bos_token_id") is not None:
            out["tokens"]["bos_token"] = text(out["tokens"]["bos_token_id"])
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{100.0 * x:.1f}"


def _tok(entry: dict) -> str:
    return entry.get("token") or f"#{entry['id']}"


def _token_cell(entries: list, rate: bool) -> str:
    parts = []
    for e in entries[:TABLE_TOKENS]:
        if rate:
            parts.append(f"{_tok(e)} {100 * e['rate']:.0f}% ({e['hits']}/{e['occurrences']})")
        else:
            parts.append(f"{_tok(e)} x{e['hits']}")
    return ", ".join(parts) or "-"


def outlier_tokens_table(section: dict, fmt: str = "github") -> str:
    from tabulate import tabulate

    tok = section.get("tokens") or {}
    rows = []
    for label, row in [(str(r["dim"]), r) for r in tok.get("dims", [])] + [("any", tok.get("any"))]:
        if row is None:
            continue
        bos = row.get("bos")
        rows.append(
            [
                label,
                row["hits"],
                _pct(row["hit_rate"]),
                _pct(row["position0"]["share_of_hits"]),
                _pct(bos["share_of_hits"]) if bos else "-",
                _token_cell(row["top_tokens_by_count"], False),
                _token_cell(row["top_tokens_by_rate"], True),
            ]
        )
    if not rows:
        return "no systematic dims: no outlier tokens."
    headers = [
        "dim",
        "hits",
        "% positions",
        "% hits at pos 0",
        "% hits at BOS",
        "top tokens by hits",
        f"top tokens by rate (>= {tok.get('min_occurrences_for_rate')} occurrences)",
    ]
    return tabulate(rows, headers=headers, tablefmt=fmt)


def outlier_experts_table(section: dict, fmt: str = "github") -> str:
    from tabulate import tabulate

    ex = section.get("experts")
    if not ex:
        return "not a Mixture-of-Experts model."
    if "unavailable" in ex:
        return ex["unavailable"]
    rows = [
        [
            t["layer"],
            t["expert"],
            f"{t['enrichment']:.2f}",
            f"{t['at_outliers']}/{t['outlier_positions']}",
            t["selections"],
            f"{t['p_adjusted']:.2g}",
            t.get("routed_output_max"),
        ]
        for t in ex["top_outlier_experts"]
    ]
    if not rows:
        return "no expert is significantly enriched at outlier positions."
    headers = [
        "layer",
        "expert",
        "enrichment",
        "selected at outlier pos.",
        "selections (all)",
        "p (Bonferroni)",
        "max |routed out|",
    ]
    return tabulate(rows, headers=headers, tablefmt=fmt)


def massive_table(section: dict, fmt: str = "github") -> str:
    from tabulate import tabulate

    ma = section.get("massive")
    if not ma:
        return "massive activations were not captured."
    rows = []
    for row in ma["layers"]:
        top = row["top"][0] if row["top"] else None
        where = (
            f"{top['value']:.4g} @ dim {top['dim']}, seq {top['seq']} pos {top['pos']} "
            f"{top.get('token') or '#' + str(top['token_id'])}"
            if top
            else "-"
        )
        rows.append(
            [
                row["layer"],
                f"{row['median_abs']:.3g}" if row["median_abs"] is not None else "-",
                f"{row['max_abs']:.4g}",
                f"{row['max_over_median']:.3g}" if row["max_over_median"] is not None else "-",
                ", ".join(str(d["dim"]) for d in row["massive_dims"]) or "-",
                where,
            ]
        )
    headers = ["layer", "median |x|", "max |x|", "max/median", "massive dims", "top value"]
    return tabulate(rows, headers=headers, tablefmt=fmt)


def attribution_tables(result: dict, tokenizer=None, fmt: str = "github") -> dict[str, str]:
    """{"outlier_tokens", "outlier_experts", "massive_activations"} tables (tabulate) for one
    model's result.json dict (or its ``attribution`` section); {} when it has none."""
    section = _section(result)
    if not section:
        return {}
    if tokenizer is not None:
        section = decode_tables(section, tokenizer)
    return {
        "outlier_tokens": outlier_tokens_table(section, fmt),
        "outlier_experts": outlier_experts_table(section, fmt),
        "massive_activations": massive_table(section, fmt),
    }


def no_enrichment(result: dict) -> bool:
    """True when a MoE result's expert section exists but has no outlier position at any layer."""
    ex = (_section(result) or {}).get("experts") or {}
    layers = ex.get("layers") or []
    return bool(layers) and not any(r.get("outlier_positions") for r in layers)


def plot_expert_enrichment(result: dict, path: str | Path) -> Path | None:
    """Layer x expert heatmap of log2(enrichment) for one MoE model, written to ``path``
    (PNG); None (nothing written) when the result has no expert attribution or no outlier
    position (every enrichment undefined: a blank grid says nothing; see ``no_enrichment``)."""
    section = _section(result) or {}
    ex = section.get("experts")
    if not ex or "layers" not in ex or not ex["layers"] or no_enrichment(result):
        return None
    import matplotlib.ticker
    import numpy as np
    from matplotlib import colormaps

    from harness.reports.plots import new_figure, save_figure

    E = max(len(r["enrichment"]) for r in ex["layers"])
    grid = np.full((len(ex["layers"]), E), np.nan)  # NaN: undefined (expert never selected)
    for i, row in enumerate(ex["layers"]):
        for e, v in enumerate(row["enrichment"]):
            if v is not None:
                grid[i, e] = math.log2(v) if v > 0 else -np.inf
    finite = grid[np.isfinite(grid)]
    lim = max(1.0, float(np.abs(finite).max()) if len(finite) else 1.0)
    grid = np.where(np.isneginf(grid), -lim, grid)  # never selected at outlier positions
    fig = new_figure((min(18, 4 + 0.1 * E), min(14, 2 + 0.25 * len(grid))))
    ax = fig.add_subplot()
    cmap = colormaps["RdBu_r"].with_extremes(bad="#dddddd")
    im = ax.imshow(
        np.ma.masked_invalid(grid),
        aspect="auto",
        cmap=cmap,
        vmin=-lim,
        vmax=lim,
        interpolation="nearest",
    )
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    ax.set_yticks(range(len(grid)), [str(r["layer"]) for r in ex["layers"]])
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for t in ex.get("top_outlier_experts", []):
        i = next(k for k, r in enumerate(ex["layers"]) if r["layer"] == t["layer"])
        ax.plot(t["expert"], i, marker="o", mfc="none", mec="black", ms=6)
    model = (result.get("model") or {}).get("id", "")
    ax.set_title(f"{model}\nenrichment at outlier positions (o: outlier experts)", fontsize=10)
    fig.colorbar(im, ax=ax, label="log2 enrichment")
    fig.tight_layout()
    return save_figure(fig, path)
