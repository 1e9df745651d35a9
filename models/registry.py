"""The model registry: one frozen, declarative entry per model.

Entries are data. Parameter counts are never typed in: they come from the model config
(``harness.loading.params``); when an entry gives no GPU plan, preflight's memory model sizes one
from its config (``harness.preflight.sizing``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# the study group of an entry, and its pytest marker's description (harness.plugin registers
# them; the CLI's --group takes its choices from here)
GROUP_MARKERS = {
    "moe": "the 7 Mixture-of-Experts models of the study (GPU)",
    "dense": "the 5 dense Qwen3 models of the study (GPU)",
    "reference": "the 2022 reference families OPT, GPT-2, Pythia (GPU)",
    "tiny": "small offline replicas of every studied architecture (the offline default, CPU)",
}
GROUPS = tuple(GROUP_MARKERS)

# RunPod GPU type ids, in order of preference (fallbacks when one has no capacity).
A100_80 = ("NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3")
H100_80 = ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-80GB")
SMALL_24 = ("NVIDIA RTX A5000", "NVIDIA GeForce RTX 4090", "NVIDIA L4", "NVIDIA RTX A6000")
GPU_MEMORY_GB = {
    "NVIDIA A100 80GB PCIe": 80,
    "NVIDIA A100-SXM4-80GB": 80,
    "NVIDIA H100 80GB HBM3": 80,
    "NVIDIA H100 PCIe": 80,
    "NVIDIA RTX A5000": 24,
    "NVIDIA GeForce RTX 4090": 24,
    "NVIDIA L4": 24,
    "NVIDIA RTX A6000": 48,
}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class GpuPlan:
    gpu_types: tuple[str, ...]
    count: int = 1
    disk_gb: int = 150

    @property
    def memory_gb(self) -> int:
        return self.count * GPU_MEMORY_GB.get(self.gpu_types[0], 80)


@dataclass(frozen=True)
class Published:
    """A figure published elsewhere, with the settings it was made with."""

    num_outliers: int | None = None  # seed-compatible (sequence, dim) pairs
    total_params_b: float | None = None
    active_params_b: float | None = None
    mean_layer_pct: float | None = None
    mean_seq_pct: float | None = None
    # Dettmers' table 4 counts distinct dims and its percentages are pooled ("affected by any
    # outlier dim"): compare them with our pooled figures, not with the pair averages.
    outlier_dims: int | None = None
    source: str = "original study README (arb8020/research, dev/outlier-features)"
    # The settings the figure was made with; a run is comparable when it used the same. The
    # weights' dtype is the entry's own (``ModelEntry.dtype``: bf16, OLMoE's float32 rerun), and
    # the count compared is ours as the original computed it (activations rounded to bf16).
    settings: tuple[tuple[str, object], ...] = (
        ("dataset", "HuggingFaceFW/fineweb-edu"),
        ("num_seqs", 16),
        ("seq_len", 2048),
        ("stride", 1024),
        ("sites", "ln"),
        ("layer_unit", "sites"),
        ("skip_first_position", False),
        ("magnitude", 6.0),
        ("layer_frac", 0.25),
        ("seq_frac", 0.06),
    )
    rounding: str = "activations cast to bfloat16 before |x| >= 6 (also in float32 runs)"


@dataclass(frozen=True)
class ModelEntry:
    id: str  # pytest id, e.g. "qwen3_0.6b"
    hub_id: str  # Hugging Face id, or "tiny:<name>" for the built-in replicas
    group: str  # moe | dense | reference | tiny (GROUPS)
    revision: str | None = None  # pin a hub commit; None = the branch head at run time
    dtype: str = "bfloat16"
    sites: str = "ln"  # what --sites auto measures: dettmers for table 4's families
    trust_remote_code: bool = False
    gated: bool = False
    gpu: GpuPlan | None = None  # None: sized by preflight's memory model from the config
    published: Published | None = None
    config_dir: str | None = None  # folder name in models/configs, for offline checks
    load_kwargs: tuple[tuple[str, object], ...] = ()
    # (pip package, file name) of a GGUF file shipped in a package: weights without the hub
    gguf: tuple[str, str] | None = None
    notes: str = ""
    marks: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(f"{self.id}: group must be one of {GROUPS}")

    @property
    def is_tiny(self) -> bool:
        """A built-in replica, built here from the offline corpus (harness.loading.tiny_builder)."""
        return self.hub_id.startswith("tiny:")

    @property
    def offline(self) -> bool:
        """Runs on this machine without the hub or a GPU: a tiny replica, or a GGUF file that a
        pip package ships."""
        return self.is_tiny or self.gguf is not None
