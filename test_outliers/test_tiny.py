"""harness.loading.tiny_builder: every tiny replica builds, loads through from_pretrained and runs on the CPU;
builds are idempotent and atomic; the planted models hold exactly what they claim, checked by
brute force (every norm output kept, independent hooks from test_outliers/oracle.py)."""

import json
import os
import warnings

import numpy as np
import pytest
import torch
from oracle import collect_activations, oracle_figures

from harness.data.windows import DataSpec, load_windows
from harness.errors import HarnessError
from harness.loading import tiny_builder as tiny

pytestmark = pytest.mark.tiny

# id -> (model class, model_type, layers)
EXPECTED = {
    "tiny_qwen3": ("Qwen3ForCausalLM", "qwen3", 4),
    "tiny_qwen3_moe": ("Qwen3MoeForCausalLM", "qwen3_moe", 4),
    "tiny_qwen3_next": ("Qwen3NextForCausalLM", "qwen3_next", 4),
    "tiny_olmoe": ("OlmoeForCausalLM", "olmoe", 4),
    "tiny_mixtral": ("MixtralForCausalLM", "mixtral", 4),
    "tiny_glm4_moe": ("Glm4MoeForCausalLM", "glm4_moe", 4),
    "tiny_gpt_oss": ("GptOssForCausalLM", "gpt_oss", 4),
    "tiny_opt": ("OPTForCausalLM", "opt", 4),
    "tiny_gpt2": ("GPT2LMHeadModel", "gpt2", 4),
    "tiny_pythia": ("GPTNeoXForCausalLM", "gpt_neox", 4),
    "tiny_llama": ("LlamaForCausalLM", "llama", 4),
    "planted_qwen3": ("Qwen3ForCausalLM", "qwen3", 4),
    "planted_olmoe": ("OlmoeForCausalLM", "olmoe", 4),
}
PLANTED = [k for k, v in tiny.TINY_SPECS.items() if v.plant is not None]


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(path)
    return model.eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def built(tiny_cache):
    return {mid: tiny.build_tiny(mid, tiny_cache) for mid in tiny.TINY_SPECS}


def test_the_registry_lists_every_replica():
    from harness import models

    assert [e.id for e in models.select("tiny") if e.is_tiny] == list(EXPECTED)


@pytest.mark.parametrize("model_id", list(EXPECTED))
def test_tiny_model_loads_and_runs_on_cpu(built, tiny_tokenizer, model_id):
    from harness.engine.sites import find_sites

    cls, model_type, layers = EXPECTED[model_id]
    model, tok = _load(built[model_id])
    cfg = model.config
    assert type(model).__name__ == cls and cfg.model_type == model_type
    assert cfg.vocab_size == len(tok) == len(tiny_tokenizer) == tiny.VOCAB_SIZE
    assert tok.get_vocab() == tiny_tokenizer.get_vocab()
    assert (tok.bos_token_id, tok.eos_token_id) == (cfg.bos_token_id, cfg.eos_token_id)
    positions = getattr(cfg, "max_position_embeddings", None) or cfg.n_positions
    assert positions >= 512
    assert getattr(cfg, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.device.type == "cpu" for p in model.parameters())
    sitemap = find_sites(model, "ln")
    assert sitemap.num_layers == layers and len(sitemap.sites) == 2 * layers
    ids = load_windows(tok, DataSpec(dataset="builtin", num_seqs=2, seq_len=64)).ids
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits
    assert logits.shape == (2, 64, tiny.VOCAB_SIZE) and torch.isfinite(logits).all()


def test_layer_patterns_follow_the_real_models(built):
    next_model, _ = _load(built["tiny_qwen3_next"])
    kinds = [
        "linear_attn" if hasattr(layer, "linear_attn") else "self_attn"
        for layer in next_model.model.layers
    ]
    assert kinds == ["linear_attn"] * 3 + ["self_attn"]  # 3 linear-attention : 1 full
    glm, _ = _load(built["tiny_glm4_moe"])
    moe = [hasattr(layer.mlp, "gate") for layer in glm.model.layers]
    assert moe == [False, True, True, True]  # first_k_dense_replace = 1
    oss, _ = _load(built["tiny_gpt_oss"])
    assert oss.config.layer_types == ["sliding_attention", "full_attention"] * 2
    for model_id in ("tiny_qwen3_moe", "tiny_olmoe", "tiny_mixtral", "tiny_gpt_oss"):
        model, _ = _load(built[model_id])
        experts = model.model.layers[0].mlp.experts
        assert any(p.dim() == 3 for p in experts.parameters())  # fused 3-D expert weights
    opt, _ = _load(built["tiny_opt"])
    assert opt.config.do_layer_norm_before is True


def test_building_twice_is_a_no_op(built, tiny_cache):
    path = built["tiny_qwen3"]
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    fingerprint = json.loads((path / tiny.MANIFEST).read_text())["fingerprint"]
    assert tiny.build_tiny("tiny_qwen3", tiny_cache) == path
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before
    assert json.loads((path / tiny.MANIFEST).read_text())["fingerprint"] == fingerprint


