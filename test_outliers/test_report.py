"""Reports: exports checked against result files, re-threshold == fresh run, comparability,
plots that exist and show something."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv
import io
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import random_ids, random_model
from matplotlib.image import imread

from harness.engine.criteria import Criteria
from harness.engine.result_files import find_run_dirs, write_result
from harness.errors import HarnessError
from harness.pipeline import analyze
from harness.reports.collect import collect
from harness.reports.render import render
from harness.reports.rows import COLUMNS, EXPORT_COLUMNS, NOT_COMPARABLE_SETTINGS
from harness.reports.summary import summary_for_terminal, write_reports

STUDY_COLUMNS = [
    "model_name",
    "total_params_b",
    "active_params_b",
    "num_outliers",
    "mean_layer_pct",
    "median_layer_pct",
    "mean_seq_pct",
    "median_seq_pct",
]
THRESHOLDS = [
    (6.0, 0.25, 0.06),
    (3.0, 0.5, 0.2),
    (8.0, 0.1, 0.0),
    (20.0, 0.0, 0.5),
    (100.0, 0.25, 0.06),
]
ENV = {"harness_version": "test"}


def planted_model(dim: int = 7, gain: float = 200.0, seed: int = 0):
    """A qwen3 whose norm gains are small except ``dim``: one systematic dim, known."""
    model = random_model("qwen3", torch.float32, seed=seed, gain=0.3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("input_layernorm.weight", "post_attention_layernorm.weight")):
                p[dim] = gain
    return model


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Six models on the same windows, one of them in bf16 (not comparable), one under a
    registry id with a published figure."""
    root = tmp_path_factory.mktemp("results")
    ids = random_ids(8, 32, seed=11)
    models = {
        "dense_q": random_model("qwen3", torch.float32, seed=1),
        "moe_o": random_model("olmoe", torch.float32, seed=2, gain=2.5),
        "moe_m": random_model("mixtral", torch.float32, seed=3, gain=2.5),
        "dense_g": random_model("gpt2", torch.float32, seed=4, gain=2.0),
        "planted_q": planted_model(seed=5),
        "qwen3_0.6b": random_model("qwen3", torch.float32, seed=6),
        "dense_bf16": random_model("qwen3", torch.bfloat16, seed=7),
    }
    for name, model in models.items():
        write_result(
            analyze(model, ids, batch_size=4, model_meta={"id": name}), root, environment=ENV
        )
    return {"root": root, "ids": ids, "models": models}


def result_files(root) -> dict[str, dict]:
    out = {}
    for run in find_run_dirs(root):
        with open(run / "result.json") as f:
            data = json.load(f)
        out[data["model"]["id"]] = data
    return out


def test_export_starts_with_the_original_columns_exactly():
    assert list(EXPORT_COLUMNS) == STUDY_COLUMNS
    assert list(COLUMNS[: len(STUDY_COLUMNS)]) == STUDY_COLUMNS
    for extra in (
        "pooled_dims",
        "sites_affected_pct",
        "positions_affected_pct",
        "published_num_outliers",
        "num_outliers_ci_low",
        "comparable",
    ):
        assert extra in COLUMNS


def _num(text: str):
    return None if text == "" else float(text)


def check_csv_against_result_files(text: str, root):
    files = result_files(root)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0].keys()) == list(COLUMNS)
    assert {r["model_name"] for r in parsed} == set(files)
    totals = [float(r["total_params_b"]) for r in parsed]
    assert totals == sorted(totals)
    for r in parsed:
        res = files[r["model_name"]]
        m, sc, po = res["model"], res["seed_compatible"], res["pooled"]
        assert float(r["total_params_b"]) == m["total_params"] / 1e9
        assert float(r["active_params_b"]) == m["active_params"] / 1e9
        assert int(r["num_outliers"]) == sc["num_outliers"]
        for key in ("mean_layer_pct", "median_layer_pct", "mean_seq_pct", "median_seq_pct"):
            assert _num(r[key]) == sc[key], key
        assert int(r["pooled_dims"]) == po["num_dims"]
        assert _num(r["pooled_layer_pct"]) == po["mean_layer_pct"]
        assert _num(r["pooled_seq_pct"]) == po["mean_seq_pct"]
        assert float(r["sites_affected_pct"]) == po["sites_affected_pct"]
        assert float(r["positions_affected_pct"]) == po["positions_affected_pct"]
        assert r["activation_dtype"] == m["dtype"]
        assert r["windows_sha256"] == res["data"]["windows_sha256"]
        assert float(r["magnitude"]) == res["criteria"]["magnitude"]
        low, high = float(r["num_outliers_ci_low"]), float(r["num_outliers_ci_high"])
        assert low <= sc["num_outliers"] <= high
    return parsed


