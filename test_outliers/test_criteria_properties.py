"""Hypothesis property tests of the criteria (harness.engine.criteria) on statistics built from
activation arrays by an independent numpy construction."""

import numpy as np
import pytest
import torch
from factories import random_ids, random_model
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from oracle import stats_from_activations

from harness.engine.criteria import Criteria, evaluate
from harness.pipeline import analyze

# activation values that sit on and around the thresholds that matter
VALUES = st.sampled_from([0.0, 1.0, -2.5, 3.0, -4.0, 5.0, 5.999, 6.0, -6.0, 7.5, -10.0, 20.0, 55.0])
FRACS = st.sampled_from([0.0, 0.06, 0.1, 0.25, 1 / 3, 0.5, 0.75, 1.0])
MAGS = st.sampled_from([3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 50.0])


def acts_strategy():
    return st.tuples(
        st.integers(1, 5), st.integers(1, 4), st.integers(1, 12), st.integers(1, 5)
    ).flatmap(lambda shape: arrays(np.float64, shape, elements=VALUES))


def pair_set(fig):
    return {(p["seq"], p["dim"]) for p in fig["seed_compatible"]["pairs"]}


def dim_set(fig):
    return {d["dim"] for d in fig["pooled"]["dims"]}


@settings(max_examples=150, deadline=None)
@given(acts_strategy(), MAGS, MAGS, FRACS, FRACS, FRACS, FRACS)
def test_raising_any_threshold_never_adds_a_dim_or_pair(acts, m1, m2, a1, a2, b1, b2):
    stats = stats_from_activations(acts)
    lo = evaluate(stats, Criteria(min(m1, m2), min(a1, a2), min(b1, b2)))
    hi = evaluate(stats, Criteria(max(m1, m2), max(a1, a2), max(b1, b2)))
    assert pair_set(hi) <= pair_set(lo)
    assert dim_set(hi) <= dim_set(lo)


@pytest.mark.parametrize("S,T", [(4, 50), (8, 100), (12, 50)])
def test_boundaries_are_inclusive(S, T):
    # exactly 6.0, at exactly 25% of the sites and exactly 6% of the positions: systematic
    k_sites, k_pos = S // 4, (6 * T) // 100
    acts = np.zeros((S, 1, T, 2))
    acts[:k_sites, 0, :k_pos, 0] = 6.0
    acts[:k_sites, 0, : k_pos - 1, 1] = -6.0  # one position short
    stats = stats_from_activations(acts)
    fig = evaluate(stats, Criteria(6.0, 0.25, 0.06))
    assert pair_set(fig) == {(0, 0)}
    assert dim_set(fig) == {0}
    assert fig["seed_compatible"]["pairs"][0]["layer_pct"] == 25.0
    assert fig["seed_compatible"]["pairs"][0]["seq_pct"] == 6.0
    # one site short fails the layer criterion
    acts[0, 0, :, 0] = 0.0
    assert pair_set(evaluate(stats_from_activations(acts), Criteria(6.0, 0.25, 0.06))) == set()
    # just below the magnitude fails
    acts = np.zeros((S, 1, T, 1))
    acts[:k_sites, 0, :k_pos, 0] = np.nextafter(6.0, 0)
    assert pair_set(evaluate(stats_from_activations(acts), Criteria(6.0, 0.25, 0.06))) == set()


@settings(max_examples=100, deadline=None)
@given(acts_strategy(), MAGS, FRACS, FRACS, st.randoms(use_true_random=False))
def test_invariant_to_permuting_sequences(acts, m, a, b, rnd):
    perm = list(range(acts.shape[1]))
    rnd.shuffle(perm)
    c = Criteria(m, a, b)
    base = evaluate(stats_from_activations(acts), c)
    moved = evaluate(stats_from_activations(acts[:, perm]), c)
    inverse = {new: old for new, old in enumerate(perm)}
    assert {(inverse[n], d) for n, d in pair_set(moved)} == pair_set(base)
    assert moved["pooled"] == base["pooled"]
    for key in ("num_outliers", "mean_layer_pct", "mean_seq_pct", "median_layer_pct"):
        assert moved["seed_compatible"][key] == pytest.approx(base["seed_compatible"][key])


