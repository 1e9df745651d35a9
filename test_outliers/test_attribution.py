"""Attribution (issue 7): planted outliers are attributed to the right tokens, positions, layers
and experts; everything is recomputable from the statistics alone.

The planted model: random weights with small norm gains (no value reaches 6 by chance), the
embedding of token TOK carries PLANT on dim D, every other token -C on D, and forward hooks zero
dim D in the outputs of every token mixer and MLP, so the residual stream holds exactly
PLANT at TOK positions and -C elsewhere on D. With gain 1 on D, the norm outputs reach
~sqrt(H) = 8 >= 6 on D exactly at TOK positions (at every site), and stay ~1 elsewhere.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json

import numpy as np
import pytest
import torch
from factories import random_ids, random_model, site_norm
from scipy.stats import binomtest

from harness.attribution.expert_figures import _enrichment
from harness.attribution.observer import (
    ROUTER_OUTPUTS,
    attribution_observers,
    attribution_section,
    token_attribution,
)
from harness.attribution.tokens import position_buckets
from harness.engine.criteria import Criteria
from harness.engine.sites import find_sites
from harness.engine.statistics import CapturedStats
from harness.fileio import dumps
from harness.pipeline import analyze
from harness.reports.attribution import attribution_tables, decode_tables, plot_expert_enrichment

MOE_ARCHS = ("olmoe", "mixtral", "qwen3_moe", "qwen3_next", "glm4_moe", "gpt_oss")
D, TOK, PLANT, C = 5, 7, 100.0, 0.04
BOS, BOS_DIM, BOS_VALUE = 1, 9, 500.0
EXPERT = 2
N, T = 6, 32


def _set_gain(norm: torch.nn.Module, gains: torch.Tensor) -> None:
    """Set a norm's effective gain (RMSNorm: weight; Qwen3-Next: 1 + weight)."""
    with torch.no_grad():
        norm.weight.copy_(gains)
        probe = norm(torch.ones(1, 1, gains.numel(), dtype=norm.weight.dtype))
        if not torch.allclose(probe.reshape(-1).float(), gains.float(), atol=1e-4):
            norm.weight.copy_(gains - 1.0)


def planted_model(arch: str, *, route: bool = False, bos_massive: bool = False):
    model = random_model(arch, seed=11, gain=0.5)
    sm = find_sites(model, "ln")
    H = sm.hidden_size
    gains = torch.full((H,), 0.5)
    gains[D] = 1.0
    for site in sm.sites:
        _set_gain(site_norm(model, sm, site), gains)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[:, D] = -C
        emb[TOK, D] = PLANT
        if bos_massive:
            emb[BOS, BOS_DIM] = BOS_VALUE
        if route:
            for r in sm.routers:
                r.module.weight[EXPERT, D] = 100.0
    layers = find_sites(model, "residual").sites

    def zero_dims(_m, _a, out):
        t = out[0] if isinstance(out, (tuple, list)) else out
        t[..., D] = 0
        if bos_massive:
            t[..., BOS_DIM] = 0

    for site in layers:
        for name in ("self_attn", "linear_attn", "mlp"):
            if (sub := getattr(site.module, name, None)) is not None:
                sub.register_forward_hook(zero_dims)
    return model, sm


def planted_ids(seed: int = 0) -> torch.Tensor:
    ids = random_ids(N, T, seed=seed)
    ids[(ids == TOK) | (ids == BOS)] = 8
    ids[:, 0] = BOS
    ids[0, 1] = TOK
    ids[1, 0] = TOK  # one window starts with the planted token
    ids[:, 3] = TOK
    ids[:, 10] = TOK
    ids[2:, 17] = TOK
    ids[::2, 31] = TOK
    return ids


def _forward(model, ids, hooks):
    """The decoder stack over ``ids`` in batches of 4 (as ``run``), then the hooks removed."""
    try:
        with torch.no_grad():
            for b0 in range(0, N, 4):
                model.model(input_ids=ids[b0 : b0 + 4], use_cache=False)
    finally:
        for h in hooks:
            h.remove()


