"""harness.reports.scaling: the trend statistics find a planted step, reject a flat relation, prefer a
line for a linear one, and their p-values and sentences hold on hand-checked and degenerate
inputs."""

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from harness.reports.scaling import (
    analyze_trends,
    bootstrap_ci,
    change_point,
    describe,
    permutation_pvalue,
    row_from_result,
    spearman_rho,
    trend,
    trend_table,
)

# 12 models, log-spaced 0.1B .. 100B: 7 below 6.7B (up to 4.3B), 5 above (from 8.1B).
LOG_PARAMS = np.linspace(8.0, 11.0, 12)
PARAMS = 10.0**LOG_PARAMS


def planted_step(seed: int, noise: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(PARAMS < 6.7e9, 30.0, 100.0) + rng.normal(0.0, noise, PARAMS.size)


def rows_for(values, *, key="mean_layer_pct"):
    return [
        {"id": f"m{i}", "total_params": int(p), "active_params": int(p) // 4, key: float(v)}
        for i, (p, v) in enumerate(zip(PARAMS, values, strict=True))
    ]


@pytest.mark.parametrize("seed", range(5))
def test_planted_step_is_found_between_the_right_neighbours(seed):
    cp = change_point(LOG_PARAMS, planted_step(seed))
    assert cp.left_max_x == LOG_PARAMS[6] and cp.right_min_x == LOG_PARAMS[7]
    assert PARAMS[6] < cp.split_params < PARAMS[7]
    assert cp.split_x == pytest.approx((LOG_PARAMS[6] + LOG_PARAMS[7]) / 2)
    assert (cp.n_left, cp.n_right) == (7, 5)
    assert cp.level_left == pytest.approx(30, abs=3) and cp.level_right == pytest.approx(100, abs=3)
    assert cp.delta_bic > 6
    assert cp.delta_bic == pytest.approx(cp.bic_line - cp.bic_step)
    assert cp.rss_step < cp.rss_line


def test_planted_step_through_analyze_trends_reads_strongly_favoured():
    (res,) = analyze_trends(
        rows_for(planted_step(0)), metrics=["mean_layer_pct"], xs=["total_params"]
    )
    assert res.n == 12 and res.models[0] == "m0"
    assert res.correlation.p_value < 0.05 and res.correlation.rho > 0
    assert "increases with total params" in res.verdict
    assert "step up at ~5.9B params" in res.verdict and "strongly favoured" in res.verdict


def test_bic_follows_the_stated_convention():
    cp = change_point(LOG_PARAMS, planted_step(3))
    n = LOG_PARAMS.size
    assert cp.bic_step == pytest.approx(n * math.log(cp.rss_step / n) + 3 * math.log(n))
    assert cp.bic_line == pytest.approx(n * math.log(cp.rss_line / n) + 2 * math.log(n))
    assert cp.lr_stat == pytest.approx(n * math.log(cp.rss_line / cp.rss_step))
    slope, intercept = np.polyfit(LOG_PARAMS, planted_step(3), 1)
    assert (cp.line_slope, cp.line_intercept) == pytest.approx((slope, intercept))


def test_flat_relation_fixed_seed_is_not_a_trend_nor_a_step():
    y = np.random.default_rng(1).normal(size=LOG_PARAMS.size)
    res = trend(LOG_PARAMS, y, metric="mean_seq_pct", x_name="active_params")
    c = res.correlation
    assert c.ci_low < 0 < c.ci_high
    assert c.p_value > 0.05
    assert res.change_point.delta_bic <= 2
    assert res.verdict.startswith("mean seq %: no monotonic relation with active params (rho = ")
    assert "no step" in res.verdict


def test_flat_relation_over_seeds_is_mostly_rejected():
    results = [
        trend(LOG_PARAMS, np.random.default_rng(s).normal(size=12), n_boot=500) for s in range(20)
    ]
    assert sum(r.correlation.p_value > 0.05 for r in results) >= 16
    assert sum(r.correlation.ci_low <= 0 <= r.correlation.ci_high for r in results) >= 16
    # ΔBIC > 2 happens on ~12% of pure-noise series (module doc): allow up to 6 of 20.
    assert sum(r.change_point.delta_bic > 2 for r in results) <= 6


@pytest.mark.parametrize("seed", range(3))
def test_linear_relation_is_monotonic_and_a_line_beats_a_step(seed):
    y = 10.0 * LOG_PARAMS + np.random.default_rng(seed).normal(0.0, 1.0, LOG_PARAMS.size)
    res = trend(LOG_PARAMS, y, metric="num_dims", x_name="total_params")
    assert res.correlation.p_value < 0.05 and res.correlation.rho > 0.9
    assert res.change_point.delta_bic < 0
    assert (
        res.verdict.startswith("pooled dims: increases with total params (rho = ")
        and "no step" in res.verdict
    )


def test_decreasing_relation_is_worded_so():
    res = trend(LOG_PARAMS, -LOG_PARAMS, metric="m", x_name="x")
    assert res.correlation.rho == -1 and res.verdict.startswith("m: decreases with x")


@pytest.mark.parametrize("seed", range(6))
def test_permutation_p_agrees_roughly_with_scipy_asymptotic_for_n10(seed):
    x = np.arange(10.0)
    y = x + np.random.default_rng(seed).normal(0.0, 5.0, 10)
    p, method, used = permutation_pvalue(x, y, seed=seed)
    assert method == "monte-carlo" and used == 10000
    assert p == pytest.approx(stats.spearmanr(x, y).pvalue, abs=0.03)


def test_exact_permutation_p_of_a_perfect_order_of_four_is_2_of_24():
    assert permutation_pvalue([1, 2, 3, 4], [10, 20, 30, 40]) == (2 / 24, "exact", 24)
    assert permutation_pvalue([1, 2, 3, 4], [40, 30, 20, 10]) == (2 / 24, "exact", 24)


def test_exact_permutation_p_of_one_adjacent_swap_of_four_is_8_of_24():
    # rho = 1 - sum(d^2) / 10 for n = 4; |rho| >= 0.8 iff sum(d^2) in {0, 2, 18, 20}: 1+3+3+1.
    assert permutation_pvalue([1, 2, 3, 4], [1, 3, 2, 4]) == (8 / 24, "exact", 24)


def test_exact_enumeration_stops_at_eight_points():
    assert permutation_pvalue(range(8), range(8))[1:] == ("exact", 40320)
    p, method, used = permutation_pvalue(range(9), range(9), n_perm=10000, seed=0)
    assert method == "monte-carlo" and used == 10000
    # Only 2 of 9! orders reach |rho| = 1: almost surely none drawn, p = (0 + 1) / 10001.
    assert 1 / 10001 <= p <= 3 / 10001


def test_bootstrap_leaves_out_degenerate_resamples_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low, high, degenerate = bootstrap_ci([1, 2, 3, 4, 5], [0, 0, 0, 0, 1], n_boot=2000)
    assert degenerate > 0 and -1 <= low <= high <= 1
    assert bootstrap_ci([1, 2, 3], [5, 5, 5], n_boot=500) == (
        pytest.approx(math.nan, nan_ok=True),
        pytest.approx(math.nan, nan_ok=True),
        500,
    )


def test_seeded_results_are_reproducible():
    """Reproducibility only (a seed fixes every resample); whether the numbers are right is
    tested against scipy and closed forms above."""
    y = planted_step(2)
    first = trend(LOG_PARAMS, y, seed=7)
    assert first == trend(LOG_PARAMS, y, seed=7)
    assert first != trend(LOG_PARAMS, y, seed=8)  # the seed is used, not ignored


def test_analyze_trends_skips_missing_values_per_metric_and_reads_billions():
    rows = rows_for(planted_step(0), key="mean_layer_pct")
    for i, r in enumerate(rows):
        r["num_outliers"] = None if i in (0, 5) else i * 10
        r["mean_seq_pct"] = math.nan if i == 3 else float(i)
        r["total_params_b"] = r["total_params"] / 1e9
    rows[11]["active_params"] = None
    res = {
        (r.metric, r.x): r
        for r in analyze_trends(
            rows,
            ["mean_layer_pct", "num_outliers", "mean_seq_pct"],
            ["total_params", "active_params", "total_params_b"],
        )
    }
    assert res["mean_layer_pct", "total_params"].n == 12
    assert res["mean_layer_pct", "active_params"].n == 11
    assert res["num_outliers", "total_params"].n == 10
    assert "m0" not in res["num_outliers", "total_params"].models
    assert res["mean_seq_pct", "total_params"].n == 11
    # "_b" keys are billions: same x as the raw counts, so the same figures.
    a, b = res["mean_layer_pct", "total_params"], res["mean_layer_pct", "total_params_b"]
    assert a.correlation == b.correlation and a.change_point == b.change_point


def test_analyze_trends_reads_nested_result_dicts():
    result = {
        "model": {"id": "x", "total_params": 1e9, "active_params": 1e9},
        "seed_compatible": {"num_outliers": 3, "mean_layer_pct": 40.0, "mean_seq_pct": 9.0},
        "pooled": {"num_dims": 2, "sites_affected_pct": 50.0, "positions_affected_pct": 10.0},
    }
    row = row_from_result(result)
    assert row["num_dims"] == 2 and row["total_params"] == 1e9 and row["id"] == "x"
    (res,) = analyze_trends([result] * 5, ["pooled.num_dims"], ["model.total_params"])
    assert res.n == 5 and "nothing to test" in res.verdict


def test_trend_table_lists_every_result_with_its_verdict():
    results = analyze_trends(rows_for(planted_step(0)), ["mean_layer_pct"])
    table = trend_table(results)
    for header in ("metric", "vs", "rho", "95% CI", "step split", "ΔBIC", "verdict"):
        assert header in table
    assert "total params" in table and "active params" in table
    assert all(r.verdict in table for r in results)


def test_to_dict_is_strict_json():
    for res in (
        trend(LOG_PARAMS, planted_step(0)),
        trend([1, 2, 3, 4, 5], [3] * 5),
        trend([1], [2]),
    ):
        json.dumps(res.to_dict(), allow_nan=False)


# --- properties ------------------------------------------------------------------------------

int_lists = st.lists(st.integers(-1000, 1000), min_size=4, max_size=10)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_rho_and_p_are_invariant_under_a_monotone_transform_of_x(data):
    x = np.array(data.draw(int_lists), dtype=float)
    y = np.array(data.draw(st.lists(st.integers(-50, 50), min_size=x.size, max_size=x.size)), float)
    fx = x**3 + 7.0 * x  # strictly increasing, exact in float64 for |x| <= 1000
    rho, frho = spearman_rho(x, y), spearman_rho(fx, y)
    assert (math.isnan(rho) and math.isnan(frho)) or rho == pytest.approx(frho, abs=1e-12)
    assert permutation_pvalue(x, y, n_perm=200) == permutation_pvalue(fx, y, n_perm=200)


values = st.one_of(
    st.none(),
    st.just(math.nan),
    st.just(math.inf),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([0.0, 1.0, 1.0, 5.0]),
)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_describe_never_crashes_on_degenerate_input(data):
    n = data.draw(st.integers(0, 9))
    x = data.draw(
        st.lists(st.one_of(values, st.sampled_from([8.0, 9.0, 9.0, 10.0])), min_size=n, max_size=n)
    )
    y = data.draw(st.lists(values, min_size=n, max_size=n))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = trend(x, y, metric="mean_layer_pct", x_name="total_params", n_perm=200, n_boot=200)
    assert res.verdict and res.verdict.endswith(".")
    assert describe("m", "x", res) == describe("m", "x", res)
    if res.n < 4:
        assert "too few to test" in res.verdict
    json.dumps(res.to_dict(), allow_nan=False)


@pytest.mark.parametrize(
    "x, y, words",
    [
        ([1, 2], [1, 2], "too few to test"),
        ([1, 2, 3, 4, 5], [7, 7, 7, 7, 7], "nothing to test"),
        ([9, 9, 9, 9], [1, 2, 3, 4], "nothing to test"),
        ([1, 2, math.nan, 4, 5], [1, math.nan, 2, 3, 3], "too few to test"),
    ],
)
def test_describe_claims_nothing_on_degenerate_series(x, y, words):
    res = trend(x, y)
    assert words in res.verdict
    assert "increases" not in res.verdict and "favoured" not in res.verdict


def test_format_params_never_prints_an_exponent():
    from harness.reports.scaling import format_params

    assert [format_params(v, 2) for v in (2.98e5, 2.8e5, 1.25e8, 1.3e9, 999_999, 950)] == [
        "298K",
        "280K",
        "125M",
        "1.3B",
        "1M",
        "950",
    ]


def test_a_permutation_test_and_interval_that_disagree_claim_nothing():
    from types import SimpleNamespace

    from harness.reports.scaling import describe

    def result(p, lo, hi):
        corr = SimpleNamespace(rho=-0.4, p_value=p, ci_low=lo, ci_high=hi, p_method="exact")
        return SimpleNamespace(n=13, correlation=corr, change_point=None)

    mixed = describe("pairs", "total params", result(0.19, -0.75, -0.08))
    assert "inconclusive" in mixed and "no monotonic relation" not in mixed
    assert "decreases" in describe("pairs", "total params", result(0.01, -0.75, -0.08))
    assert "no monotonic relation" in describe("pairs", "total params", result(0.19, -0.75, 0.2))


def test_a_split_beyond_float_range_is_unknown_not_a_crash():
    """Found by the derandomized profile: x given as raw counts (not log10) puts the split at
    10 ** 617; the trend still returns a sentence and its JSON."""
    res = trend([0.0, 0.0, 617.0, 617.0], [0.0, 0.0, 0.0, 1.0], metric="mean_layer_pct", n_perm=50)
    assert res.change_point.split_params is None
    assert res.verdict.endswith(".")
    json.dumps(res.to_dict(), allow_nan=False)


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_trend_interval_endpoints_are_quantiles_of_the_same_resamples(level):
    """Spearman's rho recomputed by scipy on the same seeded pair resamples (draws: numpy's
    default_rng([seed, 2]), as documented), then the (1 -+ level) / 2 quantiles."""
    from scipy.stats import spearmanr

    from harness.reports.scaling import bootstrap_ci

    x = np.log10([1.2e8, 3.5e8, 7.6e8, 1.3e9, 1.5e9, 2.7e9, 6.0e9, 6.7e9, 1.3e10])
    y = np.array([25.0, 29, 31, 64, 41, 52, 62, 100, 100])
    n_boot, seed = 500, 4
    low, high, degenerate = bootstrap_ci(x, y, n_boot=n_boot, level=level, seed=seed)
    idx = np.random.default_rng([seed, 2]).integers(0, x.size, size=(n_boot, x.size))
    rhos = []
    for row in idx:
        if np.ptp(x[row]) > 0 and np.ptp(y[row]) > 0:
            rhos.append(spearmanr(x[row], y[row]).statistic)
    assert degenerate == n_boot - len(rhos)
    want = np.quantile(np.clip(rhos, -1, 1), [(1 - level) / 2, (1 + level) / 2])
    assert (low, high) == pytest.approx(tuple(want), abs=1e-12)
    if level == 0.95:  # what trend() reports is the 95% interval of those resamples
        corr = trend(x, y, n_perm=100, n_boot=n_boot, seed=seed).correlation
        assert (corr.ci_low, corr.ci_high) == pytest.approx(tuple(want), abs=1e-12)


def test_edges_of_the_rank_statistics():
    """Boundaries the mutation run found untested: a range of exactly 1 is not constant; two
    points have a permutation p-value (both orders reach |rho| = 1: p = 1); exactly 100
    usable resamples give an interval."""
    from harness.reports.scaling import bootstrap_ci, permutation_pvalue, spearman_rho

    assert spearman_rho([0.0, 0.5, 1.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    p, method, used = permutation_pvalue([1.0, 2.0], [3.0, 4.0])
    assert (p, method) == (1.0, "exact")
    x = np.arange(9.0)
    low, high, degenerate = bootstrap_ci(x, x**2, n_boot=100, seed=1)
    assert degenerate == 0 and math.isfinite(low) and math.isfinite(high)


def _spearman_count(x, y, perms):
    """How many of ``perms`` give |rho| >= the observed |rho|, by scipy (ties within 1e-12)."""
    from scipy.stats import spearmanr

    observed = abs(spearmanr(x, y).statistic)
    return sum(abs(spearmanr(x, y[p]).statistic) >= observed - 1e-12 for p in perms)


@pytest.mark.parametrize("seed", [0, 3])
def test_monte_carlo_p_counts_the_same_permutations_as_scipy(seed):
    """(count + 1) / (n_perm + 1) over the documented draws (numpy default_rng([seed, 1]),
    each row a permutation of range(n)), the count by scipy's rho; with ties in y, so that
    permutations reaching exactly the observed |rho| are common."""
    x = np.arange(9.0)
    y = np.array([3.0, 1, 4, 1, 5, 9, 2, 6, 5])
    n_perm = 300
    perms = np.random.default_rng([seed, 1]).permuted(
        np.broadcast_to(np.arange(9), (n_perm, 9)), axis=1
    )
    count = _spearman_count(x, y, perms)
    assert 0 < count < n_perm
    assert permutation_pvalue(x, y, n_perm=n_perm, seed=seed) == (
        pytest.approx((count + 1) / (n_perm + 1), abs=1e-15),
        "monte-carlo",
        n_perm,
    )


def test_the_defaults_are_ten_thousand_permutations_and_two_thousand_resamples_seed_0():
    from scipy.stats import spearmanr

    from harness.reports.scaling import bootstrap_ci

    x = np.arange(9.0)
    y = np.array([3.0, 1, 4, 1, 5, 9, 2, 6, 5])
    perms = np.random.default_rng([0, 1]).permuted(
        np.broadcast_to(np.arange(9), (10000, 9)), axis=1
    )
    p, method, used = permutation_pvalue(x, y)
    assert (method, used) == ("monte-carlo", 10000)
    assert p == pytest.approx((_spearman_count(x, y, perms) + 1) / 10001, abs=1e-15)
    idx = np.random.default_rng([0, 2]).integers(0, 9, size=(2000, 9))
    rhos = [spearmanr(x[r], y[r]).statistic for r in idx if np.ptp(x[r]) and np.ptp(y[r])]
    low, high, degenerate = bootstrap_ci(x, y)
    assert degenerate == 2000 - len(rhos)
    assert (low, high) == pytest.approx(tuple(np.quantile(rhos, [0.025, 0.975])), abs=1e-12)


def test_two_points_and_ranges_of_exactly_one():
    """Edges: two points have a rho (+-1) and a bootstrap interval; a range of exactly 1 in x
    or in y is not constant; constant input is NaN without scipy's warning; one permutation
    is allowed."""
    from harness.reports.scaling import bootstrap_ci, spearman_rho

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert spearman_rho([1.0, 2.0], [3.0, 4.0]) == pytest.approx(1.0)
        assert spearman_rho([1.0, 2.0], [4.0, 3.0]) == pytest.approx(-1.0)
        assert spearman_rho([0.0, 0.5, 1.0], [1.0, 1.5, 2.0]) == pytest.approx(1.0)
        assert math.isnan(spearman_rho([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))
        assert math.isnan(spearman_rho([5.0, 5.0, 5.0], [1.0, 2.0, 3.0]))
        assert math.isnan(spearman_rho([1.0], [2.0]))
    p, method, _ = permutation_pvalue([0.0, 0.5, 1.0], [1.0, 1.5, 2.0])
    assert method == "exact" and p == pytest.approx(2 / 6)
    p, method, _ = permutation_pvalue(np.arange(9.0), np.arange(9.0), n_perm=1, seed=0)
    assert method == "monte-carlo" and p in (0.5, 1.0)
    with pytest.raises(ValueError):
        permutation_pvalue(np.arange(9.0), np.arange(9.0), n_perm=0)
    low, high, degenerate = bootstrap_ci([1.0, 2.0], [3.0, 4.0], n_boot=400, seed=0)
    assert (low, high) == (1.0, 1.0) and 0 < degenerate < 300


def test_a_tie_between_two_splits_takes_the_leftmost():
    cp = change_point(np.arange(6.0), [0.0, 0.0, 5.0, 5.0, 0.0, 0.0])
    assert cp.n_left == 2 and cp.split_x == 1.5


def test_a_perfect_step_uses_the_documented_floor():
    """rss_step = 0: BIC uses max(rss, 1e-12 * TSS); TSS by hand."""
    x = np.arange(6.0)
    y = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    cp = change_point(x, y)
    tss = 1.5  # six values 0/1 around 0.5: 6 x 0.25
    n = 6
    assert cp.rss_step == 0.0
    assert cp.bic_step == pytest.approx(n * math.log(1e-12 * tss / n) + 3 * math.log(n))


def test_a_split_never_falls_between_equal_x_values():
    cp = change_point([0.0, 0.0, 1.0, 1.0, 1.0, 2.0], [0.0, 0.0, 0.0, 5.0, 5.0, 5.0])
    assert cp.n_left == 2 and cp.left_max_x < cp.right_min_x


def test_split_params_below_1e300_and_unknown_from_there():
    cp = change_point([0.0, 0.0, 599.5, 599.5], [0.0, 0.0, 1.0, 1.0])
    assert cp.split_x == 299.75 and cp.split_params == pytest.approx(10**299.75)
    for top in (600.0, 600.5):
        cp = change_point([0.0, 0.0, top, top], [0.0, 0.0, 1.0, 1.0])
        assert cp.split_x == top / 2 and cp.split_params is None


def test_an_undefined_p_value_used_no_permutation():
    p, method, used = permutation_pvalue([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    assert math.isnan(p) and (method, used) == ("undefined", 0)
