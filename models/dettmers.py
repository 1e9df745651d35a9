"""Dettmers et al. 2022, appendix C, table 4, as data: the published "phase transition".

LLM.int8() (arXiv 2208.07339) measured the inputs of the attention projections and of the FFN
expansion layer on C4 with the criteria |x| >= 6, >= 25% of layers, >= 6% of sequence
positions. Its table gives, per model, the number of outlier feature dimensions and the
percentage of layers and of sequence positions they affect. Our pooled figures
(``num_dims``, ``sites_affected_pct``, ``positions_affected_pct``) are the comparable ones.

"fairseq" rows are the dense fairseq language models (Artetxe et al. 2021), not OPT: OPT is
the nearest family we can run, so our OPT rows are shown BESIDE them, not as a replication.
"GPT-2" rows are the OpenAI GPT-2 checkpoints (117M is the size the GPT-2 paper gives for the
model that has 124M parameters). Table 4 has no Pythia model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

SOURCE = "Dettmers et al. 2022, LLM.int8() (arXiv 2208.07339), appendix C, table 4"
CRITERIA = {"magnitude": 6.0, "layer_frac": 0.25, "seq_frac": 0.06}
DATASET = "C4"
# The settings table 4 was made under, as data; None = the paper does not state it (not
# checked, and said so). Sites: "attention projection (key/query/value/output) and the expansion
# layer of the FFN" (--sites dettmers). Layer unit: its percentages are fractions of those
# inputs, not of transformer layers: 64% (fairseq 1.3B, 24 layers), 52% (2.7B, 32) and 62%
# (GPT-J, 28) are k / L for no whole k, and k / 3L for some (docs/sites.md).
SETTINGS: dict[str, object] = {
    "dataset": DATASET,
    "sites": "dettmers",
    "layer_unit": "sites",
    **CRITERIA,
    "seq_len": None,
    "dtype": None,
    "first_position": None,
    "rounding": None,
}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMBT])\s*$", re.IGNORECASE)
_UNITS = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def parse_size(text: str) -> int:
    """'117M' -> 117_000_000, '1.5B' -> 1_500_000_000, '6.7b' -> 6_700_000_000."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a parameter size like '125M' or '6.7B': {text!r}")
    return int(round(float(m.group(1)) * _UNITS[m.group(2).upper()]))


@dataclass(frozen=True)
class ReferencePoint:
    family: str  # as the table names it: "GPT-2", "fairseq", "GPT-J"
    size: str  # as the table prints it: "117M"
    params: int  # parse_size(size)
    c4_ppl: float
    outlier_dims: int
    layer_pct: float  # % of layers affected
    seq_pct: float  # % of sequence dimensions (positions) affected
    num_layers: int  # transformer layers of the model (GPT-2 paper; Artetxe et al. 2021; GPT-J)

    @property
    def label(self) -> str:
        return f"{self.family} {self.size}"

    def to_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


def _point(family: str, size: str, ppl: float, dims: int, layers: float, seq: float, n: int):
    return ReferencePoint(family, size, parse_size(size), ppl, dims, float(layers), float(seq), n)


# In the table's order (METHOD.md, section 5).
DETTMERS_TABLE4: tuple[ReferencePoint, ...] = (
    _point("GPT-2", "117M", 33.5, 1, 25, 6, 12),
    _point("GPT-2", "345M", 26.0, 2, 29, 18, 24),
    _point("fairseq", "125M", 25.7, 2, 25, 22, 12),
    _point("GPT-2", "762M", 22.6, 2, 31, 16, 36),
    _point("GPT-2", "1.5B", 21.0, 2, 41, 35, 48),
    _point("fairseq", "1.3B", 15.9, 4, 64, 47, 24),
    _point("fairseq", "2.7B", 14.4, 5, 52, 18, 32),
    _point("GPT-J", "6.0B", 13.8, 6, 62, 28, 28),
    _point("fairseq", "6.7B", 13.3, 6, 100, 75, 32),
    _point("fairseq", "13B", 12.5, 7, 100, 73, 40),
)


def reference_point(label: str) -> ReferencePoint:
    """The row labelled e.g. 'GPT-2 117M'."""
    for p in DETTMERS_TABLE4:
        if p.label == label:
            return p
    raise KeyError(f"no row {label!r} in Dettmers' table 4")


def reference_series() -> dict:
    """Lists for a labelled plot series, one entry per row, sorted by params:
    params, layer_pct, seq_pct, dims, ppl, labels, families; plus source and criteria."""
    points = sorted(DETTMERS_TABLE4, key=lambda p: p.params)
    return {
        "name": "Dettmers et al. 2022 (table 4)",
        "params": [p.params for p in points],
        "layer_pct": [p.layer_pct for p in points],
        "seq_pct": [p.seq_pct for p in points],
        "dims": [p.outlier_dims for p in points],
        "ppl": [p.c4_ppl for p in points],
        "labels": [p.label for p in points],
        "families": [p.family for p in points],
        "source": SOURCE,
        "dataset": DATASET,
        "criteria": dict(CRITERIA),
    }