def run(model, ids, **kw):
    result = analyze(model, ids, batch_size=4, observers=attribution_observers(model, **kw))
    return result, result.to_dict()["attribution"]


@pytest.fixture(scope="module")
def dense():
    model, _ = planted_model("qwen3", bos_massive=True)
    ids = planted_ids()
    result, section = run(model, ids, bos_token_id=BOS)
    return model, ids, result, section


# -- tokens and positions ------------------------------------------------------------------
def test_planted_dim_is_attributed_to_its_token_with_exact_counts(dense):
    _, ids, result, section = dense
    tok = section["tokens"]
    assert [r["dim"] for r in tok["dims"]] == [D], "only the planted dim may be systematic"
    row = tok["dims"][0]
    flat = ids.numpy().reshape(-1)
    where = np.flatnonzero(flat == TOK)
    t = where % T
    assert row["hits"] == len(where)
    assert row["position0"]["hits"] == int((t == 0).sum()) == 1
    assert row["position0"]["rate"] == 1 / N
    assert row["bos"] == {"hits": 0, "occurrences": N - 1, "share_of_hits": 0.0, "rate": 0.0}
    want_buckets = [int(((t >= lo) & (t <= hi)).sum()) for lo, hi in position_buckets(T)]
    assert row["bucket_hits"] == want_buckets
    assert tok["buckets"] == [[0, 0], [1, 1], [2, 3], [4, 7], [8, 15], [16, 31]]
    top = row["top_tokens_by_count"]
    assert top == [{"id": TOK, "hits": len(where), "occurrences": len(where), "rate": 1.0}]
    assert row["top_tokens_by_rate"] == top  # TOK occurs >= 10 times
    assert tok["any"]["hits"] == len(where)


def test_section_is_recomputed_from_stats_npz_alone(dense, tmp_path):
    _, _, result, section = dense
    path = tmp_path / "stats.npz"
    path.write_bytes(result.stats.to_npz_bytes())
    stats = CapturedStats.load(path)
    assert "attr_massive_median_key" in stats.extra and "attr_moe_counts" not in stats.extra
    crit = Criteria(6.0, 0.25, 0.06)
    again = attribution_section(stats, crit)
    assert dumps(again) == dumps(section)
    # re-threshold offline: at magnitude 100 nothing is systematic
    assert token_attribution(stats, Criteria(100.0, 0.25, 0.06))["dims"] == []


def test_rate_ranking_needs_min_occurrences():
    stats = _fake_stats(tokens=np.array([[3, 4, 4, 4, 5, 5]]), hit_positions=[0, 1, 4], dim=0)
    got = token_attribution(stats, Criteria(6.0, 0.0, 0.0), min_occurrences=2)
    row = got["dims"][0]
    # token 3 occurs once (rate 1 but a singleton), token 5 twice (rate 0.5), token 4 thrice
    assert [e["id"] for e in row["top_tokens_by_rate"]] == [5, 4]
    assert [e["id"] for e in row["top_tokens_by_count"]] == [3, 4, 5]


def _fake_stats(tokens, hit_positions, dim):
    n, t = tokens.shape
    grid = np.array([6.0])
    H = 2
    NT = n * t
    indptr = np.zeros(NT + 1, np.int64)
    counts = np.bincount(np.asarray(hit_positions), minlength=NT)
    indptr[1:] = np.cumsum(counts)
    site_max = np.zeros((1, H), np.float32)
    site_max[0, dim] = 7.0
    pos_count = np.zeros((1, n, H), np.int32)
    pos_count[0, 0, dim] = len(hit_positions)
    return CapturedStats(
        grid=grid,
        site_names=["layers.0.attn_in"],
        num_seqs=n,
        seq_len=t,
        hidden_size=H,
        site_max=site_max,
        site_counts=np.zeros((1, 1), np.int64),
        seq_max=np.zeros((n, H), np.float32),
        seq_site_count=np.ones((1, n, H), np.int32),
        site_seq_level=np.zeros((1, n, H), np.uint8),
        seq_pos_count=pos_count,
        seq_occ=np.zeros((1, n, H), np.int64),
        hits_indptr=indptr,
        hits_dim=np.full(len(hit_positions), dim, np.uint16),
        hits_level=np.ones(len(hit_positions), np.uint8),
        token_ids=tokens.astype(np.int32),
    )


