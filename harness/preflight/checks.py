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

``PreflightReport.provenance()`` is what results record; ``harness.loading.kernel_path`` reads,
after loading, which path transformers really took. ``outliers preflight MODEL...`` exits 2 with the
refusal sentences.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

from harness.errors import HarnessError
from harness.loading.configs import find_config
from harness.loading.kernel_path import _dtype_name
from harness.preflight.access import _access_row
from harness.preflight.kernels import (
    MXFP4_BYTES_PER_PARAM,
    _mxfp4_params,
    _mxfp4_path,
    _mxfp4_row,
    _qwen3_next_row,
)
from harness.preflight.memory import (
    DISK_FACTOR,
    _batch,
    _disk_row,
    _memory_row,
    _Shape,
    _stored_bytes,
    estimate,
    implied_plan,
    pod_disk_gb,
    smallest_plan,
)
from harness.preflight.packages import _transformers_requirement, _vtuple, probe
from harness.preflight.targets import GIB, Target, local_target, parse_gpus, plan_target
from harness.preflight.verdict import OK, REFUSE, WARN, PreflightReport


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

    from harness.loading.load import resolve_dtype

    entry, source = _entry_and_source(model, revision)
    hub_id = source.location if "hub" in source.kind else None
    report = PreflightReport(source.id, hub_id, allow_fallback=allow_fallback)
    probed = dict(packages or {})

    def pkg(key: str) -> str | None:
        if key not in probed:
            probed[key] = probe(key)
        return probed[key]

    raw, built, where = find_config(entry, source, configs=configs, config=config)
    report.facts["config_source"] = config_note or where
    meta_model = _model_type_row(report, raw, built, entry)
    if meta_model is None:
        return report
    counts = _count(report, meta_model)
    cfg = meta_model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    target = _target(gpus, device, source)
    implied = target is _IMPLIED
    if implied:  # the weight rows only need "a CUDA GPU"; the memory model picks the plan below
        from harness.models.registry import A100_80, GpuPlan

        target = plan_target(GpuPlan(A100_80, 1))
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

    load_dtype = _dtype_name(resolve_dtype(dtype, source, built))
    act_bytes = torch.tensor([], dtype=getattr(torch, load_dtype)).element_size()
    quant = (raw.get("quantization_config") or {}).get("quant_method")
    mxfp4_params = _mxfp4_params(meta_model) if quant == "mxfp4" else 0
    packed = _weights_row(report, source, target, raw, load_dtype, pkg, hub, packages)
    reference = raw.get("model_type") == "qwen3_next" and _qwen3_next_row(report, pkg)
    attn = _implementation_rows(report, cfg, counts, packed)
    _access_row(report, entry, hub_id, hub)
    T, N = _seq_len_row(report, source, text_cfg, seq_len, num_seqs)

    shape = _Shape.of(text_cfg, counts, attn, reference)
    dense = counts.total - mxfp4_params
    weights = dense * act_bytes + mxfp4_params * (MXFP4_BYTES_PER_PARAM if packed else act_bytes)
    if implied:
        plan = smallest_plan(shape, weights, act_bytes, T, N)
        if plan is not None:
            stored = _stored_bytes(raw, counts.total, mxfp4_params)[1] * DISK_FACTOR / 1e9
            target = plan_target(replace(plan, disk_gb=pod_disk_gb(stored)))
            report.target = target
            report.facts["target"] = target.label
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


def _entry_and_source(model, revision):
    """(the registry entry or None, where the model is), without building or downloading it."""
    from harness import models
    from harness.loading.load import ModelSource, resolve

    entry = model if hasattr(model, "hub_id") else models.REGISTRY.get(model)
    if entry is not None and entry.gguf is not None:
        return entry, resolve(entry)  # the packaged file, or one sentence naming the package
    if entry is not None:
        kind = "tiny" if entry.is_tiny else "registry-hub"
        return entry, ModelSource(entry.id, kind, entry.hub_id, entry, revision or entry.revision)
    return None, resolve(model, revision)  # one sentence for a bad spec


def _count(report, meta_model):
    from harness.loading.params import count_model

    counts = count_model(meta_model)
    report.facts.update(
        total_params=counts.total,
        active_params=counts.active,
        active_params_no_embedding=counts.active_no_embedding,
        num_experts=counts.num_experts,
        top_k=counts.top_k,
    )
    return counts


def _weights_row(report, source, target, raw, load_dtype, pkg, hub, packages) -> bool:
    """The weight format and kernel path that WILL be used; True when MXFP4 stays packed."""
    qcfg = raw.get("quantization_config") or {}
    quant = qcfg.get("quant_method")
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
    elif quant == "mxfp4":
        packed, why = _mxfp4_path(target, qcfg, pkg, hub)
        if why and not target.local and packages is None and "environment" in why:
            why += " (the packages of this machine, where the preflight ran)"
        _mxfp4_row(report, packed, why, load_dtype)
        return packed
    elif quant:
        report.add(
            "weights",
            WARN,
            f"{source.id} ships {quant} weights, which preflight does not "
            "know; the memory figure assumes the loaded dtype.",
        )
    else:
        report.add("weights", OK, f"loads dense in {load_dtype} with standard PyTorch ops.")
    return False


def _implementation_rows(report, cfg, counts, packed: bool) -> str | None:
    """The attention and experts implementations transformers picks; returns the attention's."""
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
    return attn


def _seq_len_row(report, source, text_cfg, seq_len, num_seqs) -> tuple[int, int]:
    from harness.loading.params import max_positions

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
    return T, N


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


PLAN = "plan"  # gpus=PLAN: the registry plan, else the smallest the memory model fits on
_IMPLIED = Target("plan", (), label="the smallest plan that fits")


def _target(gpus, device, source) -> Target | None:
    import torch

    from harness.models.registry import GpuPlan

    if gpus == PLAN:
        entry = source.entry
        return plan_target(entry.gpu) if entry is not None and entry.gpu else _IMPLIED
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
    if source.entry is not None and source.entry.gpu is not None:  # no GPU here: its plan
        return plan_target(source.entry.gpu)
    return _IMPLIED  # no GPU here: the smallest plan the model fits on
