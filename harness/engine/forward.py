"""The forward pass the capture hooks ride on: the decoder stack without the LM head, its input device, out-of-memory."""

from __future__ import annotations

from collections.abc import Callable

import torch


def base_forward(model: torch.nn.Module) -> Callable[[torch.Tensor], object]:
    """The decoder stack without the LM head: all sites live inside it, and skipping the head
    avoids a [B, T, vocab] logits tensor that can be larger than the model's activations."""
    base = getattr(model, "base_model", model)
    device = input_device(model)

    def forward(token_ids: torch.Tensor):
        return base(input_ids=token_ids.to(device), use_cache=False)

    return forward


def input_device(model: torch.nn.Module) -> torch.device:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and hasattr(emb, "weight"):
        return emb.weight.device
    return next(model.parameters()).device


def is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
