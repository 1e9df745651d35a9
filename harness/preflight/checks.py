"""Preflight: before any weight is downloaded, say whether a model will run here, and how.

``preflight(model)`` reads only the model's ``config.json`` (a ``--configs`` folder, the hub cache,
or a small download when the hub is reachable), builds the model on the ``meta`` device and checks,
one row each (``ok`` / ``warn`` / ``refuse``, one sentence):

- ``model_type``: this transformers knows it and satisfies the harness's requirement;
- ``weights``: the weight format and the kernel path that WILL be used, decided the way
  transformers 5.x decides it. gpt-oss (MXFP4): the triton kernels are used only on a CUDA GPU of
  compute capability >= 7.5 with ``triton`` >= 3.4 and ``kernels`` in transformers' supported range
  (``KERNELS_MIN_VERSION`` <= v < ``KERNELS_MAX_VERSION``) and the kernel repo
  ``kernels-community/gpt-oss-triton-kernels`` cached or reachable; on the CPU transformers
  dequantizes unless ``use_kernels=True`` (the harness does not set it). Otherwise the checkpoint is
  dequantized to bf16 (~4x the expert memory). ``kernels`` (Qwen3-Next): ``fla``
  (flash-linear-attention) and ``causal_conv1d`` importable, else the slow reference path. Both
  fallbacks are refused unless ``allow_fallback``; then they run, labelled.
- ``attention`` / ``experts``: the implementations transformers picks by default, read from the
  meta-device model (this environment's checks decide, as they will at load time);
- ``access``: a gated model needs a token (``HF_TOKEN`` or a stored login); only whether one is set
  is ever reported, never its value;
- ``memory``: weights as loaded + activation headroom (``MEMORY_FORMULA``) against the GPUs
  present, a registry ``GpuPlan`` or ``--gpus``; ``disk``: the checkpoint as stored x 1.05 against
  free space at the hub cache or the plan's disk; ``seq_len``: at most the model's positions.

``PreflightReport.provenance()`` is what results record; ``kernel_path_of(model)`` reads, after
loading, which path transformers really took. ``python -m harness.preflight.checks MODEL...`` exits 2
with the refusal sentences.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from harness.errors import HarnessError

OK, WARN, REFUSE = "ok", "warn", "refuse"
GIB = 2**30

MXFP4_BYTES_PER_PARAM = 4.25 / 8  # 4-bit values + one 8-bit scale per block of 32
MXFP4_KERNEL_REPO = "kernels-community/gpt-oss-triton-kernels"
TRITON_MIN_CUDA = (3, 4, 0)  # transformers' Mxfp4HfQuantizer: CUDA needs triton >= 3.4.0
MXFP4_MIN_CAPABILITY = (7, 5)
HARNESS_TRANSFORMERS = ">=5.0,<6"  # pyproject's requirement, when the package metadata is absent

CUDA_CONTEXT_GIB = 1.0  # CUDA context + cuBLAS workspace, per GPU
FRAGMENTATION = 1.25  # allocator slack on the activation peak (CPU calibration: 1.0-1.2x)
CARD_USABLE = 0.985  # a card sold as "80 GB" reports ~79.2 GiB
DISK_FACTOR = 1.05  # checkpoint as stored x this (index, tokenizer, partial files)
AUTO_BATCH_TOKENS = {"cpu": 8192, "cuda": 32768}  # = harness.analyze.AUTO_BATCH_TOKENS
CHUNK_ELEMENTS = 1 << 25  # = harness.engine.capture.CHUNK_ELEMENTS["cuda"]
NUM_GRID = 9  # magnitudes captured per run: len(harness.engine.statistics.make_grid(6.0))

MEMORY_FORMULA = (
    "per GPU = weights / n (+ one decoder layer when n > 1: the split is per layer) "
    f"+ {CUDA_CONTEXT_GIB:g} GiB CUDA context + capture (uint8 union [B,T,H] + one chunk scratch "
    "min(B*T*H, 2^25) x (activation bytes + 1) + per-sequence statistics) "
    f"+ {FRAGMENTATION:g} x the peak of one layer = 4 x [B*T, hidden] residual-sized tensors "
    "+ max(attention: q,k,v,o projections (+ 3 x [B, heads, T, T] scores under eager attention); "
    "MLP: 3 x [B*T, intermediate] dense, or B*T*top_k x (3 x moe_intermediate + 2 x hidden) routed "
    "+ the shared expert; linear attention: 4 x [B*T, conv_dim] (+ fp32 copies on the reference "
    "path)), all in the loaded dtype; B = the analysis batch (32768 tokens / T on a GPU, at most "
    "num_seqs); needed = weights + n x (context + capture) + activations"
)

# Compute capability by a fragment of the GPU name (NVIDIA's published tables).
CAPABILITY = (
    ("H200", (9, 0)),
    ("H100", (9, 0)),
    ("B200", (10, 0)),
    ("A100", (8, 0)),
    ("A40", (8, 6)),
    ("A6000", (8, 6)),
    ("A5000", (8, 6)),
    ("A4000", (8, 6)),
    ("4090", (8, 9)),
    ("L40", (8, 9)),
    ("L4", (8, 9)),
    ("3090", (8, 6)),
    ("T4", (7, 5)),
    ("V100", (7, 0)),
)

# A package probe imports module, looks up what transformers looks up, reads dist's version.
PROBES = {
    "gguf": ("gguf", ("GGUFReader",), "gguf"),
    "triton": ("triton", (), "triton"),
    "kernels": ("kernels", (), "kernels"),
    "fla": (
        "fla.ops.gated_delta_rule",
        ("chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule"),
        "flash-linear-attention",
    ),
    "causal_conv1d": (
        "causal_conv1d",
        ("causal_conv1d_fn", "causal_conv1d_update"),
        "causal-conv1d",
    ),
}


class PreflightRefused(HarnessError):
    """A model would not run (or not as asked) here; ``report`` holds every row."""

    def __init__(self, report: PreflightReport):
        super().__init__(report.sentence())
        self.report = report


# -- targets: where the model is meant to run ---------------------------------------------------
@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float  # what a model may use: free memory here, ~nominal for a plan
    capability: tuple[int, int] | None = None


@dataclass(frozen=True)
class Target:
    """This machine (``cuda`` / ``cpu``), a registry ``plan``, or GPUs ``given`` on the CLI."""

    kind: str
    gpus: tuple[Gpu, ...] = ()
    host_memory_gib: float | None = None  # kind "cpu"
    disk_free_gb: float | None = None  # None: unknown
    label: str = ""

    @property
    def device(self) -> str:
        return "cpu" if self.kind == "cpu" else "cuda"

    @property
    def local(self) -> bool:
        return self.kind in ("cuda", "cpu")


def capability_of(name: str) -> tuple[int, int] | None:
    return next((cc for frag, cc in CAPABILITY if frag.upper() in name.upper()), None)


def plan_target(plan) -> Target:
    """A registry ``GpuPlan`` as a target: ``count`` x its first GPU type, its disk."""
    from harness.models.registry import GPU_MEMORY_GB

    name = plan.gpu_types[0]
    gb = GPU_MEMORY_GB.get(name, 80)
    gpus = (Gpu(name, gb * CARD_USABLE, capability_of(name)),) * plan.count
    label = f"{plan.count}x {name} ({gb} GB)"
    return Target("plan", gpus, disk_free_gb=float(plan.disk_gb), label=label)


def parse_gpus(text: str) -> Target:
    """``"NAME:GB,..."`` (``"2xH100:80"`` repeats one) -> a target whose disk is unknown."""
    gpus: list[Gpu] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, gb = part.rpartition(":")
        head, x, rest = name.partition("x")
        count, name = (int(head), rest) if x and head.isdigit() else (1, name)
        try:
            value = float(gb)
        except ValueError:
            value = 0.0
        if not name.strip() or value <= 0:
            raise HarnessError(
                "--gpus expects NAME:GB entries separated by commas, e.g. 'H100:80,H100:80' or "
                f"'2xH100:80' (got {part!r})."
            )
        gpus += [Gpu(name.strip(), value * CARD_USABLE, capability_of(name))] * count
    if not gpus:
        raise HarnessError("--gpus names no GPU; e.g. --gpus 'H100:80'.")
    label = ", ".join(f"{k}x {n}" for n, k in Counter(g.name for g in gpus).items())
    return Target("given", tuple(gpus), label=label)


def local_target(device: str = "auto") -> Target | None:
    """The GPUs present (free memory of each), this host for ``device="cpu"``, or None when a
    GPU is asked for and there is none."""
    import torch  # here, not at module import: the CLI builds its parser without torch

    if device != "cpu" and torch.cuda.is_available():
        gpus = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free = torch.cuda.mem_get_info(i)[0] / GIB
            gpus.append(Gpu(props.name, free, (props.major, props.minor)))
        label = f"{len(gpus)}x {gpus[0].name} (here)"
        return Target("cuda", tuple(gpus), disk_free_gb=_cache_free_gb(), label=label)
    if device == "cuda":
        return None
    return Target(
        "cpu",
        host_memory_gib=_host_available_gib(),
        disk_free_gb=_cache_free_gb(),
        label="this CPU host",
    )


def _host_available_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return None


def _cache_free_gb() -> float | None:
    from huggingface_hub import constants

    path = Path(constants.HF_HUB_CACHE)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free / 1e9
    except OSError:
        return None


# -- packages -----------------------------------------------------------------------------------
def probe(name: str) -> str | None:
    """The version of package ``name`` when it imports with what transformers looks up, else
    None. Imports for real: a blocked import (``sys.modules[x] = None``) reads as missing."""
    module_name, attrs, dist = PROBES[name]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - any import failure: transformers falls back too
        return None
    if any(getattr(module, a, None) is None for a in attrs):
        return None
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        top = sys.modules.get(module_name.split(".")[0])
        return str(getattr(top, "__version__", None) or "unknown")


def _vtuple(text) -> tuple[int, ...]:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(str(text)).release
    except InvalidVersion:
        return ()


def _kernels_range() -> tuple[str, str]:
    try:
        from transformers.utils.import_utils import KERNELS_MAX_VERSION, KERNELS_MIN_VERSION
    except ImportError:  # an older transformers: the floor its own message names
        return "0.12.0", "999"
    return KERNELS_MIN_VERSION, KERNELS_MAX_VERSION


def _transformers_requirement() -> str:
    try:
        for req in metadata.requires("outlier-harness") or ():
            head, _, spec = req.partition("transformers")
            if not head and spec[:1] in "<>=!~" and ";" not in spec:
                return spec.strip()
    except metadata.PackageNotFoundError:
        pass
    return HARNESS_TRANSFORMERS


# -- the report ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    check: str
    status: str  # ok | warn | refuse
    message: str  # one sentence


@dataclass
class PreflightReport:
    model: str  # registry id, hub id or directory
    hub_id: str | None
    target: Target | None = None
    allow_fallback: bool = False
    rows: list[Check] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # the fallbacks taken
    facts: dict = field(default_factory=dict)  # numbers for tables and provenance
    load_kwargs: dict = field(default_factory=dict)  # what loading must pass (the fallback)

    def add(self, check: str, status: str, message: str) -> None:
        self.rows.append(Check(check, status, message))

    def row(self, check: str) -> Check | None:
        return next((r for r in self.rows if r.check == check), None)

    @property
    def refusals(self) -> list[Check]:
        return [r for r in self.rows if r.status == REFUSE]

    @property
    def refused(self) -> bool:
        return bool(self.refusals)

    @property
    def ok(self) -> bool:
        return not self.refused

    @property
    def resource_only(self) -> bool:
        """Refused only for memory or disk: the model is fine, this machine is too small."""
        return self.refused and all(r.check in ("memory", "disk") for r in self.refusals)

    def sentence(self) -> str:
        """The refusals, one sentence each, in check order ("" when nothing is refused)."""
        return " ".join(r.message for r in self.refusals)

    def raise_if_refused(self) -> PreflightReport:
        if self.refused:
            raise PreflightRefused(self)
        return self

    def provenance(self) -> dict:
        """What a result records about how the model was (to be) run."""
        f = self.facts
        keys = (
            "weight_format",
            "kernel_path",
            "attn_implementation",
            "experts_implementation",
            "loaded_dtype",
            "needed_gib",
        )
        status = "refused" if self.refused else ("fallback" if self.labels else "ok")
        return {
            "preflight": status,
            **{k: f.get(k) for k in keys},
            "fallback": dict(self.labels),
            "target": f.get("target"),
        }

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "hub_id": self.hub_id,
            "ok": self.ok,
            "rows": [vars(r) for r in self.rows],
            "labels": dict(self.labels),
            "facts": self.facts,
        }

    def table(self) -> str:
        from tabulate import tabulate

        rows = [[r.check, r.status, r.message] for r in self.rows]
        return tabulate(
            rows,
            headers=["check", "status", self.model],
            tablefmt="simple",
            maxcolwidths=[None, None, 90],
        )


# -- the checks ---------------------------------------------------------------------------------
def preflight(
    model,
    *,
    configs: str | Path | None = None,
    config=None,
    gpus=None,
    allow_fallback: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    seq_len: int | None = None,
    num_seqs: int | None = None,
    batch_size: int | None = None,
    packages: dict[str, str | None] | None = None,
    hub: bool | None = None,
    revision: str | None = None,
    config_note: str | None = None,
) -> PreflightReport:
    """Every check for ``model`` (registry id or ``ModelEntry``, hub id, local directory).

    ``gpus``: a ``Target``, a registry ``GpuPlan`` or ``"NAME:GB,..."``; default the GPUs present,
    this host for ``device="cpu"`` (and tiny models without a GPU), else the registry plan.
    ``config`` replaces the config source (a ``PretrainedConfig``, a dict or a path; ``config_note``
    says where it came from). ``packages`` replaces the package probe (name -> version or None),
    e.g. to plan for a pod image; ``hub=False`` never asks the hub. Nothing is downloaded except,
    when the hub is reachable and nothing is cached, ``config.json``. A refusal is a row, never an
    exception: see ``PreflightReport.raise_if_refused``.
    """
    import torch

    from harness import models
    from harness.loading.load import ModelSource, resolve, resolve_dtype

    entry = model if hasattr(model, "hub_id") else models.REGISTRY.get(model)
    if entry is not None and entry.gguf is not None:
        source = resolve(entry)  # the packaged file, or one sentence naming the package
    elif entry is not None:
        kind = "tiny" if entry.is_tiny else "registry-hub"
        source = ModelSource(entry.id, kind, entry.hub_id, entry, revision or entry.revision)
    else:
        source = resolve(model, revision)  # one sentence for a bad spec
    hub_id = source.location if "hub" in source.kind else None
    report = PreflightReport(source.id, hub_id, allow_fallback=allow_fallback)
    probed = dict(packages or {})

    def pkg(key: str) -> str | None:
        if key not in probed:
            probed[key] = probe(key)
        return probed[key]

    raw, built, where = _config_source(entry, source, configs, config)
    report.facts["config_source"] = config_note or where
    meta_model = _model_type_row(report, raw, built, entry)
    if meta_model is None:
        return report
    from harness.loading.params import count_model

    counts = count_model(meta_model)
    cfg = meta_model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    report.facts.update(
        total_params=counts.total,
        active_params=counts.active,
        active_params_no_embedding=counts.active_no_embedding,
        num_experts=counts.num_experts,
        top_k=counts.top_k,
    )

    target = _target(gpus, device, source, counts.total, dtype, built)
    report.target = target
    if target is None:
        report.add(
            "target",
            REFUSE,
            f"no usable CUDA GPU here for {source.id}; use --device cpu "
            "for small models, --runpod, or name the GPUs with --gpus NAME:GB.",
        )
        return report
    report.facts["target"] = target.label

    # weight format and kernel path
    load_dtype = _dtype_name(resolve_dtype(dtype, source, built))
    act_bytes = torch.tensor([], dtype=getattr(torch, load_dtype)).element_size()
    qcfg = raw.get("quantization_config") or {}
    quant = qcfg.get("quant_method")
    packed = quant == "mxfp4"
    mxfp4_params = _mxfp4_params(meta_model) if packed else 0
    report.facts.update(weight_format=quant or "dense", kernel_path="torch")
    report.facts["loaded_dtype"] = load_dtype
    if source.kind == "gguf":
        report.facts["weight_format"] = "gguf"
        report.add(
            "weights",
            OK,
            f"a GGUF file, which transformers dequantizes to {load_dtype} at load time "
            "(needs the package gguf).",
        )
        if pkg("gguf") is None:
            report.add(
                "weights", REFUSE, "reading .gguf files needs the package gguf: pip install gguf."
            )
    elif packed:
        packed, why = _mxfp4_path(target, qcfg, pkg, hub)
        if why and not target.local and packages is None and "environment" in why:
            why += " (the packages of this machine, where the preflight ran)"
        _mxfp4_row(report, packed, why, load_dtype)
    elif quant:
        report.add(
            "weights",
            WARN,
            f"{source.id} ships {quant} weights, which preflight does not "
            "know; the memory figure assumes the loaded dtype.",
        )
    else:
        report.add("weights", OK, f"loads dense in {load_dtype} with standard PyTorch ops.")
    reference = raw.get("model_type") == "qwen3_next" and _qwen3_next_row(report, pkg)

    # attention and experts implementation
    attn = getattr(cfg, "_attn_implementation", None)
    experts = getattr(cfg, "_experts_implementation", None) if counts.is_moe else None
    experts = "mxfp4 triton (matmul_ogs)" if packed else experts
    report.facts.update(attn_implementation=attn, experts_implementation=experts)
    eager = (
        " (it materializes [batch, heads, T, T] scores: counted below)" if attn == "eager" else ""
    )
    report.add("attention", OK, f"attention runs as {attn!r}{eager}.")
    if counts.is_moe:
        report.add(
            "experts", OK, f"{counts.num_experts} experts, top {counts.top_k}, run as {experts!r}."
        )

    _access_row(report, entry, hub_id, hub)

    from harness.pipeline import max_positions

    T = seq_len or (256 if source.kind == "tiny" else 2048)
    N = num_seqs or 16
    limit = max_positions(text_cfg)
    if limit is not None and T > limit:
        report.add(
            "seq_len",
            REFUSE,
            f"--seq-len {T} is above {source.id}'s maximum of {limit} "
            f"positions; use --seq-len {limit} or less.",
        )
    else:
        report.add("seq_len", OK, f"{N} windows x {T} tokens (max positions {limit}).")

    shape = _Shape.of(text_cfg, counts, attn, reference)
    dense = counts.total - mxfp4_params
    weights = dense * act_bytes + mxfp4_params * (MXFP4_BYTES_PER_PARAM if packed else act_bytes)
    _memory_row(report, shape, weights, act_bytes, T, N, batch_size, target)
    if quant == "mxfp4":  # the other path, for tables
        alt = dense * act_bytes + mxfp4_params * (act_bytes if packed else MXFP4_BYTES_PER_PARAM)
        fit = estimate(shape, alt, act_bytes, T, _batch(batch_size, T, N, target), target)
        report.facts["alternative"] = {
            "path": "dequantized bf16" if packed else "mxfp4 kernels",
            "weights_gib": alt / GIB,
            "needed_gib": fit["needed_gib"],
            "fits": fit["fits"],
            "implied_plan": implied_plan(shape, alt, act_bytes, T, N),
        }
    _disk_row(report, raw, counts.total, mxfp4_params, source, target)
    return report


def _dtype_name(dt) -> str:
    return str(dt).replace("torch.", "")


def _config_source(entry, source, configs, config) -> tuple[dict | None, object, str]:
    """(the raw config dict or None, a built config or None, where it came from)."""
    from transformers import PretrainedConfig

    from harness.loading.configs import config_files

    if isinstance(config, PretrainedConfig):
        return config.to_dict(), config, "given config"
    if isinstance(config, dict):
        return dict(config), None, "given config"
    paths: list[Path] = []
    if config is not None:
        paths.append(Path(config) / "config.json" if Path(config).is_dir() else Path(config))
    if source.kind == "local":
        paths.append(Path(source.location) / "config.json")
    if source.kind == "gguf":  # the config is in the file's metadata
        from harness.loading.gguf import read_config

        built = read_config(Path(source.location))
        return built.to_dict(), built, source.location
    if entry is not None and not entry.is_tiny:
        paths += config_files(entry, configs)
    if source.kind == "tiny":
        from harness.loading.tiny_builder import build_tiny

        paths.append(Path(build_tiny(entry.id)) / "config.json")
    for p in paths:
        if p.is_file():
            try:
                return json.loads(p.read_text()), None, str(p.parent)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise HarnessError(
                    f"{p} is not valid JSON ({getattr(err, 'msg', type(err).__name__)}); "
                    "fix it or download the model's config.json again."
                ) from None
    if "hub" in source.kind and (path := _hub_config(source.location, source.revision)):
        return json.loads(Path(path).read_text()), None, "hub"
    return None, None, "not at hand"


def _hub_config(hub_id: str, revision: str | None) -> str | None:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    from harness.loading.load import hub_reachable

    cached = try_to_load_from_cache(hub_id, "config.json", revision=revision)
    if isinstance(cached, str):
        return cached
    if not hub_reachable():
        return None
    try:  # a few kB; weights are never fetched here
        token = os.environ.get("HF_TOKEN") or None
        return hf_hub_download(hub_id, "config.json", revision=revision, token=token)
    except Exception:  # noqa: BLE001 - gated or missing: the access row says which
        return None


def _known_model_types():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return CONFIG_MAPPING


def _model_type_row(report, raw, built, entry):
    """The ``config`` / ``model_type`` rows; the model on the meta device, or None (refused)."""
    import torch
    import transformers

    tf, name = transformers.__version__, report.model
    if raw is None:
        report.add(
            "config",
            REFUSE,
            f"the config of {name} is not at hand (not in --configs DIR "
            "nor the hub cache, and the hub cannot be reached); pass --configs DIR or run "
            "where the hub is reachable.",
        )
        return None
    model_type, written = raw.get("model_type"), raw.get("transformers_version")
    report.facts["model_type"] = model_type
    requirement = _transformers_requirement()
    floors = [s.strip()[2:] for s in requirement.split(",") if s.strip().startswith(">=")]
    if model_type not in _known_model_types():
        need = max(floors + ([written.split(".dev")[0]] if written else []) or ["?"], key=_vtuple)
        by = f" (the config was written by transformers {written})" if written else ""
        report.add(
            "model_type",
            REFUSE,
            f"transformers {tf} does not know model_type {model_type!r}; upgrade to >= {need}{by}.",
        )
        return None
    from packaging.specifiers import SpecifierSet

    if tf not in SpecifierSet(requirement, prereleases=True):
        report.add(
            "model_type",
            REFUSE,
            f"transformers {tf} is outside this harness's "
            f"requirement transformers{requirement}; install a version in that range.",
        )
    elif written and _vtuple(written) > _vtuple(tf):
        report.add(
            "model_type",
            WARN,
            f"the config was written by transformers {written}, newer "
            f"than this {tf}; upgrade if loading fails.",
        )
    else:
        report.add("model_type", OK, f"transformers {tf} knows model_type {model_type!r}.")
    from transformers import AutoModelForCausalLM

    kwargs = {
        k: v
        for k, v in dict(getattr(entry, "load_kwargs", ()) or ()).items()
        if k in ("attn_implementation", "experts_implementation")
    }
    try:
        if built is None:
            built = _known_model_types()[model_type].from_dict(raw)
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoModelForCausalLM.from_config(built, **kwargs)
    except Exception as err:  # noqa: BLE001 - an invalid config is a refusal, not a traceback
        cause = str(err.__cause__ or err).strip().splitlines()[-1].rstrip(".")
        report.add(
            "config",
            REFUSE,
            f"transformers {tf} cannot build {name} from its config "
            f"({cause}); check the config or the transformers version.",
        )
        return None


def _mxfp4_params(model) -> int:
    """Parameters MXFP4 stores packed: the fused expert weights (not their biases)."""
    return sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.rpartition(".")[0].endswith("experts") and p.dim() >= 3 and "bias" not in n
    )


def _target(gpus, device, source, total, dtype, config) -> Target | None:
    import torch

    from harness.models.registry import GpuPlan, derive_gpu_plan

    if isinstance(gpus, Target):
        return gpus
    if isinstance(gpus, GpuPlan):
        return plan_target(gpus)
    if isinstance(gpus, str):
        return parse_gpus(gpus)
    if gpus is not None:
        raise HarnessError(f"gpus must be a Target, a GpuPlan or 'NAME:GB,...' (got {gpus!r}).")
    if device == "cpu" or torch.cuda.is_available():
        return local_target(device)
    if source.kind in ("tiny", "local", "gguf"):
        return local_target("cpu" if device == "auto" else device)
    if device == "cuda":
        return None
    if source.entry is not None:  # no GPU here: check the plan the model would run on
        return plan_target(source.entry.gpu_plan(total))
    from harness.loading.load import resolve_dtype

    return plan_target(derive_gpu_plan(total, _dtype_name(resolve_dtype(dtype, source, config))))


def _mxfp4_path(target: Target, qcfg: dict, pkg, hub) -> tuple[bool, str]:
    """(the kernels are used, why not), as transformers' ``Mxfp4HfQuantizer`` decides."""
    if qcfg.get("dequantize"):
        return False, "its quantization_config asks for dequantization"
    if target.device == "cpu":
        return False, "on the CPU transformers dequantizes MXFP4 unless use_kernels=True"
    for g in target.gpus:
        if g.capability is not None and g.capability < MXFP4_MIN_CAPABILITY:
            return False, f"{g.name} has compute capability {g.capability[0]}.{g.capability[1]}"
    triton = pkg("triton")
    if triton is None or _vtuple(triton) < TRITON_MIN_CUDA:
        has = f"triton {triton}" if triton else "no triton"
        return False, f"MXFP4 kernels need triton >= 3.4.0 and this environment has {has}"
    lo, hi = _kernels_range()
    kernels = pkg("kernels")
    if kernels is None or not _vtuple(lo) <= _vtuple(kernels) < _vtuple(hi):
        has = f"kernels {kernels}" if kernels else "no `kernels` package"
        return False, f"MXFP4 kernels need `kernels` >={lo},<{hi} and this environment has {has}"
    if target.local and hub is not False and not _kernel_repo_cached():
        from harness.loading.load import hub_reachable

        if not hub_reachable():
            return False, f"{MXFP4_KERNEL_REPO} is not cached and the hub cannot be reached"
    return True, ""