@settings(max_examples=100, deadline=None)
@given(acts_strategy(), MAGS, FRACS, FRACS, st.randoms(use_true_random=False))
def test_results_independent_of_site_order(acts, m, a, b, rnd):
    perm = list(range(acts.shape[0]))
    rnd.shuffle(perm)
    c = Criteria(m, a, b)
    base = evaluate(stats_from_activations(acts), c)
    moved = evaluate(stats_from_activations(acts[perm]), c)
    assert moved["seed_compatible"] == base["seed_compatible"]
    assert moved["pooled"] == base["pooled"]
    assert sorted(s["num_over_magnitude"] for s in moved["per_site"]) == sorted(
        s["num_over_magnitude"] for s in base["per_site"]
    )


@settings(max_examples=100, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 5), st.integers(1, 10), st.integers(1, 4)),
        elements=VALUES,
    ),
    st.integers(1, 5),
    MAGS,
    FRACS,
    FRACS,
)
def test_systematic_in_every_sequence_with_same_positions_is_pooled(one_seq, n, m, a, b):
    # the same activations repeated for every sequence
    acts = np.repeat(one_seq[:, None], n, axis=1)
    fig = evaluate(stats_from_activations(acts), Criteria(m, a, b))
    per_seq = {}
    for s, d in pair_set(fig):
        per_seq.setdefault(d, set()).add(s)
    every = {d for d, seqs in per_seq.items() if len(seqs) == n}
    assert every <= dim_set(fig)
    # and with identical sequences the two views agree exactly
    assert every == dim_set(fig)


@settings(max_examples=60, deadline=None)
@given(acts_strategy(), MAGS, FRACS, FRACS)
def test_counts_stay_within_their_denominators(acts, m, a, b):
    fig = evaluate(stats_from_activations(acts), Criteria(m, a, b))
    for p in fig["seed_compatible"]["pairs"]:
        assert 100 * a - 1e-9 <= p["layer_pct"] <= 100
        assert 100 * b - 1e-9 <= p["seq_pct"] <= 100
        assert p["max_magnitude"] >= m
    assert 0 <= fig["pooled"]["positions_affected_pct"] <= 100
    assert 0 <= fig["pooled"]["sites_affected_pct"] <= 100


@settings(max_examples=80, deadline=None)
@given(acts_strategy(), MAGS, st.sets(st.integers(0, 4), min_size=1))
def test_positions_affected_counts_the_positions_the_activations_reach(acts, m, dims):
    """The count from the hits against the activations themselves: positions where some site's
    |x| >= m in one of ``dims``."""
    import harness.engine.criteria as C

    stats = stats_from_activations(acts)
    dims = np.array(sorted(d for d in dims if d < acts.shape[3]), dtype=np.int64)
    want = int((np.abs(acts[..., dims]) >= m).any(axis=(0, 3)).sum()) if len(dims) else 0
    assert C.positions_affected(stats, dims, m) == want


