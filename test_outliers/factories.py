"""Small random models of every supported architecture, built in memory for engine tests.

(The offline default's saved replicas live in ``harness.loading.tiny_builder``; these are cheaper, unsaved, and
their norm gains are spread so that values cross the magnitudes the tests use.)
"""

from __future__ import annotations

import warnings

import torch
from transformers import CONFIG_MAPPING, AutoModelForCausalLM

VOCAB = 200
COMMON = dict(vocab_size=VOCAB, max_position_embeddings=256)
LLAMA_LIKE = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)

CONFIGS = {
    "llama": dict(LLAMA_LIKE),
    "mistral": dict(LLAMA_LIKE),
    "qwen3": dict(LLAMA_LIKE),
    "qwen3_moe": dict(LLAMA_LIKE, **MOE, decoder_sparse_step=1, mlp_only_layers=[]),
    "qwen3_next": dict(
        LLAMA_LIKE,
        num_hidden_layers=4,
        **MOE,
        shared_expert_intermediate_size=32,
        linear_num_value_heads=4,
        linear_num_key_heads=2,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        full_attention_interval=4,
    ),
    "olmoe": dict(LLAMA_LIKE, num_experts=4, num_experts_per_tok=2),
    "mixtral": dict(LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2),
    "glm4_moe": dict(
        LLAMA_LIKE,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        n_shared_experts=1,
        first_k_dense_replace=1,
        n_group=1,
        topk_group=1,
        partial_rotary_factor=0.5,
    ),
    "gpt_oss": dict(
        LLAMA_LIKE,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    ),
    "opt": dict(
        hidden_size=64,
        ffn_dim=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        word_embed_proj_dim=64,
    ),
    "opt_post_ln": dict(
        hidden_size=64,
        ffn_dim=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        word_embed_proj_dim=64,
        do_layer_norm_before=False,
    ),
    "gpt2": dict(n_embd=64, n_layer=3, n_head=4, n_positions=256),
    "gpt_neox": dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
    ),
}
ARCHITECTURES = tuple(CONFIGS)


def random_model(arch: str, dtype: torch.dtype = torch.float32, seed: int = 0, gain: float = 3.0):
    """A random model of ``arch`` whose norm gains are drawn from |N(0, gain)| so that a few
    values per site cross 3-6."""
    model_type = "opt" if arch == "opt_post_ln" else arch
    cfg = CONFIG_MAPPING[model_type](**COMMON, **CONFIGS[arch])
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln_" in name) and name.endswith("weight"):
                p.copy_(torch.randn(p.shape, generator=g).abs() * gain)
    return model.to(dtype).eval()


def random_ids(n: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, t), generator=g)


def site_norm(model, sitemap, site):
    """The norm whose output feeds ``site`` in the studied pre-LN layouts, by the oracle's own
    table of module names (not by the harness's discovery, which hooks the projections)."""
    from oracle import DEFAULT_LAYOUT, ORACLE_LAYOUT

    _, attn, mlp = ORACLE_LAYOUT.get(model.config.model_type, DEFAULT_LAYOUT)
    return getattr(sitemap.layers[site.layer], attn if site.kind == "attn_in" else mlp)
