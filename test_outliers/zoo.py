"""The transformers zoo: every model_type of the installed transformers' causal-LM auto mapping,
built tiny from its own config class (random weights), for the site-definition test.

Shrinking is generic: each size field the config's ``__init__`` accepts under any of its usual
names is set small, sub-configs (text / vision / audio) are shrunk the same way, and special
token ids are kept inside the small vocabulary. Whatever still cannot be built or run is listed
with the reason (``build``), never skipped silently.
"""

from __future__ import annotations

import inspect
import warnings

import torch

HIDDEN = 64
SMALL = {
    # value, then every name a config class uses for it
    64: (
        "hidden_size",
        "n_embd",
        "d_model",
        "dim",
        "hidden_dim",
        "embed_dim",
        "model_dim",
        "n_embed",
        "d_embed",
        "embedding_size",
        "word_embed_proj_dim",
        "input_embedding_size",
    ),
    2: (
        "num_hidden_layers",
        "n_layer",
        "num_layers",
        "n_layers",
        "decoder_layers",
        "num_decoder_layers",
        "n_layers_per_block",
    ),
    4: (
        "num_attention_heads",
        "n_head",
        "num_heads",
        "n_heads",
        "decoder_attention_heads",
        "attention_heads",
        "num_experts",
        "num_local_experts",
        "n_routed_experts",
        "moe_num_experts",
        "num_experts_routed",
    ),
    # kv heads and top-k
    "kv": (
        "num_key_value_heads",
        "num_kv_heads",
        "n_head_kv",
        "multi_query_group_num",
        "kv_heads",
        "n_kv_heads",
        "num_key_value_groups_unused",
    ),
    "topk": (
        "num_experts_per_tok",
        "moe_topk",
        "num_selected_experts",
        "top_k",
        "experts_per_token",
        "moe_k",
    ),
    16: (
        "head_dim",
        "kv_channels",
        "attention_head_size",
        "qk_nope_head_dim",
        "v_head_dim",
        "qk_rope_head_dim",
        "kv_lora_rank_unused",
    ),
    128: (
        "intermediate_size",
        "ffn_dim",
        "n_inner",
        "decoder_ffn_dim",
        "ffn_hidden_size",
        "mlp_dim",
        "ff_dim",
        "inner_hidden_size",
        "ffn_embed_dim",
        "d_ff",
        "d_inner",
        "ffn_intermediate_size",
    ),
    32: (
        "moe_intermediate_size",
        "expert_intermediate_size",
        "shared_expert_intermediate_size",
        "moe_ffn_hidden_size",
        "q_lora_rank",
        "kv_lora_rank",
    ),
}
VOCAB = 512
MAX_PARAMS = 20_000_000


class TooLarge(Exception):
    """The generic shrink left the model too large to build here."""


TOKEN_FIELDS = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "decoder_start_token_id",
    "sep_token_id",
    "cls_token_id",
    "unk_token_id",
    "mask_token_id",
)