def test_builds_are_deterministic_and_rebuilt_when_the_recipe_changes(built, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    path = tiny.build_tiny("tiny_olmoe", tmp_path)
    a, b = (
        load_file(path / "model.safetensors"),
        load_file(built["tiny_olmoe"] / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (path / "tokenizer.json").read_text() == (
        built["tiny_olmoe"] / "tokenizer.json"
    ).read_text()
    old = json.loads((path / tiny.MANIFEST).read_text())["fingerprint"]
    monkeypatch.setattr(tiny, "RECIPE_VERSION", tiny.RECIPE_VERSION + 1)
    assert tiny.build_tiny("tiny_olmoe", tmp_path) == path
    assert json.loads((path / tiny.MANIFEST).read_text())["fingerprint"] != old
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "_tokenizer",
        "tiny_olmoe",
    ]  # no leftovers


def test_an_interrupted_build_leaves_no_half_model(tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        tiny.build_tiny("tiny_llama", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_tokenizer"]


def test_unknown_tiny_id_is_one_sentence():
    with pytest.raises(HarnessError, match="unknown tiny model 'tiny_bert'; choose one of"):
        tiny.build_tiny("tiny_bert")
    with pytest.raises(HarnessError, match="has nothing planted"):
        tiny.planted_truth("tiny_qwen3")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OUTLIERS_TINY_CACHE", str(tmp_path))
    assert tiny.tiny_cache_dir() == tmp_path
    monkeypatch.delenv("OUTLIERS_TINY_CACHE")
    assert str(tiny.tiny_cache_dir()).endswith(os.path.join(".cache", "outlier-harness", "tiny"))


# -- planted models, by brute force -------------------------------------------------------------
@pytest.fixture(scope="module")
def planted_windows(tiny_tokenizer):
    return load_windows(tiny_tokenizer, DataSpec(dataset="builtin", num_seqs=4, seq_len=512)).ids


def _expected_mask(truth, ids, sites):
    """Written here from the truth's plain fields, not with harness.loading.tiny_builder.planted_masks."""
    L, H = truth["num_layers"], truth["hidden_size"]
    kinds = {"ln": ["attn_in", "mlp_in"], "residual": ["resid_out"]}[sites]
    names = [f"layers.{i}.{k}" for i in range(L) for k in kinds]
    mask = np.zeros((len(names), *ids.shape, H), dtype=bool)
    for d, info in truth["dims"].items():
        hit = np.isin(ids, info["trigger_ids"])
        for s, name in enumerate(names):
            if name in info["sites"] or name.endswith("resid_out"):
                mask[s, :, :, d] = hit
    return names, mask


@pytest.mark.parametrize("model_id", PLANTED)
def test_planted_dims_alone_reach_six_at_their_sites_and_triggers(built, model_id, planted_windows):
    truth = tiny.planted_truth(model_id, built[model_id].parent)
    model, tok = _load(built[model_id])
    ids = planted_windows
    triggers = [i for info in truth["dims"].values() for i in info["trigger_ids"]]
    assert len(triggers) == len(set(triggers))  # disjoint trigger sets
    for info in truth["dims"].values():
        assert [tok.decode([i]) for i in info["trigger_ids"]] == info["trigger_tokens"]
    names, acts = collect_activations(model, ids, "ln")
    want_names, want = _expected_mask(truth, ids.numpy(), "ln")
    assert names == want_names == truth["site_names"]
    a = np.abs(acts)
    np.testing.assert_array_equal(a >= 6.0, want)
    assert want.sum() > 0 and a[want].min() >= 7.0 and a[~want].max() <= 4.5
    # the residual stream: planted dims are the massive 1000 at every layer, at trigger positions
    names, resid = collect_activations(model, ids, "residual")
    _, want_resid = _expected_mask(truth, ids.numpy(), "residual")
    r = np.abs(resid)
    np.testing.assert_array_equal(r >= 6.0, want_resid)
    np.testing.assert_allclose(r[want_resid], truth["amplitude"], rtol=1e-6)
    assert r[~want_resid].max() < truth["residual_bound"]


@pytest.mark.parametrize("model_id", PLANTED)
def test_planted_expectations_equal_the_oracle_and_the_engine(built, model_id, planted_windows):
    from harness.pipeline import analyze

    truth = tiny.planted_truth(model_id, built[model_id].parent)
    model, _ = _load(built[model_id])
    ids = planted_windows[:3, :256]
    expected = tiny.planted_expectations(truth, ids.numpy())
    _, acts = collect_activations(model, ids, "ln")
    oracle = oracle_figures(acts, 6.0, 0.25, 0.06)
    assert {k: (v["layer_pct"], v["seq_pct"]) for k, v in oracle["pairs"].items()} == {
        k: (v["layer_pct"], v["seq_pct"]) for k, v in expected["pairs"].items()
    }
    assert set(oracle["dims"]) == set(expected["dims"])
    result = analyze(model, ids)
    pairs = {
        (p["seq"], p["dim"]): (p["layer_pct"], p["seq_pct"])
        for p in result.seed_compatible["pairs"]
    }
    assert pairs == {k: (v["layer_pct"], v["seq_pct"]) for k, v in expected["pairs"].items()}
    assert [d["dim"] for d in result.pooled["dims"]] == sorted(expected["dims"])


def test_planted_truth_is_what_the_docs_say(tiny_cache):
    q = tiny.planted_truth("planted_qwen3", tiny_cache)
    assert sorted(q["dims"]) == [7, 23, 41]
    assert [len(q["dims"][d]["sites"]) for d in (7, 23, 41)] == [5, 2, 1]  # 62.5%, 25%, 12.5%
    o = tiny.planted_truth("planted_olmoe", tiny_cache)
    assert sorted(o["dims"]) == [11, 50]
    assert [len(o["dims"][d]["sites"]) for d in (11, 50)] == [8, 3]
    assert q["bound_elsewhere"] == o["bound_elsewhere"] == 4.0
    with pytest.raises(ValueError, match="4 < magnitude <= 7.992"):
        tiny.planted_masks(q, np.zeros((1, 4), dtype=np.int64), "ln", 8.0)


def test_unwritable_cache_is_one_sentence(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(HarnessError, match="set OUTLIERS_TINY_CACHE to a writable folder"):
        tiny.build_tiny("tiny_gpt2", blocker / "cache")
