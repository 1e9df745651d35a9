"""The files of a report: summary.md / .csv / .json and the plots, written atomically; the terminal summary."""

from __future__ import annotations

import os
from pathlib import Path

from harness.engine.criteria import Criteria
from harness.engine.result_files import slug
from harness.errors import HarnessError
from harness.fileio import atomic_write_bytes
from harness.reports.bootstrap import DEFAULT_RESAMPLES
from harness.reports.comparability import (
    reference_configuration,
)
from harness.reports.render import LEGEND, _params, _pct, render
from harness.reports.rows import Row

MIN_TREND_MODELS = 4


# -- files --------------------------------------------------------------------------------------
def _trend_section(rows: list[Row]) -> list[str]:
    usable = [r for r in rows if r.comparable]
    if len(usable) < MIN_TREND_MODELS:
        return [
            f"Trend statistics need at least {MIN_TREND_MODELS} comparable models "
            f"({len(usable)} here)."
        ]
    from harness.reports import scaling

    results = scaling.analyze_trends([r.trend_row() for r in usable])
    lines = [scaling.trend_table(results), ""]
    for res in results:
        lines.append(
            "- "
            + scaling.describe(
                scaling.METRIC_LABELS.get(res.metric, res.metric),
                scaling.X_LABELS.get(res.x, res.x),
                res,
            )
        )
    return lines


def _reference_section(rows: list[Row]) -> list[str]:
    from tabulate import tabulate

    from harness.models import dettmers as reference

    s = reference.reference_series()
    stated = ", ".join(f"{k} {v}" for k, v in reference.SETTINGS.items() if v is not None)
    unstated = ", ".join(k for k, v in reference.SETTINGS.items() if v is None)
    lines = [
        f"{s['name']}: {s['source']}. Made under: {stated} (not stated: {unstated}). Our "
        "figures beside it are the pooled ones (dims, sites %, positions %); a row made under "
        "other settings is marked not comparable.",
        "",
        tabulate(
            list(
                zip(
                    s["labels"],
                    [_params(p) for p in s["params"]],
                    s["dims"],
                    s["layer_pct"],
                    s["seq_pct"],
                    strict=True,
                )
            ),
            headers=["Dettmers 2022", "params", "outlier dims", "% layers", "% seq positions"],
            tablefmt="github",
            disable_numparse=True,
        ),
    ]
    paired = reference.beside_ours([r.trend_row() for r in rows])
    if paired:
        body = [
            [
                p["id"],
                _params(p["params"]),
                p["ours_dims"],
                _pct(p["ours_layer_pct"]),
                _pct(p["ours_seq_pct"]),
                p["dettmers"] or "-",
                p["dettmers_dims"] or "-",
                p["dettmers_layer_pct"] or "-",
                p["dettmers_seq_pct"] or "-",
                "yes" if str(p.get("comparability")).startswith("comparable") else "NO",
                p.get("note", "")
                + (
                    ""
                    if str(p.get("comparability")).startswith("comparable")
                    else f"; {p.get('comparability')}"
                ),
            ]
            for p in paired
        ]
        lines += [
            "",
            tabulate(
                body,
                headers=[
                    "ours",
                    "params",
                    "dims",
                    "sites %",
                    "positions %",
                    "Dettmers",
                    "dims",
                    "% layers",
                    "% seq",
                    "comparable",
                    "note",
                ],
                tablefmt="github",
                disable_numparse=True,
            ),
        ]
    else:
        lines += [
            "",
            "None of our rows is of a 2022 reference family (opt_*, gpt2_*, "
            "pythia_*); the plots show table 4 as its own series.",
        ]
    return lines


def summary_markdown(
    rows: list[Row],
    plot_paths: dict[str, Path] | None = None,
    out_dir: Path | None = None,
    plot_notes: list[str] | None = None,
) -> str:
    """summary.md: the table, notes, trend statistics, Dettmers beside ours, plot links."""
    crit = rows[0].criteria if rows else Criteria()
    lines = [
        "# Outlier features: comparison",
        "",
        f"Criteria: |x| >= {crit.magnitude:g} at >= {crit.layer_frac:g} of the sites and "
        f">= {crit.seq_frac:g} of the positions"
        + (" (re-thresholded from stats.npz)." if rows and rows[0].rethresholded else "."),
        f"Reference configuration: {reference_configuration(rows)}.",
        "",
        "`pairs` = seed-compatible systematic (sequence, dim) pairs (the original study's count); "
        "`dims`, `sites%`, `pos%` = pooled over the corpus (Dettmers' aggregates). Intervals: "
        f"percentile bootstrap over sequences, {DEFAULT_RESAMPLES} resamples, 95%.",
        "",
        render(rows, "md"),
        "",
        LEGEND,
        "",
        "## Rows that are not comparable",
        "",
    ]
    bad = [r for r in rows if not r.comparable]
    if bad:
        lines += [f"- **{r.label}**: {r.comparability}." for r in bad]
        lines += ["", "They are drawn hollow in the plots and left out of the trend statistics."]
    else:
        lines.append("None: every row was made the same way.")
    lines += ["", "## Trend statistics (comparable rows)", ""]
    lines += _trend_section(rows)
    lines += ["", "## Dettmers et al. 2022 (table 4) beside ours", ""]
    lines += _reference_section(rows)
    lines += ["", "## Where outliers live", ""]
    lines += attribution_section_md(rows)
    if plot_paths:
        lines += ["", "## Plots", ""]
        for name, path in plot_paths.items():
            rel = os.path.relpath(path, out_dir) if out_dir else str(path)
            lines.append(f"- [{name}]({rel})")
        lines += [f"- {note}" for note in plot_notes or ()]
    return "\n".join(lines) + "\n"


