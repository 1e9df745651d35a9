"""Comparison reports over result directories: tables, exports, notes and plots.

    rows = collect("results")                        # as recorded in each result.json
    rows = collect("results", Criteria(8, .25, .06))  # re-thresholded from stats.npz
    print(render(rows, "table"))                      # table | csv | json | md
    write_reports(rows, "reports")                    # summary.md/.csv/.json + plots/

One ``Row`` per run directory (the latest per model, data, dtype and criteria). Its export
starts with the original study's columns exactly (METHOD.md, section 3: ``EXPORT_COLUMNS``,
sorted by total params) and continues with ours (``EXTRA_COLUMNS``): pooled figures, the
published count beside ours, bootstrap 95% intervals over sequences, comparability, timing.

Comparability (issue 8.2): rows are comparable when they share the activation dtype, the data
(dataset, config, revision, number of windows, window length, stride, BOS policy; and the hash
of the token windows when the tokenizers are the same, or the windows are raw ids), the site
set and the criteria. The configuration most rows share is the reference; every other row is
marked "not comparable: <reason>" in every table and drawn hollow in every plot.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from harness.engine.criteria import Criteria, evaluate
from harness.engine.result import find_run_dirs, read_result, read_stats, run_dir_name, slug
from harness.engine.statistics import CapturedStats
from harness.errors import HarnessError
from harness.options import STUDY_DATASET
from harness.reports.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, Interval, bootstrap

# The original study's export (generate_comparison_plots.py --format csv), in its order.
EXPORT_COLUMNS: tuple[str, ...] = (
    "model_name",
    "total_params_b",
    "active_params_b",
    "num_outliers",
    "mean_layer_pct",
    "median_layer_pct",
    "mean_seq_pct",
    "median_seq_pct",
)
CI_METRICS: tuple[str, ...] = (
    "num_outliers",
    "mean_layer_pct",
    "median_layer_pct",
    "mean_seq_pct",
    "median_seq_pct",
    "pooled_dims",
    "pooled_layer_pct",
    "pooled_seq_pct",
    "sites_affected_pct",
    "positions_affected_pct",
)
EXTRA_COLUMNS: tuple[str, ...] = (
    "label",
    "family",
    "total_params_no_emb_b",
    "active_params_no_emb_b",
    "pooled_dims",
    "pooled_layer_pct",
    "pooled_seq_pct",
    "sites_affected_pct",
    "positions_affected_pct",
    "published_num_outliers",
    "published_deviation",
    "published_deviation_pct",
    *(f"{m}_ci_{end}" for m in CI_METRICS for end in ("low", "high")),
    "comparable",
    "comparability",
    "activation_dtype",
    "dataset",
    "num_sequences",
    "seq_len",
    "stride",
    "bos",
    "windows_sha256",
    "sites",
    "magnitude",
    "layer_frac",
    "seq_frac",
    "rethresholded",
    "tokens_per_second",
    "forward_seconds",
    "pod_seconds",
    "pod_cost_usd",
    "run_dir",
)
COLUMNS: tuple[str, ...] = EXPORT_COLUMNS + EXTRA_COLUMNS
FORMATS = ("table", "csv", "json", "md")
NOT_COMPARABLE_SETTINGS = "n/a (different settings)"
# What the table's less obvious columns mean (printed under it, terminal and summary.md)
LEGEND = (
    "published = the figure the original study (or Dettmers' table 4) reported for this model; "
    "dev = our pairs relative to it, shown only when the run used the published settings; "
    "cmp = yes when the row was made like the reference configuration (dtype, data, sites, "
    "criteria), else it is not comparable and drawn hollow."
)
MIN_TREND_MODELS = 4
TABLE_WIDTH = 150  # notes under the terminal table are wrapped to this width


@dataclass
class Row:
    """One model's run, as reported. Percentages are 0-100; None where undefined (a mean over
    no pairs). ``ci`` maps each of ``CI_METRICS`` to its bootstrap ``Interval``."""

    model_name: str
    family: str
    run_dir: str
    total_params: int | None
    active_params: int | None
    total_params_no_embedding: int | None
    active_params_no_embedding: int | None
    num_outliers: int
    mean_layer_pct: float | None
    median_layer_pct: float | None
    mean_seq_pct: float | None
    median_seq_pct: float | None
    pooled_dims: int
    pooled_layer_pct: float | None
    pooled_seq_pct: float | None
    sites_affected_pct: float
    positions_affected_pct: float
    criteria: Criteria
    rethresholded: bool
    activation_dtype: str
    sites: str
    data: dict  # dataset, config, revision, num_sequences, seq_len, stride, bos, windows_sha256
    tokenizer: str | None
    published_num_outliers: int | None = None
    published_deviation: int | str | None = None  # ours - published, or NOT_COMPARABLE_SETTINGS
    published_deviation_pct: float | str | None = None
    ci: dict[str, Interval] = field(default_factory=dict)
    comparable: bool = True
    comparability: str = "reference configuration"
    tokens_per_second: float | None = None
    forward_seconds: float | None = None
    pod_seconds: float | None = None
    pod_cost_usd: float | None = None
    num_experts: int = 0
    figures: dict = field(default_factory=dict, repr=False)  # seed_compatible, pooled, per_site
    stats: CapturedStats | None = field(default=None, repr=False, compare=False)
    attribution: dict | None = field(default=None, repr=False, compare=False)
    tokenizer_name: str | None = field(default=None, repr=False, compare=False)
    label: str = ""  # the model id, plus what differs when one model has several runs

    def __post_init__(self):
        self.label = self.label or self.model_name

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    # -- views ---------------------------------------------------------------------------
    def export(self) -> dict:
        """The flat record of ``COLUMNS``, in order (None where a value is missing)."""
        out = {
            "model_name": self.model_name,
            "label": self.label,
            "total_params_b": _billions(self.total_params),
            "active_params_b": _billions(self.active_params),
            "num_outliers": self.num_outliers,
            "mean_layer_pct": self.mean_layer_pct,
            "median_layer_pct": self.median_layer_pct,
            "mean_seq_pct": self.mean_seq_pct,
            "median_seq_pct": self.median_seq_pct,
            "family": self.family,
            "total_params_no_emb_b": _billions(self.total_params_no_embedding),
            "active_params_no_emb_b": _billions(self.active_params_no_embedding),
            "pooled_dims": self.pooled_dims,
            "pooled_layer_pct": self.pooled_layer_pct,
            "pooled_seq_pct": self.pooled_seq_pct,
            "sites_affected_pct": self.sites_affected_pct,
            "positions_affected_pct": self.positions_affected_pct,
            "published_num_outliers": self.published_num_outliers,
            "published_deviation": self.published_deviation,
            "published_deviation_pct": self.published_deviation_pct,
        }
        for metric in CI_METRICS:
            iv = self.ci.get(metric)
            out[f"{metric}_ci_low"] = iv.low if iv else None
            out[f"{metric}_ci_high"] = iv.high if iv else None
        out.update(
            comparable=self.comparable,
            comparability=self.comparability,
            activation_dtype=self.activation_dtype,
            dataset=self.data.get("dataset"),
            num_sequences=self.data.get("num_sequences"),
            seq_len=self.data.get("seq_len"),
            stride=self.data.get("stride"),
            bos=self.data.get("bos"),
            windows_sha256=self.data.get("windows_sha256"),
            sites=self.sites,
            magnitude=self.criteria.magnitude,
            layer_frac=self.criteria.layer_frac,
            seq_frac=self.criteria.seq_frac,
            rethresholded=self.rethresholded,
            tokens_per_second=self.tokens_per_second,
            forward_seconds=self.forward_seconds,
            pod_seconds=self.pod_seconds,
            pod_cost_usd=self.pod_cost_usd,
            run_dir=self.run_dir,
        )
        return {c: out[c] for c in COLUMNS}

    def trend_row(self) -> dict:
        """The flat dict ``harness.reports.scaling.analyze_trends`` and ``harness.models.dettmers`` read."""
        return {
            "id": self.model_name,
            "family": self.family,
            "total_params": self.total_params,
            "active_params": self.active_params,
            "num_outliers": self.num_outliers,
            "mean_layer_pct": self.mean_layer_pct,
            "median_layer_pct": self.median_layer_pct,
            "mean_seq_pct": self.mean_seq_pct,
            "median_seq_pct": self.median_seq_pct,
            "num_dims": self.pooled_dims,
            "pooled_layer_pct": self.pooled_layer_pct,
            "pooled_seq_pct": self.pooled_seq_pct,
            "sites_affected_pct": self.sites_affected_pct,
            "positions_affected_pct": self.positions_affected_pct,
        }


def _billions(n) -> float | None:
    return None if n is None else n / 1e9


# -- collecting ---------------------------------------------------------------------------------
def _family(result: dict) -> str:
    from harness import models

    model = result.get("model", {})
    entry = models.REGISTRY.get(str(model.get("id")))
    if entry is not None:
        return entry.family
    if model.get("family") in models.FAMILIES:
        return model["family"]
    return "moe" if (model.get("num_experts") or 0) > 1 else "dense"


def _activation_dtype(result: dict) -> str:
    prov = result.get("provenance") or {}
    model = result.get("model") or {}
    return str(
        prov.get("activation_dtype") or model.get("activation_dtype") or model.get("dtype") or "?"
    )


def _data_spec(result: dict) -> dict:
    d = result.get("data") or {}
    keys = ("dataset", "config", "revision", "num_sequences", "seq_len", "stride", "bos")
    spec = {k: d.get(k) for k in keys}
    spec["windows_sha256"] = d.get("windows_sha256")
    return spec


def _recorded_criteria(result: dict) -> Criteria:
    c = result["criteria"]
    return Criteria(float(c["magnitude"]), float(c["layer_fraction"]), float(c["seq_fraction"]))


def _published(result: dict, criteria: Criteria, num_outliers: int):
    """(published count, deviation, deviation %) with the plugin's own settings check."""
    from harness import models
    from harness.engine.checks import published_deviation

    entry = models.REGISTRY.get(str(result.get("model", {}).get("id")))
    view = dict(result)
    view["criteria"] = dict(
        result["criteria"],
        magnitude=criteria.magnitude,
        layer_fraction=criteria.layer_frac,
        seq_fraction=criteria.seq_frac,
    )
    view["seed_compatible"] = {"num_outliers": num_outliers}
    dev = published_deviation(view, entry)
    if dev is None:
        return None, None, None
    if not dev["comparable"]:
        return dev["published"], NOT_COMPARABLE_SETTINGS, NOT_COMPARABLE_SETTINGS
    return dev["published"], dev["ours"] - dev["published"], 100.0 * dev["relative_deviation"]


