"""The sites are what METHOD.md says they are, for every architecture of the site table:

- ``attn_in`` / ``mlp_in`` equal the norm's mathematical output (after the learned gain),
  recomputed here from the residual stream that enters the norm;
- the residual stream entering the MLP norm equals layer input + attention output;
- ``resid_out`` equals the decoder layer's output (``hidden_states[i + 1]``; the last layer's
  output is the final norm's input, since ``hidden_states[-1]`` is taken after it).
"""

import pytest
import torch
from factories import ARCHITECTURES, random_ids, random_model
from oracle import DEFAULT_LAYOUT, ORACLE_LAYOUT

from harness.engine.observer import Observer
from harness.pipeline import analyze

# model_type -> (attention module name in a layer, norm kind); the norms come from the oracle's
# own table of module names (test_outliers/oracle.py), not from the harness's discovery
ATTENTION = {"gpt2": "attn", "gpt_neox": "attention"}
LAYERNORM_FAMILIES = {"gpt2", "opt", "gpt_neox"}


class Recorder(Observer):
    """Keeps a copy of every site activation (test only)."""

    def __init__(self):
        self.seen = {}

    def on_site(self, site, x, batch):
        self.seen[site.name] = x.detach().clone()


def norm_formula(norm, x, model_type):
    x32 = x.float()
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", None)
    if model_type in LAYERNORM_FAMILIES:
        mu = x32.mean(-1, keepdim=True)
        var = ((x32 - mu) ** 2).mean(-1, keepdim=True)
        y = (x32 - mu) / torch.sqrt(var + eps)
        return y * norm.weight.float() + norm.bias.float()
    y = x32 * torch.rsqrt((x32 * x32).mean(-1, keepdim=True) + eps)
    gain = norm.weight.float()
    if model_type == "qwen3_next":  # zero-centred gain: (1 + w)
        gain = 1.0 + gain
    return y * gain


def attention_module(layer, model_type):
    if model_type == "qwen3_next" and hasattr(layer, "linear_attn"):
        return layer.linear_attn
    return getattr(layer, ATTENTION.get(model_type, "self_attn"))


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a != "opt_post_ln"])
def test_sites_are_the_norm_outputs_and_the_layer_outputs(arch):
    model = random_model(arch, torch.float32, seed=21)
    mt = model.config.model_type
    ids = random_ids(2, 12, seed=22)
    rec = Recorder()
    result = analyze(model, ids, sites="all", batch_size=2, observers=[rec])
    # independent capture of the norm inputs, attention outputs and hidden states
    from harness.engine.sites import find_sites

    sm = find_sites(model, "all")
    norm_in, attn_out, final_in = {}, {}, {}
    hooks = []
    layers = [s for s in sm.sites if s.kind == "resid_out"]
    _, attn_norm, mlp_norm = ORACLE_LAYOUT.get(mt, DEFAULT_LAYOUT)
    norms = {}
    for s in sm.sites:
        if s.kind in ("attn_in", "mlp_in"):
            norm = getattr(sm.layers[s.layer], attn_norm if s.kind == "attn_in" else mlp_norm)
            norms[s.name] = norm
            hooks.append(
                norm.register_forward_pre_hook(
                    lambda m, a, k, n=s.name: norm_in.__setitem__(
                        n, (a[0] if a else k["hidden_states"]).clone()
                    ),
                    with_kwargs=True,
                )
            )
    for s in layers:
        att = attention_module(s.module, mt)
        hooks.append(
            att.register_forward_hook(
                lambda m, a, o, i=s.layer: attn_out.__setitem__(
                    i, (o[0] if isinstance(o, tuple) else o).clone()
                )
            )
        )
    final_norm = (
        model.base_model.norm
        if hasattr(model.base_model, "norm")
        else (
            model.base_model.ln_f
            if hasattr(model.base_model, "ln_f")
            else getattr(model.base_model, "final_layer_norm", None)
            or model.base_model.decoder.final_layer_norm
        )
    )
    hooks.append(
        final_norm.register_forward_pre_hook(lambda m, a: final_in.__setitem__("x", a[0].clone()))
    )
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    hs = out.hidden_states
    L = sm.num_layers
    assert result.criteria["num_sites"] == 3 * L
    for s in sm.sites:
        got = rec.seen[s.name].reshape(2, 12, -1)
        if s.kind == "resid_out":
            want = hs[s.layer + 1] if s.layer < L - 1 else final_in["x"]
            torch.testing.assert_close(got, want.reshape(2, 12, -1), rtol=0, atol=0)
            continue
        x = norm_in[s.name].reshape(2, 12, -1)
        if s.kind == "attn_in":
            torch.testing.assert_close(x, hs[s.layer].reshape(2, 12, -1), rtol=0, atol=0)
        else:  # the MLP norm reads layer input + attention output (parallel NeoX: the input)
            parallel = getattr(model.config, "use_parallel_residual", False)
            resid = hs[s.layer] if parallel else hs[s.layer] + attn_out[s.layer]
            torch.testing.assert_close(x, resid.reshape(2, 12, -1), rtol=1e-6, atol=1e-6)
        want = norm_formula(norms[s.name], x, mt)
        torch.testing.assert_close(got.float(), want, rtol=1e-5, atol=1e-5)


