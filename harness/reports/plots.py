"""The report's plots (matplotlib, Agg canvas, PNG at 8 x 6 in, 120 dpi).

- ``scatter_plot``: the original study's 8 scatter plots (x = total or active params, log
  scale; y = mean / median layer % and mean / median seq % of the seed-compatible pairs), all
  families in one figure with distinct markers, model labels, bootstrap 95% intervals as error
  bars, rows that are not comparable drawn hollow with a legend note, and Dettmers' table 4
  as its own labelled series (issue 6.3). Two more of the same kind for the pooled figures
  Dettmers reported (sites % and positions % affected).
- ``heatmap``: per model, sites x dims (the pooled systematic dims first, then the dims with
  the largest max |x|, up to ``HEATMAP_DIMS``), colour = max |x| on a log scale, cells at or
  over the magnitude dotted and the magnitude marked on the colour bar.
- ``sensitivity_plot``: pooled systematic dims and seed-compatible pairs against the magnitude
  over each run's captured grid, one line per model (issue 6.1).

Every plot function writes its PNG atomically and returns the data it drew (``series``), so
tests can check what is on a figure without reading pixels.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, FuncFormatter, LogLocator, NullFormatter

from harness.engine.criteria import Criteria, pooled_dims, seed_compatible
from harness.engine.result_files import slug
from harness.fileio import atomic_write

FIGSIZE = (8.0, 6.0)
DPI = 120
HEATMAP_DIMS = 32
REFERENCE_LABEL = "Dettmers et al. 2022 (table 4)"
HOLLOW_NOTE = "hollow: not comparable (see summary.md)"
CLUSTER_PX = 9.0  # points this close on the canvas share one label

# style key (``style_key``) -> (marker, colour, legend label)
GROUP_STYLE = {
    "moe": ("o", "tab:red", "MoE"),
    "dense": ("s", "tab:blue", "dense"),
    "reference": ("^", "tab:green", "reference (2022 families)"),
    "tiny_moe": ("P", "tab:orange", "tiny MoE replicas"),
    "tiny_dense": ("D", "tab:purple", "tiny dense replicas"),
}
X_AXES = {"total_params": "total parameters", "active_params": "active parameters"}
Y_AXES = {
    "mean_layer_pct": "mean layer % of systematic (seq, dim) pairs",
    "median_layer_pct": "median layer % of systematic (seq, dim) pairs",
    "mean_seq_pct": "mean sequence % of systematic (seq, dim) pairs",
    "median_seq_pct": "median sequence % of systematic (seq, dim) pairs",
    "sites_affected_pct": "% of sites touched by a pooled systematic dim",
    "positions_affected_pct": "% of positions touched by a pooled systematic dim",
    "pct_layers_affected": "% of transformer layers touched by a per-layer systematic dim",
}
# Which column of table 4 goes on which y axis: only the pooled figures are Dettmers' quantities
# (the seed-compatible pair statistics are the original study's own, not his).
REFERENCE_COLUMN = {
    "sites_affected_pct": "layer_pct",
    "positions_affected_pct": "seq_pct",
}
SEED_COMPATIBLE_Y = ("mean_layer_pct", "median_layer_pct", "mean_seq_pct", "median_seq_pct")
TITLES = {
    "mean_layer_pct": "Mean layer %",
    "median_layer_pct": "Median layer %",
    "mean_seq_pct": "Mean sequence %",
    "median_seq_pct": "Median sequence %",
    "sites_affected_pct": "Sites affected % (pooled)",
    "positions_affected_pct": "Positions affected % (pooled)",
    "pct_layers_affected": "Layers affected % (pooled, per transformer layer)",
}
STUDY_PLOTS = tuple((x, y) for x in X_AXES for y in list(Y_AXES)[:4])  # the original 8
POOLED_PLOTS = (
    ("total_params", "sites_affected_pct"),
    ("total_params", "positions_affected_pct"),
    ("total_params", "pct_layers_affected"),
)


def new_figure(figsize=FIGSIZE) -> Figure:
    """A figure on an Agg canvas (no pyplot state, safe in threads)."""
    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """PNG at ``DPI``, written atomically."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))


def _reference_series() -> dict:
    from harness.models.dettmers import reference_series

    return reference_series()


