"""The result of a run, typed: every key of result.json is named once, here.

``AnalysisResult`` is what ``harness.analyze`` returns and what ``read_result`` reads back; its
sections are records whose fields are the JSON keys (``result.data.num_seqs``,
``result.criteria.layer_frac``). Reports, checks, the resume logic and the runners read fields.
A record also reads like a mapping (``result.pooled["num_dims"]``), as result.json does, and
keeps what it holds beyond its fields (a section's details, an observer's additions) in
``extra``, written back as it was read.

Schema 2 spells each setting as its option does (``num_seqs``, ``layer_frac``, ``seq_frac``) and
the study group as ``group``; result files of schema 1 (``num_sequences``, ``layer_fraction``,
``seq_fraction``, ``family``, ``architecture``) are read with those names mapped; a newer schema
is refused with one sentence.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from harness.errors import HarnessError

SCHEMA_VERSION = 2
# the sections of result.json that are records; every other top-level key is a section dict
RECORD_SECTIONS = ("model", "data", "criteria", "seed_compatible", "pooled", "timing")
# schema 1 names -> schema 2 names, per section
RENAMED_IN_2 = {
    "model": {"family": "group", "architecture": "model_class"},
    "data": {"num_sequences": "num_seqs"},
    "criteria": {"layer_fraction": "layer_frac", "seq_fraction": "seq_frac"},
}


@dataclass(eq=False)
class Record(Mapping):
    """One section of result.json: its named fields plus ``extra`` (everything else, in order)."""

    extra: dict = field(default_factory=dict, repr=False)
    # fields the JSON read did not hold (a file older than the field): not written back
    absent: frozenset = field(default=frozenset(), repr=False)
    section: ClassVar[str] = ""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name not in ("extra", "absent"))

    @classmethod
    def from_json(cls, d: Mapping | None, *, read: bool = False) -> Record:
        """The record of a JSON object; ``read``: from a file, whose missing fields (a file
        older than them) stay missing when it is written back."""
        d = dict(d or {})
        names = cls.names()
        return cls(
            **{k: d[k] for k in names if k in d},
            extra={k: v for k, v in d.items() if k not in names},
            absent=frozenset(k for k in names if k not in d) if read else frozenset(),
        )

    def to_json(self) -> dict:
        out = {n: getattr(self, n) for n in self.names() if n not in self.absent}
        out.update(self.extra)
        return out

    # read like the JSON object it is written as
    def __getitem__(self, key: str) -> Any:
        if key in self.names() and key not in self.absent:
            return getattr(self, key)
        return self.extra[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())

    def __eq__(self, other) -> bool:  # equal to any mapping of the same items, as JSON is
        return isinstance(other, Mapping) and self.to_json() == dict(other.items())

    __hash__ = None


@dataclass(eq=False)
class ModelRecord(Record):
    id: str = "model"
    source: dict = field(default_factory=dict)  # kind, hub_id, path, revision, commit (+ gguf)
    model_class: str | None = None  # e.g. Qwen3ForCausalLM
    model_type: str | None = None  # the config's model_type
    group: str | None = None  # study group of a registry entry: moe | dense | reference | tiny
    num_layers: int | None = None
    hidden_size: int | None = None
    total_params: int | None = None
    active_params: int | None = None
    total_params_no_embedding: int | None = None
    active_params_no_embedding: int | None = None
    num_experts: int = 0
    experts_per_token: int = 0
    dtype: str | None = None  # the weights' dtype as loaded
    activation_dtype: str | None = None  # the dtype(s) the sites' activations came in
    device: str | None = None


@dataclass(eq=False)
class DataRecord(Record):
    dataset: str = "tensor"
    config: str | None = None
    split: str | None = None
    revision: str | None = None
    num_seqs: int = 0
    seq_len: int = 0
    stride: int = 0
    tokens: int = 0
    bos: str = "unknown"
    windows_sha256: str | None = None


@dataclass(eq=False)
class CriteriaRecord(Record):
    magnitude: float = 6.0
    layer_frac: float = 0.25
    seq_frac: float = 0.06
    layer_unit: str = "sites"  # the layer-% denominator: sites | layers
    skip_first_position: bool = False
    sites: str = "ln"
    num_sites: int = 0
    layer_denominator: int = 0  # in layer_unit: parallel blocks' shared input counts once
    grid: list = field(default_factory=list)
    site_names: list = field(default_factory=list)  # e.g. layers.0.attn_in, in site order
    site_modules: list = field(default_factory=list)  # the module each site's tensor belongs to
    layer_denominators: dict = field(default_factory=dict)  # {"sites": S, "layers": L}
    sites_per_layer: list = field(default_factory=list)
    shared_input_layers: list = field(default_factory=list)  # parallel blocks: one input
    sites_not_measured: list = field(default_factory=list)  # each with why
    site_definition: str = ""
    site_self_check: dict = field(default_factory=dict)  # engine/selfcheck.py's record
    comparison: str = ""


@dataclass(eq=False)
class SeedCompatible(Record):
    """The original study's figures: per (sequence, dim) pairs."""

    num_outliers: int = 0
    num_distinct_dims: int = 0
    num_sequences_with_outliers: int = 0
    mean_layer_pct: float | None = None
    median_layer_pct: float | None = None
    mean_seq_pct: float | None = None
    median_seq_pct: float | None = None
    pairs: list = field(default_factory=list)
    layer_unit: str = "sites"
    layer_denominator: int = 0
    first_position: str = "included"  # the windows' first positions: included | left out