def test_post_ln_opt_sites_are_the_sublayer_inputs():
    model = random_model("opt_post_ln", torch.float32, seed=23)
    ids = random_ids(2, 10, seed=24)
    rec = Recorder()
    analyze(model, ids, sites="ln", batch_size=2, observers=[rec])
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    layers = model.model.decoder.layers
    for i in range(len(layers)):
        # attention reads the layer input directly in post-LN OPT
        torch.testing.assert_close(rec.seen[f"layers.{i}.attn_in"], hs[i], rtol=0, atol=0)
        # the FFN reads the post-attention norm's output
        assert rec.seen[f"layers.{i}.mlp_in"].shape == hs[i].shape


def test_a_site_whose_block_runs_no_projection_is_refused(monkeypatch):
    """A site whose block has no projection that ran in the pass (here: layer 0's attention
    projections left out of the block table) cannot be proved to be what a projection reads: the
    run stops before anything is merged, in one sentence naming the site and the module; on a
    pass of its own (``verify_sites``) and riding the first batch (``analyze``) alike."""
    from dataclasses import replace

    import harness.pipeline as pipeline
    from harness.engine.selfcheck import verify_sites
    from harness.engine.sites import find_sites
    from harness.errors import HarnessError

    model = random_model("qwen3", seed=3)
    ids = random_ids(3, 16, seed=4)
    real = find_sites(model, "ln")
    blocks = list(real.blocks)
    blocks[0] = dict(blocks[0], attn=(blocks[0]["attn"][0], []))
    wrong = replace(real, blocks=tuple(blocks))
    want = (
        "site layers.0.attn_in (model.layers.0.self_attn.q_proj) is not what its block's first "
        "projection to run (none ran) receives;"
    )
    with pytest.raises(HarnessError) as err:
        verify_sites(model, wrong, ids[:1])
    assert str(err.value).startswith(want)
    monkeypatch.setattr(pipeline, "find_sites", lambda _m, _s="ln": wrong)
    with pytest.raises(HarnessError) as err:
        analyze(model, ids, batch_size=2)
    assert str(err.value).startswith(want) and "\n" not in str(err.value)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_checks_copies_are_in_slots_reserved_before_the_pass(arch):
    """No copy the check keeps is allocated during the pass, and none of its records' containers
    grows (on the CPU each would sit in the heap between the activations the pass frees:
    docs/performance.md, "The CPU heap"): the slots reserved before it hold every copy alive at
    its end, counted call by call; the calls it made room for are the calls our own hooks count
    (every site, layer input and block reader once); each copy equals the tensor it was taken
    from (oracle: the site activations kept by an observer of our own)."""
    from harness.engine.selfcheck import SiteProbe
    from harness.engine.sites import find_sites

    model = random_model(arch, seed=5)
    ids = random_ids(2, 24, seed=6)
    sitemap = find_sites(model, "ln")
    probe = SiteProbe(model, sitemap)
    probe.reset(2, 24)
    reserved = probe._heads._size.copy()
    containers = {k: set(getattr(probe, k)) for k in ("seen", "readers", "layer_in")}
    counted = []
    modules = dict(model.named_modules())
    readers = [n for blocks in sitemap.blocks for _b, ps in blocks.values() for n in ps]
    watched = [s.module for s in sitemap.sites] + list(sitemap.layers)
    watched += [modules[n] for n in readers]
    handles = [m.register_forward_hook(lambda *a: counted.append(1)) for m in watched]
    with probe, torch.inference_mode():
        model.base_model(ids)
    for h in handles:
        h.remove()
    assert probe.calls.reserved == len(probe.calls) == len(counted)
    assert containers == {k: set(getattr(probe, k)) for k in containers}
    kept = [i for i in range(len(probe.calls)) if probe.head(i) is not None]
    assert kept and probe._heads._size == reserved
    assert len(kept) <= sum(reserved.values())
    rec = Recorder()
    analyze(model, ids, sites="ln", observers=[rec], batch_size=2)
    for site in sitemap.sites:
        (call,) = probe.seen[site.index]
        want = rec.seen[site.name][0, :16]
        assert torch.equal(probe.head(call), want), site.name