def test_csv_columns_and_values_match_the_result_files(sweep):
    rows = collect(sweep["root"])
    check_csv_against_result_files(render(rows, "csv"), sweep["root"])


def test_outliers_report_command_prints_the_csv(sweep, tmp_path, capsys):
    from harness.cli import main

    out = tmp_path / "reports"
    code = main(
        [
            "report",
            "--results-dir",
            str(sweep["root"]),
            "--format",
            "csv",
            "--reports-dir",
            str(out),
            "--resamples",
            "200",
            "--no-plots",
        ]
    )
    assert code == 0
    check_csv_against_result_files(capsys.readouterr().out, sweep["root"])
    check_csv_against_result_files((out / "summary.csv").read_text(), sweep["root"])


def test_a_stdout_format_writes_no_file(sweep, tmp_path, capsys, monkeypatch):
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(
        ["report", "--results-dir", str(sweep["root"]), "--format", "csv", "--resamples", "50"]
    )
    assert code == 0
    check_csv_against_result_files(capsys.readouterr().out, sweep["root"])
    assert list(tmp_path.iterdir()) == []  # no reports/, no PNG in the working directory


def test_published_figure_is_shown_only_for_matching_settings(sweep):
    row = next(r for r in collect(sweep["root"], resamples=0) if r.model_name == "qwen3_0.6b")
    assert row.group == "dense"  # from the registry, not guessed
    assert row.published_num_outliers == 9212
    assert row.published_deviation == NOT_COMPARABLE_SETTINGS  # 8 x 32 random ids


def test_published_deviation_when_settings_match(sweep, tmp_path):
    from harness.engine.result_files import read_result, read_stats

    run = next(p for p in find_run_dirs(sweep["root"]) if "qwen3_0.6b" in str(p))
    res = read_result(run)
    d = res.data
    d.dataset, d.num_seqs, d.seq_len, d.stride = "HuggingFaceFW/fineweb-edu", 16, 2048, 1024
    # the weights' dtype is a published setting: the study ran Qwen3-0.6B in bf16
    write_result(res, tmp_path / "fp32", stats=read_stats(run))
    (row,) = collect(tmp_path / "fp32", resamples=0)
    assert row.published_deviation == "n/a (different settings)"
    res.model.dtype = "bfloat16"
    write_result(res, tmp_path / "bf16", stats=read_stats(run))
    (row,) = collect(tmp_path / "bf16", resamples=0)
    # the count compared is ours as the original computed it: activations rounded to bf16
    # (this run's activations are fp32, so that is the count at the bf16 threshold 5.984375)
    orig = res.sections["seed_compatible_as_original"]
    assert orig["same_as_exact"] is False and orig["threshold"] == 5.984375
    ours = orig["num_outliers"]
    assert ours >= res.seed_compatible.num_outliers
    assert row.published_deviation == ours - 9212
    assert row.published_deviation_pct == pytest.approx(100.0 * (ours - 9212) / 9212)


def test_the_group_falls_back_to_the_expert_count(sweep):
    fam = {r.model_name: r.group for r in collect(sweep["root"], resamples=0)}
    assert fam["moe_o"] == fam["moe_m"] == "moe"
    assert fam["dense_q"] == fam["dense_g"] == "dense"