@dataclass(eq=False)
class Pooled(Record):
    """Dettmers' figures: dims systematic over the whole corpus."""

    num_dims: int = 0
    dims: list = field(default_factory=list)
    mean_layer_pct: float | None = None
    mean_seq_pct: float | None = None
    sites_affected_pct: float | None = None
    positions_affected_pct: float | None = None
    num_windows: int = 0
    layer_unit: str = "sites"
    layer_denominator: int = 0
    first_position: str = "included"


@dataclass(eq=False)
class Timing(Record):
    forward_seconds: float | None = None
    analysis_seconds: float | None = None
    capture_seconds: float | None = None
    tokens_per_second: float | None = None
    load_seconds: float | None = None
    self_check_seconds: float | None = None
    batches: int | None = None
    batch_size: int | None = None
    oom_retries: int = 0
    forward_calls: int | None = None  # forward passes merged (== batches)


@dataclass(eq=False)
class Figures(Record):
    """What ``harness.engine.criteria.evaluate`` returns: the figures of one set of criteria,
    as the records of an ``AnalysisResult`` hold them."""

    seed_compatible: SeedCompatible = field(default_factory=SeedCompatible)
    pooled: Pooled = field(default_factory=Pooled)
    per_site: list = field(default_factory=list)

    def __post_init__(self):
        self.seed_compatible = _record("seed_compatible", self.seed_compatible)
        self.pooled = _record("pooled", self.pooled)


RECORDS: dict[str, type[Record]] = {
    "model": ModelRecord,
    "data": DataRecord,
    "criteria": CriteriaRecord,
    "seed_compatible": SeedCompatible,
    "pooled": Pooled,
    "timing": Timing,
}


def _record(name: str, value) -> Record:
    if isinstance(value, Record):
        return value
    return RECORDS[name].from_json(value)


@dataclass
class AnalysisResult:
    """One run: what ``harness.analyze`` returns and what ``read_result`` reads back.

    ``to_dict()`` is exactly what result.json holds (``environment`` included when set).
    ``stats`` is the captured statistics (None when read back: ``read_stats`` loads them);
    ``sections``: every other section (observers' summaries: attribution, perplexity; the
    provenance; a pod's record). ``parts``: with ``--sites all``, one result per site kind,
    measured in the same pass; a run writes these, never the pooled one.
    """

    model: ModelRecord
    data: DataRecord
    criteria: CriteriaRecord
    seed_compatible: SeedCompatible
    pooled: Pooled
    per_site: list
    timing: Timing
    stats: Any = field(default=None, repr=False)  # harness.engine.statistics.CapturedStats
    sections: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict, repr=False)
    environment: dict | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        for name in RECORD_SECTIONS:  # dicts given by a caller become records
            setattr(self, name, _record(name, getattr(self, name)))

    def to_dict(self) -> dict:
        out = {"schema_version": SCHEMA_VERSION}
        out.update({name: getattr(self, name).to_json() for name in RECORD_SECTIONS[:5]})
        out["per_site"] = self.per_site
        out["timing"] = self.timing.to_json()
        out.update(self.sections)
        if self.environment is not None:
            out["environment"] = self.environment
        return out

    @classmethod
    def from_json(cls, d: Mapping, where: str = "result.json") -> AnalysisResult:
        version = d.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
            raise HarnessError(
                f"{where} has schema version {version!r}; this harness reads 1 to "
                f"{SCHEMA_VERSION}: upgrade the harness (pip install -U outlier-harness) or "
                "rerun the model."
            )
        d = upgrade(dict(d))
        known = {*RECORD_SECTIONS, "per_site", "environment", "schema_version"}
        return cls(
            **{name: RECORDS[name].from_json(d.get(name), read=True) for name in RECORD_SECTIONS},
            per_site=list(d.get("per_site") or []),
            sections={k: v for k, v in d.items() if k not in known},
            environment=d.get("environment"),
            schema_version=version,
        )

    @property
    def criteria_tuple(self):
        """The run's criteria as ``harness.engine.criteria.Criteria``."""
        from harness.engine.criteria import Criteria

        c = self.criteria
        return Criteria(
            float(c.magnitude),
            float(c.layer_frac),
            float(c.seq_frac),
            c.layer_unit or "sites",
            bool(c.skip_first_position),
        )


def upgrade(d: dict) -> dict:
    """A result.json of an older schema in today's names (a copy; today's files unchanged)."""
    if d.get("schema_version", SCHEMA_VERSION) >= 2:
        return d
    out = dict(d)
    for section, renamed in RENAMED_IN_2.items():
        sec = dict(out.get(section) or {})
        for old, new in renamed.items():
            if old in sec and new not in sec:
                sec[new] = sec.pop(old)
        out[section] = sec
    return out


def as_result(result: AnalysisResult | Mapping) -> AnalysisResult:
    """A typed result from a typed one or a parsed result.json."""
    return result if isinstance(result, AnalysisResult) else AnalysisResult.from_json(result)