def _pod(result: dict) -> tuple[float | None, float | None]:
    pod = result.get("runpod") or result.get("pod") or {}
    seconds = next(
        (pod[k] for k in ("seconds", "pod_seconds", "elapsed_seconds", "wall_seconds") if k in pod),
        None,
    )
    cost = next((pod[k] for k in ("cost_usd", "cost", "estimated_cost_usd") if k in pod), None)
    return seconds, cost


def _key(result: dict, criteria: Criteria) -> tuple:
    data_part = run_dir_name(result).split("__", 1)[0]
    return (
        str(result["model"]["id"]),
        data_part,
        _activation_dtype(result),
        result["criteria"].get("sites"),
        criteria.magnitude,
        criteria.layer_frac,
        criteria.seq_frac,
    )


def collect(
    results_dir: str | Path,
    criteria: Criteria | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> list[Row]:
    """One ``Row`` per run directory under ``results_dir`` (the latest result.json per model,
    data, activation dtype and criteria), sorted by total params, comparability marked.

    ``criteria=None``: the figures as recorded in result.json. With ``criteria``, EVERY figure
    (seed-compatible, pooled, per-site) is recomputed from stats.npz with
    ``harness.engine.criteria.evaluate``, equal to a fresh run at those thresholds; a magnitude that
    a run did not capture raises its ``HarnessError``. ``resamples`` bootstrap resamples over
    sequences give the 95% intervals (0: none)."""
    latest: dict[tuple, tuple[float, Path, dict, Criteria]] = {}
    for run in find_run_dirs(results_dir):
        result = read_result(run)
        crit = criteria or _recorded_criteria(result)
        key = _key(result, crit)
        mtime = (run / "result.json").stat().st_mtime
        if key not in latest or mtime >= latest[key][0]:
            latest[key] = (mtime, run, result, crit)
    rows = [
        _row(run, result, crit, criteria is not None, resamples, seed)
        for _, run, result, crit in latest.values()
    ]
    rows.sort(key=lambda r: (r.total_params or 0, r.active_params or 0, r.model_name))
    mark_comparability(rows)
    label_runs(rows)
    return rows


def _row(run: Path, result: dict, crit: Criteria, rethreshold: bool, resamples: int, seed: int):
    stats = read_stats(run)
    if rethreshold:
        figures = evaluate(stats, crit)
    else:
        figures = {k: result[k] for k in ("seed_compatible", "pooled", "per_site")}
    sc, po = figures["seed_compatible"], figures["pooled"]
    model = result["model"]
    timing = result.get("timing") or {}
    published, deviation, deviation_pct = _published(result, crit, sc["num_outliers"])
    pod_seconds, pod_cost = _pod(result)
    data = result.get("data") or {}
    ci = bootstrap(stats, crit, resamples=resamples, seed=seed) if resamples > 0 else {}
    attribution = result.get("attribution")
    if rethreshold and attribution is not None:
        from harness.attribution.observer import attribution_section

        attribution = attribution_section(stats, crit, bos_token_id=data.get("bos_token_id"))
    return Row(
        model_name=str(model["id"]),
        family=_family(result),
        run_dir=str(run),
        total_params=model.get("total_params"),
        active_params=model.get("active_params"),
        total_params_no_embedding=model.get("total_params_no_embedding"),
        active_params_no_embedding=model.get("active_params_no_embedding"),
        num_outliers=sc["num_outliers"],
        mean_layer_pct=sc["mean_layer_pct"],
        median_layer_pct=sc["median_layer_pct"],
        mean_seq_pct=sc["mean_seq_pct"],
        median_seq_pct=sc["median_seq_pct"],
        pooled_dims=po["num_dims"],
        pooled_layer_pct=po["mean_layer_pct"],
        pooled_seq_pct=po["mean_seq_pct"],
        sites_affected_pct=po["sites_affected_pct"],
        positions_affected_pct=po["positions_affected_pct"],
        criteria=crit,
        rethresholded=rethreshold,
        activation_dtype=_activation_dtype(result),
        sites=str(result["criteria"].get("sites")),
        data=_data_spec(result),
        tokenizer=data.get("tokenizer_sha256") or data.get("tokenizer"),
        published_num_outliers=published,
        published_deviation=deviation,
        published_deviation_pct=deviation_pct,
        ci=ci,
        tokens_per_second=timing.get("tokens_per_second"),
        forward_seconds=timing.get("forward_seconds"),
        pod_seconds=pod_seconds,
        pod_cost_usd=pod_cost,
        num_experts=int(model.get("num_experts") or 0),
        figures=figures,
        stats=stats,
        attribution=attribution,
        tokenizer_name=data.get("tokenizer"),
    )


# -- comparability ------------------------------------------------------------------------------
_SPEC_NAMES = {
    "dataset": "dataset",
    "config": "dataset config",
    "revision": "dataset revision",
    "num_sequences": "windows",
    "seq_len": "window length",
    "stride": "stride",
    "bos": "BOS policy",
}


def _same_tokens_known(a: Row, b: Row) -> bool:
    """Whether the window hashes of ``a`` and ``b`` can be compared: same tokenizer recorded,
    or raw token ids given directly (no tokenizer: the ids are the data)."""
    if a.tokenizer is not None and a.tokenizer == b.tokenizer:
        return True
    return a.tokenizer is None and b.tokenizer is None


def differences(row: Row, ref: Row) -> list[str]:
    """Why ``row`` was not made the same way as ``ref`` (empty: comparable)."""
    out = []
    if row.activation_dtype != ref.activation_dtype:
        out.append(f"activations {row.activation_dtype} vs {ref.activation_dtype}")
    spec = [
        f"{name} {row.data.get(k)} vs {ref.data.get(k)}"
        for k, name in _SPEC_NAMES.items()
        if row.data.get(k) != ref.data.get(k)
    ]
    out.extend(spec)
    if (
        not spec
        and _same_tokens_known(row, ref)
        and row.data.get("windows_sha256") != ref.data.get("windows_sha256")
    ):
        out.append(
            f"different token windows (hash {str(row.data.get('windows_sha256'))[:8]} vs "
            f"{str(ref.data.get('windows_sha256'))[:8]})"
        )
    if row.sites != ref.sites:
        out.append(f"sites {row.sites} vs {ref.sites}")
    if row.criteria != ref.criteria:
        out.append(f"criteria {_criteria_text(row.criteria)} vs {_criteria_text(ref.criteria)}")
    return out


def _criteria_text(c: Criteria) -> str:
    return f"|x|>={c.magnitude:g}, {c.layer_frac:g} sites, {c.seq_frac:g} positions"


def is_study_default(row: Row) -> bool:
    """Whether ``row`` was made at the study's settings: FineWeb-Edu, 16 windows of 2048 tokens,
    the norm-output sites, Dettmers' criteria (any stride, dtype or BOS policy)."""
    d = row.data
    return (
        d.get("dataset") == STUDY_DATASET
        and (d.get("num_sequences"), d.get("seq_len")) == (16, 2048)
        and row.sites == "ln"
        and row.criteria == Criteria(6.0, 0.25, 0.06)
    )


def mark_comparability(rows: list[Row]) -> Row | None:
    """Pick the reference configuration and mark every row made differently
    ``comparable=False`` with its reasons. Returns the reference row.

    The reference is the configuration of the study's settings (``is_study_default``) when a
    row has them, else the one most rows share; ties go to Dettmers' sites and criteria, then
    to the run in the bf16 the study used, then to the first row in report order."""
    if not rows:
        return None
    support = [sum(not differences(other, r) for other in rows) for r in rows]

    def rank(i):
        r = rows[i]
        dettmers = r.sites == "ln" and r.criteria == Criteria(6.0, 0.25, 0.06)
        return (is_study_default(r), support[i], dettmers, r.activation_dtype == "bfloat16", -i)

    ref = rows[max(range(len(rows)), key=rank)]
    for r in rows:
        reasons = differences(r, ref)
        r.comparable = not reasons
        r.comparability = (
            "reference configuration" if not reasons else "not comparable: " + "; ".join(reasons)
        )
    return ref


_LABEL_PARTS = {
    "dataset": "{}",
    "config": "config {}",
    "revision": "revision {}",
    "num_sequences": "{} windows",
    "seq_len": "length {}",
    "stride": "stride {}",
    "bos": "BOS {}",
}


def _label_parts(r: Row) -> list[tuple[str, str]]:
    c = r.criteria
    return [
        ("dtype", r.activation_dtype),
        *((k, fmt.format(r.data.get(k))) for k, fmt in _LABEL_PARTS.items()),
        ("sites", f"sites {r.sites}"),
        ("criteria", f"|x|>={c.magnitude:g} {c.layer_frac:g}/{c.seq_frac:g}"),
        ("windows", f"windows {str(r.data.get('windows_sha256'))[:8]}"),
    ]


def label_runs(rows: list[Row]) -> None:
    """Give each row a label unique in ``rows``: the model id, and when the model has several
    runs, what tells them apart (e.g. ``tiny_llama (bfloat16, stride 128)``)."""
    by_model: dict[str, list[Row]] = {}
    for r in rows:
        by_model.setdefault(r.model_name, []).append(r)
    for name, group in by_model.items():
        if len(group) == 1:
            group[0].label = name
            continue
        parts = [_label_parts(r) for r in group]
        varying = [i for i in range(len(parts[0])) if len({p[i][1] for p in parts}) > 1]
        keys = [parts[0][i][0] for i in varying]
        if "windows" in keys and set(keys) & set(_LABEL_PARTS):  # other data: other windows
            varying = [i for i in varying if parts[0][i][0] != "windows"]
        for r, p in zip(group, parts, strict=True):
            r.label = f"{name} ({', '.join(p[i][1] for i in varying) or 'same settings'})"
        seen: dict[str, int] = {}
        for r in group:  # same settings twice (results copied side by side): number them
            seen[r.label] = seen.get(r.label, 0) + 1
            if seen[r.label] > 1:
                r.label += f" #{seen[r.label]}"


def reference_configuration(rows: list[Row]) -> str:
    """One line describing the configuration the comparable rows share."""
    ref = next((r for r in rows if r.comparable), None)
    if ref is None:
        return "no rows"
    d = ref.data
    return (
        f"activations {ref.activation_dtype}; data {d.get('dataset')} "
        f"{d.get('num_sequences')} x {d.get('seq_len')} tokens, stride {d.get('stride')}, "
        f"BOS {d.get('bos')}; sites {ref.sites}; criteria {_criteria_text(ref.criteria)}"
    )


# -- rendering ----------------------------------------------------------------------------------
def _params(n) -> str:
    if n is None:
        return "-"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            v = n / scale
            return f"{v:.3g}{unit}"
    return str(n)


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _ci_text(iv: Interval | None, fmt: str = ".0f") -> str:
    if iv is None or iv.low is None:
        return "-"
    return f"{iv.low:{fmt}}-{iv.high:{fmt}}"


def _dev_text(r: Row) -> str:
    if r.published_num_outliers is None:
        return "-"
    if isinstance(r.published_deviation_pct, str):
        return "n/a*"
    return f"{r.published_deviation_pct:+.0f}%"


_HEADERS = (
    "model",
    "family",
    "total",
    "active",
    "pairs",
    "pairs 95% CI",
    "layer% mean",
    "layer% med",
    "seq% mean",
    "seq% med",
    "dims",
    "sites%",
    "pos%",
    "published",
    "dev",
    "cmp",
)


def _table_rows(rows: list[Row]) -> tuple[list[str], list[list], list[str]]:
    headers = list(_HEADERS)
    body, notes = [], []
    for r in rows:
        mark = "yes"
        if not r.comparable:
            notes.append(f"[{len(notes) + 1}] {r.label}: {r.comparability}")
            mark = f"NO [{len(notes)}]"
        body.append(
            [
                r.label,
                r.family,
                _params(r.total_params),
                _params(r.active_params),
                r.num_outliers,
                _ci_text(r.ci.get("num_outliers")),
                _pct(r.mean_layer_pct),
                _pct(r.median_layer_pct),
                _pct(r.mean_seq_pct),
                _pct(r.median_seq_pct),
                r.pooled_dims,
                _pct(r.sites_affected_pct),
                _pct(r.positions_affected_pct),
                "-" if r.published_num_outliers is None else f"{r.published_num_outliers:,}",
                _dev_text(r),
                mark,
            ]
        )
    if any(isinstance(r.published_deviation_pct, str) for r in rows):
        notes.append(
            f"n/a* = {NOT_COMPARABLE_SETTINGS}: the run's settings differ from the "
            "published figure's (16 x 2048 FineWeb-Edu, stride 1024, ln, 6/0.25/0.06)."
        )
    return headers, body, notes


def _csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow(["" if v is None else _csv_value(v) for v in r.export().values()])
    return buf.getvalue()


def _csv_value(v):
    if isinstance(v, float):
        return repr(v)
    return v


def _json(rows: list[Row]) -> str:
    payload = {
        "criteria": rows[0].criteria.to_dict() if rows else None,
        "reference_configuration": reference_configuration(rows),
        "columns": list(COLUMNS),
        "rows": [
            {
                **r.export(),
                "ci": {m: iv.to_dict() for m, iv in r.ci.items()},
                "per_site": r.figures.get("per_site"),
            }
            for r in rows
        ],
    }
    return json.dumps(payload, indent=1, allow_nan=False, default=_json_default)


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def render(rows: list[Row], fmt: str = "table") -> str:
    """``rows`` as ``table`` (terminal, under ~160 characters wide, notes below), ``csv``
    (``COLUMNS``, floats at full precision), ``json`` or ``md`` (GitHub table + notes)."""
    from tabulate import tabulate

    if fmt == "csv":
        return _csv(rows)
    if fmt == "json":
        return _json(rows)
    if fmt not in FORMATS:
        raise HarnessError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}.")
    headers, body, notes = _table_rows(rows)
    tablefmt = "simple" if fmt == "table" else "github"
    if fmt == "table":  # two-line headers keep the terminal table narrow
        headers = [h.replace(" ", "\n", 1) if " " in h else h for h in headers]
    text = tabulate(body, headers=headers, tablefmt=tablefmt, disable_numparse=True)
    if notes and fmt == "table":
        import textwrap

        wrapped = [textwrap.fill(n, TABLE_WIDTH, subsequent_indent="    ") for n in notes]
        text += "\n\n" + "\n".join(wrapped)
    elif notes:
        text += "\n\n" + "\n\n".join(notes)
    return text