def _params_text(n: float) -> str:
    """Parameter counts as tick labels: 300K, 1.3B (never an exponent)."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


# -- scatter plots ----------------------------------------------------------------------------
def style_key(row) -> str:
    """The marker group of a row: its study group, with the tiny replicas split by MoE / dense."""
    if row.group == "tiny":
        return "tiny_moe" if row.is_moe else "tiny_dense"
    return row.group if row.group in GROUP_STYLE else "dense"


def _place_labels(ax, points: list[tuple[float, float, str]], **text_kw) -> None:
    """Label every point. Points closer than ``CLUSTER_PX`` on the canvas share one label (the
    names, wrapped); labels are moved off each other and off the points by adjustText and joined
    to their point by a thin leader line, so every marker stays where its value is."""
    if not points:
        return
    from adjustText import adjust_text

    ax.figure.canvas.draw()  # the final limits: clusters are measured in display pixels
    clusters: list[list[tuple[float, float, str]]] = []
    anchors: list[np.ndarray] = []
    for p in sorted(points, key=lambda p: (p[0], p[1])):
        xy = ax.transData.transform((p[0], p[1]))
        near = next((i for i, a in enumerate(anchors) if np.hypot(*(xy - a)) < CLUSTER_PX), None)
        if near is None:
            clusters.append([p])
            anchors.append(xy)
        else:
            clusters[near].append(p)
    texts = []
    for members in clusters:
        names = [m[2] for m in members]
        text = names[0] if len(names) == 1 else textwrap.fill(", ".join(names), 48)
        texts.append(ax.text(members[0][0], members[0][1], text, **text_kw))
    adjust_text(
        texts,
        x=[p[0] for p in points],
        y=[p[1] for p in points],
        target_x=[m[0][0] for m in clusters],
        target_y=[m[0][1] for m in clusters],
        ax=ax,
        arrowprops={"arrowstyle": "-", "color": "0.55", "lw": 0.6},
        time_lim=1.0,
    )


def _draw_group(ax, s: dict, marker, colour, label) -> bool:
    """One group's points with their 95% intervals, not-comparable ones hollow; True when a
    hollow point was drawn."""
    any_hollow = False
    for hollow in (False, True):
        idx = [i for i, h in enumerate(s["hollow"]) if h == hollow]
        if not idx:
            continue
        any_hollow |= hollow
        ys = np.array([s["y"][i] for i in idx])
        err = np.array(
            [
                [
                    0.0 if s["low"][i] is None else max(0.0, ys[j] - s["low"][i]),
                    0.0 if s["high"][i] is None else max(0.0, s["high"][i] - ys[j]),
                ]
                for j, i in enumerate(idx)
            ]
        ).T
        ax.errorbar(
            [s["x"][i] for i in idx],
            ys,
            yerr=err if err.any() else None,
            fmt=marker,
            color=colour,
            mfc="none" if hollow else colour,
            mec=colour,
            ms=8,
            mew=1.5,
            capsize=3,
            elinewidth=1,
            ls="none",
            zorder=3,
            label=label if not hollow or all(s["hollow"]) else None,
        )
    return any_hollow


def _params_axis(ax, xs: list[float]) -> None:
    """A log axis of parameter counts labelled 300K, 1.3B, at least two decades wide (tiny
    models alone span a few percent)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _params_text(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_locator(LogLocator(base=10.0, numticks=12))
    if xs:
        lo, hi = min(xs), max(xs)
        mid, half = math.sqrt(lo * hi), max(math.sqrt(hi / lo) * 1.3, 10.0)
        ax.set_xlim(mid / half, mid * half)


def scatter_plot(rows, x: str, y: str, path: str | Path, *, reference: bool = True) -> dict:
    """One point per model with params (``x``) on a log axis against ``y``; returns
    ``{"path", "x", "y", "series": {label: {"x", "y", "labels", "low", "high", "hollow"}}}``
    (the reference overlay, when drawn, is the series ``REFERENCE_LABEL``)."""
    fig = new_figure()
    ax = fig.add_subplot()
    series: dict[str, dict] = {}
    labels: list[tuple[float, float, str]] = []
    any_hollow = False
    for key, (marker, colour, label) in GROUP_STYLE.items():
        pts = [
            r for r in rows if style_key(r) == key and getattr(r, x) and getattr(r, y) is not None
        ]
        if not pts:
            continue
        s = {"x": [], "y": [], "labels": [], "low": [], "high": [], "hollow": []}
        for r in pts:
            iv = r.ci.get(y)
            s["x"].append(float(getattr(r, x)))
            s["y"].append(float(getattr(r, y)))
            s["labels"].append(r.label)
            s["low"].append(None if iv is None else iv.low)
            s["high"].append(None if iv is None else iv.high)
            s["hollow"].append(not r.comparable)
        series[label] = s
        labels += list(zip(s["x"], s["y"], s["labels"], strict=True))
        any_hollow |= _draw_group(ax, s, marker, colour, label)
    ref = _reference_series() if reference and y in REFERENCE_COLUMN else None
    if ref is not None:
        col = REFERENCE_COLUMN[y]
        rx = [float(p) for p in ref["params"]]
        ry = [float(v) for v in ref[col]]
        name = "% layers affected" if col == "layer_pct" else "% sequence positions affected"
        ax.plot(
            rx,
            ry,
            marker="x",
            ls=":",
            color="0.35",
            ms=7,
            mew=1.5,
            zorder=2,
            label=f"{REFERENCE_LABEL}: {name}",
        )
        series[REFERENCE_LABEL] = {"x": rx, "y": ry, "labels": list(ref["labels"]), "column": col}
    if any_hollow:
        ax.add_line(
            Line2D([], [], marker="o", mfc="none", color="black", ls="none", label=HOLLOW_NOTE)
        )
    _params_axis(ax, [v for s in series.values() for v in s["x"] if v > 0])
    ax.set_xlabel(X_AXES.get(x, x) + " (log scale)")
    ax.set_ylabel(Y_AXES.get(y, y))
    ax.set_title(f"{TITLES.get(y, y)} vs {X_AXES.get(x, x)}")
    ax.grid(True, which="both", alpha=0.3)
    ax.autoscale_view()
    if y.endswith("_pct"):  # room under 0 for the labels of the models at 0%
        top = min(112.0, max(ax.get_ylim()[1], 10.0))
        ax.set_ylim(-0.1 * top, top)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.1, top=0.93)
    without = [r.label for r in rows if y in SEED_COMPATIBLE_Y and r.num_outliers == 0]
    if without:  # no systematic pair: no percentage to draw; say who, not a silent gap
        more = f" and {len(without) - 8} more" if len(without) > 8 else ""
        note = f"{len(without)} model(s) with no systematic pairs, not drawn: "
        ax.text(
            0.01,
            0.01,
            textwrap.fill(note + ", ".join(without[:8]) + more, 110),
            transform=ax.transAxes,
            fontsize=7,
            color="0.3",
            va="bottom",
        )
    if ref is not None:  # never paired silently: say which of our rows table 4 cannot be beside
        apart = [
            f"{r.label} ({r.table4_comparability.split(': ', 1)[1]})"
            for r in rows
            if r.table4_comparability and not r.table4_comparability.startswith("comparable")
        ]
        series[REFERENCE_LABEL]["not_comparable"] = apart
        if apart:
            ax.text(
                0.01,
                0.99,
                textwrap.fill("not comparable with table 4: " + "; ".join(apart[:4]), 110)
                + (f" and {len(apart) - 4} more" if len(apart) > 4 else ""),
                transform=ax.transAxes,
                fontsize=6,
                color="0.3",
                va="top",
            )
    _place_labels(ax, labels, fontsize=7)
    if ref is not None:
        _place_labels(ax, list(zip(rx, ry, ref["labels"], strict=True)), fontsize=6, color="0.35")
    if series:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(
            0.5,
            0.5,
            "no model has a value for this figure",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    save_figure(fig, path)
    return {"path": Path(path), "x": x, "y": y, "series": series, "without_pairs": without}


# -- heatmap ----------------------------------------------------------------------------------
def heatmap_dims(stats, criteria: Criteria, limit: int = HEATMAP_DIMS) -> tuple[np.ndarray, int]:
    """(dims, number of them that are pooled systematic dims): systematic dims by max |x|
    first, then the other dims by max |x|, at most ``limit``."""
    sys_dims, _ = pooled_dims(stats, criteria)
    peak = stats.site_max.max(axis=0)
    sys_sorted = sys_dims[np.argsort(-peak[sys_dims], kind="stable")][:limit]
    others = np.setdiff1d(np.arange(stats.hidden_size), sys_dims)
    others = others[np.argsort(-peak[others], kind="stable")][: limit - len(sys_sorted)]
    return np.concatenate([sys_sorted, others]).astype(np.int64), len(sys_sorted)


def colorbar_ticks(vmin: float, vmax: float, magnitude: float) -> list[float]:
    """Ticks of a log colour bar over [vmin, vmax]: 1-2-5 steps, the magnitude, and both ends
    (3 significant digits) unless a tick is already within 20% of that end."""
    nice = [v * 10.0**e for e in range(-8, 9) for v in (1, 2, 5)]
    ticks = {v for v in (*nice, float(magnitude)) if vmin <= v <= vmax}
    for end in (vmin, vmax):
        if not any(abs(np.log10(t / end)) < np.log10(1.2) for t in ticks):
            ticks.add(min(max(float(f"{end:.3g}"), vmin), vmax))
    return sorted(ticks)


def heatmap(row, path: str | Path) -> dict:
    """Sites x top dims of ``row`` (max |x| per site, log colour); returns the drawn data."""
    stats, criteria = row.stats, row.criteria
    dims, n_sys = heatmap_dims(stats, criteria)
    values = np.asarray(stats.site_max[:, dims], dtype=np.float64)
    S = stats.num_sites
    positive = values[values > 0]
    vmax = max(float(values.max()) if values.size else 1.0, criteria.magnitude * 1.01)
    vmin = float(positive.min()) if positive.size else 1e-3
    vmin = min(max(vmin, vmax * 1e-4), criteria.magnitude * 0.5)
    height = float(np.clip(2.0 + 0.14 * S, 4.5, 12.0))
    fig = new_figure((9.0, height))
    label_in = 0.08 * max(len(n) for n in stats.site_names) + 0.35  # site names on the left
    fig.subplots_adjust(
        left=label_in / 9.0, right=0.93, bottom=0.75 / height, top=1 - 0.45 / height
    )
    ax = fig.add_subplot()
    im = ax.imshow(
        np.clip(values, vmin, None),
        aspect="auto",
        cmap="viridis",
        norm=LogNorm(vmin=vmin, vmax=vmax),
        interpolation="nearest",
    )
    over = np.argwhere(values >= criteria.magnitude)
    if len(over):
        ax.scatter(over[:, 1], over[:, 0], s=5, c="black", marker="o", linewidths=0)
    ax.set_xticks(np.arange(len(dims)))
    ax.set_xticklabels([str(d) for d in dims], rotation=90, fontsize=7)
    for i, tick in enumerate(ax.get_xticklabels()):
        if i < n_sys:
            tick.set_color("tab:red")
            tick.set_fontweight("bold")
    step = max(1, int(np.ceil(S / 48)))
    ax.set_yticks(np.arange(0, S, step))
    ax.set_yticklabels([stats.site_names[i] for i in range(0, S, step)], fontsize=7)
    if n_sys:
        ax.axvline(n_sys - 0.5, color="white", lw=1.5)
    ax.set_xlabel(f"dim (red: the {n_sys} pooled systematic dims; then the largest others)")
    ax.set_ylabel("site")
    ax.set_title(
        f"{row.label}: max |x| per site and dim (dots: >= {criteria.magnitude:g})",
        fontsize=10,
    )
    cbar = fig.colorbar(im, ax=ax)
    cbar.set_label("max |x| (log scale; red line: the magnitude)")
    ticks = colorbar_ticks(vmin, vmax, criteria.magnitude)
    cbar.set_ticks(ticks)
    cbar.ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    cbar.ax.yaxis.set_minor_formatter(NullFormatter())
    cbar.ax.axhline(criteria.magnitude, color="red", lw=2)
    save_figure(fig, path)
    return {
        "path": Path(path),
        "dims": dims.tolist(),
        "num_systematic": n_sys,
        "sites": list(stats.site_names),
        "values": values,
        "magnitude": criteria.magnitude,
        "colorbar_ticks": ticks,
    }


# -- sensitivity ------------------------------------------------------------------------------
def sensitivity_curves(stats, criteria: Criteria) -> dict:
    """Pooled systematic dims and seed-compatible pairs at every grid magnitude (the run's
    fractions kept)."""
    mags, dims, pairs = [], [], []
    for m in np.asarray(stats.grid, dtype=float):
        c = Criteria(float(m), criteria.layer_frac, criteria.seq_frac)
        mags.append(float(m))
        dims.append(int(len(pooled_dims(stats, c)[0])))
        pairs.append(int(seed_compatible(stats, c, with_pairs=False)["num_outliers"]))
    return {"magnitude": mags, "dims": dims, "pairs": pairs}


def sensitivity_plot(rows, path: str | Path) -> dict:
    """Two panels, one line per model: pooled systematic dims and seed-compatible pairs vs the
    magnitude (log x, symlog y). Returns ``{"path", "dims": {model: {"x", "y"}}, "pairs": ...}``."""
    fig = new_figure((12.0, 5.5))
    ax_dims, ax_pairs = fig.subplots(1, 2)
    from matplotlib import colormaps

    colours = [colormaps["tab20"](i) for i in (*range(0, 20, 2), *range(1, 20, 2))]
    styles = ["-", "--", "-.", ":"]
    out = {"path": Path(path), "dims": {}, "pairs": {}}
    drawn = [r for r in rows if r.stats is not None]
    for i, r in enumerate(drawn):
        curves = sensitivity_curves(r.stats, r.criteria)
        colour, ls = colours[i % 20], styles[(i // 20) % len(styles)]
        label = r.label + ("" if r.comparable else " (not comparable)")
        for ax, key in ((ax_dims, "dims"), (ax_pairs, "pairs")):
            ax.plot(
                curves["magnitude"],
                curves[key],
                marker="o",
                ms=4,
                color=colour,
                ls=ls,
                mfc=colour if r.comparable else "none",
                label=label,
            )
            out[key][r.label] = {"x": curves["magnitude"], "y": curves[key]}
    magnitudes = sorted({r.criteria.magnitude for r in drawn})
    for ax, key, title in (
        (ax_dims, "dims", "pooled systematic dims"),
        (ax_pairs, "pairs", "seed-compatible pairs"),
    ):
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1)
        top = max([max(c["y"]) for c in out[key].values()] or [1])
        ax.set_ylim(0, top * 1.6 + 1)
        ax.set_xlabel("magnitude threshold |x| (log scale)")
        ax.set_ylabel(title + " (symlog)")
        ax.set_title(f"{title} vs magnitude")
        ax.grid(True, which="both", alpha=0.3)
        for m in magnitudes:
            ax.axvline(m, color="0.5", lw=1, ls=":")
    if drawn:
        fr = drawn[0].criteria
        ax_pairs.legend(
            fontsize=7,
            loc="best",
            title=f"layer {fr.layer_frac:g}, seq {fr.seq_frac:g}",
            title_fontsize=7,
        )
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.11, top=0.93, wspace=0.22)
    save_figure(fig, path)
    return out


# -- everything -------------------------------------------------------------------------------
def plot_all(rows, out_dir: str | Path) -> dict[str, dict]:
    """Every plot of the report under ``out_dir``: {file name: the plot's data}."""
    out = Path(out_dir)
    drawn: dict[str, dict] = {}
    for x, y in STUDY_PLOTS + POOLED_PLOTS:
        name = f"{y}_vs_{x}.png"
        drawn[name] = scatter_plot(rows, x, y, out / name)
    with_stats = [r for r in rows if r.stats is not None]
    if with_stats:
        drawn["sensitivity.png"] = sensitivity_plot(with_stats, out / "sensitivity.png")
    for r in with_stats:  # labels are unique (report.label_runs): one file per run, never cut
        name = f"heatmap_{slug(r.label)}.png"
        drawn[name] = heatmap(r, out / name)
    return drawn


def write_plots(rows, out_dir: str | Path) -> dict[str, Path]:
    """``plot_all`` and return {file name: path}."""
    return {name: d["path"] for name, d in plot_all(rows, out_dir).items()}


__all__ = [
    "GROUP_STYLE",
    "HOLLOW_NOTE",
    "POOLED_PLOTS",
    "REFERENCE_LABEL",
    "STUDY_PLOTS",
    "heatmap",
    "colorbar_ticks",
    "heatmap_dims",
    "new_figure",
    "plot_all",
    "save_figure",
    "scatter_plot",
    "sensitivity_curves",
    "sensitivity_plot",
    "write_plots",
]