def causal_lm_types() -> dict[str, str]:
    """model_type -> class name, from the installed transformers' causal-LM auto mapping."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return dict(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _overrides(cls, layers: int = 2) -> dict:
    try:
        params = set(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):
        params = set()
    out = {}
    for value, names in SMALL.items():
        v = {"kv": 4, "topk": 2, 2: layers}.get(value, value)  # kv = heads: MLA needs it
        for name in names:
            if name in params:
                out[name] = v
    if "vocab_size" in params:
        out["vocab_size"] = VOCAB
    # rotary widths must fit the small head (GPT-J, CodeGen: rotary_dim defaults to 64)
    for name in ("rotary_dim", "rotary_emb_base_unused"):
        if name in params:
            out[name] = 8
    # per-layer patterns whose length must equal the layer count
    if "attention_types" in params:  # GPT-Neo
        out["attention_types"] = [[["global", "local"], 1]]
    # hybrids: keep one attention layer among the few built (their defaults put it further)
    if "attn_layer_indices" in params:  # Bamba
        out["attn_layer_indices"] = [layers - 1]
    if cls.model_type == "granitemoehybrid" and "layer_types" in params:
        out["layer_types"] = ["mamba"] * (layers - 1) + ["attention"]
    return out


def _fix(config) -> None:
    """After construction: clamp token ids, trim per-layer lists, shrink sub-configs."""
    for field in TOKEN_FIELDS:
        v = getattr(config, field, None)
        if isinstance(v, int) and v >= VOCAB:
            setattr(config, field, VOCAB - 1)
        elif isinstance(v, list):
            setattr(config, field, [min(x, VOCAB - 1) if isinstance(x, int) else x for x in v])


def tiny_config(model_type: str, layers: int = 2):
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    kwargs = _overrides(cls, layers)
    sub = {}
    default = None
    for name, sub_cls in (getattr(cls, "sub_configs", None) or {}).items():
        if getattr(sub_cls, "__name__", "") == "AutoConfig":  # the default's own class
            default = default or cls()
            sub_cls = type(getattr(default, name, None) or object)
            if not hasattr(sub_cls, "to_dict"):
                continue
        sub[name] = sub_cls(**_overrides(sub_cls, layers)).to_dict()
    config = cls(**kwargs, **sub)
    _fix(config)
    for name in sub:
        s = getattr(config, name, None)
        if s is not None:
            _fix(s)
    return config


def build(model_type: str, seed: int = 0, layers: int = 2):
    """A tiny random model of ``model_type`` in fp32, eval mode; raises on failure."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type, layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            shape = AutoModelForCausalLM.from_config(config)
        n = sum(p.numel() for p in shape.parameters())
        if n > MAX_PARAMS:
            raise TooLarge(f"does not shrink generically ({n / 1e6:.0f}M parameters)")
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.float().eval()


# -- the independent oracle --------------------------------------------------------------------
# Names of the projections that read a block's input, by convention across transformers. The
# oracle shares nothing with harness.engine.sites: it finds layers by the config's layer count,
# projections by these names, and blocks by the attribute path ("attn" / "attention" in it).
ATTN_READERS = {
    "q_proj",
    "k_proj",
    "v_proj",
    "qkv_proj",
    "query_key_value",
    "c_attn",
    "Wqkv",
    "query",
    "key",
    "value",
    "q_a_proj",
    "kv_a_proj_with_mqa",
    "qkv",
    "W_pack",
    "wqkv",
    "q",
    "k",
    "v",
    "in_proj_qkvz",
    "in_proj_ba",
    "in_proj_qkv",
    "in_proj_z",
    "in_proj_b",
    "in_proj_a",
    "query_proj",
    "key_proj",
    "value_proj",
    "q_lin",
    "k_lin",
    "v_lin",
    "qkv_lin",
    "linear_q",
    "linear_k",
    "linear_v",
    "project_q",
    "project_k",
    "project_v",
    "to_q",
    "to_k",
    "to_v",
    "qkv_linear",
    "q_linear",
    "k_linear",
    "v_linear",
    "att_proj",
    "Wq",
    "kv_proj",
    "Wk",
    "Wv",
}
MLP_READERS = {
    "gate_proj",
    "up_proj",
    "fc1",
    "c_fc",
    "dense_h_to_4h",
    "w1",
    "w3",
    "fc_in",
    "gate",
    "router",
    "gate_up_proj",
    "up_gate_proj",
    "wi",
    "wi_0",
    "wi_1",
    "input_linear",
    "intermediate_dense",
    "ff_proj",
    "lin1",
    "linear_1",
    "up",
    "shared_expert_gate",
    "fc_1",
    "ffn_up",
    "w_in",
    "Wi",
}
# Conventional names of the attention output projection (its input: the heads' output).
ATTN_OUT = {"o_proj", "out_proj", "c_proj", "dense", "wo", "o", "out", "out_lin", "proj", "o_dense"}
ATTN_PATH = ("attn", "attention")
CROSS_PATH = ("encoder_attn", "cross_attn", "crossattention")
LAYER_COUNT_FIELDS = ("decoder_layers", "num_hidden_layers", "n_layer", "num_layers", "n_layers")


def oracle_layers(model):
    """The ModuleList whose length is the config's layer count (vision towers left out)."""
    from harness.engine.sites import (
        text_config,  # only to read the text config of multimodal models
    )

    cfg = text_config(model.config)
    n = next(
        (getattr(cfg, f) for f in LAYER_COUNT_FIELDS if isinstance(getattr(cfg, f, None), int)),
        None,
    )
    for name, module in model.named_modules():
        low = name.lower()
        if any(t in low for t in ("vision", "visual", "audio", "image")):
            continue
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return name, module
    return None, None