def _kernel_repo_cached() -> bool:
    from huggingface_hub import constants

    folder = "models--" + MXFP4_KERNEL_REPO.replace("/", "--")
    return (Path(constants.HF_HUB_CACHE) / folder / "snapshots").is_dir()


def _mxfp4_row(report, packed: bool, why: str, dt: str) -> None:
    if packed:
        kernel_path = f"mxfp4 triton kernels ({MXFP4_KERNEL_REPO})"
        report.facts.update(weight_format="mxfp4", kernel_path=kernel_path)
        report.facts["loaded_dtype"] = f"mxfp4 + {dt}"
        report.add("weights", OK, "runs on its MXFP4 weights with the triton kernels.")
        return
    label = f"mxfp4->{dt} (dequantized)"
    report.facts.update(weight_format=label, kernel_path="dequantized experts")
    report.facts["loaded_dtype"] = f"{dt} (dequantized)"
    if report.allow_fallback:
        from transformers import Mxfp4Config

        report.labels["weight_format"] = label
        report.load_kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
        report.add(
            "weights",
            WARN,
            f"dequantized to {dt} (labelled): {why}; the experts take ~4x "
            "their MXFP4 memory and numerics differ from the kernel path.",
        )
    else:
        report.add(
            "weights",
            REFUSE,
            f"{report.model} would be dequantized from MXFP4 to {dt} "
            f"(~4x expert memory, different numerics) because {why}; install triton>=3.4 "
            "and kernels>=0.18.2,<0.19 on a GPU of compute capability >= 7.5, or pass "
            "--allow-fallback to run it dequantized (labelled).",
        )


