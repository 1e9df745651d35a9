"""The honest-run checks catch a wrong result: they recompute the outlier sets from other
arrays of the statistics, so a bug in the criteria or in the capture's counts is reported."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from factories import random_ids, random_model

from harness import analyze
from harness.checks import honest_run_failures


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
    from harness.outliers import Criteria, seed_compatible

    result, stats = copy.deepcopy(run[0]), copy.deepcopy(run[1])
    stats.seq_site_count[:, 0, :] = 0
    result["seed_compatible"] = seed_compatible(stats, Criteria(6.0, 0.25, 0.06))
    assert result["seed_compatible"]["num_outliers"] < run[0]["seed_compatible"]["num_outliers"]
    fails = honest_run_failures(result, stats)
    assert any("disagree with the per-site levels" in f for f in fails), fails
    assert np.any(stats.site_seq_level[:, 0, :] > 0)
