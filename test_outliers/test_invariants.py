"""The honest-run checks catch a wrong result: they recompute the outlier sets from other
arrays of the statistics, so a bug in the criteria or in the capture's counts is reported."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from factories import random_ids, random_model

from harness import analyze
from harness.engine.invariants import honest_run_failures


@pytest.fixture(scope="module")
def run():
    model = random_model("qwen3", gain=5.0)
    res = analyze(model, random_ids(4, 64), magnitude=6.0, layer_frac=0.25, seq_frac=0.06)
    return res.to_dict(), res.stats


def test_a_sound_run_passes_and_has_outliers_to_check(run):
    result, stats = run
    assert result["seed_compatible"]["num_outliers"] > 0 and result["pooled"]["num_dims"] > 0
    assert honest_run_failures(result, stats) == []


def test_a_pair_dropped_from_the_result_is_caught(run):
    result, stats = copy.deepcopy(run[0]), run[1]
    sc = result["seed_compatible"]
    sc["pairs"] = sc["pairs"][1:]
    sc["num_outliers"] -= 1
    fails = honest_run_failures(result, stats)
    assert any("1 missing" in f for f in fails), fails


def test_a_pooled_dim_added_to_the_result_is_caught(run):
    result, stats = copy.deepcopy(run[0]), run[1]
    taken = {d["dim"] for d in result["pooled"]["dims"]}
    free = next(d for d in range(stats.hidden_size) if d not in taken)
    result["pooled"]["dims"].append(dict(result["pooled"]["dims"][0], dim=free))
    assert any("pooled systematic dims" in f for f in honest_run_failures(result, stats))


def test_per_sequence_counts_that_disagree_with_the_capture_are_caught(run):
    """A capture bug in the counts the criteria read (one sequence's site counts zeroed, as a
    dropped chunk would): the criteria, fed those counts, report fewer pairs; the check does
    not agree."""
    from harness.engine.criteria import Criteria, seed_compatible

    result, stats = copy.deepcopy(run[0]), copy.deepcopy(run[1])
    stats.seq_site_count[:, 0, :] = 0
    result["seed_compatible"] = seed_compatible(stats, Criteria(6.0, 0.25, 0.06))
    assert result["seed_compatible"]["num_outliers"] < run[0]["seed_compatible"]["num_outliers"]
    fails = honest_run_failures(result, stats)
    assert any("disagree with the per-site levels" in f for f in fails), fails
    assert np.any(stats.site_seq_level[:, 0, :] > 0)


def _need(frac: str, den: int) -> int:
    from fractions import Fraction

    f = Fraction(frac)
    return -(-f.numerator * den // f.denominator)


@pytest.mark.parametrize("S,T", [(4, 50), (5, 17), (9, 51), (6, 40), (8, 33)])
def test_the_independent_sets_equal_the_brute_force_oracle_at_every_boundary(S, T):
    """Dims exactly at, and one short of, each denominator's boundary, and values that reach
    5 but not 6: the check's own computation equals the definition by the letter."""
    from oracle import oracle_figures, stats_from_activations

    from harness.engine.criteria import Criteria
    from harness.engine.invariants import independent_outliers

    N = 3
    ks, kt, kp = _need("1/4", S), _need("3/50", T), _need("3/50", N * T)
    acts = np.zeros((S, N, T, 7))
    acts[:ks, 0, :kt, 0] = 6.0  # a pair, exactly at both per-sequence boundaries
    acts[:ks, 0, : kt - 1, 1] = 6.0  # one position short
    acts[:ks, 0, kt - 1, 1] = 5.5  # ... reached at 5 only
    acts[: ks - 1, 0, :kt, 2] = 6.0  # one site short
    acts[ks - 1, 0, :kt, 2] = 5.5
    per_seq = [kp // N + (i < kp % N) for i in range(N)]
    for n, k in enumerate(per_seq):
        acts[:ks, n, :k, 3] = 6.0  # pooled, exactly kp positions
        acts[:ks, n, : k - (n == 0), 4] = 6.0  # one pooled position short
        acts[: ks - 1, n, :k, 5] = 6.0  # one site short, pooled
    acts[:ks, 0, per_seq[0] - 1, 4] = 5.5
    acts[0, :, :, 6] = 5.5  # everywhere at one site, never 6
    stats = stats_from_activations(acts)
    for m in (6.0, 5.0):
        for lf, sf in ((0.25, 0.06), (0.5, 0.06), (0.25, 0.5), (0.0, 0.0), (0.0, 0.06)):
            truth = oracle_figures(acts, m, lf, sf)
            pairs, dims = independent_outliers(stats, Criteria(m, lf, sf))
            assert pairs == set(truth["pairs"]), (m, lf, sf)
            assert dims == set(truth["dims"]), (m, lf, sf)
    pairs, dims = independent_outliers(stats, Criteria(6.0, 0.25, 0.06))
    assert (0, 0) in pairs and not pairs & {(0, 1), (0, 2)} and 3 in dims and 4 not in dims


def _set(obj, path, value):
    *head, last = path
    for k in head:
        obj = obj[k]
    obj[last] = value


# (what is changed, the sentence expected; None: the changed run is still sound)
CORRUPTIONS = [
    (("stats", "seq_len", 65), "statistics cover"),
    (("result", ("timing", "forward_calls"), 99), "forward passes differs"),
    (("expected_sites", None, "S+1"), "sites captured"),
    (("expected_sites", None, "S"), None),
    (("result", ("criteria", "site_self_check"), {"ran": True, "passed": False}), "self-check"),
    (("result", ("criteria", "site_self_check"), {"ran": False, "passed": True}), "self-check"),
    (("result", ("criteria", "site_self_check"), {"ran": True, "passed": True}), None),
    (("stats_array", "seq_max", np.inf), "non-finite"),
    (("stats_array", "site_max", np.nan), "non-finite"),
    (("stats_array", "seq_site_count", "S+1"), "exceeds its denominator"),
    (("stats_array", "seq_pos_count", "T+1"), "exceeds its denominator"),
    (("pair", "max_magnitude", 5.999), "out of range"),
    (("pair", "max_magnitude", 6.0), None),
    (("pair", "layer_pct", 100.0), None),
    (("pair", "layer_pct", 100.01), "out of range"),
    (("pair", "layer_pct", -0.01), "out of range"),
    (("pair", "layer_pct", 0.0), None),
    (("pair", "seq_pct", 100.0), None),
    (("pair", "seq_pct", 100.01), "out of range"),
    (("pair", "seq_pct", 0.0), None),
    (("pair", "seq_pct", -0.01), "out of range"),
    (("result", ("pooled", "sites_affected_pct"), 100.0), None),
    (("result", ("pooled", "sites_affected_pct"), 100.01), "outside 0-100"),
    (("result", ("pooled", "positions_affected_pct"), 0.0), None),
    (("result", ("pooled", "positions_affected_pct"), -0.01), "outside 0-100"),
    (("result", ("seed_compatible", "median_seq_pct"), 100.0), None),
    (("result", ("seed_compatible", "median_seq_pct"), 100.01), "outside 0-100"),
    (("result", ("seed_compatible", "median_seq_pct"), float("nan")), "outside 0-100"),
    (("result", ("seed_compatible", "median_layer_pct"), 0.0), None),
    (("result", ("seed_compatible", "median_layer_pct"), -0.01), "outside 0-100"),
    (("result", ("seed_compatible", "mean_layer_pct"), 25.0), None),  # the floor itself
    (("result", ("seed_compatible", "mean_layer_pct"), 25.0 - 1e-10), None),  # rounding
    (("result", ("seed_compatible", "mean_layer_pct"), 25.1), None),
    (("result", ("seed_compatible", "mean_layer_pct"), 24.99), "below the layer criterion"),
    (("result", ("seed_compatible", "mean_seq_pct"), 6.0), None),
    (("result", ("seed_compatible", "mean_seq_pct"), 6.0 - 1e-10), None),
    (("result", ("seed_compatible", "mean_seq_pct"), 6.05), None),
    (("result", ("seed_compatible", "mean_seq_pct"), 5.99), "below the sequence criterion"),
    (("pooled_count", None, +1), "sequence count disagrees"),
    (("drop_all_seq_dim", None, None), "systematic in every sequence but not pooled"),
]


@pytest.mark.parametrize(("change", "expected"), CORRUPTIONS)
def test_each_consistency_check_fires_exactly_when_it_should(run, change, expected):
    result, stats = copy.deepcopy(run[0]), copy.deepcopy(run[1])
    kind, path, value = change
    S, T = stats.num_sites, stats.seq_len
    expected_sites = None
    if kind == "stats":
        setattr(stats, path, value)
    elif kind == "stats_array":
        arr = getattr(stats, path)
        arr.flat[0] = {"S+1": S + 1, "T+1": T + 1}.get(value, value)
    elif kind == "result":
        _set(result, path, value)
    elif kind == "expected_sites":
        expected_sites = S + 1 if value == "S+1" else S
    elif kind == "pair":
        result["seed_compatible"]["pairs"][0][path] = value
    elif kind == "pooled_count":
        result["pooled"]["dims"][0]["num_sequences_systematic"] += value
    elif kind == "drop_all_seq_dim":
        # a dim systematic in every sequence, removed from the pooled list
        N = stats.num_seqs
        counts: dict = {}
        for p in result["seed_compatible"]["pairs"]:
            counts[p["dim"]] = counts.get(p["dim"], 0) + 1
        dim = next(d for d, n in counts.items() if n == N)
        result["pooled"]["dims"] = [d for d in result["pooled"]["dims"] if d["dim"] != dim]
    fails = honest_run_failures(result, stats, expected_sites=expected_sites)
    if expected is None:
        assert fails == [], fails
    else:
        assert any(expected in f for f in fails), fails


def test_messages_name_a_few_examples_and_counts_default_to_zero(run):
    import re

    result, stats = copy.deepcopy(run[0]), run[1]
    sc = result["seed_compatible"]
    sc["pairs"], sc["num_outliers"] = sc["pairs"][3:], sc["num_outliers"] - 3
    (msg,) = [f for f in honest_run_failures(result, stats) if "systematic pairs" in f]
    assert "3 missing, e.g. [(" in msg
    assert len(re.findall(r"\(\d+, \d+\)", msg.split("missing")[1])) == 2  # two examples
    # the pooled list's message shows five dims of each side
    result = copy.deepcopy(run[0])
    result["pooled"]["dims"] = []
    (msg,) = [f for f in honest_run_failures(result, stats) if "pooled systematic dims" in f]
    assert msg.startswith("the pooled systematic dims [] disagree")
    assert len(msg.split("hit lists ")[1].strip("[]").split(",")) == 5
    # a pooled dim that no sequence has as a pair: its count 0 agrees with no pairs
    result = copy.deepcopy(run[0])
    dim = result["pooled"]["dims"][0]
    pairs = result["seed_compatible"]["pairs"]
    result["seed_compatible"]["pairs"] = [p for p in pairs if p["dim"] != dim["dim"]]
    dim["num_sequences_systematic"] = 0
    fails = honest_run_failures(result, stats)
    assert not any("sequence count disagrees" in f for f in fails), fails