# -- files --------------------------------------------------------------------------------------
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _trend_section(rows: list[Row]) -> list[str]:
    usable = [r for r in rows if r.comparable]
    if len(usable) < MIN_TREND_MODELS:
        return [
            f"Trend statistics need at least {MIN_TREND_MODELS} comparable models "
            f"({len(usable)} here)."
        ]
    try:
        from harness.reports import scaling
    except ImportError:
        return ["Trend statistics: harness.reports.scaling is not available in this checkout."]
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
    try:
        from harness.models import dettmers as reference
    except ImportError:
        return ["Dettmers' table 4: harness.models.dettmers is not available in this checkout."]
    from tabulate import tabulate

    s = reference.reference_series()
    lines = [
        f"{s['name']}: {s['source']}; {s['dataset']}, sub-layer inputs, |x| >= 6, 25% layers, "
        "6% positions. Our comparable figures are the pooled ones (dims, sites %, positions %).",
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
    paired = reference.beside_ours([r.trend_row() for r in rows if r.comparable])
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
                p.get("note", ""),
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
                    "note",
                ],
                tablefmt="github",
                disable_numparse=True,
            ),
        ]
    else:
        lines += [
            "",
            "None of our comparable rows is a reference family (opt_*, gpt2_*, "
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
    rows: list[Row], out_dir: str | Path = "reports", *, plots: bool = True, flag: str = "--out"
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


# -- the `outliers report` command --------------------------------------------------------------
def add_report_command(sub) -> None:
    """Add ``outliers report`` to the CLI's subparsers."""
    from harness.options import OPTIONS

    helps = {o.name: o.help for o in OPTIONS}
    p = sub.add_parser(
        "report", help="tables, exports and plots from result directories (no model is run)"
    )
    p.add_argument("--results", default="results", help="results directory (default: results)")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="print this format on stdout (default: the terminal table and paths)",
    )
    p.add_argument(
        "--magnitude",
        type=float,
        default=None,
        help=helps["magnitude"] + "; re-thresholds from stats.npz (a grid value)",
    )
    p.add_argument("--layer-frac", type=float, default=None, help=helps["layer_frac"])
    p.add_argument("--seq-frac", type=float, default=None, help=helps["seq_frac"])
    p.add_argument(
        "--out",
        default=None,
        help="write the reports (tables, exports, plots) into this directory; without it "
        "nothing is written",
    )
    p.add_argument(
        "--resamples",
        type=int,
        default=DEFAULT_RESAMPLES,
        help="bootstrap resamples over sequences for the 95%% intervals (0: none)",
    )
    p.add_argument("--no-plots", action="store_true", help="tables and exports only")
    p.set_defaults(func=run_report_command)


