"""Bootstrap over sequences (issue 8.4): exact per-sample figures, intervals that behave."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import time

import numpy as np
import pytest
import torch
from factories import random_ids, random_model
from oracle import collect_activations, stats_from_activations

from harness.engine.criteria import Criteria, evaluate
from harness.errors import HarnessError
from harness.pipeline import analyze
from harness.reports.bootstrap import (
    METRICS,
    bootstrap,
    figures_for_sample,
    multiplicities,
    resample_figures,
)

CRITERIA = [
    Criteria(6.0, 0.25, 0.06),
    Criteria(3.0, 0.5, 0.2),
    Criteria(8.0, 0.1, 0.0),
    Criteria(20.0, 0.0, 0.5),
    Criteria(4.0, 0.0, 0.0),
    Criteria(6.0, 0.25, 0.06, "layers"),
    Criteria(3.0, 0.5, 0.2, "sites", True),
    Criteria(4.0, 0.25, 0.06, "layers", True),
]


def planted_activations(N=10, identical=False, seed=0):
    """Sites S=8, T=20, H=16. Dim 3 = 10 at every site on the first half of every sequence
    (systematic in all N sequences); dim 5 = 7 at 4 of 8 sites on 4 of 20 positions of the
    first half of the sequences only (all of them when ``identical``); dim 9 = 30 at one site of
    sequence 0 (``identical``: not planted)."""
    S, T, H = 8, 20, 16
    rng = np.random.default_rng(seed)
    acts = (rng.standard_normal((S, N, T, H)) * 0.8).astype(np.float32)
    if identical:
        acts[:] = acts[:, :1]
    acts[:, :, : T // 2, 3] = 10.0
    planted = range(N) if identical else range(N // 2)
    for n in planted:
        acts[:4, n, :4, 5] = 7.0
    if not identical:
        acts[2, 0, 0, 9] = 30.0
    return acts


def headline(figures: dict) -> dict:
    sc, po = figures["seed_compatible"], figures["pooled"]
    return {
        "num_outliers": sc["num_outliers"],
        "mean_layer_pct": sc["mean_layer_pct"],
        "median_layer_pct": sc["median_layer_pct"],
        "mean_seq_pct": sc["mean_seq_pct"],
        "median_seq_pct": sc["median_seq_pct"],
        "pooled_dims": po["num_dims"],
        "pooled_layer_pct": po["mean_layer_pct"],
        "pooled_seq_pct": po["mean_seq_pct"],
        "sites_affected_pct": po["sites_affected_pct"],
        "positions_affected_pct": po["positions_affected_pct"],
    }


@pytest.fixture(scope="module")
def real_run():
    model = random_model("olmoe", torch.float32, seed=21)
    ids = random_ids(9, 24, seed=22)
    return model, ids, analyze(model, ids, batch_size=1)


def test_synthetic_stats_builder_matches_the_engine(real_run):
    """The test's own stats builder follows the engine's definitions exactly (so the planted
    stats below mean what the engine means)."""
    model, ids, result = real_run
    _, acts = collect_activations(model, ids, "ln", batch_size=1)
    mine, theirs = stats_from_activations(acts, grid=result.stats.grid), result.stats
    for name in (
        "site_max",
        "site_counts",
        "seq_max",
        "seq_site_count",
        "site_seq_level",
        "seq_pos_count",
        "seq_occ",
        "hits_indptr",
        "hits_dim",
        "hits_level",
    ):
        assert np.array_equal(getattr(mine, name), getattr(theirs, name)), name


def test_planted_stats_have_the_planted_figures():
    stats = stats_from_activations(planted_activations())
    fig = headline(evaluate(stats, Criteria(6.0, 0.25, 0.06)))
    assert fig["num_outliers"] == 10 + 5  # dim 3 in every sequence, dim 5 in half of them
    assert fig["pooled_dims"] == 2
    assert fig["sites_affected_pct"] == 100.0


@pytest.mark.parametrize("criteria", CRITERIA, ids=str)
def test_identity_sample_equals_evaluate_exactly(criteria, real_run):
    for stats in (stats_from_activations(planted_activations()), real_run[2].stats):
        got = figures_for_sample(stats, criteria, np.arange(stats.num_seqs))
        assert got == headline(evaluate(stats, criteria))


def test_resampled_windows_equal_a_fresh_run_exactly(real_run):
    """A sample with repeats == analyze() on exactly those windows (repeated windows included)."""
    model, ids, result = real_run
    rng = np.random.default_rng(5)
    samples = [rng.integers(0, len(ids), len(ids)) for _ in range(2)] + [np.array([4, 4, 4, 0])]
    for idx in samples:
        fresh = analyze(model, ids[torch.as_tensor(idx)], batch_size=1)
        assert figures_for_sample(result.stats, Criteria(), idx) == headline(
            {"seed_compatible": fresh.seed_compatible, "pooled": fresh.pooled}
        )
        for c in CRITERIA[1:]:
            assert figures_for_sample(result.stats, c, idx) == headline(evaluate(fresh.stats, c))


@pytest.mark.parametrize("criteria", CRITERIA, ids=str)
def test_vectorised_resamples_equal_one_by_one(criteria, real_run):
    for stats in (stats_from_activations(planted_activations()), real_run[2].stats):
        counts = multiplicities(stats.num_seqs, 40, seed=3)
        counts[0] = 0
        counts[0, 1] = stats.num_seqs  # one sequence drawn N times
        many = resample_figures(stats, criteria, counts)
        for b in range(len(counts)):
            one = figures_for_sample(
                stats, criteria, np.repeat(np.arange(stats.num_seqs), counts[b])
            )
            for m in METRICS:
                if one[m] is None:
                    assert np.isnan(many[m][b]), (m, b)
                else:
                    assert many[m][b] == pytest.approx(one[m], rel=1e-12, abs=1e-12), (m, b)


def test_multiplicities_are_seeded_resamples_of_size_n():
    c = multiplicities(7, 300, seed=1)
    assert c.shape == (300, 7) and (c.sum(axis=1) == 7).all()
    assert np.array_equal(c, multiplicities(7, 300, seed=1))
    assert not np.array_equal(c, multiplicities(7, 300, seed=2))
    # uniform draws with replacement: every sequence is drawn once per resample on average
    # (seeded: 300 resamples put each mean within 3 standard errors, ~0.16, of 1)
    assert np.abs(c.mean(axis=0) - 1).max() < 0.16


def test_interval_contains_the_planted_value():
    stats = stats_from_activations(planted_activations(N=16))
    c = Criteria(6.0, 0.25, 0.06)
    truth = headline(evaluate(stats, c))
    ci = bootstrap(stats, c, resamples=1000, seed=0)
    for m in METRICS:
        assert ci[m].estimate == truth[m]
        assert ci[m].low <= truth[m] <= ci[m].high, (m, ci[m])
    # the planted per-sequence structure: dim 5 is systematic in half the sequences, so the
    # pair count varies between 16 + 0 and 16 + 16 and its interval is wide but not absurd
    assert 16 < ci["num_outliers"].low < truth["num_outliers"] < ci["num_outliers"].high < 32


def test_interval_contains_the_true_value_on_a_planted_model():
    model = random_model("qwen3", torch.float32, seed=31, gain=0.3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("input_layernorm.weight", "post_attention_layernorm.weight")):
                p[7] = 200.0
    ids = random_ids(10, 24, seed=32)
    result = analyze(model, ids)
    assert [d["dim"] for d in result.pooled["dims"]] == [7]
    for c in (Criteria(), Criteria(100.0, 0.25, 0.5)):
        truth = headline(evaluate(result.stats, c))
        ci = bootstrap(result.stats, c)
        for m in METRICS:
            if truth[m] is not None:
                assert ci[m].low <= truth[m] <= ci[m].high, (c, m, ci[m])


def test_identical_sequences_give_zero_width():
    stats = stats_from_activations(planted_activations(N=6, identical=True))
    model = random_model("qwen3", torch.float32, seed=41)
    ids = random_ids(1, 24, seed=42).repeat(6, 1)
    real = analyze(model, ids, batch_size=1).stats
    for s in (stats, real):
        for c in CRITERIA[:3]:
            for m, iv in bootstrap(s, c, resamples=200).items():
                if iv.estimate is not None:
                    assert iv.low == iv.high == pytest.approx(iv.estimate, rel=1e-12), (m, iv)


def test_undefined_means_are_reported_as_such():
    stats = stats_from_activations(planted_activations())
    ci = bootstrap(stats, Criteria(100.0, 0.25, 0.06), resamples=50)
    assert ci["num_outliers"].estimate == 0 and ci["num_outliers"].low == 0
    assert ci["mean_layer_pct"].estimate is None
    assert ci["mean_layer_pct"].low is None and ci["mean_layer_pct"].defined == 0.0


def test_off_grid_magnitude_is_one_sentence():
    stats = stats_from_activations(planted_activations())
    with pytest.raises(HarnessError) as err:
        bootstrap(stats, Criteria(7.0, 0.25, 0.06))
    msg = str(err.value)
    assert "7 was not captured" in msg and "\n" not in msg and msg.endswith(".")


def test_resample_count_and_level_are_checked_at_their_edges():
    stats = stats_from_activations(planted_activations(N=4))
    c = Criteria(6.0, 0.25, 0.06)
    one = bootstrap(stats, c, resamples=1, seed=0)  # the smallest allowed
    assert one["num_outliers"].low == one["num_outliers"].high
    for bad in ({"resamples": 0}, {"level": 0.0}, {"level": 1.0}, {"level": -0.1}):
        with pytest.raises(HarnessError) as err:
            bootstrap(stats, c, **bad)
        assert "\n" not in str(err.value)
    assert bootstrap(stats, c, resamples=20, level=0.999)["num_outliers"].low is not None


def test_bad_sample_indices_are_refused():
    stats = stats_from_activations(planted_activations(N=4))
    with pytest.raises(HarnessError):
        figures_for_sample(stats, Criteria(), [0, 4])
    with pytest.raises(HarnessError):
        figures_for_sample(stats, Criteria(), [])


def test_bootstrap_is_fast_on_a_tiny_result(real_run):
    stats = real_run[2].stats
    t0 = time.perf_counter()
    bootstrap(stats, Criteria(3.0, 0.25, 0.06), resamples=1000)
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize("level", [0.5, 0.8, 0.9, 0.95, 0.99])
def test_interval_endpoints_are_the_percentiles_of_the_same_resamples(real_run, level):
    """The endpoints, not just "contains the truth": rebuilt here from the same seeded draws,
    one resample at a time (each a sample whose figures equal a fresh run on those windows),
    then numpy's percentiles at (1 -+ level) / 2. A 90% interval reported as 95% fails."""
    stats = real_run[2].stats
    c = Criteria(3.0, 0.25, 0.06)
    R, seed = 120, 9
    counts = multiplicities(stats.num_seqs, R, seed=seed)
    samples = [
        figures_for_sample(stats, c, np.repeat(np.arange(stats.num_seqs), row)) for row in counts
    ]
    got = bootstrap(stats, c, resamples=R, seed=seed, level=level)
    tail = 100 * (1 - level) / 2
    for metric in ("num_outliers", "mean_layer_pct", "positions_affected_pct"):
        values = np.array([s[metric] for s in samples if s[metric] is not None], float)
        low, high = np.percentile(values, [tail, 100 - tail])
        assert (got[metric].low, got[metric].high) == pytest.approx((low, high), rel=1e-12)
    widths = {m: got[m].high - got[m].low for m in ("num_outliers",)}
    assert widths["num_outliers"] > 0, "the run must vary between resamples to test endpoints"