def _figures_equal(row, fresh):
    assert row.figures["seed_compatible"] == fresh.seed_compatible
    assert row.figures["pooled"] == fresh.pooled
    assert row.figures["per_site"] == fresh.per_site
    sc, po = fresh.seed_compatible, fresh.pooled
    assert row.num_outliers == sc["num_outliers"]
    assert (row.mean_layer_pct, row.median_layer_pct) == (
        sc["mean_layer_pct"],
        sc["median_layer_pct"],
    )
    assert (row.mean_seq_pct, row.median_seq_pct) == (sc["mean_seq_pct"], sc["median_seq_pct"])
    assert row.pooled_dims == po["num_dims"]
    assert (row.pooled_layer_pct, row.pooled_seq_pct) == (po["mean_layer_pct"], po["mean_seq_pct"])
    assert row.sites_affected_pct == po["sites_affected_pct"]
    assert row.positions_affected_pct == po["positions_affected_pct"]


@pytest.mark.parametrize("m,a,b", THRESHOLDS)
def test_rethreshold_equals_a_fresh_run(sweep, m, a, b):
    rows = {r.model_name: r for r in collect(sweep["root"], Criteria(m, a, b), resamples=0)}
    for name in ("dense_q", "planted_q", "moe_o"):
        fresh = analyze(
            sweep["models"][name], sweep["ids"], batch_size=4, magnitude=m, layer_frac=a, seq_frac=b
        )
        row = rows[name]
        assert row.rethresholded and row.criteria == Criteria(m, a, b)
        _figures_equal(row, fresh)


def test_planted_model_keeps_its_planted_dim(sweep):
    row = next(r for r in collect(sweep["root"], resamples=0) if r.model_name == "planted_q")
    assert [d["dim"] for d in row.figures["pooled"]["dims"]] == [7]
    assert row.num_outliers == len(sweep["ids"])  # dim 7 in every sequence


def test_rethreshold_is_fast(sweep):
    n = len(find_run_dirs(sweep["root"]))
    t0 = time.perf_counter()
    collect(sweep["root"], Criteria(8.0, 0.25, 0.06))  # bootstrap included
    assert (time.perf_counter() - t0) / n < 1.0


def test_off_grid_magnitude_is_one_sentence(sweep):
    with pytest.raises(HarnessError) as err:
        collect(sweep["root"], Criteria(7.0, 0.25, 0.06))
    msg = str(err.value)
    assert "magnitude 7 was not captured" in msg and "--magnitude 7" in msg
    assert "\n" not in msg and msg.endswith(".")


def test_report_marks_different_dtypes_as_not_comparable(sweep):
    rows = {r.model_name: r for r in collect(sweep["root"], resamples=0)}
    bad = rows["dense_bf16"]
    assert not bad.comparable
    assert bad.comparability == "not comparable: activations bfloat16 vs float32"
    assert all(r.comparable for name, r in rows.items() if name != "dense_bf16")
    table = render(list(rows.values()), "table")
    assert "dense_bf16: not comparable: activations bfloat16 vs float32" in table
    parsed = list(csv.DictReader(io.StringIO(render(list(rows.values()), "csv"))))
    flags = {r["model_name"]: r["comparable"] for r in parsed}
    assert flags["dense_bf16"] == "False" and flags["dense_q"] == "True"


def test_two_results_with_different_dtypes_are_not_side_by_side(tmp_path):
    ids = random_ids(4, 16, seed=51)
    for name, dtype in (("a_fp32", torch.float32), ("b_bf16", torch.bfloat16)):
        model = random_model("qwen3", dtype, seed=52)
        write_result(analyze(model, ids, model_meta={"id": name}), tmp_path, environment=ENV)
    rows = collect(tmp_path, resamples=50)
    assert sorted(r.comparable for r in rows) == [False, True]
    bad = next(r for r in rows if not r.comparable)
    assert "activations" in bad.comparability and "bfloat16" in bad.comparability
    paths = write_reports(rows, tmp_path / "reports", plots=False)
    md = paths["summary.md"].read_text()
    assert "## Rows that are not comparable" in md and f"**{bad.model_name}**" in md
    from harness.reports.plots import HOLLOW_NOTE, scatter_plot

    data = scatter_plot(rows, "total_params", "mean_layer_pct", tmp_path / "s.png")
    hollow = {
        lab: h
        for s in data["series"].values()
        if "hollow" in s
        for lab, h in zip(s["labels"], s["hollow"], strict=True)
    }
    assert hollow == {r.model_name: not r.comparable for r in rows}
    assert HOLLOW_NOTE