@pytest.mark.parametrize("where", [(0, 15, -1), (0, 0, 0)], ids=["last-compared", "first"])
def test_the_check_compares_the_first_positions_of_the_first_window(where):
    """The self-check keeps, per hooked tensor, the first 16 positions of the first window over
    every dim (KB, not the batch) and a difference anywhere in them is found. Oracle: one value
    of what layer 1 reads changed by a pre-hook of our own, registered before the check's, so
    that layer 0's output (``resid_out``) is no longer what the next layer reads."""
    from harness.engine.selfcheck import SiteProbe
    from harness.engine.sites import find_sites
    from harness.errors import HarnessError

    model = random_model("qwen3", seed=3)
    H = model.config.hidden_size
    ids = random_ids(3, 32, seed=4)
    sitemap = find_sites(model, "residual")
    probe = SiteProbe(model, sitemap)
    probe.reset(3, 32)
    with probe, torch.inference_mode():
        model.model(ids)
    heads = [probe.head(i) for i in range(len(probe.calls)) if probe.head(i) is not None]
    assert heads and all(tuple(h.shape) == (16, H) for h in heads)
    # values are kept for the sites, the layers' inputs, each block's first projection, the
    # projections returning H features (possible output projections) and layer 0's projections
    # (those H wide: not down_proj's input); the other readers are compared when they run
    wide = [c.shape[-1] == H for c in probe.calls]
    kept = len(probe.seen) + len(probe.layer_in)
    for key, calls in probe.readers.items():
        kept += sum(
            wide[i]
            for j, (_, i, out) in enumerate(calls)
            if key.startswith("0.") or j == 0 or out == H
        )
    assert len(heads) == kept < len(probe.calls)
    probe.verify()  # the model as it is: every site is what the next layer reads

    def change(_module, args, kwargs):
        x = (args[0] if args else kwargs["hidden_states"]).clone()
        x[where] += 1.0
        return ((x, *args[1:]), kwargs) if args else (args, dict(kwargs, hidden_states=x))

    handle = model.model.layers[1].register_forward_pre_hook(change, with_kwargs=True)
    try:
        probe = SiteProbe(model, sitemap)
        probe.reset(3, 32)
        with probe, torch.inference_mode():
            model.model(ids)
        with pytest.raises(HarnessError, match="layers.0.resid_out: the output of"):
            probe.verify()
    finally:
        handle.remove()


def _scaled_input(factor):
    def pre_hook(_module, args, kwargs):
        if args:
            return (args[0] * factor, *args[1:]), kwargs
        return args, dict(kwargs, hidden_states=kwargs["hidden_states"] * factor)

    return pre_hook


