"""The analysis options, declared once for both the ``outliers`` CLI and the pytest plugin.

Each option is one ``Option`` row; ``add_to_argparse`` and ``add_to_pytest`` turn the rows into
``--flags`` (pytest also reads them from ``pytest.ini``), and ``from_argparse`` /
``from_pytest`` give the same ``AnalysisOptions``. ``None`` means "the model's default": the
built-in corpus for tiny models, 16 x 2048 tokens of FineWeb-Edu for real ones.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from harness.engine.site_sets import SITE_SETS
from harness.errors import HarnessError

STUDY_DATASET = "HuggingFaceFW/fineweb-edu"  # the original study's corpus, the real-model default


@dataclass(frozen=True)
class Option:
    name: str  # attribute of AnalysisOptions; the flag is --name with "_" -> "-"
    type: type
    default: object
    help: str
    choices: tuple | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option(
        "dataset",
        str,
        None,
        "hub dataset id, local .jsonl/.parquet/.txt file or directory, "
        "or 'builtin' (default: FineWeb-Edu for real models, builtin for tiny ones)",
    ),
    Option("dataset_config", str, None, "dataset config name (FineWeb-Edu: sample-10BT)"),
    Option("split", str, "train", "dataset split"),
    Option("dataset_revision", str, None, "dataset revision (commit) to pin"),
    Option("text_field", str, "text", "the field of each record that holds the document text"),
    Option("num_seqs", int, None, "number of token windows (default 16; tiny models 16)"),
    Option("seq_len", int, None, "tokens per window (default 2048; tiny models 256)"),
    Option(
        "stride",
        int,
        None,
        "tokens between window starts (default seq_len: no overlap; "
        "seq_len/2 reproduces the original study)",
    ),
    Option("bos", str, "auto", "BOS policy: auto, none, each", ("auto", "none", "each")),
    Option(
        "sites",
        str,
        "auto",
        "site set: ln (block inputs: what attention and MLP read), dettmers (ln plus the "
        "attention output projection's input: Dettmers' list), residual (layer outputs), all; "
        "auto = dettmers for Dettmers' table-4 families (gpt2_*, fairseq_*, gpt_j_*, opt_*), "
        "ln otherwise",
        ("auto", *SITE_SETS),
    ),
    Option("magnitude", float, 6.0, "outlier magnitude |x| >= M (Dettmers: 6)"),
    Option("layer_frac", float, 0.25, "minimum share of sites or layers (Dettmers: 0.25)"),
    Option("seq_frac", float, 0.06, "minimum share of token positions (Dettmers: 0.06)"),
    Option(
        "layer_unit",
        str,
        "sites",
        "layer-%% denominator: sites (each measured tensor; the original study, and what "
        "table 4's numbers fit) or layers (a transformer layer counts when any of its sites "
        "does); both are recorded",
        ("sites", "layers"),
    ),
    Option(
        "skip_first_position",
        bool,
        False,
        "leave each window's first position out of the headline figures (both are recorded)",
    ),
    Option("device", str, "auto", "auto (cuda if present), cpu or cuda", ("auto", "cpu", "cuda")),
    Option(
        "dtype",
        str,
        "auto",
        "auto (the registry's or the checkpoint's), bfloat16, float16, float32",
        ("auto", "bfloat16", "float16", "float32"),
    ),
    Option(
        "batch_size",
        int,
        None,
        "windows per forward pass (default: automatic, halved on out-of-memory)",
    ),
    Option("results_dir", str, "results", "where result directories are written"),
    Option(
        "no_attribution",
        bool,
        False,
        "skip token/position, massive-activation and MoE "
        "expert attribution (on by default, same forward pass)",
    ),
    Option(
        "perplexity",
        bool,
        False,
        "also record the next-token loss on the same windows (same forward pass)",
    ),
)


@dataclass(frozen=True)
class AnalysisOptions:
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    dataset_revision: str | None = None
    text_field: str = "text"
    num_seqs: int | None = None
    seq_len: int | None = None
    stride: int | None = None
    bos: str = "auto"
    sites: str = "auto"
    magnitude: float = 6.0
    layer_frac: float = 0.25
    seq_frac: float = 0.06
    layer_unit: str = "sites"
    skip_first_position: bool = False
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | None = None
    results_dir: str = "results"
    no_attribution: bool = False
    perplexity: bool = False

    def validated(self) -> AnalysisOptions:
        for name in ("num_seqs", "seq_len", "stride", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise HarnessError(f"--{name.replace('_', '-')} must be at least 1 (got {value}).")
        from harness.engine.criteria import Criteria

        Criteria(self.magnitude, self.layer_frac, self.seq_frac, self.layer_unit)  # validates
        for opt in OPTIONS:
            value = getattr(self, opt.name)
            if opt.choices and value not in opt.choices:
                raise HarnessError(
                    f"{opt.flag} must be one of {', '.join(opt.choices)} (got {value!r})."
                )
        return self

    def sites_for(self, spec) -> str:
        """The site set to measure ``spec`` (a registry id or entry, a hub id, a path) with:
        ``--sites`` when given, else the registry entry's (``ModelEntry.sites``), else ln."""
        if self.sites != "auto":
            return self.sites
        from harness import models

        entry = models.REGISTRY.get(spec if isinstance(spec, str) else getattr(spec, "id", ""))
        return entry.sites if entry is not None else "ln"

    def with_defaults_for(self, tiny: bool) -> AnalysisOptions:
        """Fill the per-model defaults: FineWeb-Edu 16 x 2048, or the built-in corpus for tiny."""
        if tiny:
            return replace(
                self,
                dataset=self.dataset or "builtin",
                num_seqs=self.num_seqs or 16,
                seq_len=self.seq_len or 256,
            )
        dataset = self.dataset or STUDY_DATASET
        config = self.dataset_config
        if config is None and dataset == STUDY_DATASET:
            config = "sample-10BT"
        return replace(
            self,
            dataset=dataset,
            dataset_config=config,
            num_seqs=self.num_seqs or 16,
            seq_len=self.seq_len or 2048,
        )


