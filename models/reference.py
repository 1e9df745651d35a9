"""The 2022 reference families: the models on which the outlier "phase transition" can be
checked with this harness (METHOD.md, section 5; ``pytest -m reference``).

- OPT (``facebook/opt-*``): float16, as shipped. Dettmers' "fairseq" rows are the fairseq dense
  LMs (Artetxe et al. 2021), NOT OPT, so OPT entries carry no published figure; the summary
  shows the nearest fairseq row beside them (``harness.reference.beside_ours``).
- GPT-2 (``openai-community/gpt2*``): float32, as shipped and as Dettmers ran it. These ARE
  table 4's GPT-2 models (117M / 345M / 762M / 1.5B are the GPT-2 paper's sizes of the 124M /
  355M / 774M / 1.56B checkpoints), so they carry table 4's figures. Dettmers measured the
  inputs of q/k/v and of the FFN expansion on C4; for pre-LN GPT-2 those are exactly the
  ``ln_1`` / ``ln_2`` outputs, our default "ln" sites (his out-projection input is not among
  them). Table 4's % columns are pooled figures (% of layers, % of positions touched by any
  outlier dim): compare them with our pooled ``sites_affected_pct`` / ``positions_affected_pct``.
  GPT-2 has 1024 positions: run it with ``--seq-len 1024`` (or less).
- Pythia (``EleutherAI/pythia-*``): float16, the dtype of the released checkpoints (the suite
  was trained in fp16 mixed precision). Not in table 4.

GPU plans are derived from the parameter count (``derive_gpu_plan``); figures come from
``harness.reference.DETTMERS_TABLE4``, never typed twice.
"""

from dataclasses import fields

from harness.reference import CRITERIA, reference_point

from .registry import ModelEntry, Published

DETTMERS_SETTINGS: tuple[tuple[str, object], ...] = (
    ("dataset", "allenai/c4"),
    ("sites", "ln"),
    ("magnitude", CRITERIA["magnitude"]),
    ("layer_frac", CRITERIA["layer_frac"]),
    ("seq_frac", CRITERIA["seq_frac"]),
)
# ``Published.outlier_dims`` (Dettmers' "outlier dims") is used once registry.Published has it.
_HAS_OUTLIER_DIMS = "outlier_dims" in {f.name for f in fields(Published)}


def _dettmers(label: str) -> Published:
    p = reference_point(label)
    extra = {"outlier_dims": p.outlier_dims} if _HAS_OUTLIER_DIMS else {}
    return Published(
        num_outliers=None,  # Dettmers counts distinct dims, not (sequence, dim) pairs
        total_params_b=p.params / 1e9,  # as published (the GPT-2 paper's size)
        mean_layer_pct=p.layer_pct,
        mean_seq_pct=p.seq_pct,
        source="Dettmers et al. 2022 table 4 (LLM.int8(), arXiv 2208.07339, appendix C)",
        settings=DETTMERS_SETTINGS,
        **extra,
    )


_OPT_CONFIGS = {"125m", "350m", "1.3b", "6.7b", "13b", "66b"}  # in shared/hf-configs
_OPT_NOTES = {
    "350m": "post-LN (do_layer_norm_before=false) with a 512-wide embedding projection: the "
    "site table takes the self_attn / fc1 inputs instead of the norm outputs",
    "2.7b": "no trustworthy config copy in shared/hf-configs (not checked offline)",
    "30b": "no trustworthy config copy in shared/hf-configs (not checked offline)",
}

OPT = tuple(
    ModelEntry(
        f"opt_{size}",
        f"facebook/opt-{size}",
        "reference",
        dtype="float16",  # the released checkpoints are fp16
        config_dir=f"facebook__opt-{size}" if size in _OPT_CONFIGS else None,
        notes=_OPT_NOTES.get(size, ""),
    )
    for size in ("125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b", "66b")
)

_GPT2 = (  # id suffix, hub id, table 4 row
    ("small", "openai-community/gpt2", "GPT-2 117M"),
    ("medium", "openai-community/gpt2-medium", "GPT-2 345M"),
    ("large", "openai-community/gpt2-large", "GPT-2 762M"),
    ("xl", "openai-community/gpt2-xl", "GPT-2 1.5B"),
)

GPT2 = tuple(
    ModelEntry(
        f"gpt2_{size}",
        hub_id,
        "reference",
        dtype="float32",
        published=_dettmers(row),
        notes="1024 positions: run with --seq-len 1024; Dettmers' figures are on C4",
    )
    for size, hub_id, row in _GPT2
)

PYTHIA = tuple(
    ModelEntry(
        f"pythia_{size}",
        f"EleutherAI/pythia-{size}",
        "reference",
        dtype="float16",  # the released checkpoints are fp16 (trained in fp16 mixed precision)
        notes="no trustworthy config copy in shared/hf-configs (not checked offline); "
        "not in Dettmers' table 4",
    )
    for size in ("160m", "410m", "1.4b", "2.8b", "6.9b", "12b")
)

REFERENCE: tuple[ModelEntry, ...] = OPT + GPT2 + PYTHIA

__all__ = ["DETTMERS_SETTINGS", "REFERENCE"]
