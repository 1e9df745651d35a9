"""What the module structure of a model cannot tell: one row per architecture (MoE routers, experts, unsupported blocks)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RouterOutput:
    """What an architecture's router module returns (transformers 5.x), checked in its modeling file."""

    logits: int  # tuple slot of the router logits [B*T, E]
    weights: int  # tuple slot of the top-k routing weights [B*T, k]
    indices: int  # tuple slot of the top-k expert ids [B*T, k] (int64)
    scoring: str
    sorted: bool  # are the k slots ordered by weight (torch.topk sorted=True)?


@dataclass(frozen=True)
class Architecture:
    """What the module structure of one architecture (a transformers model_type) cannot tell."""

    name: str
    model_types: tuple[str, ...]
    router: str | None = None  # path of the MoE router inside a layer (absent in dense layers)
    router_output: RouterOutput | None = None  # what that router returns
    experts: str | None = None  # path of the fused routed experts inside a layer
    shared_expert: str | None = None
    unsupported: str | None = None  # why this architecture has no sites by the definition


# Every router of transformers 5.x returns the 3-tuple (logits [B*T, E], top-k weights [B*T, k],
# top-k expert ids [B*T, k] int64) and flattens its input to [B*T, H] itself (GLM-4 MoE's router
# receives [B, T, H], the others [B*T, H]). Router classes in the comments of the rows below.
_SLOTS = dict(logits=0, weights=1, indices=2)


_SOFTMAX = "softmax over all E logits (fp32), top-k, renormalised when config.norm_topk_prob"


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        "qwen3_moe",
        ("qwen3_moe",),
        router="mlp.gate",  # Qwen3MoeTopKRouter
        router_output=RouterOutput(**_SLOTS, scoring=_SOFTMAX, sorted=True),
        experts="mlp.experts",
    ),
    Architecture(
        "qwen3_next",
        ("qwen3_next",),
        router="mlp.gate",  # Qwen3NextTopKRouter
        router_output=RouterOutput(**_SLOTS, scoring=_SOFTMAX, sorted=True),
        experts="mlp.experts",
        shared_expert="mlp.shared_expert",
    ),
    Architecture(
        "olmoe",
        ("olmoe",),
        router="mlp.gate",  # OlmoeTopKRouter
        router_output=RouterOutput(**_SLOTS, scoring=_SOFTMAX, sorted=True),
        experts="mlp.experts",
    ),
    Architecture(
        "mixtral",
        ("mixtral",),
        router="mlp.gate",  # MixtralTopKRouter
        router_output=RouterOutput(
            **_SLOTS,
            scoring="softmax over all E logits (fp32), top-k, always renormalised",
            sorted=True,
        ),
        experts="mlp.experts",
    ),
    Architecture(
        "glm4_moe",
        ("glm4_moe",),
        router="mlp.gate",  # Glm4MoeTopkRouter
        router_output=RouterOutput(
            **_SLOTS,
            scoring="sigmoid(logits) in fp32; choice by sigmoid + e_score_correction_bias within "
            "the topk_group best of n_group groups; weights = chosen sigmoid scores, "
            "renormalised when norm_topk_prob, x routed_scaling_factor",
            sorted=False,  # torch.topk(sorted=False): slot order carries no meaning
        ),
        experts="mlp.experts",
        shared_expert="mlp.shared_experts",
    ),
    Architecture(
        "gpt_oss",
        ("gpt_oss",),
        router="mlp.router",  # GptOssTopKRouter
        router_output=RouterOutput(
            **_SLOTS,
            scoring="top-k over the logits (linear with bias), softmax over the k chosen logits",
            sorted=True,
        ),
        experts="mlp.experts",
    ),
    Architecture(
        "rwkv",
        ("rwkv",),
        unsupported="its blocks mix each position with the previous one (token shift) before "
        "every projection and have no attention, so no single tensor is what the block reads",
    ),
)


# architecture name -> what its router returns; stored results name the architecture, so
# reports read it here
ROUTER_OUTPUTS: dict[str, RouterOutput] = {
    f.name: f.router_output for f in ARCHITECTURES if f.router_output is not None
}
