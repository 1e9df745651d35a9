"""--perplexity: the loss from the same forward pass equals the model's own loss."""

import math

import pytest
import torch
from factories import random_ids, random_model

from harness.pipeline import analyze


@pytest.mark.parametrize("arch", ["qwen3", "opt", "gpt2", "olmoe"])
def test_perplexity_equals_the_models_own_loss(arch):
    model = random_model(arch, torch.float32, seed=31)
    ids = random_ids(3, 16, seed=32)
    r = analyze(model, ids, batch_size=2, perplexity=True)
    with torch.no_grad():
        losses = [
            model(input_ids=ids[i : i + 1], labels=ids[i : i + 1]).loss.item() for i in range(3)
        ]
    want = math.exp(sum(losses) / len(losses))  # equal-length windows: mean of means
    assert r.sections["perplexity"]["perplexity"] == pytest.approx(want, rel=1e-5)
    assert r.sections["perplexity"]["predicted_tokens"] == 3 * 15
    assert r.timing["forward_calls"] == 2  # still one forward pass per batch