def _convert(opt: Option, raw):
    if raw is None or raw == "":
        return opt.default
    if opt.type is bool:
        return str(raw).strip().lower() in ("1", "true", "yes", "on")
    try:
        return opt.type(raw)
    except (TypeError, ValueError):
        raise HarnessError(f"{opt.flag} expects a {opt.type.__name__} (got {raw!r}).") from None


def add_to_argparse(parser) -> None:
    for opt in OPTIONS:
        if opt.type is bool:
            parser.add_argument(opt.flag, dest=opt.name, action="store_true", help=opt.help)
            continue
        parser.add_argument(
            opt.flag,
            dest=opt.name,
            type=opt.type,
            default=opt.default,
            choices=opt.choices,
            help=opt.help,
        )


def from_argparse(ns) -> AnalysisOptions:
    return AnalysisOptions(**{f.name: getattr(ns, f.name) for f in fields(AnalysisOptions)})


def add_to_pytest(group, parser) -> None:
    """Flags in ``group`` and the same names as ``pytest.ini`` settings (flag wins)."""
    for opt in OPTIONS:
        if opt.type is bool:
            group.addoption(
                opt.flag,
                dest=f"outliers_{opt.name}",
                action="store_const",
                const="true",
                default=None,
                help=opt.help,
            )
        else:
            group.addoption(opt.flag, dest=f"outliers_{opt.name}", default=None, help=opt.help)
        parser.addini(f"outliers_{opt.name}", opt.help, default=None)


def from_pytest(config) -> AnalysisOptions:
    values = {}
    for opt in OPTIONS:
        raw = config.getoption(f"outliers_{opt.name}")
        if raw is None:
            raw = config.getini(f"outliers_{opt.name}")
        values[opt.name] = _convert(opt, raw)
    return AnalysisOptions(**values).validated()
