"""The choices the definitions leave open, made explicit: the layer unit (sites or transformer
layers), each window's first position, and the per-window spread of the pooled figures. Each is
checked against a planted ground truth or the definition computed another way (oracle.py)."""

import json

import numpy as np
import pytest
from factories import random_ids, random_model
from oracle import stats_from_activations

from harness.engine.criteria import Criteria, evaluate
from harness.engine.statistics import CapturedStats
from harness.errors import HarnessError
from harness.pipeline import analyze


def planted_layers():
    """4 layers x 2 sites (attn_in, mlp_in), 6 windows of 20 positions, 12 dims. Dim 2 = 8 at
    the attention site of layers 0 and 1 (2 of 8 sites, 2 of 4 layers); dim 7 = 8 at both
    sites of layer 3 (2 of 8 sites, 1 of 4 layers); both at positions 5-9 of every window."""
    rng = np.random.default_rng(1)
    acts = (rng.standard_normal((8, 6, 20, 12)) * 0.5).astype(np.float32)
    acts[[0, 2], :, 5:10, 2] = 8.0
    acts[[6, 7], :, 5:10, 7] = 8.0
    return acts


def dims(stats, criteria):
    return {d["dim"]: d for d in evaluate(stats, criteria)["pooled"]["dims"]}


def test_the_layer_unit_on_a_planted_ground_truth():
    stats = stats_from_activations(planted_layers())
    sites = dims(stats, Criteria(6.0, 0.3, 0.06))
    layers = dims(stats, Criteria(6.0, 0.3, 0.06, "layers"))
    assert sites == {}  # 25% of the sites each: under 0.3
    assert set(layers) == {2} and layers[2]["layer_pct"] == 50.0  # 2 of 4 layers
    assert set(dims(stats, Criteria(6.0, 0.25, 0.06))) == {2, 7}
    both = dims(stats, Criteria(6.0, 0.25, 0.06, "layers"))
    assert both[2]["layer_pct"] == 50.0 and both[7]["layer_pct"] == 25.0
    figures = evaluate(stats, Criteria(6.0, 0.25, 0.06, "layers"))
    assert figures["pooled"]["layer_denominator"] == 4
    assert figures["pooled"]["sites_affected_pct"] == 75.0  # layers 0, 1, 3
    pairs = {(p["seq"], p["dim"]): p["layer_pct"] for p in figures["seed_compatible"]["pairs"]}
    assert pairs == {(n, d): 50.0 if d == 2 else 25.0 for n in range(6) for d in (2, 7)}
    assert len(figures["per_site"]) == 8  # per-site rows stay per site


def test_the_first_position_left_out_equals_the_windows_without_it():
    """Oracle: the same activations with position 0 sliced off, through the independent stats
    builder; a dim planted at position 0 only is systematic with it and gone without it."""
    acts = planted_layers()
    acts[:, :, 0, 11] = 50.0  # a massive activation at the first position, every site
    stats = stats_from_activations(acts)
    assert 11 in dims(stats, Criteria(6.0, 0.25, 0.05))  # 1 of 20 positions = 5%
    without = Criteria(6.0, 0.25, 0.05, skip_first_position=True)
    want = evaluate(stats_from_activations(acts[:, :, 1:]), Criteria(6.0, 0.25, 0.05))
    got = evaluate(stats, without)
    for part in ("seed_compatible", "pooled"):
        for key, value in want[part].items():
            if key not in ("layer_unit", "layer_denominator", "first_position"):
                assert got[part][key] == value, (part, key)
    assert 11 not in dims(stats, without)


def test_the_per_window_spread_by_brute_force():
    acts = planted_layers()
    acts[:2, :3, :, 4] = 9.0  # dim 4: 2 of 8 sites in windows 0-2 only, every position
    stats = stats_from_activations(acts)
    d = dims(stats, Criteria(6.0, 0.25, 0.06))
    big = np.abs(acts) >= 6.0
    for dim, got in d.items():
        sites = big[:, :, :, dim].any(axis=2).sum(axis=0) * 100.0 / 8  # per window
        positions = big[:, :, :, dim].any(axis=0).sum(axis=1) * 100.0 / 20
        w = got["window"]
        assert w["layer_pct_median"] == np.median(sites)
        assert w["layer_pct_iqr"] == list(np.percentile(sites, [25, 75]))
        assert w["seq_pct_median"] == np.median(positions)
    assert d[4]["window"]["layer_pct_iqr"] == [0.0, 25.0] and d[4]["layer_pct"] == 25.0


def test_statistics_without_the_first_position_kept_apart_say_so():
    stats = stats_from_activations(planted_layers())
    old = CapturedStats(**{**stats.__dict__, "first_position": None})
    with pytest.raises(HarnessError, match="^this result's stats.npz was captured before"):
        evaluate(old, Criteria(skip_first_position=True))
    from harness.engine.criteria import by_definition

    table = by_definition(old, Criteria())
    assert table["sites_without_first_position"] is None and table["layers"] is not None