def _qwen3_next_row(report, pkg) -> bool:
    """The ``kernels`` row of Qwen3-Next; True when the slow reference path will be used."""
    dists = (("fla", "flash-linear-attention"), ("causal_conv1d", "causal-conv1d"))
    missing = [d for key, d in dists if pkg(key) is None]
    if not missing:
        report.facts["kernel_path"] = "fla + causal-conv1d"
        report.add(
            "kernels", OK, "linear attention runs on flash-linear-attention and causal-conv1d."
        )
        return False
    report.facts["kernel_path"] = "reference (slow)"
    what = " and ".join(missing)
    if report.allow_fallback:
        report.labels["kernel_path"] = "reference (slow)"
        report.add(
            "kernels",
            WARN,
            f"linear attention on the reference PyTorch path (labelled): "
            f"{what} not importable; much slower, numerics differ from the kernels.",
        )
    else:
        report.add(
            "kernels",
            REFUSE,
            f"{report.model} would run its linear attention on the slow "
            f"reference path because {what} cannot be imported; install them (pip install "
            f"{' '.join(missing)}) or pass --allow-fallback to run it labelled.",
        )
    return True


def token_set() -> bool:
    """Whether a Hugging Face token is available (HF_TOKEN or a stored login); never its value."""
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return True
    from huggingface_hub import constants

    try:
        return bool(Path(constants.HF_TOKEN_PATH).read_text().strip())
    except OSError:
        return False