def oracle_readers(layer):
    """(block, name, module) for the projections of ``layer`` named in the tables above; a
    projection is in the attention block when an ancestor's attribute or class name says
    attention."""
    modules = dict(layer.named_modules())
    out = []
    for name, module in modules.items():
        parts = name.split(".")
        leaf = parts[-1] if name else ""
        low = name.lower()
        if any(c in low for c in CROSS_PATH) or "experts" in parts[:-1]:
            continue
        if any(p.isdigit() for p in parts[:-1]):
            continue
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() >= 3:
            continue  # fused experts ([E, out, in]) read a routed, permuted subset
        ancestors = [".".join(parts[:k]) for k in range(1, len(parts))]
        in_attn = any(
            a in (p.split(".")[-1] + type(modules[p]).__name__).lower()
            for p in ancestors
            for a in ATTN_PATH
        )
        if any(
            "norm" in p.split(".")[-1].lower() or type(modules[p]).__name__.lower().endswith("norm")
            for p in ancestors
        ):
            continue  # a gated norm's own little MLP (AXK2) is not the layer's MLP block
        ffn_dense = len(parts) > 1 and (
            (leaf == "dense" and parts[-2] == "intermediate")  # BERT
            or (leaf == "0" and parts[-2] in ("ffn", "mlp"))  # CTRL's Sequential
            or (leaf == "layer" and parts[-2] == "router")  # JetMoE's router
        )
        if leaf in ATTN_READERS and in_attn:
            out.append(("attn", name, module))
        elif leaf in ATTN_OUT and in_attn:
            out.append(("attn_out", name, module))
        elif (leaf in MLP_READERS or ffn_dense) and not in_attn:
            out.append(("mlp", name, module))
    return out


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}"[:200]


class _Recorder:
    """An observer keeping every site tensor (the harness's view), for the comparison."""

    def __new__(cls):
        from harness.engine.observer import Observer

        class Recorder(Observer):
            def __init__(self):
                self.seen = {}

            def on_site(self, site, x, batch):
                self.seen[site.name] = x.detach().clone()

        return Recorder()


def assess(model_type: str, seq: int = 12) -> dict:
    """``_assess`` at 2 layers; hybrids whose 2 shrunk layers hold no attention layer (their
    attention comes every k-th layer) are built again with 8."""
    row = _assess(model_type, seq, 2)
    if row["verdict"] == "unsupported" and row.get("oracle_attn") is False:
        again = _assess(model_type, seq, 8)
        if again["verdict"] != "not built":
            again["layers_built"] = 8
            return again
    return row


