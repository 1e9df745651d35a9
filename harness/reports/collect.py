"""Result directories to report rows: tables, exports, notes and plots start here.

    rows = collect("results")                        # as recorded in each result.json
    rows = collect("results", Criteria(8, .25, .06))  # re-thresholded from stats.npz
    print(render(rows, "table"))                      # harness.reports.render: table|csv|json|md
    write_reports(rows, "reports")                    # harness.reports.summary: files + plots/

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

from dataclasses import replace
from pathlib import Path

from harness.engine.criteria import Criteria, evaluate
from harness.engine.result import AnalysisResult, Pooled, SeedCompatible
from harness.engine.result_files import find_run_dirs, read_result, read_stats, run_dir_name
from harness.reports.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap
from harness.reports.comparability import label_runs, mark_comparability
from harness.reports.rows import NOT_COMPARABLE_SETTINGS, Row, definition_figures


# -- collecting ---------------------------------------------------------------------------------
def _group(result: AnalysisResult) -> str:
    from harness import models

    model = result.model
    entry = models.REGISTRY.get(str(model.id))
    if entry is not None:
        return entry.group
    if model.group in models.GROUPS:
        return model.group
    return "moe" if (model.num_experts or 0) > 1 else "dense"


def _activation_dtype(result: AnalysisResult) -> str:
    prov = result.sections.get("provenance") or {}
    model = result.model
    return str(prov.get("activation_dtype") or model.activation_dtype or model.dtype or "?")


def _data_spec(result: AnalysisResult) -> dict:
    """What comparability compares of the data (``harness.reports.comparability``)."""
    d = result.data
    return {
        "dataset": d.dataset,
        "config": d.config,
        "revision": d.revision,
        "num_seqs": d.num_seqs,
        "seq_len": d.seq_len,
        "stride": d.stride,
        "bos": d.bos,
        "windows_sha256": d.windows_sha256,
    }


def _as_original_at(result: AnalysisResult, stats, criteria: Criteria) -> dict:
    """The seed_compatible_as_original section at re-thresholded ``criteria``, from stats.npz
    (empty when the bf16-rounded threshold was not captured)."""
    from harness.engine.criteria import bf16_rounding_threshold, seed_compatible, view
    from harness.errors import HarnessError

    if _activation_dtype(result) == "bfloat16":
        return {"same_as_exact": True, "threshold": criteria.magnitude}
    c = replace(criteria, magnitude=bf16_rounding_threshold(criteria.magnitude))
    try:
        sc = seed_compatible(view(stats, c), c, with_pairs=False)
    except HarnessError:  # that grid value was not captured
        return {}
    return {"same_as_exact": False, "threshold": c.magnitude, **sc}


def _published(result: AnalysisResult, criteria: Criteria, num_outliers: int, stats, rethreshold):
    """(published count, deviation, deviation %) with the plugin's own settings check; the
    count compared is ours as the original computed it (bf16 rounding)."""
    from harness import models
    from harness.engine.invariants import published_deviation

    entry = models.REGISTRY.get(str(result.model.id))
    if entry is None or entry.published is None:
        return None, None, None
    sections = dict(result.sections)
    if rethreshold:
        sections["seed_compatible_as_original"] = _as_original_at(result, stats, criteria)
    view = replace(
        result,
        criteria=replace(
            result.criteria,
            magnitude=criteria.magnitude,
            layer_frac=criteria.layer_frac,
            seq_frac=criteria.seq_frac,
            layer_unit=criteria.layer_unit,
            skip_first_position=criteria.skip_first_position,
        ),
        seed_compatible=replace(result.seed_compatible, num_outliers=num_outliers),
        sections=sections,
    )
    dev = published_deviation(view, entry)
    if dev is None:
        return None, None, None
    if not dev["comparable"]:
        return dev["published"], NOT_COMPARABLE_SETTINGS, NOT_COMPARABLE_SETTINGS
    return dev["published"], dev["ours"] - dev["published"], 100.0 * dev["relative_deviation"]


def _pod(result: AnalysisResult) -> tuple[float | None, float | None]:
    pod = result.sections.get("runpod") or result.sections.get("pod") or {}
    seconds = next(
        (pod[k] for k in ("seconds", "pod_seconds", "elapsed_seconds", "wall_seconds") if k in pod),
        None,
    )
    cost = next((pod[k] for k in ("cost_usd", "cost", "estimated_cost_usd") if k in pod), None)
    return seconds, cost


def _key(result: AnalysisResult, criteria: Criteria) -> tuple:
    data_part = run_dir_name(result).split("__", 1)[0]
    return (
        str(result.model.id),
        data_part,
        _activation_dtype(result),
        result.criteria.sites,
        criteria.magnitude,
        criteria.layer_frac,
        criteria.seq_frac,
        criteria.layer_unit,
        criteria.skip_first_position,
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
    latest: dict[tuple, tuple[float, Path, AnalysisResult, Criteria]] = {}
    for run in find_run_dirs(results_dir):
        result = read_result(run)
        crit = criteria or result.criteria_tuple
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
    from harness.models.dettmers import table4_comparability

    for r in rows:
        r.table4_comparability = table4_comparability(r.trend_row())
    return rows


def _row(run: Path, result: AnalysisResult, crit: Criteria, rethreshold, resamples, seed):
    stats = read_stats(run)
    if rethreshold:
        figures = evaluate(stats, crit)
        sc, po = (
            SeedCompatible.from_json(figures["seed_compatible"]),
            Pooled.from_json(figures["pooled"]),
        )
    else:
        sc, po = result.seed_compatible, result.pooled
        figures = {"seed_compatible": sc, "pooled": po, "per_site": result.per_site}
    model, timing, data = result.model, result.timing, result.data
    published, deviation, deviation_pct = _published(
        result, crit, sc.num_outliers, stats, rethreshold
    )
    pod_seconds, pod_cost = _pod(result)
    ci = bootstrap(stats, crit, resamples=resamples, seed=seed) if resamples > 0 else {}
    recorded = result.sections.get("by_definition")
    if rethreshold or recorded is None:
        from harness.engine.criteria import by_definition

        recorded = by_definition(stats, crit)
    attribution = result.sections.get("attribution")
    if rethreshold and attribution is not None:
        from harness.attribution.section import attribution_section

        attribution = attribution_section(stats, crit, bos_token_id=data.get("bos_token_id"))
    return Row(
        model_name=str(model.id),
        group=_group(result),
        run_dir=str(run),
        total_params=model.total_params,
        active_params=model.active_params,
        total_params_no_embedding=model.total_params_no_embedding,
        active_params_no_embedding=model.active_params_no_embedding,
        num_outliers=sc.num_outliers,
        mean_layer_pct=sc.mean_layer_pct,
        median_layer_pct=sc.median_layer_pct,
        mean_seq_pct=sc.mean_seq_pct,
        median_seq_pct=sc.median_seq_pct,
        pooled_dims=po.num_dims,
        pooled_layer_pct=po.mean_layer_pct,
        pooled_seq_pct=po.mean_seq_pct,
        sites_affected_pct=po.sites_affected_pct,
        positions_affected_pct=po.positions_affected_pct,
        criteria=crit,
        rethresholded=rethreshold,
        activation_dtype=_activation_dtype(result),
        sites=str(result.criteria.sites),
        data=_data_spec(result),
        tokenizer=data.get("tokenizer_sha256") or data.get("tokenizer"),
        published_num_outliers=published,
        published_deviation=deviation,
        published_deviation_pct=deviation_pct,
        ci=ci,
        tokens_per_second=timing.tokens_per_second,
        forward_seconds=timing.forward_seconds,
        pod_seconds=pod_seconds,
        pod_cost_usd=pod_cost,
        num_experts=int(model.num_experts or 0),
        by_definition=definition_figures(recorded, crit.layer_unit),
        figures=figures,
        stats=stats,
        attribution=attribution,
        tokenizer_name=data.get("tokenizer"),
    )
