"""Total and active parameter counts from a model config, on the ``meta`` device (no weights).

active = non-expert parameters + top_k / num_experts x routed-expert parameters (shared experts
and routers are always active). Both are reported with and without the input embedding table,
because published "active" counts usually leave it out.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch

from harness.config_fields import config_field
from harness.errors import HarnessError


@dataclass(frozen=True)
class ParamCounts:
    total: int
    active: int
    embedding: int  # the input embedding table
    routed_experts: int
    num_experts: int
    top_k: int

    @property
    def total_no_embedding(self) -> int:
        return self.total - self.embedding

    @property
    def active_no_embedding(self) -> int:
        return self.active - self.embedding

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_no_embedding"] = self.total_no_embedding
        d["active_no_embedding"] = self.active_no_embedding
        return d


def moe_shape(config) -> tuple[int, int]:
    """(num_experts, top_k) of a config; (0, 0) for a dense model."""
    return config_field(config, "num_experts", 0), config_field(config, "top_k", 0)


def count_model(model: torch.nn.Module) -> ParamCounts:
    """Counts from an instantiated model (meta or real). Routed experts are the parameters under
    a module named ``experts`` whose first dimension is the number of experts."""
    num_experts, top_k = moe_shape(model.config)
    total = routed = 0
    seen: set[int] = set()
    modules = dict(model.named_modules())
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:  # tied weights count once
            continue
        seen.add(id(p))
        n = p.numel()
        total += n
        owner = name.rsplit(".", 1)[0].split(".")
        # fused: one [E, ...] tensor in a module named experts, or of an "...Experts" class
        # (JetMoE's ParallelExperts under input_linear / output_linear)
        expert_module = (
            owner[-1] == "experts" or "Expert" in type(modules.get(".".join(owner), None)).__name__
        )
        fused = expert_module and p.dim() >= 2 and p.shape[0] == num_experts
        # one module per expert: ``...experts.<i>.<proj>.weight``
        listed = any(a == "experts" and b.isdigit() for a, b in zip(owner, owner[1:], strict=False))
        if num_experts > 1 and (fused or listed):
            routed += n
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    embedding = emb.weight.numel() if emb is not None and hasattr(emb, "weight") else 0
    has_experts = any("experts" in n.split(".") for n, _ in model.named_modules())
    if num_experts > 1 and routed == 0 and not has_experts:
        num_experts = top_k = 0  # the config allows experts but no layer has any (all dense)
    elif num_experts > 1 and routed == 0:
        raise HarnessError(
            f"{type(model).__name__} declares {num_experts} experts but no fused expert "
            "parameters were found; harness/loading/params.py cannot count its active parameters."
        )
    active = total - routed + (routed * top_k) // max(num_experts, 1) if num_experts > 1 else total
    return ParamCounts(total, active, embedding, routed, num_experts, top_k)


def count_from_config(config) -> ParamCounts:
    """Instantiate ``config`` on the meta device and count; no memory, no download."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_config(config)
    except ValueError as err:
        raise HarnessError(
            f"transformers cannot build model_type {getattr(config, 'model_type', '?')!r} "
            f"({err.__class__.__name__}); upgrade transformers or check the config."
        ) from None
    return count_model(model)


def max_positions(config) -> int | None:
    return config_field(config, "max_positions")