def _assess(model_type: str, seq: int, layers: int) -> dict:
    """The verdict for one model_type: correct | wrong | unsupported | refused | not built |
    not run | unverified, with the reason and what was checked."""
    from harness.errors import HarnessError, UnsupportedArchitecture
    from harness.pipeline import analyze

    row = {"model_type": model_type, "class": causal_lm_types().get(model_type, "?")}
    try:
        model = build(model_type, layers=layers)
    except Exception as err:  # noqa: BLE001 - every failure is a listed verdict
        return row | {"verdict": "not built", "reason": _one_line(err)}
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, min(vocab, VOCAB), (2, seq), generator=torch.Generator().manual_seed(7))
    path, layers = oracle_layers(model)
    readers = [oracle_readers(layer) for layer in layers] if layers is not None else []
    inputs, hooks = {}, []
    for i, found in enumerate(readers):
        for kind, name, module in found:

            def hook(_m, args, kwargs, key=(i, kind, name)):
                x = args[0] if args else next(iter(kwargs.values()), None)
                if isinstance(x, torch.Tensor) and key not in inputs:
                    inputs[key] = x.detach().clone()

            hooks.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=False, output_hidden_states=True)
    except Exception as err:  # noqa: BLE001
        return row | {"verdict": "not run", "reason": _one_line(err)}
    finally:
        for h in hooks:
            h.remove()
    hs = getattr(out, "hidden_states", None)
    seen_attn = any(k[1] == "attn" for k in inputs)
    seen_mlp = any(k[1] == "mlp" for k in inputs)
    rec = _Recorder()
    try:
        try:
            result = analyze(model, ids, sites="all", batch_size=2, observers=[rec])
        except HarnessError as err:
            if "resid_out" not in str(err):
                raise
            # hyper-connection layers output several residual streams: the block inputs
            # (the default sites) are still measurable
            row["resid_out"] = str(err)
            rec = _Recorder()
            result = analyze(model, ids, sites="ln", batch_size=2, observers=[rec])
    except UnsupportedArchitecture as err:
        acceptable = not (seen_attn and seen_mlp)
        return row | {
            "oracle_attn": seen_attn,
            "verdict": "unsupported" if acceptable else "wrong",
            "reason": str(err)
            if acceptable
            else f"refused although the oracle sees an attention and an MLP block: {err}",
        }
    except HarnessError as err:
        return row | {"verdict": "refused", "reason": str(err)}
    except Exception as err:  # noqa: BLE001
        return row | {"verdict": "crashed", "reason": _one_line(err)}
    crit = result.criteria
    shared = set(crit["shared_input_layers"])
    H = result.model["hidden_size"]
    problems, checked = [], {"attn": 0, "mlp": 0, "resid": 0}
    for (i, kind, name), x in inputs.items():
        if x.shape[-1] != H or kind == "attn_out":
            continue
        site = f"layers.{i}.{'attn_in' if kind == 'attn' or i in shared else 'mlp_in'}"
        got = rec.seen.get(site)
        if got is None:
            problems.append(f"no site {site} although {path}.{i}.{name} reads the block")
        elif got.numel() != x.numel() or not torch.equal(got.reshape(-1, H), x.reshape(-1, H)):
            problems.append(f"{site} is not what {path}.{i}.{name} receives")
        else:
            checked[kind] += 1
    L = result.model["num_layers"]
    if hs is not None and len(hs) == L + 1 and "resid_out" not in row:
        for i in range(L - 1):
            got = rec.seen.get(f"layers.{i}.resid_out")
            if got is None or not torch.equal(got.reshape(hs[i + 1].shape), hs[i + 1]):
                problems.append(f"layers.{i}.resid_out is not hidden_states[{i + 1}]")
            else:
                checked["resid"] += 1
    row |= {
        "sites_per_layer": crit["sites_per_layer"],
        "shared_input_layers": len(shared),
        "checked": checked,
        "attn_module": next(
            (
                m
                for n, m in zip(crit["site_names"], crit["site_modules"], strict=True)
                if n.endswith("attn_in")
            ),
            "",
        ),
        "mlp_module": next(
            (
                m
                for n, m in zip(crit["site_names"], crit["site_modules"], strict=True)
                if n.endswith("mlp_in")
            ),
            "",
        ),
    }
    if problems:
        return row | {"verdict": "wrong", "reason": "; ".join(problems[:3])}
    row["attn_out_in"] = _assess_attn_out(model, ids, inputs)
    if not (checked["attn"] and (checked["mlp"] or shared)):
        return row | {
            "verdict": "unverified",
            "reason": "the oracle's name table does not know this model's projections",
        }
    return row | {"verdict": "correct", "reason": ""}


def _assess_attn_out(model, ids, inputs) -> str:
    """``--sites dettmers``' attention-output-projection site beside the oracle's: correct (every
    layer's site equals what the conventionally named output projection multiplies), wrong
    (with the reason), no oracle (no such name), or refused (with the harness's sentence)."""
    from harness.errors import HarnessError
    from harness.pipeline import analyze

    want = {i: x for (i, kind, _name), x in inputs.items() if kind == "attn_out"}
    H = model.get_input_embeddings().weight.shape[-1]
    narrow = {i for i, x in want.items() if x.shape[-1] != H}
    want = {i: x for i, x in want.items() if i not in narrow}
    rec = _Recorder()
    try:
        analyze(model, ids, sites="dettmers", batch_size=2, observers=[rec])
    except HarnessError as err:
        return f"refused: {err}"
    got = {int(n.split(".")[1]): x for n, x in rec.seen.items() if n.endswith(".attn_out_in")}
    if narrow and not want:
        # the heads' channels are not the hidden dims: left out, and no site may claim them
        return "not hidden-sized: left out" if not got else "wrong: a site of another width"
    if not want:
        return "no oracle" if got else "no site, no oracle"
    for i, x in want.items():
        y = got.get(i)
        if y is None:
            return f"wrong: no site layers.{i}.attn_out_in"
        if y.numel() != x.numel() or not torch.equal(y.reshape(x.shape), x):
            return f"wrong: layers.{i}.attn_out_in is not the output projection's input"
    return "correct"


