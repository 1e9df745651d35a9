"""The transformers zoo: every causal-LM model_type of the installed transformers, built tiny,
measured by the harness and compared site by site with an independent oracle (zoo.py).

Targets (the site-definition issue): no architecture silently wrong; >= 95% of those that build
and run supported, "unsupported" only where the oracle sees no attention or no MLP block.
"""

import pytest
import torch
import zoo
from zoo import causal_lm_types

from harness.pipeline import analyze

STUDIED = (
    "llama",
    "mistral",
    "qwen3",
    "qwen3_moe",
    "qwen3_next",
    "olmoe",
    "mixtral",
    "glm4_moe",
    "gpt_oss",
    "opt",
    "gpt2",
    "gpt_neox",
)


@pytest.fixture(scope="session")
def zoo_rows():
    return {r["model_type"]: r for r in zoo.all_rows()}


def test_no_architecture_is_silently_wrong(zoo_rows):
    wrong = {mt: r["reason"] for mt, r in zoo_rows.items() if r["verdict"] == "wrong"}
    assert wrong == {}


def test_supported_share_and_unsupported_only_without_a_block(zoo_rows):
    s = zoo.summary(list(zoo_rows.values()))
    assert s["model_types"] == len(causal_lm_types()) > 150
    assert s["built_and_ran"] >= 150
    assert s["supported_of_measurable"] >= 0.95, s
    for mt, r in zoo_rows.items():
        if r["verdict"] == "unsupported":  # assess() turns any other refusal into "wrong"
            assert r.get("oracle_attn") is False or "attention" in r["reason"], mt
            assert r["reason"].count(". ") == 0 and r["reason"].endswith("."), r["reason"]


@pytest.mark.parametrize("model_type", STUDIED)
def test_the_studied_layouts_are_correct(zoo_rows, model_type):
    assert zoo_rows[model_type]["verdict"] == "correct", zoo_rows[model_type]


def test_parallel_blocks_get_one_site_per_layer(zoo_rows):
    # GPT-J, Falcon, Phi, Cohere: one norm output feeds attention and MLP
    for mt in ("gptj", "falcon", "phi", "cohere"):
        r = zoo_rows[mt]
        assert r["verdict"] == "correct", r
        assert r["shared_input_layers"] == 2 and r["sites_per_layer"] == {"2": 2}, r  # + resid
    # GPT-NeoX's parallel residual has two norms, one per block: two sites
    assert zoo_rows["gpt_neox"]["shared_input_layers"] == 0


def _recorded(model, ids, sites="ln"):
    rec = zoo._Recorder()
    result = analyze(model, ids, sites=sites, batch_size=ids.shape[0], observers=[rec])
    return result, rec.seen


def _output_of(module, model, ids):
    got = {}
    h = module.register_forward_hook(lambda _m, _a, o: got.setdefault("x", o.detach().clone()))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        h.remove()
    return got["x"]


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text", "vaultgemma"])
def test_sandwich_norms_mlp_reads_the_pre_feedforward_norm(model_type):
    """Gemma-2/3: post_attention_layernorm normalises the attention OUTPUT; the MLP reads
    pre_feedforward_layernorm's output (the old "looks like Llama" guess took the former)."""
    model = zoo.build(model_type)
    ids = torch.randint(0, 400, (2, 10), generator=torch.Generator().manual_seed(3))
    _, seen = _recorded(model, ids)
    layer = model.model.layers[0]
    want = _output_of(layer.pre_feedforward_layernorm, model, ids)
    torch.testing.assert_close(seen["layers.0.mlp_in"], want.reshape(2, 10, -1), rtol=0, atol=0)
    if hasattr(layer, "post_attention_layernorm"):
        wrong = _output_of(layer.post_attention_layernorm, model, ids)
        assert not torch.equal(seen["layers.0.mlp_in"], wrong.reshape(2, 10, -1))


@pytest.mark.parametrize("model_type", ["bart", "openai-gpt", "marian"])
def test_post_ln_blocks_read_the_residual_stream(model_type):
    """Post-LN (BART-style decoders, GPT-1): the norm follows the sub-block, so attention reads
    the layer's input itself."""
    model = zoo.build(model_type)
    ids = torch.randint(0, 400, (2, 10), generator=torch.Generator().manual_seed(4))
    result, seen = _recorded(model, ids)
    with torch.no_grad():
        hs = model(input_ids=ids, use_cache=False, output_hidden_states=True).hidden_states
    torch.testing.assert_close(seen["layers.1.attn_in"], hs[1], rtol=0, atol=0)


def test_registration_order_is_not_execution_order():
    """Phi-3 registers o_proj before qkv_proj: the site moves to the projection that runs first,
    and the self-check records it."""
    model = zoo.build("phi3")
    ids = torch.randint(0, 400, (2, 10), generator=torch.Generator().manual_seed(5))
    result, seen = _recorded(model, ids)
    check = result.criteria["site_self_check"]
    assert check["passed"] and check["moved_to_first_run"] == 2
    assert result.criteria["site_modules"][0] == "model.layers.0.self_attn.qkv_proj"
    assert "model.layers.0.self_attn.qkv_proj" in check["readers"]["layers.0.attn_in"]


def _max_abs_input(module, model, ids) -> float:
    got = []
    h = module.register_forward_pre_hook(lambda _m, a: got.append(a[0].abs().amax()))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        h.remove()
    return float(torch.stack(got).max())