def _access_row(report, entry, hub_id, hub) -> None:
    if hub_id is None:
        report.add("access", OK, "a local model: no hub access needed.")
        return
    gated, origin, reachable = bool(getattr(entry, "gated", False)), "the registry", False
    if hub is not False:
        from harness.loading.load import hub_reachable

        reachable = hub_reachable()
    token = os.environ.get("HF_TOKEN") or None
    if reachable:
        try:
            from huggingface_hub import model_info

            gated, origin = bool(model_info(hub_id, token=token).gated), "the hub"
        except Exception:  # noqa: BLE001 - unknown on the hub: keep the registry's word
            pass
    report.facts["gated"] = gated
    if not gated:
        report.add("access", OK, f"{hub_id} is not gated ({origin}).")
    elif not token_set():
        report.add(
            "access",
            REFUSE,
            f"{hub_id} is gated ({origin}) and HF_TOKEN is not set; "
            "accept its conditions on huggingface.co and set HF_TOKEN (or .env).",
        )
    elif reachable and not _has_access(hub_id, token):
        report.add(
            "access",
            REFUSE,
            f"{hub_id} is gated and the token that is set has no access; "
            "accept its conditions on huggingface.co with that account.",
        )
    else:
        report.add("access", OK, f"{hub_id} is gated ({origin}); a token is set.")