VERDICT_ORDER = ("correct", "unsupported", "refused", "not run", "not built", "unverified")


def summary(rows: list[dict]) -> dict:
    """Counts per verdict and the supported shares the site-definition test holds."""
    counts = {v: sum(1 for r in rows if r["verdict"] == v) for v in VERDICT_ORDER + ("wrong",)}
    ran = [r for r in rows if r["verdict"] not in ("not built", "not run")]
    measurable = [r for r in ran if r["verdict"] != "unsupported"]
    correct = counts["correct"]
    return {
        "model_types": len(rows),
        "counts": counts,
        "built_and_ran": len(ran),
        "supported_of_ran": correct / len(ran) if ran else 0.0,
        "supported_of_measurable": correct / len(measurable) if measurable else 0.0,
    }


def markdown(rows: list[dict]) -> str:
    import transformers

    s = summary(rows)
    c = s["counts"]
    lines = [
        "# Architectures: every causal LM of the installed transformers",
        "",
        f"Generated by `python test_outliers/zoo.py > docs/model-types.md` (transformers "
        f"{transformers.__version__}); the same rows are asserted by "
        "`test_outliers/test_zoo.py`.",
        "",
        "Each model_type of transformers' causal-LM auto mapping is built tiny from its own config "
        "class (random weights, 2 layers; 8 for hybrids whose attention comes every k-th layer), "
        'run through `harness.analyze(..., sites="all")`, and every site is compared with an '
        "oracle that shares no code with the harness: the inputs of the projections it finds by "
        "their conventional names (q/k/v, fc1, gate/up, router, ...), and `hidden_states` for the "
        "layer outputs.",
        "",
        f"**{s['model_types']} model types: {c['correct']} correct, {c['wrong']} wrong, "
        f"{c['unsupported']} unsupported (no attention or no MLP block), {c['refused']} refused "
        f"with a sentence, {c['not run'] + c['not built']} not built or not run tiny, "
        f"{c['unverified']} unverified.** Of the {s['built_and_ran']} that build and run, "
        f"{s['supported_of_ran']:.1%} are supported ({s['supported_of_measurable']:.1%} of those "
        "that have both blocks).",
        "",
        "Verdicts: *correct* = every site equals the oracle; *wrong* = a site differs (the test "
        "fails); *unsupported* = the harness says so in one sentence and the oracle sees no "
        "attention or no MLP block; *refused* = the self-check or the parameter count stops the "
        "run with one sentence; *not built* / *not run* = the generic tiny config does not build "
        "or run (the reason is the library's); *unverified* = the oracle does not know the "
        "projections' names.",
        "",
        "`attn_out_in` (`--sites dettmers`: the input of the attention output projection) is "
        "compared with the input of the projection the oracle finds by its conventional name "
        "(o_proj, out_proj, c_proj, dense, wo, ...).",
        "",
        "| model_type | class | verdict | sites per layer | attn_in hooked at | mlp_in hooked at "
        "| attn_out_in | reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (VERDICT_ORDER + ("wrong",)).index(r["verdict"])):
        per = ", ".join(f"{k} in {v} layers" for k, v in (r.get("sites_per_layer") or {}).items())
        if r.get("shared_input_layers"):
            per += f" (one shared input in {r['shared_input_layers']} layers)"
        strip = lambda m: ".".join(m.split(".")[-2:]) if m else ""  # noqa: E731
        reason = (r.get("reason") or "").replace("|", "/")
        if r.get("resid_out"):
            reason = "resid_out not measurable: layers output several residual streams"
        lines.append(
            f"| {r['model_type']} | {r['class']} | {r['verdict']} | {per} | "
            f"{strip(r.get('attn_module'))} | {strip(r.get('mlp_module'))} | "
            f"{(r.get('attn_out_in') or '').replace('|', '/')[:80]} | {reason[:160]} |"
        )
    return "\n".join(lines) + "\n"


def all_rows() -> list[dict]:
    import transformers

    transformers.logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [assess(mt) for mt in sorted(causal_lm_types())]


if __name__ == "__main__":
    import os
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.stdout.write(markdown(all_rows()))