@pytest.mark.parametrize("model_type", ["phi3", "gptj"])
def test_sites_moved_or_merged_by_the_check_are_measured_again(model_type):
    """The self-check rides the first batch; where it moves a site to another tensor (Phi-3:
    o_proj -> qkv_proj) or merges a layer's two sites into one (GPT-J), that batch was measured
    at the unchecked sites: it is measured again, and every figure comes from the checked
    sites (oracle: the max |x| of the projection's input, from a hook of its own)."""
    model = zoo.build(model_type)
    ids = torch.randint(0, 400, (3, 10), generator=torch.Generator().manual_seed(6))
    passes = []
    h = model.base_model.register_forward_pre_hook(
        lambda _m, a, k: passes.append((a[0] if a else k["input_ids"]).shape[0]),
        with_kwargs=True,
    )
    try:
        result = analyze(model, ids, batch_size=2)
    finally:
        h.remove()
    check = result.criteria["site_self_check"]
    assert check["passed"] and check["first_batch_measured_again"] is True
    assert set(check["readers"]) <= {"layers.0.attn_in", "layers.0.mlp_in"}  # layer 0 only
    assert passes == [2, 2, 1]  # the first batch twice, then the last
    assert result.timing["batches"] == result.timing["forward_calls"] == 2
    assert result.timing["discarded_passes"] == 1
    names = result.criteria["site_names"]
    i = names.index("layers.0.attn_in")
    attn = model.get_submodule(result.criteria["site_modules"][i])
    want = _max_abs_input(attn, model, ids)
    assert float(result.stats.site_max[i].max()) == want
    if model_type == "gptj":
        assert "layers.0.mlp_in" not in names and result.criteria["shared_input_layers"] == [0, 1]
    else:
        assert result.criteria["site_modules"][i].endswith("qkv_proj")
        o_proj = model.model.layers[0].self_attn.o_proj
        assert _max_abs_input(o_proj, model, ids) != want


def test_a_first_batch_that_fails_at_the_unchecked_site_is_checked_apart_and_measured_again():
    """o_proj registered first and reading 4 x 24 = 96 values where the residual stream has 64:
    the capture's hook refuses that tensor in the first batch, the check then runs on a pass of
    its own, moves the site to q_proj (the projection that runs first), and the run is measured
    at q_proj (oracle: q_proj's input, from a hook of its own)."""
    from factories import COMMON, LLAMA_LIKE
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    cfg = CONFIG_MAPPING["qwen3"](**COMMON, **dict(LLAMA_LIKE, head_dim=24))
    torch.manual_seed(8)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    for layer in model.model.layers:  # registration order: o_proj first
        attn = layer.self_attn
        for name in ("q_proj", "k_proj", "v_proj", "q_norm", "k_norm"):
            attn._modules[name] = attn._modules.pop(name)
    ids = torch.randint(0, 200, (3, 10), generator=torch.Generator().manual_seed(9))
    result = analyze(model, ids, batch_size=2)
    check = result.criteria["site_self_check"]
    assert check["pass"] == "own" and check["first_batch_measured_again"] is True
    assert check["moved_to_first_run"] == 3
    i = result.criteria["site_names"].index("layers.0.attn_in")
    assert result.criteria["site_modules"][i] == "model.layers.0.self_attn.q_proj"
    want = _max_abs_input(model.model.layers[0].self_attn.q_proj, model, ids)
    assert float(result.stats.site_max[i].max()) == want


def test_a_site_moved_to_a_projection_of_the_same_tensor_is_not_measured_again():
    """OPT registers k_proj before q_proj; both read one tensor, so the first batch, measured at
    k_proj, stands (no second pass) and the record names q_proj."""
    model = zoo.build("opt")
    ids = torch.randint(0, 400, (3, 10), generator=torch.Generator().manual_seed(7))
    result = analyze(model, ids, batch_size=2)
    check = result.criteria["site_self_check"]
    assert check["moved_to_first_run"] == 2 and "first_batch_measured_again" not in check
    assert result.timing["forward_calls"] == result.timing["batches"] == 2
    assert result.criteria["site_modules"][0].endswith("q_proj")


def test_self_check_refusals_are_one_sentence_naming_the_module(zoo_rows):
    """A model that runs a layer's projections twice per pass (looped layers) or adds positions
    of its own is stopped before measuring, in one sentence naming the site and the module."""
    for mt in ("dory", "hrm_text", "prophetnet", "cpmant"):
        r = zoo_rows[mt]
        assert r["verdict"] == "refused", r
        reason = r["reason"]
        assert reason.startswith("site layers.0.") and "(" in reason and reason.endswith(".")
        assert reason.count("; ") <= 2 and "\n" not in reason
    # the self-check's sentence (it runs before the batch is merged), with the model type
    assert "ran 2 times" in zoo_rows["dory"]["reason"]
    assert "structural site discovery does not fit this model (dory)" in zoo_rows["dory"]["reason"]
    for mt in ("prophetnet", "cpmant"):  # the self-check's shape sentence, on a pass of its own
        reason = zoo_rows[mt]["reason"]
        assert "holds a tensor of shape (1, " in reason and "of the batch" not in reason, reason


def test_the_attention_output_projection_site_on_every_architecture(zoo_rows):
    """``--sites dettmers``' attn_out_in equals, in every layer, what the conventionally named
    output projection (o_proj, out_proj, c_proj, dense, wo, ...) multiplies; where that input
    is not hidden-sized (heads x head_dim != hidden) it is left out, never measured as if it
    were the hidden dims."""
    measured = [r for r in zoo_rows.values() if r["verdict"] == "correct"]
    verdicts = {r["model_type"]: r["attn_out_in"] for r in measured}
    bad = {mt: v for mt, v in verdicts.items() if v.startswith(("wrong", "refused"))}
    assert bad == {}
    assert sum(v == "correct" for v in verdicts.values()) >= 0.85 * len(verdicts)
    for mt in STUDIED:
        want = "not hidden-sized: left out" if mt == "qwen3_next" else "correct"
        assert verdicts[mt] == want, (mt, verdicts[mt])