# -- massive activations -------------------------------------------------------------------
def test_planted_massive_activation_at_position0_is_found_with_its_value(dense):
    model, ids, result, section = dense
    outs = []
    layers = [s.module for s in find_sites(model, "residual").sites]
    hooks = [
        m.register_forward_hook(lambda _m, _a, o, i=i: outs.append((i, o.clone())))
        for i, m in enumerate(layers)
    ]
    _forward(model, ids, hooks)
    ma = section["massive"]
    assert ma["layers_with_massive"] == list(range(len(layers)))
    assert [d["dim"] for d in ma["dims"]] == [BOS_DIM]
    assert ma["dims"][0]["systematic"] is False  # the BOS dim is not Dettmers-systematic
    assert ma["massive_position_tokens"][0]["id"] == BOS
    for i in range(len(layers)):
        acts = torch.cat([o for j, o in outs if j == i]).numpy()  # [N, T, H], plain hook
        row = ma["layers"][i]
        top = row["top"][0]
        assert (top["dim"], top["pos"], top["token_id"], top["massive"]) == (BOS_DIM, 0, BOS, True)
        assert top["value"] == pytest.approx(float(acts[top["seq"], 0, BOS_DIM]), rel=1e-6)
        assert top["value"] == pytest.approx(BOS_VALUE, rel=1e-3)
        # exact top-8 values by |x|
        want = np.sort(np.abs(acts).reshape(-1))[::-1][:8]
        assert np.allclose(
            sorted((abs(t["value"]) for t in row["top"]), reverse=True), want, rtol=1e-6
        )
        # every BOS position is listed as massive, with its value
        assert sorted((p["seq"], p["pos"]) for p in row["massive_positions"]) == [
            (n, 0) for n in range(N) if ids[n, 0] == BOS
        ]
        assert row["massive_dims"][0]["max_abs"] == pytest.approx(
            float(np.abs(acts[..., BOS_DIM]).max()), rel=1e-6
        )
        # the median's bounds (fp32: one bf16 bin) hold the exact lower median of all |x|
        lower_median = np.sort(np.abs(acts).reshape(-1))[(acts.size + 1) // 2 - 1]
        lo, hi = row["median_abs_bounds"]
        assert lo <= lower_median < hi and hi / lo <= 1 + 2**-7
        assert row["median_values"] == acts.size


# -- experts -------------------------------------------------------------------------------
def _router_counts(model, sm, ids):
    """Selections per MoE layer and expert, by a plain hook on the routers (fresh code)."""
    got = {}

    def hook(layer):
        def fn(_m, _a, out):
            idx = out[2].reshape(-1, out[2].shape[-1])
            got.setdefault(layer, []).append(idx)

        return fn

    hooks = [r.module.register_forward_hook(hook(r.layer)) for r in sm.routers]
    shared = {}
    hooks += [
        m.register_forward_hook(
            lambda _m, _a, o, i=i: shared.__setitem__(
                i, max(shared.get(i, 0.0), float(o.abs().max()))
            )
        )
        for i, m in sm.shared_experts.items()
    ]
    _forward(model, ids, hooks)
    return {k: torch.cat(v) for k, v in got.items()}, shared


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_routed_expert_is_top_enriched_at_every_moe_layer(arch):
    model, sm = planted_model(arch, route=True)
    ids = planted_ids(seed=1)
    result, section = run(model, ids)
    ex = section["experts"]
    planted = int((ids == TOK).sum())
    moe_layers = [r.layer for r in sm.routers]
    if arch == "glm4_moe":
        assert moe_layers == [1, 2]  # first_k_dense_replace = 1: the dense layer 0 is skipped
    assert [row["layer"] for row in ex["layers"]] == moe_layers
    assert ex["systematic_dims"] == [D]
    idx, shared = _router_counts(model, sm, ids)
    is_tok = (ids == TOK).reshape(-1)
    for row in ex["layers"]:
        sel = idx[row["layer"]]
        want = np.bincount(sel.reshape(-1).numpy(), minlength=4)
        assert row["selections"] == want.tolist()
        assert row["outlier_positions"] == planted
        want_at = np.bincount(sel[is_tok].reshape(-1).numpy(), minlength=4)
        assert row["selections_at_outliers"] == want_at.tolist()
        assert row["selections_at_outliers"][EXPERT] == planted == row["selections"][EXPERT]
        enr = row["enrichment"]
        assert max(range(4), key=lambda e: enr[e]) == EXPERT
        assert enr[EXPERT] == pytest.approx(N * T / planted, rel=1e-3)
        assert row["top"][0]["expert"] == EXPERT
        if row["layer"] in shared:
            assert row["shared_expert_max_abs"] == pytest.approx(shared[row["layer"]], rel=1e-5)
    tops = ex["top_outlier_experts"]
    assert {t["expert"] for t in tops[: len(moe_layers)]} == {EXPERT}
    assert {t["layer"] for t in tops[: len(moe_layers)]} == set(moe_layers)
    assert ex["per_expert_output"]["exposed"] is False
    assert ex["per_expert_output"]["note"].startswith("not exposed by ")
    assert (ex["shared_expert"] is not None) == (arch in ("qwen3_next", "glm4_moe"))
    assert ex["router"]["indices"] == ROUTER_OUTPUTS[sm.architecture].indices
    dumps(section)


def test_binomial_pvalue_equals_scipy_binomtest():
    counts = np.array([[30, 50, 0, 40]])
    at = np.array([[12, 3, 0, 5]])
    n_out = np.array([15])
    ratio, p = _enrichment(counts, at, n_out, 120)
    for e in (0, 1, 3):
        want = binomtest(int(at[0, e]), 15, counts[0, e] / 120, alternative="greater").pvalue
        assert p[0, e] == pytest.approx(want, rel=1e-9)
        assert ratio[0, e] == pytest.approx((at[0, e] / 15) / (counts[0, e] / 120))
    assert np.isnan(ratio[0, 2]) and np.isnan(p[0, 2])


def test_retried_batch_after_out_of_memory_gives_the_same_result():
    model, sm = planted_model("olmoe", route=True)
    ids = planted_ids(seed=2)
    _, want = run(model, ids)
    state = {"calls": 0}

    def boom(_m, _a, _o):  # the first batch, with the site self-check riding it
        state["calls"] += 1
        if state["calls"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    h = find_sites(model, "residual").sites[-1].module.register_forward_hook(boom)
    try:
        result, got = run(model, ids)
    finally:
        h.remove()
    assert result.timing["oom_retries"] == 1
    assert result.criteria["site_self_check"]["passed"]
    assert dumps(got) == dumps(want)


def test_expert_counts_recompute_offline_and_refuse_below_capture_magnitude():
    model, _ = planted_model("mixtral", route=True)
    ids = planted_ids(seed=3)
    result, section = run(model, ids)
    stats = result.stats
    again = attribution_section(stats, Criteria(6.0, 0.25, 0.06))
    assert again["experts"] == json.loads(json.dumps(section["experts"]))
    low = attribution_section(stats, Criteria(4.0, 0.25, 0.06))["experts"]
    assert "unavailable" in low and "captured at magnitude 6" in low["unavailable"]
    high = attribution_section(stats, Criteria(100.0, 0.25, 0.06))["experts"]
    assert all(row["outlier_positions"] == 0 for row in high["layers"])


# -- display -------------------------------------------------------------------------------
class _Tok:
    def decode(self, ids):
        return {TOK: " planted", BOS: "<s>"}.get(ids[0], f"t{ids[0]}")


def test_tables_decode_tokens_and_plot_is_written(tmp_path, dense):
    _, _, _, section = dense
    model, _ = planted_model("qwen3_moe", route=True)
    result, moe = run(model, planted_ids(seed=4))
    result_dict = json.loads(dumps(result.to_dict()))
    tables = attribution_tables(result_dict, tokenizer=_Tok())
    assert "' planted' x" in tables["outlier_tokens"]
    assert "| 1 " in tables["outlier_experts"] or "|       1 |" in tables["outlier_experts"]
    assert "'<s>'" in attribution_tables({"attribution": section}, _Tok())["massive_activations"]
    decoded = decode_tables(section, _Tok())
    assert decoded["tokens"]["dims"][0]["top_tokens_by_count"][0]["token"] == "' planted'"
    png = plot_expert_enrichment(result_dict, tmp_path / "enrichment.png")
    assert png is not None and png.stat().st_size > 1000
    assert plot_expert_enrichment({"attribution": section}, tmp_path / "none.png") is None
    print("\n" + "\n\n".join(f"{k}:\n{v}" for k, v in tables.items()))


def test_layers_come_from_the_site_map_for_any_site_set():
    from harness.attribution.observer import Attribution

    model, _ = planted_model("llama", bos_massive=True)
    ids = planted_ids(seed=5)
    result = analyze(model, ids, sites="residual", observers=[Attribution(6.0)])
    ma = result.sections["attribution"]["massive"]
    assert [d["dim"] for d in ma["dims"]] == [BOS_DIM]
    assert ma["systematic_sites"] == ["resid_out"]
    # with the default norm sites the decoder layers come from the site map: same massive dims
    ln = analyze(model, ids, sites="ln", observers=[Attribution(6.0)])
    assert [d["dim"] for d in ln.sections["attribution"]["massive"]["dims"]] == [BOS_DIM]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_router_hits_from_the_engine_equal_the_routers_own_pass(arch, dtype, monkeypatch):
    """With the mlp_in sites captured (``ln``) the expert observer takes the engine's hits
    (``on_hits``); with ``residual`` it finds them in the router's input itself. Two separate
    computations of the same arrays, with many hits at several levels and several chunks per
    site."""
    from harness.engine.tuning import CaptureTuning

    two_seqs = CaptureTuning(chunk_elements={"cpu": 2 * T * 64})  # 2 sequences per chunk
    model = random_model(arch, dtype=dtype, seed=5, gain=6.0)
    ids = random_ids(N, T, seed=4)
    from harness.attribution.experts import ExpertRouting

    own_pass = ExpertRouting._thresholds  # only the router's own pass needs its thresholds

    def no_own_pass(*_):
        raise AssertionError("the router read its input although the engine had the hits")

    arrays = {}
    for sites in ("ln", "residual"):
        monkeypatch.setattr(
            ExpertRouting, "_thresholds", no_own_pass if sites == "ln" else own_pass
        )
        obs = attribution_observers(model, 3.0)
        analyze(
            model, ids, sites=sites, magnitude=3.0, batch_size=4, observers=obs, tuning=two_seqs
        )
        expert = next(p for p in obs[0].parts if isinstance(p, ExpertRouting))
        arrays[sites] = expert.arrays()
    a, b = arrays["ln"], arrays["residual"]
    assert len(a["attr_moe_hit_row"]) > 1000  # many hits: the comparison means something
    assert len(np.unique(a["attr_moe_hit_level"])) >= 3
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