def criteria_from_flags(magnitude, layer_frac, seq_frac) -> Criteria | None:
    """None when no flag was given (figures as recorded); otherwise the flags, with Dettmers'
    values for the ones left out."""
    if magnitude is None and layer_frac is None and seq_frac is None:
        return None
    d = Criteria()
    return Criteria(
        d.magnitude if magnitude is None else magnitude,
        d.layer_frac if layer_frac is None else layer_frac,
        d.seq_frac if seq_frac is None else seq_frac,
    )


def run_report_command(args) -> int:
    import sys

    t0 = time.perf_counter()
    criteria = criteria_from_flags(args.magnitude, args.layer_frac, args.seq_frac)
    rows = collect(args.results, criteria, resamples=args.resamples)
    if not rows:
        raise HarnessError(
            f"no result directories under {args.results}; run `pytest -m tiny` or "
            "`outliers analyze MODEL` first, or pass --results DIR."
        )
    # files only when asked for (--out): a stdout format has no side effects
    paths = write_reports(rows, args.out, plots=not args.no_plots) if args.out else {}
    if args.format is None:
        print(summary_for_terminal(rows, paths))
    else:
        print(render(rows, args.format), end="" if args.format == "csv" else "\n")
        if args.out:
            took = time.perf_counter() - t0
            print(f"reports written to {args.out} ({took:.1f} s)", file=sys.stderr)
    return 0


__all__ = [
    "COLUMNS",
    "EXPORT_COLUMNS",
    "EXTRA_COLUMNS",
    "FORMATS",
    "Row",
    "add_report_command",
    "collect",
    "criteria_from_flags",
    "differences",
    "mark_comparability",
    "render",
    "summary_for_terminal",
    "summary_markdown",
    "write_reports",
]