# Our reference families (id prefix) -> the table's family of the same lineage.
FAMILY_OF_PREFIX: dict[str, str | None] = {
    "opt": "fairseq",
    "gpt2": "GPT-2",
    "pythia": None,
    "fairseq": "fairseq",  # fairseq_dense_<size>: the table's own fairseq rows
    "gpt": "GPT-J",  # gpt_j_6b
}
# GPT-2 ids name sizes, not counts; the counts of the hub checkpoints.
GPT2_SIZES = {
    "small": 124_439_808,
    "medium": 354_823_168,
    "large": 774_030_080,
    "xl": 1_557_611_200,
}
# Our figures beside Dettmers' columns (pooled figures: see the module doc).
OURS = {"dims": "num_dims", "layer_pct": "sites_affected_pct", "seq_pct": "positions_affected_pct"}


def _prefix(model_id: str) -> str | None:
    head = str(model_id).split("_", 1)[0].lower()
    return head if head in FAMILY_OF_PREFIX and "_" in str(model_id) else None


def nominal_params(model_id: str) -> int | None:
    """The size a reference id names: 'opt_1.3b' -> 1.3e9, 'gpt2_xl' -> 1_557_611_200,
    'fairseq_dense_2.7b' -> 2.7e9."""
    prefix = _prefix(model_id)
    if prefix is None:
        return None
    suffix = model_id.rsplit("_", 1)[1]
    if prefix == "gpt2":
        return GPT2_SIZES.get(suffix)
    try:
        return parse_size(suffix)
    except ValueError:
        return None


def _params_of(row: dict) -> float | None:
    for key, scale in (("total_params", 1.0), ("total_params_b", 1e9)):
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
            return float(v) * scale
    return nominal_params(str(row.get("id")))


def table4_comparability(row: dict) -> str | None:
    """For one of our rows of a table-4 family (ids opt_*, gpt2_*, fairseq_*, gpt_j_*): whether
    it was made under the settings table 4 states (``SETTINGS``), and if not, why; None for
    other rows. ``row["settings"]``: the row's settings (``Row.settings``)."""
    if _prefix(str(row.get("id") or row.get("model") or "")) is None:
        return None
    ours = row.get("settings") or {}
    differ = []
    for key, want in SETTINGS.items():
        if want is None:
            continue
        got = ours.get(key)
        same = (
            isinstance(got, str) and want.lower() in got.lower().split("/")[-1].split("-")
            if key == "dataset"
            else got == want
        )
        if not same:
            differ.append(f"{key} {got} vs {want}")
    unstated = ", ".join(k for k, v in SETTINGS.items() if v is None)
    if differ:
        return "not comparable: " + "; ".join(differ)
    return f"comparable (not stated in table 4, so not checked: {unstated})"


def beside_ours(rows: Sequence[dict], ours: dict[str, str] | None = None) -> list[dict]:
    """Our reference-family rows (ids opt_*, gpt2_*, pythia_*) each beside Dettmers' nearest
    published point (nearest in log10 params) of the same lineage: fairseq for OPT, GPT-2 for
    GPT-2, none for Pythia. Other rows are left out; the output is sorted by family, then
    params. ``ours`` maps Dettmers' columns (dims, layer_pct, seq_pct) to our row keys
    (default ``OURS``: the pooled figures). ``same_size`` is True when the sizes differ by
    less than 10%."""
    keys = {**OURS, **(ours or {})}
    out = []
    for row in rows:
        model_id = str(row.get("id") or row.get("model") or "")
        prefix = _prefix(model_id)
        if prefix is None:
            continue
        params = _params_of(row)
        entry = {
            "id": model_id,
            "params": params,
            **{f"ours_{col}": row.get(key) for col, key in keys.items()},
            "dettmers": None,
            "dettmers_params": None,
            "dettmers_dims": None,
            "dettmers_layer_pct": None,
            "dettmers_seq_pct": None,
            "same_size": False,
            "comparability": table4_comparability(row),
        }
        family = FAMILY_OF_PREFIX[prefix]
        candidates = [p for p in DETTMERS_TABLE4 if p.family == family]
        if family is None or not candidates:
            entry["note"] = "Dettmers' table 4 has no Pythia model"
        elif params is None:
            entry["note"] = "parameter count unknown: no point paired"
        else:
            p = min(candidates, key=lambda c: abs(math.log10(c.params / params)))
            same = abs(p.params / params - 1.0) < 0.10
            entry.update(
                dettmers=p.label,
                dettmers_params=p.params,
                dettmers_dims=p.outlier_dims,
                dettmers_layer_pct=p.layer_pct,
                dettmers_seq_pct=p.seq_pct,
                same_size=same,
            )
            if prefix == "gpt2":
                entry["note"] = "same checkpoint (the GPT-2 paper's size)"
            elif prefix in ("fairseq", "gpt"):
                entry["note"] = "the table's own model"
            else:
                entry["note"] = "fairseq dense LM, not OPT: same lineage" + (
                    ", same size" if same else f", nearest published size {p.size}"
                )
        out.append(entry)
    order = list(FAMILY_OF_PREFIX)
    out.sort(key=lambda e: (order.index(_prefix(e["id"])), e["params"] or 0.0))
    return out


__all__ = [
    "CRITERIA",
    "DATASET",
    "DETTMERS_TABLE4",
    "ReferencePoint",
    "SOURCE",
    "beside_ours",
    "SETTINGS",
    "table4_comparability",
    "nominal_params",
    "parse_size",
    "reference_point",
    "reference_series",
]