def test_different_windows_or_criteria_are_not_comparable(sweep, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(sweep["root"], root)
    model = sweep["models"]["dense_q"]
    other = random_ids(8, 32, seed=99)
    write_result(analyze(model, other, model_meta={"id": "dense_q_other"}), root, environment=ENV)
    write_result(
        analyze(model, sweep["ids"], magnitude=5.0, model_meta={"id": "dense_q_m5"}),
        root,
        environment=ENV,
    )
    rows = {r.model_name: r for r in collect(root, resamples=0)}
    assert "different token windows" in rows["dense_q_other"].comparability
    assert "criteria" in rows["dense_q_m5"].comparability
    # re-thresholding everything at one magnitude makes the criteria agree again
    rows = {r.model_name: r for r in collect(root, Criteria(6.0, 0.25, 0.06), resamples=0)}
    assert rows["dense_q_m5"].comparable


def test_latest_run_wins_for_the_same_model_data_and_criteria(sweep, tmp_path):
    first = tmp_path / "old"
    shutil.copytree(sweep["root"], first)
    later = tmp_path / "new"
    run = next(p for p in find_run_dirs(first) if p.parent.name == "dense_q")
    target = later / "dense_q" / run.name
    shutil.copytree(run, target)
    data = json.loads((target / "result.json").read_text())
    data["seed_compatible"]["num_outliers"] = 123456
    (target / "result.json").write_text(json.dumps(data))
    t = time.time() + 10
    os.utime(target / "result.json", (t, t))
    rows = [r for r in collect(tmp_path, resamples=0) if r.model_name == "dense_q"]
    assert len(rows) == 1 and rows[0].num_outliers == 123456


def test_table_fits_a_terminal_and_lists_the_files(sweep, tmp_path):
    rows = collect(sweep["root"], resamples=100)
    text = render(rows, "table")
    assert max(len(line) for line in text.splitlines()) <= 160
    summary = summary_for_terminal(
        rows, paths={"summary.md": tmp_path / "summary.md"}, session_models={"dense_q"}
    )
    assert "dense_q*" in summary and "summary.md" in summary
    md = render(rows, "md")
    assert md.startswith("| model")
    payload = json.loads(render(rows, "json"))
    assert [r["model_name"] for r in payload["rows"]] == [r.model_name for r in rows]
    assert payload["rows"][0]["ci"]["num_outliers"]["low"] is not None


def _assert_real_image(path: Path, size=(720, 960)):
    assert path.is_file() and path.stat().st_size > 10_000
    img = imread(path)
    if size is not None:
        assert img.shape[:2] == size, img.shape
    rgb = (img[..., :3] * 255).astype(np.uint32).reshape(-1, 3)
    assert rgb.std() > 20  # not a blank canvas
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    assert len(np.unique(packed)) > 100  # markers, text, lines: many colours


@pytest.fixture(scope="module")
def written(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    rows = collect(sweep["root"], resamples=200)
    return rows, write_reports(rows, out), out


def test_reports_are_written(written):
    rows, paths, out = written
    for name in ("summary.md", "summary.csv", "summary.json"):
        assert paths[name] == out / name and paths[name].stat().st_size > 0
    md = (out / "summary.md").read_text()
    assert "## Trend statistics" in md and "## Dettmers et al. 2022" in md
    assert "dense_bf16" in md.split("## Rows that are not comparable")[1]
    assert not list(out.rglob("*.tmp"))  # atomic writes leave nothing behind


def test_eight_study_plots_and_more_are_real_images(written):
    rows, paths, out = written
    from harness.reports.plots import STUDY_PLOTS

    assert len(STUDY_PLOTS) == 8
    for x, y in STUDY_PLOTS:
        _assert_real_image(out / "plots" / f"{y}_vs_{x}.png")
    _assert_real_image(out / "plots" / "sensitivity.png", size=None)
    for r in rows:
        _assert_real_image(out / "plots" / f"heatmap_{r.model_name}.png", size=None)


def test_scatter_plot_data_has_groups_labels_intervals_and_the_reference(written, tmp_path):
    pytest.importorskip("harness.models.dettmers")
    from harness.models.dettmers import reference_series

    from harness.reports.plots import REFERENCE_LABEL, scatter_plot

    rows = written[0]
    for y, col in (("sites_affected_pct", "layer_pct"), ("positions_affected_pct", "seq_pct")):
        data = scatter_plot(rows, "active_params", y, tmp_path / f"{y}.png")
        ref = data["series"][REFERENCE_LABEL]
        want = reference_series()
        assert ref["x"] == [float(p) for p in want["params"]]
        assert ref["y"] == [float(v) for v in want[col]]
        assert set(data["series"]) >= {"MoE", "dense", REFERENCE_LABEL}
    for y in ("mean_layer_pct", "median_seq_pct"):
        data = scatter_plot(rows, "active_params", y, tmp_path / f"{y}.png")
        # Dettmers' pooled figures are not the original study's pair statistics
        assert REFERENCE_LABEL not in data["series"]
        ours = [lab for s in data["series"].values() if "hollow" in s for lab in s["labels"]]
        assert sorted(ours) == sorted(r.label for r in rows if getattr(r, y) is not None)
        # the models with no pair are named on the figure, not silently absent
        assert data["without_pairs"] == [r.label for r in rows if r.num_outliers == 0]
        assert set(ours).isdisjoint(data["without_pairs"])
        moe = data["series"]["MoE"]
        for yv, lo, hi in zip(moe["y"], moe["low"], moe["high"], strict=True):
            assert lo <= yv <= hi


@pytest.mark.parametrize(
    ("vmin", "vmax", "magnitude"),
    [(0.01, 40.0, 6.0), (2.7, 8.3, 6.0), (3.1, 3.4, 3.0), (1e-3, 2e4, 6.0)],
)
def test_colour_bar_ticks_cover_the_range(vmin, vmax, magnitude):
    from harness.reports.plots import colorbar_ticks

    ticks = colorbar_ticks(vmin, vmax, magnitude)
    assert ticks == sorted(ticks) and vmin * 0.999 <= ticks[0] and ticks[-1] <= vmax * 1.001
    # both ends within 20% of a tick (log scale), the magnitude when it is in range
    assert ticks[0] <= vmin * 1.2 and ticks[-1] >= vmax / 1.2
    assert magnitude in ticks or not vmin <= magnitude <= vmax


def test_sensitivity_plot_has_one_line_per_model(written, tmp_path):
    from harness.reports.plots import sensitivity_plot

    rows = written[0]
    data = sensitivity_plot(rows, tmp_path / "sens.png")
    for key in ("dims", "pairs"):
        assert list(data[key]) == [r.label for r in rows]
        for r in rows:
            curve = data[key][r.label]
            assert curve["x"] == list(r.stats.grid)
            assert (np.diff(curve["y"]) <= 0).all()  # fewer as M grows
    planted = next(r for r in rows if r.model_name == "planted_q")
    at6 = data["dims"]["planted_q"]["y"][list(planted.stats.grid).index(6.0)]
    assert at6 == 1


def test_heatmap_shows_systematic_dims_first(written, tmp_path):
    from harness.reports.plots import heatmap

    row = next(r for r in written[0] if r.model_name == "planted_q")
    data = heatmap(row, tmp_path / "h.png")
    assert data["dims"][0] == 7 and data["num_systematic"] == 1
    assert len(data["dims"]) == 32 and len(set(data["dims"])) == 32
    assert data["values"].shape == (row.stats.num_sites, 32)
    assert math.isclose(data["values"][:, 0].max(), float(row.stats.site_max[:, 7].max()))
    _assert_real_image(tmp_path / "h.png", size=None)


def test_the_tables_explain_their_columns(sweep):
    from harness.reports.summary import summary_for_terminal, summary_markdown

    rows = collect(sweep["root"], resamples=0)
    for text in (summary_for_terminal(rows), summary_markdown(rows)):
        assert "published = " in text and "dev = " in text and "cmp = yes when" in text


def test_runs_of_one_model_are_labelled_by_what_differs(sweep, tmp_path):
    """Four runs of one model (dtype, sites, magnitude differ): four labels naming the
    difference, four rows in the table, four heatmap files (no name cut, none overwritten)."""
    model, ids = sweep["models"]["dense_q"], sweep["ids"]
    meta = {"id": "dense_q"}
    bf16 = random_model("qwen3", torch.bfloat16, seed=1)
    for result in (
        analyze(model, ids, model_meta=meta),
        analyze(bf16, ids, model_meta=meta),
        analyze(model, ids, sites="residual", model_meta=meta),
        analyze(model, ids, magnitude=5.0, model_meta=meta),
    ):
        write_result(result, tmp_path / "r", environment=ENV)
    rows = collect(tmp_path / "r", resamples=0)
    labels = sorted(r.label for r in rows)
    assert len(rows) == 4 and len(set(labels)) == 4
    assert labels == sorted(
        [
            "dense_q (float32, sites ln, |x|>=6 0.25/0.06)",
            "dense_q (bfloat16, sites ln, |x|>=6 0.25/0.06)",
            "dense_q (float32, sites residual, |x|>=6 0.25/0.06)",
            "dense_q (float32, sites ln, |x|>=5 0.25/0.06)",
        ]
    )
    table = render(rows, "table")
    assert all(label in table for label in labels)
    paths = write_reports(rows, tmp_path / "rep")
    heatmaps = [p for n, p in paths.items() if n.startswith("plots/heatmap_")]
    assert len(heatmaps) == 4 and all(p.is_file() for p in heatmaps)


def test_the_reference_configuration_is_the_study_default_else_the_most_common(sweep, tmp_path):
    ids = sweep["ids"]
    root = tmp_path / "r"
    for name in ("dense_q", "moe_o"):  # two rows at magnitude 5
        write_result(
            analyze(sweep["models"][name], ids, magnitude=5.0, model_meta={"id": name}),
            root,
            environment=ENV,
        )
    run = write_result(
        analyze(sweep["models"]["moe_m"], ids, model_meta={"id": "moe_m"}), root, environment=ENV
    )
    rows = {r.model_name: r for r in collect(root, resamples=0)}
    assert rows["dense_q"].comparable and rows["moe_o"].comparable  # the most common
    assert not rows["moe_m"].comparable
    # the same three rows, but moe_m made at the study's settings: its configuration wins
    data = json.loads((run / "result.json").read_text())
    data["data"].update(dataset="HuggingFaceFW/fineweb-edu", num_seqs=16, seq_len=2048)
    (run / "result.json").write_text(json.dumps(data))
    rows = {r.model_name: r for r in collect(root, resamples=0)}
    assert rows["moe_m"].comparable and rows["moe_m"].comparability == "reference configuration"
    assert not rows["dense_q"].comparable and not rows["moe_o"].comparable


def test_a_table_4_pairing_made_under_other_settings_is_labelled(tmp_path):
    """A GPT-2 row on other data and sites than table 4 (C4, --sites dettmers) is paired with
    GPT-2 117M in summary.md but marked NO with the reasons, in the CSV, and on the plot that
    draws table 4; the same model under table 4's stated settings is comparable."""
    from harness.reports.plots import REFERENCE_LABEL, scatter_plot

    model = random_model("gpt2", torch.float32, seed=4, gain=2.0)
    ids = random_ids(4, 32, seed=11)
    meta = {"id": "gpt2_small"}
    write_result(analyze(model, ids, model_meta=meta), tmp_path / "r", environment=ENV)
    (row,) = collect(tmp_path / "r", resamples=0)
    want = "not comparable: dataset tensor vs C4; sites ln vs dettmers"
    assert row.table4_comparability == want
    assert row.export()["table4_comparability"] == want
    md = write_reports([row], tmp_path / "out", plots=False)["summary.md"].read_text()
    table4 = md.split("## Dettmers et al. 2022", 1)[1].split("## Where outliers live", 1)[0]
    line = next(x for x in table4.splitlines() if x.startswith("| gpt2_small"))
    assert "| NO " in line and want in line
    plot = scatter_plot([row], "total_params", "sites_affected_pct", tmp_path / "p.png")
    assert plot["series"][REFERENCE_LABEL]["not_comparable"] == [
        "gpt2_small (dataset tensor vs C4; sites ln vs dettmers)"
    ]
    result = analyze(model, ids, sites="dettmers", model_meta=meta)
    result.data.dataset = "allenai/c4"
    write_result(result, tmp_path / "c4", environment=ENV)
    (row,) = collect(tmp_path / "c4", resamples=0)
    assert row.table4_comparability.startswith("comparable")
