"""One row of a report per run directory: its fields, and the export's columns (the original study's first)."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.engine.criteria import Criteria
from harness.engine.statistics import CapturedStats
from harness.reports.bootstrap import Interval

# The original study's export (generate_comparison_plots.py --format csv), in its order.
EXPORT_COLUMNS: tuple[str, ...] = (
    "model_name",
    "total_params_b",
    "active_params_b",
    "num_outliers",
    "mean_layer_pct",
    "median_layer_pct",
    "mean_seq_pct",
    "median_seq_pct",
)


CI_METRICS: tuple[str, ...] = (
    "num_outliers",
    "mean_layer_pct",
    "median_layer_pct",
    "mean_seq_pct",
    "median_seq_pct",
    "pooled_dims",
    "pooled_layer_pct",
    "pooled_seq_pct",
    "sites_affected_pct",
    "positions_affected_pct",
)


# The headline figures under each choice the definitions leave open (result.json's
# ``by_definition``): per site and per transformer layer, with and without the first position.
DEFINITION_COLUMNS: tuple[str, ...] = (
    "pairs_per_site",
    "pairs_per_layer",
    "dims_per_site",
    "dims_per_layer",
    "pct_sites_affected",
    "pct_layers_affected",
    "dims_without_first_position",
    "positions_affected_pct_without_first_position",
)


def definition_figures(by_definition: dict, unit: str) -> dict:
    """``DEFINITION_COLUMNS`` from a ``by_definition`` table (None where not recorded)."""

    def get(key, part, field):
        figs = (by_definition or {}).get(key)
        return None if figs is None else figs[part][field]

    return {
        "pairs_per_site": get("sites", "seed_compatible", "num_outliers"),
        "pairs_per_layer": get("layers", "seed_compatible", "num_outliers"),
        "dims_per_site": get("sites", "pooled", "num_dims"),
        "dims_per_layer": get("layers", "pooled", "num_dims"),
        "pct_sites_affected": get("sites", "pooled", "sites_affected_pct"),
        "pct_layers_affected": get("layers", "pooled", "sites_affected_pct"),
        "dims_without_first_position": get(f"{unit}_without_first_position", "pooled", "num_dims"),
        "positions_affected_pct_without_first_position": get(
            f"{unit}_without_first_position", "pooled", "positions_affected_pct"
        ),
    }


EXTRA_COLUMNS: tuple[str, ...] = (
    "label",
    "group",
    "total_params_no_emb_b",
    "active_params_no_emb_b",
    "pooled_dims",
    "pooled_layer_pct",
    "pooled_seq_pct",
    "sites_affected_pct",
    "positions_affected_pct",
    "layer_unit",
    *DEFINITION_COLUMNS,
    "published_num_outliers",
    "published_deviation",
    "published_deviation_pct",
    "table4_comparability",
    *(f"{m}_ci_{end}" for m in CI_METRICS for end in ("low", "high")),
    "comparable",
    "comparability",
    "activation_dtype",
    "dataset",
    "num_seqs",
    "seq_len",
    "stride",
    "bos",
    "windows_sha256",
    "sites",
    "magnitude",
    "layer_frac",
    "seq_frac",
    "rethresholded",
    "tokens_per_second",
    "forward_seconds",
    "pod_seconds",
    "pod_cost_usd",
    "run_dir",
)


COLUMNS: tuple[str, ...] = EXPORT_COLUMNS + EXTRA_COLUMNS


@dataclass
class Row:
    """One model's run, as reported. Percentages are 0-100; None where undefined (a mean over
    no pairs). ``ci`` maps each of ``CI_METRICS`` to its bootstrap ``Interval``."""

    model_name: str
    group: str  # study group: moe | dense | reference | tiny
    run_dir: str
    total_params: int | None
    active_params: int | None
    total_params_no_embedding: int | None
    active_params_no_embedding: int | None
    num_outliers: int
    mean_layer_pct: float | None
    median_layer_pct: float | None
    mean_seq_pct: float | None
    median_seq_pct: float | None
    pooled_dims: int
    pooled_layer_pct: float | None
    pooled_seq_pct: float | None
    sites_affected_pct: float
    positions_affected_pct: float
    criteria: Criteria
    rethresholded: bool
    activation_dtype: str
    sites: str
    data: dict  # dataset, config, revision, num_seqs, seq_len, stride, bos, windows_sha256
    tokenizer: str | None
    published_num_outliers: int | None = None
    published_deviation: int | str | None = None  # ours - published, or NOT_COMPARABLE_SETTINGS
    published_deviation_pct: float | str | None = None
    ci: dict[str, Interval] = field(default_factory=dict)
    comparable: bool = True
    comparability: str = "reference configuration"
    tokens_per_second: float | None = None
    forward_seconds: float | None = None
    pod_seconds: float | None = None
    pod_cost_usd: float | None = None
    num_experts: int = 0
    by_definition: dict = field(default_factory=dict, repr=False)  # DEFINITION_COLUMNS
    table4_comparability: str | None = None  # beside Dettmers' table 4: comparable, or why not
    figures: dict = field(default_factory=dict, repr=False)  # seed_compatible, pooled, per_site
    stats: CapturedStats | None = field(default=None, repr=False, compare=False)
    attribution: dict | None = field(default=None, repr=False, compare=False)
    tokenizer_name: str | None = field(default=None, repr=False, compare=False)
    label: str = ""  # the model id, plus what differs when one model has several runs

    def __post_init__(self):
        self.label = self.label or self.model_name

    @property
    def dims_per_layer(self) -> int | None:
        return self.by_definition.get("dims_per_layer")

    @property
    def pct_layers_affected(self) -> float | None:
        """% of transformer layers touched by a per-layer systematic dim (Dettmers' wording)."""
        return self.by_definition.get("pct_layers_affected")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    # -- views ---------------------------------------------------------------------------
    def export(self) -> dict:
        """The flat record of ``COLUMNS``, in order (None where a value is missing)."""
        out = {
            "model_name": self.model_name,
            "label": self.label,
            "total_params_b": _billions(self.total_params),
            "active_params_b": _billions(self.active_params),
            "num_outliers": self.num_outliers,
            "mean_layer_pct": self.mean_layer_pct,
            "median_layer_pct": self.median_layer_pct,
            "mean_seq_pct": self.mean_seq_pct,
            "median_seq_pct": self.median_seq_pct,
            "group": self.group,
            "total_params_no_emb_b": _billions(self.total_params_no_embedding),
            "active_params_no_emb_b": _billions(self.active_params_no_embedding),
            "pooled_dims": self.pooled_dims,
            "pooled_layer_pct": self.pooled_layer_pct,
            "pooled_seq_pct": self.pooled_seq_pct,
            "sites_affected_pct": self.sites_affected_pct,
            "positions_affected_pct": self.positions_affected_pct,
            "layer_unit": self.criteria.layer_unit,
            **{c: self.by_definition.get(c) for c in DEFINITION_COLUMNS},
            "published_num_outliers": self.published_num_outliers,
            "published_deviation": self.published_deviation,
            "published_deviation_pct": self.published_deviation_pct,
            "table4_comparability": self.table4_comparability,
        }
        for metric in CI_METRICS:
            iv = self.ci.get(metric)
            out[f"{metric}_ci_low"] = iv.low if iv else None
            out[f"{metric}_ci_high"] = iv.high if iv else None
        out.update(
            comparable=self.comparable,
            comparability=self.comparability,
            activation_dtype=self.activation_dtype,
            dataset=self.data.get("dataset"),
            num_seqs=self.data.get("num_seqs"),
            seq_len=self.data.get("seq_len"),
            stride=self.data.get("stride"),
            bos=self.data.get("bos"),
            windows_sha256=self.data.get("windows_sha256"),
            sites=self.sites,
            magnitude=self.criteria.magnitude,
            layer_frac=self.criteria.layer_frac,
            seq_frac=self.criteria.seq_frac,
            rethresholded=self.rethresholded,
            tokens_per_second=self.tokens_per_second,
            forward_seconds=self.forward_seconds,
            pod_seconds=self.pod_seconds,
            pod_cost_usd=self.pod_cost_usd,
            run_dir=self.run_dir,
        )
        return {c: out[c] for c in COLUMNS}

    def trend_row(self) -> dict:
        """The flat dict ``harness.reports.scaling.analyze_trends`` and ``harness.models.dettmers`` read."""
        return {
            "id": self.model_name,
            "group": self.group,
            "total_params": self.total_params,
            "active_params": self.active_params,
            "num_outliers": self.num_outliers,
            "mean_layer_pct": self.mean_layer_pct,
            "median_layer_pct": self.median_layer_pct,
            "mean_seq_pct": self.mean_seq_pct,
            "median_seq_pct": self.median_seq_pct,
            "num_dims": self.pooled_dims,
            "pooled_layer_pct": self.pooled_layer_pct,
            "pooled_seq_pct": self.pooled_seq_pct,
            "sites_affected_pct": self.sites_affected_pct,
            "positions_affected_pct": self.positions_affected_pct,
            "settings": self.settings(),
        }

    def settings(self) -> dict:
        """What a published comparison checks: the settings this row was made under."""
        return {
            "dataset": self.data.get("dataset"),
            "seq_len": self.data.get("seq_len"),
            "dtype": self.activation_dtype,
            "sites": self.sites,
            "layer_unit": self.criteria.layer_unit,
            "first_position": "left out" if self.criteria.skip_first_position else "included",
            "magnitude": self.criteria.magnitude,
            "layer_frac": self.criteria.layer_frac,
            "seq_frac": self.criteria.seq_frac,
            "rounding": "exact",
        }


def _billions(n) -> float | None:
    return None if n is None else n / 1e9


NOT_COMPARABLE_SETTINGS = "n/a (different settings)"