def _tokenizer_for(row: Row):
    """The run's tokenizer from its recorded path, only if it is on this machine."""
    name = row.tokenizer_name
    if not name:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception:  # not cached here: ids are shown as #id
        return None


def attribution_section_md(rows: list[Row]) -> list[str]:
    """Per model: the outlier tokens, outlier experts and massive activations tables."""
    from harness.reports.attribution import attribution_tables

    lines: list[str] = []
    titles = {
        "outlier_tokens": "outlier tokens",
        "outlier_experts": "outlier experts",
        "massive_activations": "massive activations (residual stream)",
    }
    for r in rows:
        if not r.attribution:
            continue
        tables = attribution_tables({"attribution": r.attribution}, _tokenizer_for(r))
        shown = [(k, t) for k, t in tables.items() if t and t.strip()]
        if not shown:
            continue
        lines += [f"### {r.label}", ""]
        for key, text in shown:
            lines += [f"**{titles.get(key, key)}**", "", text, ""]
    return lines or ["No result carries attribution (run without --no-attribution)."]


def write_reports(
    rows: list[Row],
    out_dir: str | Path = "reports",
    *,
    plots: bool = True,
    flag: str = "--reports-dir",
) -> dict[str, Path]:
    """Write summary.md, summary.csv, summary.json and plots/*.png under ``out_dir``, each
    atomically; returns {name: path}. ``flag`` names the option that chose ``out_dir`` in the
    error sentence (``--reports-dir`` for pytest)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise HarnessError(
            f"cannot write reports under {out} ({err.strerror}); pass a writable {flag}."
        ) from None
    paths: dict[str, Path] = {}
    plot_paths: dict[str, Path] = {}
    plot_notes: list[str] = []
    if plots and rows:
        from harness.reports.plots import write_plots

        plot_paths = write_plots(rows, out / "plots")
        from harness.reports.attribution import no_enrichment, plot_expert_enrichment

        for r in rows:
            if r.attribution and r.is_moe and no_enrichment({"attribution": r.attribution}):
                plot_notes.append(
                    f"{r.label}: no expert-enrichment plot, as no position holds an outlier "
                    "(no pooled systematic dim)."
                )
            elif r.attribution and r.is_moe:
                stem = slug(r.label)
                path = plot_expert_enrichment(
                    {"attribution": r.attribution}, out / "plots" / f"{stem}-expert-enrichment.png"
                )
                if path is not None:
                    plot_paths[f"{stem}-expert-enrichment"] = Path(path)
    for name, text in (
        ("summary.csv", render(rows, "csv")),
        ("summary.json", render(rows, "json")),
        ("summary.md", summary_markdown(rows, plot_paths, out, plot_notes)),
    ):
        atomic_write_bytes(out / name, text.encode())
        paths[name] = out / name
    paths.update({f"plots/{p.name}": p for p in plot_paths.values()})
    return paths


def summary_for_terminal(
    rows: list[Row], paths: dict[str, Path] | None = None, session_models: set | None = None
) -> str:
    """What the pytest plugin prints at the end of a session: the table (models run in this
    session marked ``*``) and where the files are."""
    if not rows:
        return "no result files to report."
    shown = rows
    if session_models:
        shown = []
        for r in rows:
            star = r.model_name in session_models
            shown.append(_renamed(r, f"{r.label}*" if star else r.label))
    text = render(shown, "table")
    lines = [text, LEGEND]
    if session_models and any(r.model_name not in session_models for r in rows):
        lines.append("* = run in this session; the others are earlier results in the same folder.")
    if paths:
        main = [str(p) for n, p in paths.items() if not n.startswith("plots/")]
        pngs = [p for n, p in paths.items() if n.startswith("plots/")]
        lines.append("reports: " + ", ".join(main))
        if pngs:
            lines.append(f"plots: {len(pngs)} PNG files in {pngs[0].parent}")
    return "\n".join(lines)


def _renamed(row: Row, name: str) -> Row:
    from dataclasses import replace

    return replace(row, label=name)
