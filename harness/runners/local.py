"""One model, start to finish: load -> token windows -> analyze -> result directory.

Shared by ``outliers analyze`` and the pytest plugin's local runner.
"""

from __future__ import annotations

from pathlib import Path

from harness.engine.result import AnalysisResult
from harness.engine.result_files import write_result
from harness.environment import environment
from harness.errors import HarnessError
from harness.loading.load import LoadedModel, load
from harness.options import AnalysisOptions
from harness.pipeline import analyze


def is_tiny(spec) -> bool:
    from harness import models

    spec_id = spec if isinstance(spec, str) else spec.id
    entry = models.REGISTRY.get(spec_id)
    return bool(entry is not None and entry.is_tiny)


def is_offline(spec) -> bool:
    """A registry entry that runs here without the hub (tiny replicas, packaged GGUF files)."""
    from harness import models

    entry = models.REGISTRY.get(spec if isinstance(spec, str) else spec.id)
    return bool(entry is not None and entry.offline)


def provenance(result: AnalysisResult, loaded: LoadedModel, env: dict) -> dict:
    """The fields that decide whether two results were made the same way."""
    data = result.data
    return {
        "harness_version": env.get("harness_version"),
        "git_sha": (env.get("git") or {}).get("sha"),
        "torch": env.get("packages", {}).get("torch"),
        "transformers": env.get("packages", {}).get("transformers"),
        "cuda": env.get("cuda"),
        "gpu_name": env.get("gpu_name"),
        "gpu_count": env.get("gpu_count"),
        "model_commit": loaded.meta.get("source", {}).get("commit"),
        "weight_format": loaded.meta.get("weight_format")
        or (loaded.meta.get("quantization") or {}).get("quant_method")
        or "dense",
        "model_dtype": result.model.get("dtype"),
        "activation_dtype": result.model.get("activation_dtype"),
        "attn_implementation": loaded.meta.get("attn_implementation"),
        "experts_implementation": loaded.meta.get("experts_implementation"),
        "kernel_path": loaded.meta.get("kernel_path"),
        "fallback": (loaded.meta.get("preflight") or {}).get("fallback") or {},
        "dataset": data.get("dataset"),
        "dataset_config": data.get("config"),
        "dataset_revision": data.get("revision"),
        "bos": data.get("bos"),
        "windows_sha256": data.get("windows_sha256"),
    }


def preflight_here(spec, opts: AnalysisOptions, *, allow_fallback: bool = False):
    """The preflight of ``spec`` for this machine with the run's options (refusals not raised)."""
    from harness.loading.load import check_available, resolve, resolve_device
    from harness.preflight.checks import preflight

    check_available(resolve(spec))  # offline without the weights: WeightsUnavailable, as before
    return preflight(
        spec,
        device=resolve_device(opts.device),
        dtype=opts.dtype,
        seq_len=opts.seq_len,
        num_seqs=opts.num_seqs,
        batch_size=opts.batch_size,
        allow_fallback=allow_fallback,
    )


def preflight_then_load(spec, opts: AnalysisOptions, *, allow_fallback=False, on_report=None):
    """The one path from a model to its weights in memory, for ``outliers analyze`` and the
    pytest plugin: a real model is preflighted on this machine first and a refusal raises its
    sentence before any download (``on_report(report)`` sees the report before that: the plugin
    records it and skips on resource-only refusals); tiny replicas load directly."""
    report = None
    if not is_tiny(spec):
        report = preflight_here(spec, opts, allow_fallback=allow_fallback)
        if on_report is not None:
            on_report(report)
        report.raise_if_refused()
    return load(spec, device=opts.device, dtype=opts.dtype, preflight=report)


def load_data(loaded: LoadedModel, opts: AnalysisOptions, *, progress: bool = False):
    from harness.data.windows import DataSpec, load_windows

    spec = DataSpec(
        dataset=opts.dataset,
        config=opts.dataset_config,
        split=opts.split,
        revision=opts.dataset_revision,
        num_seqs=opts.num_seqs,
        seq_len=opts.seq_len,
        stride=opts.stride,
        bos=opts.bos,
        text_field=opts.text_field,
    )
    return load_windows(loaded.tokenizer, spec, progress=progress)


def run_model(
    spec,
    options: AnalysisOptions,
    *,
    progress: bool = False,
    observers=(),
    loaded: LoadedModel | None = None,
    windows=None,
    allow_fallback: bool = False,
) -> tuple[AnalysisResult, Path]:
    """Analyse one model with ``options`` and write its result directory atomically.

    A real model is preflighted on this machine first (``harness.preflight.checks``): a refusal raises
    its sentence before any download; ``allow_fallback`` lets a dequantized or reference path
    run, labelled in the provenance."""
    opts = options.validated().with_defaults_for(is_offline(spec))
    from harness.engine.result_files import ensure_writable

    ensure_writable(opts.results_dir, "--results-dir")  # before any download or forward pass
    if loaded is None:
        loaded = preflight_then_load(spec, opts, allow_fallback=allow_fallback)
    if windows is None:
        from harness.engine.sites import text_config
        from harness.loading.params import max_positions

        limit = max_positions(text_config(loaded.model.config))
        if limit is not None and opts.seq_len > limit:  # before building the windows
            raise HarnessError(
                f"--seq-len {opts.seq_len} is above this model's maximum of {limit} positions; "
                f"use --seq-len {limit} or less."
            )
        windows = load_data(loaded, opts, progress=progress)
    result = analyze(
        loaded.model,
        windows,
        sites=opts.sites_for(spec),
        magnitude=opts.magnitude,
        layer_frac=opts.layer_frac,
        seq_frac=opts.seq_frac,
        layer_unit=opts.layer_unit,
        skip_first_position=opts.skip_first_position,
        batch_size=opts.batch_size,
        observers=observers,
        progress=progress,
        model_meta=dict(loaded.meta),
        perplexity=opts.perplexity,
        attribution=not opts.no_attribution,
    )
    env = environment()
    result.sections["provenance"] = provenance(result, loaded, env)
    if result.parts:  # --sites all: one result per site kind, never the pooled one
        dirs = []
        for part in result.parts.values():
            part.sections["provenance"] = provenance(part, loaded, env)
            dirs.append(write_result(part, opts.results_dir, environment=env))
        result.sections["result_dirs"] = [str(d) for d in dirs]
        return result, dirs[0]
    run_dir = write_result(result, opts.results_dir, environment=env)
    return result, run_dir