def _has_access(hub_id: str, token: str | None) -> bool:
    from huggingface_hub import auth_check
    from huggingface_hub.errors import GatedRepoError

    try:
        auth_check(hub_id, token=token)
    except GatedRepoError:
        return False
    except Exception:  # noqa: BLE001 - anything else is for the download to report
        pass
    return True


# -- memory and disk ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # the dense MLP (0: every layer is MoE)
    moe_intermediate: int
    shared_intermediate: int
    num_experts: int
    top_k: int
    linear_dim: int  # linear-attention conv width (0: none)
    linear_heads: int
    linear_head_dims: int  # 2 dk + 2 dv per linear head
    eager: bool
    reference: bool  # linear attention on the fp32 reference path

    @classmethod
    def of(cls, cfg, counts, attn, reference) -> _Shape:
        def g(*names, default=0):
            return next((int(getattr(cfg, n)) for n in names if getattr(cfg, n, None)), default)

        hidden, heads = g("hidden_size", "d_model", "n_embd"), g("num_attention_heads", "n_head")
        inter = g("intermediate_size", "ffn_dim", "n_inner", default=4 * hidden)
        moe = counts.is_moe
        some_dense = g("first_k_dense_replace") or getattr(cfg, "mlp_only_layers", None)
        moe_inter = g("moe_intermediate_size", default=inter) if moe else 0
        shared = g("shared_expert_intermediate_size") or g("n_shared_experts") * moe_inter
        kd, vd = g("linear_key_head_dim"), g("linear_value_head_dim")
        kh, vh = g("linear_num_key_heads"), g("linear_num_value_heads")
        return cls(
            hidden=hidden,
            layers=g("num_hidden_layers", "n_layer", default=1),
            heads=heads,
            kv_heads=g("num_key_value_heads", default=heads),
            head_dim=g("head_dim", default=hidden // max(heads, 1)),
            intermediate=inter if not moe or some_dense else 0,
            moe_intermediate=moe_inter,
            shared_intermediate=shared,
            num_experts=counts.num_experts,
            top_k=counts.top_k,
            linear_dim=2 * kh * kd + vh * vd,
            linear_heads=vh,
            linear_head_dims=2 * kd + 2 * vd,
            eager=attn == "eager",
            reference=bool(reference),
        )


def activation_bytes(s: _Shape, batch: int, T: int, ab: int) -> float:
    """The peak of one decoder layer's forward pass (``MEMORY_FORMULA``), before the slack."""
    tokens = batch * T
    attn = tokens * (2 * s.heads + 2 * s.kv_heads) * s.head_dim * ab
    if s.eager:
        attn += 3 * batch * s.heads * T * T * ab
    if s.linear_dim:
        lin = 4 * tokens * s.linear_dim * ab
        lin += 2 * tokens * s.linear_heads * s.linear_head_dims * 4 if s.reference else 0
        attn = max(attn, lin)
    mlp = 3 * tokens * s.intermediate * ab
    if s.num_experts > 1:
        routed = tokens * s.top_k * (3 * s.moe_intermediate + 2 * s.hidden) * ab
        routed += 3 * tokens * s.shared_intermediate * ab + 2 * tokens * s.num_experts * 4
        mlp = max(mlp, routed)
    return 4 * tokens * s.hidden * ab + max(attn, mlp)


def capture_bytes(s: _Shape, batch: int, T: int) -> float:
    """The capture's buffers on one device: union, chunk scratch (an int32 and a uint8 map),
    per-sequence stats."""
    union = batch * T * s.hidden
    scratch = min(union, CHUNK_ELEMENTS) * (4 + 1)
    return union + scratch + batch * s.hidden * (4 + NUM_GRID * 4 + (NUM_GRID + 1) * 8)


def estimate(s: _Shape, weights: float, ab: int, T: int, batch: int, target: Target) -> dict:
    """Memory of one run on ``target`` in GiB; ``fits`` compares the busiest device."""
    act = FRAGMENTATION * activation_bytes(s, batch, T, ab) / GIB
    cap = capture_bytes(s, batch, T) / GIB
    w = weights / GIB
    if target.kind == "cpu":
        need, have = w + act + cap, target.host_memory_gib
        return {
            "weights_gib": w,
            "needed_gib": need,
            "per_device_gib": need,
            "capacity_gib": have,
            "fits": have is None or need <= have,
        }
    n = len(target.gpus)
    per = w / n + (w / max(s.layers, 1) if n > 1 else 0.0) + CUDA_CONTEXT_GIB + cap + act
    have = min(g.memory_gib for g in target.gpus)
    need = w + n * (CUDA_CONTEXT_GIB + cap) + act
    return {
        "weights_gib": w,
        "needed_gib": need,
        "per_device_gib": per,
        "capacity_gib": have,
        "fits": per <= have,
    }


def _batch(batch_size, T, N, target) -> int:
    return (
        min(batch_size, N) if batch_size else max(1, min(N, AUTO_BATCH_TOKENS[target.device] // T))
    )


def implied_plan(s: _Shape, weights: float, ab: int, T: int, N: int) -> str:
    """The smallest plan of the registry's GPU menu that fits at the automatic batch."""
    from harness.models.registry import A100_80, SMALL_24, GpuPlan

    menu = [(SMALL_24[0], 1), ("NVIDIA RTX A6000", 1)] + [(A100_80[0], k) for k in range(1, 9)]
    for name, count in menu:
        target = plan_target(GpuPlan((name,), count))
        if estimate(s, weights, ab, T, _batch(None, T, N, target), target)["fits"]:
            return target.label
    return "more than 8x 80 GB"


def _memory_row(report, s, weights, ab, T, N, batch_size, target) -> None:
    batch = _batch(batch_size, T, N, target)
    est = estimate(s, weights, ab, T, batch, target)
    plan = implied_plan(s, weights, ab, T, N)
    report.facts.update(
        weights_gib=est["weights_gib"],
        needed_gib=est["needed_gib"],
        batch=batch,
        per_device_gib=est["per_device_gib"],
        fits=est["fits"],
        implied_plan=plan,
        memory_formula=MEMORY_FORMULA,
    )
    have, per, w = est["capacity_gib"], est["per_device_gib"], est["weights_gib"]
    if have is None:
        report.add(
            "memory", OK, f"needs {per:.1f} GiB; the free memory of {target.label} is unknown."
        )
    elif est["fits"]:
        report.add(
            "memory",
            OK,
            f"needs {per:.1f} GiB per device ({w:.1f} GiB weights, batch "
            f"{batch} x {T}) of {have:.1f} on {target.label}.",
        )
    elif not batch_size and (
        smaller := next(
            (b for b in range(batch - 1, 0, -1) if estimate(s, weights, ab, T, b, target)["fits"]),
            None,
        )
    ):
        report.facts.update(batch=smaller, fits=True)
        report.add(
            "memory",
            WARN,
            f"at the automatic batch ({batch} x {T}) it needs {per:.1f} "
            f"GiB per device of {have:.1f} on {target.label}; it fits at batch {smaller} "
            "(the analysis halves the batch on out-of-memory).",
        )
    else:
        report.add(
            "memory",
            REFUSE,
            f"{report.model} needs {per:.1f} GiB per device ({w:.1f} GiB "
            f"weights + activations at batch {batch} x {T}) but {target.label} offers "
            f"{have:.1f}; it would fit on {plan}.",
        )


def _stored_bytes(raw: dict, total: int, mxfp4: int) -> tuple[float, float]:
    """(low, high) bytes of the checkpoint as stored; equal unless the config names no dtype."""
    if (raw.get("quantization_config") or {}).get("quant_method") == "mxfp4":
        size = (total - mxfp4) * 2 + mxfp4 * MXFP4_BYTES_PER_PARAM  # gpt-oss: the rest is bf16
        return size, size
    dt = str(raw.get("torch_dtype") or raw.get("dtype")).replace("torch.", "")
    size = {"float32": 4, "bfloat16": 2, "float16": 2}.get(dt)
    return (total * 2.0, total * 4.0) if size is None else (total * size, total * size)


def _disk_row(report, raw, total, mxfp4, source, target) -> None:
    low, high = (b * DISK_FACTOR / 1e9 for b in _stored_bytes(raw, total, mxfp4))
    span = None if low == high else f"{low:.0f}-{high:.0f}"
    report.facts.update(disk_gb=high, disk_free_gb=target.disk_free_gb, disk_range=span)
    size = f"{high:.0f} GB" if span is None else f"{span} GB (the config names no stored dtype)"
    if source.kind in ("tiny", "local", "gguf"):
        report.add("disk", OK, "the weights are already on disk.")
        return
    if target.local:
        from harness.loading.load import cached_snapshot

        if cached_snapshot(source.location, source.revision) is not None:
            report.add("disk", OK, f"{source.location} is already in the hub cache.")
            return
    have = target.disk_free_gb
    where = "at the hub cache" if target.local else "on the plan"
    if have is None:
        report.add("disk", OK, f"the weights take {size}; free space unknown.")
    elif high <= have:
        report.add("disk", OK, f"the weights take {size} of {have:.0f} GB free {where}.")
    elif low <= have:
        report.add(
            "disk",
            WARN,
            f"the weights take {size} and {have:.0f} GB is free {where}: "
            "enough only if they are stored in 16 bit.",
        )
    else:
        report.add(
            "disk",
            REFUSE,
            f"{report.model}'s weights take {size} but only {have:.0f} GB "
            f"is free {where}; free space, set HF_HOME to a larger disk, or give the pod "
            "more disk.",
        )


# -- after loading: the path transformers really took -------------------------------------------
def _uses_package(fn) -> bool | None:
    """For a function wrapped by transformers' ``use_kernel_func_from_hub_with_fallback``: whether
    the package (not the PyTorch fallback) was bound when the modeling module was imported."""
    code = getattr(fn, "__code__", None)
    if code is None or "is_new_implementation" not in code.co_freevars:
        return None
    return bool(fn.__closure__[code.co_freevars.index("is_new_implementation")].cell_contents)


def kernel_path_of(model) -> dict:
    """Weight format, kernel path and experts implementation of a loaded model, read from the
    modules transformers installed, not from what was asked for."""
    cfg = model.config
    q = getattr(cfg, "quantization_config", None)
    q = q.to_dict() if hasattr(q, "to_dict") else dict(q or {})
    dtype = _dtype_name(next(model.parameters()).dtype)
    experts = getattr(cfg, "_experts_implementation", None)
    out = {"weight_format": "dense", "kernel_path": "torch", "experts_implementation": experts}
    if q.get("quant_method") == "mxfp4":
        if any(type(m).__name__ == "Mxfp4GptOssExperts" for m in model.modules()):
            out.update(
                weight_format="mxfp4",
                experts_implementation="mxfp4 triton (matmul_ogs)",
                kernel_path=f"mxfp4 triton kernels ({MXFP4_KERNEL_REPO})",
            )
        else:
            out.update(
                weight_format=f"mxfp4->{dtype} (dequantized)", kernel_path="dequantized experts"
            )
    elif q.get("quant_method"):
        out["weight_format"] = str(q["quant_method"])
    if getattr(cfg, "model_type", None) == "qwen3_next":
        module = sys.modules.get(type(model).__module__)
        names = ("causal_conv1d_fn", "torch_chunk_gated_delta_rule")
        flags = [_uses_package(getattr(module, n, None)) for n in names]
        if all(f is True for f in flags):
            out["kernel_path"] = "fla + causal-conv1d"
        elif any(f is False for f in flags):
            out["kernel_path"] = "reference (slow)"
    return out


# -- the table and the command ------------------------------------------------------------------
def preflight_table(reports: Sequence[PreflightReport]) -> str:
    """One row per model: params, loaded dtype, memory, the plan it implies, where it was checked,
    whether it fits, disk, and the preflight's verdict."""
    from tabulate import tabulate

    def num(x, fmt="{:.1f}"):
        return "-" if x is None else fmt.format(x)

    rows = []
    for r in reports:
        f = r.facts
        warned = [c.check for c in r.rows if c.status == WARN]
        verdict = (
            "refused: " + ", ".join(c.check for c in r.refusals)
            if r.refused
            else "fallback"
            if r.labels
            else "warn: " + ", ".join(warned)
            if warned
            else "ok"
        )
        if f.get("total_params") is None:
            rows.append([r.model] + ["-"] * 9 + [verdict, "config not at hand"])
            continue
        notes = [str(f["config_source"])] if "SOURCES.md" in str(f.get("config_source")) else []
        notes += [f"{k}: {v}" for k, v in r.labels.items()]
        alt = f.get("alternative")
        if alt:
            notes.append(
                f"with {alt['path']}: {alt['needed_gib']:.0f} GiB -> {alt['implied_plan']}"
            )
        if f.get("attn_implementation") == "eager":
            notes.append("eager attention")
        rows.append(
            [
                r.model,
                num(f["total_params"] / 1e9, "{:.2f}"),
                num(f["active_params_no_embedding"] / 1e9, "{:.2f}"),
                f.get("loaded_dtype"),
                num(f.get("weights_gib")),
                f"{num(f.get('needed_gib'))} ({num(f.get('per_device_gib'))})",
                f.get("implied_plan"),
                f.get("target"),
                "yes" if f.get("fits") else "NO",
                f"{f.get('disk_range') or num(f.get('disk_gb'), '{:.0f}')}/{num(f.get('disk_free_gb'), '{:.0f}')}",
                verdict,
                "; ".join(notes),
            ]
        )
    headers = [
        "model",
        "total B",
        "active B",
        "loaded as",
        "weights GiB",
        "needed GiB (per GPU)",
        "implied plan",
        "checked on",
        "fits",
        "disk GB need/free",
        "preflight",
        "notes",
    ]
    return tabulate(rows, headers=headers, tablefmt="github")


def add_arguments(parser) -> None:
    """The options of ``outliers preflight`` and ``python -m harness.preflight.checks``."""
    parser.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="registry ids (see `outliers models`), hub ids or directories",
    )
    parser.add_argument(
        "--configs", default=None, help="folder of <org>__<name>/config.json files (offline)"
    )
    parser.add_argument(
        "--allow-fallback",
        action="store_true",
        help="let a dequantized or slow reference path run, labelled",
    )
    parser.add_argument(
        "--gpus",
        default=None,
        help="check against these GPUs instead: 'NAME:GB,...' or '2xH100:80'",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32")
    )
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--num-seqs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")


def run_command(args) -> int:
    """Preflight each model, print its rows and the table; 2 when any model is refused."""
    reports = [
        preflight(
            m,
            configs=args.configs,
            gpus=args.gpus,
            allow_fallback=args.allow_fallback,
            device=args.device,
            dtype=args.dtype,
            seq_len=args.seq_len,
            num_seqs=args.num_seqs,
            batch_size=args.batch_size,
        )
        for m in args.models
    ]
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2, default=str))
    else:
        print("\n\n".join(r.table() for r in reports) + "\n\n" + preflight_table(reports))
    for r in reports:
        if r.refused:
            print(f"error: {r.model}: {r.sentence()}", file=sys.stderr)
    return 2 if any(r.refused for r in reports) else 0


def add_preflight_command(sub) -> None:
    """``outliers preflight MODEL...`` (registered by ``harness.cli``)."""
    p = sub.add_parser("preflight", help="check that models will run here, before any download")
    add_arguments(p)
    p.set_defaults(func=run_command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.preflight.checks", description="Checks before any weight download."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_command(args)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