def test_bad_layer_unit_is_one_sentence():
    with pytest.raises(HarnessError, match="^--layer-unit must be one of sites, layers"):
        Criteria(layer_unit="blocks")


def test_a_run_records_both_units_and_rethresholds_either_from_its_files(tmp_path):
    """result.json holds the headline in the chosen unit and every definition side by side;
    stats.npz round-trips the first position, so a report at the other unit equals a fresh run
    at it."""
    from harness.engine.result_files import read_stats, write_result
    from harness.reports.collect import collect

    model = random_model("qwen3", seed=3)
    ids = random_ids(5, 24, seed=4)
    result = analyze(model, ids, batch_size=2, magnitude=4.0)
    run = write_result(result, tmp_path)
    saved = json.loads((run / "result.json").read_text())
    assert set(saved["by_definition"]) == {
        "sites",
        "sites_without_first_position",
        "layers",
        "layers_without_first_position",
    }
    assert saved["criteria"]["layer_denominators"] == {"sites": 6, "layers": 3}
    fresh = analyze(model, ids, batch_size=2, magnitude=4.0, layer_unit="layers")
    assert fresh.criteria.layer_unit == "layers" and fresh.criteria.layer_denominator == 3
    assert saved["by_definition"]["layers"]["pooled"]["num_dims"] == fresh.pooled.num_dims
    loaded = read_stats(run)
    assert loaded.first_position is not None
    for c in (Criteria(4.0, 0.25, 0.06, "layers"), Criteria(4.0, 0.25, 0.06, "sites", True)):
        assert evaluate(loaded, c) == evaluate(result.stats, c)
    (row,) = collect(tmp_path, Criteria(4.0, 0.25, 0.06, "layers"), resamples=0)
    assert row.pooled_dims == fresh.pooled.num_dims
    assert row.num_outliers == fresh.seed_compatible.num_outliers


def test_table_4_percentages_are_per_site_not_per_layer():
    """The argument for the default layer unit, from the published numbers alone: every "% of
    layers affected" of table 4 is round(100 k / 3L) for a whole k (3 sites a layer: the q/k/v
    input, the output projection's input, the FFN expansion's input), while three rows are
    k / L for no whole k under rounding or truncation (fairseq 1.3B 64% of 24, 2.7B 52% of 32,
    GPT-J 62% of 28)."""
    import math

    from harness.models.dettmers import DETTMERS_TABLE4, SETTINGS

    def fits(pct, units, rounding):
        return any(rounding(100 * k / units) == pct for k in range(units + 1))

    for p in DETTMERS_TABLE4:
        assert fits(p.layer_pct, 3 * p.num_layers, round), p.label
    impossible = [
        p.label
        for p in DETTMERS_TABLE4
        if not fits(p.layer_pct, p.num_layers, round)
        and not fits(p.layer_pct, p.num_layers, math.floor)
    ]
    assert impossible == ["fairseq 1.3B", "fairseq 2.7B", "GPT-J 6.0B"]
    assert SETTINGS["layer_unit"] == "sites" and SETTINGS["sites"] == "dettmers"
    assert Criteria().layer_unit == "sites"


def test_table_4_comparability_is_data():
    from harness.models.dettmers import beside_ours, table4_comparability

    settings = {
        "dataset": "allenai/c4",
        "seq_len": 2048,
        "dtype": "float16",
        "sites": "dettmers",
        "layer_unit": "sites",
        "first_position": "included",
        "magnitude": 6.0,
        "layer_frac": 0.25,
        "seq_frac": 0.06,
    }
    row = {"id": "gpt2_small", "total_params": 124_439_808, "settings": settings}
    assert table4_comparability(row).startswith("comparable (not stated in table 4")
    other = dict(row, settings=dict(settings, dataset="HuggingFaceFW/fineweb-edu", sites="ln"))
    text = table4_comparability(other)
    assert text == ("not comparable: dataset HuggingFaceFW/fineweb-edu vs C4; sites ln vs dettmers")
    (paired,) = beside_ours([other])
    assert paired["dettmers"] == "GPT-2 117M" and paired["comparability"] == text
    assert table4_comparability({"id": "qwen3_0.6b", "settings": settings}) is None


def test_table_4_families_are_measured_at_dettmers_sites_by_default():
    from harness.options import AnalysisOptions

    auto = AnalysisOptions()
    assert auto.sites == "auto"
    for model in ("gpt2_small", "fairseq_dense_1.3b", "gpt_j_6b", "opt_125m"):
        assert auto.sites_for(model) == "dettmers", model
    for model in ("qwen3_0.6b", "smollm2_135m", "someone/else", "./local-dir"):
        assert auto.sites_for(model) == "ln", model
    assert AnalysisOptions(sites="ln").sites_for("gpt2_small") == "ln"
