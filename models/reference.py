"""The 2022 reference families: the models on which the outlier "phase transition" can be
checked with this harness (METHOD.md, section 5; ``pytest -m reference``).

- fairseq dense (``KoboldAI/fairseq-dense-*``, model_type ``xglm``): Dettmers' "fairseq" rows,
  the dense LMs of Artetxe et al. 2021 (125M, 1.3B, 2.7B, 6.7B, 13B) as converted to the hub;
  float16, as shipped. Pre-LN, sequential blocks: the sites are the q/k/v and fc1 inputs. The
  2022 transition is between their 2.7B and 6.7B rows (52% -> 100% of layers).
- GPT-J-6B (``EleutherAI/gpt-j-6b``): table 4's "GPT-J 6.0B". A parallel block: one norm output
  feeds attention and MLP, so each layer has one site (docs/sites.md); float16 (the hub's
  ``float16`` branch).
- OPT (``facebook/opt-*``): float16, as shipped. Dettmers' "fairseq" rows are the fairseq dense
  LMs above, NOT OPT, so OPT entries carry no published figure; the summary shows the nearest
  fairseq row beside them (``harness.models.dettmers.beside_ours``). An extra series.
- GPT-2 (``openai-community/gpt2*``): float32, as shipped and as Dettmers ran it. These ARE
  table 4's GPT-2 models (117M / 345M / 762M / 1.5B are the GPT-2 paper's sizes of the 124M /
  355M / 774M / 1.56B checkpoints), so they carry table 4's figures. Dettmers measured the
  inputs of q/k/v, of the attention output projection and of the FFN expansion on C4: our
  ``--sites dettmers``, which ``--sites auto`` picks for table 4's families (GPT-2, fairseq
  dense, GPT-J). Table 4's % columns are pooled figures (% of layers, % of positions touched by any
  outlier dim): compare them with our pooled ``sites_affected_pct`` / ``positions_affected_pct``.
  GPT-2 has 1024 positions: run it with ``--seq-len 1024`` (or less).
- Pythia (``EleutherAI/pythia-*``): float16, the dtype of the released checkpoints (the suite
  was trained in fp16 mixed precision). Not in table 4.

GPU plans are derived from the parameter count (``derive_gpu_plan``); figures come from
``harness.models.dettmers.DETTMERS_TABLE4``, never typed twice.
"""

from dataclasses import fields

from harness.models.dettmers import SETTINGS, reference_point
from harness.models.registry import ModelEntry, Published

DETTMERS_SETTINGS: tuple[tuple[str, object], ...] = (
    ("dataset", "allenai/c4"),
    *((k, v) for k, v in SETTINGS.items() if v is not None and k != "dataset"),
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


_OPT_CONFIGS = {"125m", "350m", "1.3b", "6.7b", "13b", "66b"}  # in models/configs
_OPT_NOTES = {
    "350m": "post-LN (do_layer_norm_before=false) with a 512-wide embedding projection: the "
    "site table takes the self_attn / fc1 inputs instead of the norm outputs",
    "2.7b": "no trustworthy config copy in models/configs (not checked offline)",
    "30b": "no trustworthy config copy in models/configs (not checked offline)",
}

OPT = tuple(
    ModelEntry(
        f"opt_{size}",
        f"facebook/opt-{size}",
        "reference",
        dtype="float16",  # the released checkpoints are fp16
        sites="dettmers",  # beside table 4's fairseq rows: measured as Dettmers did
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
        sites="dettmers",
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
        notes="no trustworthy config copy in models/configs (not checked offline); "
        "not in Dettmers' table 4",
    )
    for size in ("160m", "410m", "1.4b", "2.8b", "6.9b", "12b")
)

_FAIRSEQ = ("125M", "1.3B", "2.7B", "6.7B", "13B")
FAIRSEQ = tuple(
    ModelEntry(
        f"fairseq_dense_{size.lower()}",
        f"KoboldAI/fairseq-dense-{size}",
        "reference",
        dtype="float16",
        sites="dettmers",
        published=_dettmers(f"fairseq {size}"),
        notes="no config copy in the repository (not checked offline); parameter count and GPU "
        "plan from the published size; Dettmers' figures are on C4",
    )
    for size in _FAIRSEQ
)

GPTJ = (
    ModelEntry(
        "gpt_j_6b",
        "EleutherAI/gpt-j-6b",
        "reference",
        revision="float16",  # the fp16 branch: 12 GB instead of the main branch's 24 GB
        dtype="float16",
        sites="dettmers",
        published=_dettmers("GPT-J 6.0B"),
        notes="parallel attention + MLP: one site per layer; no config copy in the repository "
        "(not checked offline); Dettmers' figures are on C4",
    ),
)

# Dettmers' table 4 row by row (GPT-2, fairseq dense, GPT-J), then the extra series
REFERENCE: tuple[ModelEntry, ...] = GPT2 + FAIRSEQ + GPTJ + OPT + PYTHIA

__all__ = ["DETTMERS_SETTINGS", "REFERENCE"]