def test_invariant_to_batch_size():
    # a dense model whose forward pass is batch-invariant on the CPU (checked here too)
    model = random_model("qwen3", torch.float32, seed=11)
    ids = random_ids(6, 16, seed=12)
    figs = []
    for bs in (1, 2, 4, 6):
        r = analyze(model, ids, batch_size=bs, magnitude=4.0)
        figs.append(r.to_dict())
        assert r.timing["batches"] == -(-6 // bs)
    for f in figs[1:]:
        assert f["seed_compatible"] == figs[0]["seed_compatible"]
        assert f["pooled"] == figs[0]["pooled"]
        assert f["per_site"] == figs[0]["per_site"]


def test_stats_builder_agrees_with_engine():
    # the numpy construction above and the engine build the same statistics
    from oracle import collect_activations

    model = random_model("gpt2", torch.float32, seed=13)
    ids = random_ids(3, 12, seed=14)
    r = analyze(model, ids, batch_size=3)
    _, acts = collect_activations(model, ids, "ln", batch_size=3)
    ref = stats_from_activations(acts, grid=r.stats.grid)  # fp32: + the as-original level
    for field in (
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
        assert np.array_equal(getattr(r.stats, field), getattr(ref, field)), field


def _need(frac: str, den: int) -> int:
    """The smallest count c with c / den >= frac, in integers (the definition's inclusive >=)."""
    from fractions import Fraction

    f = Fraction(frac)
    return -(-f.numerator * den // f.denominator)


@pytest.mark.parametrize("S,T", [(4, 50), (5, 17), (9, 51), (6, 40), (8, 33)])
def test_every_denominator_at_exactly_passing_and_exactly_failing_counts(S, T):
    """Three sequences, so the per-sequence (T positions), pooled (N x T positions) and site (S)
    denominators differ; each dim sits exactly at, or one short of, one boundary. The sizes make
    a denominator off by one change the needed count: 25% of 4 and 6% of 50 and 150 are whole
    (den + 1 needs one more); 25% of 5 - 1, 6% of 51 - 1 and of 3 x 17 - 1 are whole (den - 1
    needs one fewer); 6% of 40 and 33 are not whole at all."""
    N = 3
    ks, kt, kp = _need("1/4", S), _need("3/50", T), _need("3/50", N * T)
    assert kp > kt  # one sequence's worth of positions is not enough pooled
    acts = np.zeros((S, N, T, 6))
    acts[:ks, 0, :kt, 0] = 6.0  # seq 0: exactly kt positions at exactly ks sites: a pair
    acts[:ks, 0, : kt - 1, 1] = 6.0  # one position short in its sequence: no pair
    acts[: ks - 1, 0, :kt, 2] = 6.0  # one site short: no pair
    # pooled: exactly kp positions over the corpus, never kt in one sequence
    per_seq = [kp // N + (i < kp % N) for i in range(N)]
    for n, k in enumerate(per_seq):
        acts[:ks, n, :k, 3] = 6.0
        acts[:ks, n, : k - (n == 0), 4] = 6.0  # one pooled position short
        acts[: ks - 1, n, :k, 5] = 6.0  # one site short, pooled
        acts[:ks, n, k, 3] = 5.99  # just under: neither counted nor a position affected
    fig = evaluate(stats_from_activations(acts), Criteria(6.0, 0.25, 0.06))
    pairs = pair_set(fig)
    assert (0, 0) in pairs and not pairs & {(0, 1), (0, 2)}
    assert {p[1] for p in pairs} & {1, 2, 5} == set()
    pooled = dim_set(fig)
    assert 3 in pooled and not pooled & {1, 2, 4, 5}
    assert 0 not in pooled  # kt positions of one sequence are < 6% of N x T
    # positions affected: the kp positions where the one pooled dim (exactly 6.0) reaches 6
    assert fig["pooled"]["positions_affected_pct"] == 100.0 * kp / (N * T)
    assert fig["pooled"]["sites_affected_pct"] == 100.0 * ks / S


def test_a_corpus_of_one_value_over_the_magnitude():
    """One site, one position, one dim at exactly 6: a pair, a pooled dim, one position."""
    acts = np.zeros((1, 1, 1, 2))
    acts[0, 0, 0, 1] = 6.0
    fig = evaluate(stats_from_activations(acts), Criteria(6.0, 0.25, 0.06))
    assert pair_set(fig) == {(0, 1)} and dim_set(fig) == {1}
    assert fig["pooled"]["positions_affected_pct"] == 100.0
