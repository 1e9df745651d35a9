"""The 12 models of the original study (METHOD.md, section 3): 7 MoE and 5 dense."""

from harness.models.registry import A100_80, H100_80, GpuPlan, ModelEntry, Published

STUDY = (
    ModelEntry(
        "olmoe_1b_7b",
        "allenai/OLMoE-1B-7B-0125",
        "moe",
        dtype="float32",  # the original study's published figure is its float32 rerun
        published=Published(49, 7, 1.3),
        config_dir="allenai__OLMoE-1B-7B-0924",
        notes="config checked offline against the 0924 release (same shapes)",
    ),
    ModelEntry(
        "gpt_oss_20b",
        "openai/gpt-oss-20b",
        "moe",
        # MXFP4 weights (~13 GB) on Hopper with kernels; 42 GB if dequantized to bf16.
        gpu=GpuPlan(H100_80, 1, 100),
        published=Published(1465, 21, 3.6),
        config_dir="openai__gpt-oss-20b",
    ),
    ModelEntry(
        "qwen3_30b_a3b",
        "Qwen/Qwen3-30B-A3B",
        "moe",
        published=Published(110, 30.5, 3.3),
        config_dir="Qwen__Qwen3-30B-A3B",
    ),
    ModelEntry(
        "mixtral_8x7b",
        "mistralai/Mixtral-8x7B-v0.1",
        "moe",
        gated=True,  # accept Mistral's conditions on the hub; needs HF_TOKEN
        published=Published(4635, 47, 12.9),
        config_dir="mistralai__Mixtral-8x7B-Instruct-v0.1",
        notes="config checked offline against the Instruct release (same shapes)",
    ),
    ModelEntry(
        "qwen3_next_80b",
        "Qwen/Qwen3-Next-80B-A3B-Instruct",
        "moe",
        published=Published(504, 80, 3.0),
        config_dir="Qwen__Qwen3-Next-80B-A3B-Instruct",
    ),
    ModelEntry(
        "glm_4.5_air",
        "zai-org/GLM-4.5-Air",
        "moe",
        # No trustworthy config offline: the plan is explicit. 106B bf16 = 212 GB of weights;
        # the original study's 2x A100 could not hold them.
        gpu=GpuPlan(A100_80, 4, 450),
        published=Published(459, 106, 12),
    ),
    ModelEntry(
        "gpt_oss_120b",
        "openai/gpt-oss-120b",
        "moe",
        # MXFP4 weights (~65 GB) need Hopper kernels; dequantized they need ~234 GB.
        gpu=GpuPlan(H100_80, 2, 250),
        published=Published(1695, 117, 5.1),
        config_dir="openai__gpt-oss-120b",
    ),
    ModelEntry(
        "qwen3_0.6b",
        "Qwen/Qwen3-0.6B",
        "dense",
        published=Published(9212, 0.6, 0.6),
        config_dir="Qwen__Qwen3-0.6B",
    ),
    ModelEntry("qwen3_1.7b", "Qwen/Qwen3-1.7B", "dense", published=Published(16563, 1.7, 1.7)),
    ModelEntry("qwen3_4b", "Qwen/Qwen3-4B", "dense", published=Published(1042, 4.0, 4.0)),
    ModelEntry(
        "qwen3_8b",
        "Qwen/Qwen3-8B",
        "dense",
        published=Published(777, 8.0, 8.0),
        config_dir="Qwen__Qwen3-8B",
    ),
    ModelEntry(
        "qwen3_14b",
        "Qwen/Qwen3-14B",
        "dense",
        published=Published(985, 14.0, 14.0),
        config_dir="Qwen__Qwen3-14B",
    ),
)

__all__ = ["STUDY", "A100_80"]
