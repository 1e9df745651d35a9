"""Config fields under every name transformers' model families give them: the one table.

GPT-2 says ``n_embd`` where Llama says ``hidden_size`` and OPT ``d_model``; MoE configs name their
expert count ``num_experts``, ``num_local_experts`` or ``n_routed_experts``. Every reader of a
config (sites, parameter counts, preflight's memory model, the window length check) asks here.
"""

from __future__ import annotations

SYNONYMS: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim", "embed_dim"),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "num_heads": ("num_attention_heads", "n_head"),
    "num_kv_heads": ("num_key_value_heads",),
    "head_dim": ("head_dim",),
    "intermediate_size": ("intermediate_size", "ffn_dim", "n_inner"),
    "moe_intermediate_size": ("moe_intermediate_size",),
    "shared_intermediate_size": ("shared_expert_intermediate_size",),
    "num_shared_experts": ("n_shared_experts",),
    "num_experts": ("num_experts", "num_local_experts", "n_routed_experts"),
    "top_k": ("num_experts_per_tok", "experts_per_token", "moe_top_k", "top_k"),
    "max_positions": ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"),
    "first_dense_layers": ("first_k_dense_replace",),
    "linear_key_head_dim": ("linear_key_head_dim",),
    "linear_value_head_dim": ("linear_value_head_dim",),
    "linear_num_key_heads": ("linear_num_key_heads",),
    "linear_num_value_heads": ("linear_num_value_heads",),
}


def config_field(config, name: str, default: int | None = None) -> int | None:
    """The first positive integer the config holds under one of ``name``'s synonyms."""
    for key in SYNONYMS[name]:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default