@pytest.mark.parametrize(
    "layer, projection", [(0, "q_proj"), (1, "k_proj"), (1, "up_proj")], ids=str
)
def test_a_block_whose_readers_multiply_different_values_stops_the_run(layer, projection):
    """Planted: a pre-hook makes one first-level reader of a block multiply 3x the block's input,
    so that no single tensor is what the block reads. The check compares every reader of every
    layer by value with the block's first projection, so the run stops with one sentence naming
    the readers; the check of before (the site against the first projection to run only, and
    layer 0 only) passed all three."""
    from harness.errors import HarnessError

    model = random_model("qwen3", seed=3)
    ids = random_ids(3, 16, seed=4)
    block = "self_attn" if projection in ("q_proj", "k_proj") else "mlp"
    module = getattr(getattr(model.model.layers[layer], block), projection)
    handle = module.register_forward_pre_hook(_scaled_input(3.0), with_kwargs=True)
    try:
        with pytest.raises(HarnessError) as err:
            analyze(model, ids, batch_size=2)
    finally:
        handle.remove()
    text = str(err.value)
    kind = "attention" if block == "self_attn" else "MLP"
    assert text.startswith(f"layer {layer}'s {kind} block: ") and "\n" not in text
    named = text.split(": ", 1)[1].split(" multiplied", 1)[0]
    if projection == "q_proj":  # q runs first: k and v differ from it
        assert named == "k_proj, v_proj" and "other values than q_proj" in text
    else:
        assert named == projection
    analyze(model, ids, batch_size=2)  # without the hook, the same model passes


def test_a_block_chosen_in_another_layer_stops_the_run():
    """Planted: layer 0's attention block (and its site) taken from layer 1, a wrongly chosen
    block whose readers agree with each other and with the site. The check sees it run outside
    decoder layer 0."""
    from dataclasses import replace

    from harness.engine.selfcheck import verify_sites
    from harness.engine.sites import find_sites
    from harness.errors import HarnessError

    model = random_model("qwen3", seed=3)
    ids = random_ids(3, 16, seed=4)
    real = find_sites(model, "ln")
    blocks = list(real.blocks)
    blocks[0] = dict(blocks[0], attn=blocks[1]["attn"])
    q1 = model.model.layers[1].self_attn.q_proj
    sites = tuple(
        replace(s, module=q1, module_name="model.layers.1.self_attn.q_proj", block="x")
        if s.name == "layers.0.attn_in"
        else s
        for s in real.sites
    )
    wrong = replace(real, blocks=tuple(blocks), sites=sites)
    with pytest.raises(
        HarnessError, match="^layer 0's attention block .* ran outside decoder layer 0"
    ):
        verify_sites(model, wrong, ids[:1])
    verify_sites(model, real, ids[:1])


def test_the_attention_output_site_is_the_output_projections_input():
    """``--sites dettmers`` adds, per layer, the input of the attention output projection
    (Dettmers' "key/query/value/output"): equal, in every layer, to what the module this test
    names (``self_attn.o_proj``, not found by structure) multiplies."""
    model = random_model("llama", seed=5)
    ids = random_ids(2, 16, seed=6)
    rec = Recorder()
    seen = {}
    handles = [
        layer.self_attn.o_proj.register_forward_pre_hook(
            lambda _m, args, i=i: seen.__setitem__(i, args[0].detach().clone())
        )
        for i, layer in enumerate(model.model.layers)
    ]
    try:
        result = analyze(model, ids, sites="dettmers", batch_size=2, observers=[rec])
    finally:
        for h in handles:
            h.remove()
    L = model.config.num_hidden_layers
    assert result.criteria["site_names"] == [
        f"layers.{i}.{k}" for i in range(L) for k in ("attn_in", "attn_out_in", "mlp_in")
    ]
    assert result.criteria.num_sites == 3 * L
    for i in range(L):
        torch.testing.assert_close(rec.seen[f"layers.{i}.attn_out_in"], seen[i], rtol=0, atol=0)
