"""The analysis pipeline: token windows -> one forward pass per batch -> statistics -> figures.

``analyze(model, windows, ...)`` is the one entry point shared by the CLI, the pytest plugin and
notebooks. It returns an ``AnalysisResult`` whose ``to_dict()`` is what result.json holds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import replace

import torch

from harness.config_fields import config_field
from harness.engine.capture import Capture, run_together
from harness.engine.criteria import (
    Criteria,
    bf16_rounding_threshold,
    by_definition,
    evaluate,
    seed_compatible,
)
from harness.engine.criteria import view as criteria_view
from harness.engine.forward import base_forward, input_device, is_oom
from harness.engine.observer import Batch, Observer
from harness.engine.result import AnalysisResult
from harness.engine.selfcheck import CHECK_POSITIONS, SiteProbe, SitesChanged
from harness.engine.site_sets import ALL_PARTS
from harness.engine.sites import SITE_SETS, find_sites, parse_site_set
from harness.engine.statistics import DEFAULT_GRID, make_grid
from harness.engine.tuning import CaptureTuning
from harness.errors import HarnessError
from harness.loading.params import count_model, max_positions

# Tokens per forward pass when batch_size is not given; halved on out-of-memory.
AUTO_BATCH_TOKENS = {"cpu": 8192, "cuda": 32768}


def _as_ids(windows) -> tuple[torch.Tensor, dict]:
    ids = getattr(windows, "ids", windows)
    info = dict(getattr(windows, "info", {}) or {})
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype.is_floating_point:
        raise HarnessError(
            "windows must be an integer tensor [num_seqs, seq_len] of token ids or a "
            "harness.data.windows.Windows object."
        )
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise HarnessError("there are no token windows to analyse; check --num-seqs and --seq-len.")
    return ids.to(torch.long).cpu(), info


def _as_original(stats, criteria: Criteria, threshold: float | None) -> dict:
    """The seed-compatible figures as the original study computed them (bf16 rounding)."""
    why = (
        "the original cast every activation to bfloat16 before comparing with the magnitude "
        "(also for float32 runs); that equals comparing the unrounded values with "
        "the smallest float32 whose bfloat16 rounding reaches the magnitude"
    )
    if threshold is None:
        return {
            "threshold": criteria.magnitude,
            "same_as_exact": True,
            "why": "the activations are bfloat16 already: the original's rounding changes nothing",
        }
    c = replace(criteria, magnitude=threshold)
    sc = seed_compatible(criteria_view(stats, c), c, with_pairs=False)
    return {"threshold": threshold, "same_as_exact": False, "why": why, **sc}


def model_info(model: torch.nn.Module, sitemap=None, **extra) -> dict:
    """What result.json says about the model, from the loaded model itself."""
    counts = count_model(model)
    param = next(model.parameters())
    info = {
        "id": extra.pop("id", None) or getattr(model.config, "_name_or_path", None) or "model",
        "source": extra.pop("source", None)
        or {"path": getattr(model.config, "_name_or_path", None)},
        "model_class": type(model).__name__,
        "model_type": getattr(model.config, "model_type", None),
        "num_layers": sitemap.num_layers if sitemap else None,
        "hidden_size": sitemap.hidden_size if sitemap else None,
        "total_params": counts.total,
        "active_params": counts.active,
        "total_params_no_embedding": counts.total_no_embedding,
        "active_params_no_embedding": counts.active_no_embedding,
        "num_experts": counts.num_experts,
        "experts_per_token": counts.top_k,
        "dtype": str(param.dtype).replace("torch.", ""),
        "device": str(input_device(model)),
    }
    info.update(extra)
    return info


def analyze(
    model: torch.nn.Module,
    windows,
    *,
    sites: str = "ln",
    magnitude: float = 6.0,
    layer_frac: float = 0.25,
    seq_frac: float = 0.06,
    layer_unit: str = "sites",
    skip_first_position: bool = False,
    batch_size: int | None = None,
    grid: Iterable[float] | None = None,
    observers: Iterable[Observer] = (),
    progress: bool = False,
    model_meta: dict | None = None,
    perplexity: bool = False,
    attribution: bool = False,
    tuning: CaptureTuning | None = None,
) -> AnalysisResult:
    """Find the outlier features of ``model`` on ``windows`` ([N, T] token ids, or a
    ``harness.data.windows.Windows``) with exactly one forward pass per batch.

    Thresholds are parameters (Dettmers: 6.0 / 0.25 / 0.06, inclusive). ``layer_unit`` names
    the layer-% denominator ("sites", the original study's; "layers": a transformer layer counts
    when any of its sites reaches the magnitude); ``skip_first_position`` leaves each window's
    first position out of the headline figures. Both are recorded either way
    (``sections["by_definition"]``). The statistics are
    captured at every magnitude of ``grid`` (default 3..100, plus ``magnitude``), so
    ``harness.engine.criteria.evaluate`` recomputes every figure at other thresholds without the model.
    ``tuning`` sizes the reductions (``harness.engine.tuning.CaptureTuning``; no figure depends on it).
    """
    criteria = Criteria(
        float(magnitude), float(layer_frac), float(seq_frac), layer_unit, bool(skip_first_position)
    )
    parse_site_set(sites)
    ids, data_info = _as_ids(windows)
    N, T = ids.shape
    _check_windows(model, ids)
    grid = tuple(grid) if grid is not None else None
    # the original study's rounding (every activation cast to bf16 before the test): one more
    # grid level gives its figures beside the exact ones, in the same pass
    as_original = None
    if next(model.parameters()).dtype != torch.bfloat16:
        as_original = bf16_rounding_threshold(criteria.magnitude)
        if as_original != criteria.magnitude:
            grid = (grid if grid is not None else DEFAULT_GRID) + (as_original,)
    grid_values = make_grid(criteria.magnitude, grid)
    device = input_device(model)
    batch_size = _batch_size(model, device, batch_size, N, T)
    user_observers = list(observers)
    timing = {
        "forward_seconds": 0.0,
        "batches": 0,
        "batch_size": batch_size,
        "oom_retries": 0,
    }
    t_start = time.perf_counter()

    def measure(sitemap, probe):
        observers = user_observers + _builtin_observers(
            model, criteria, grid_values, data_info, attribution=attribution, perplexity=perplexity
        )
        # --sites all: each site kind is also captured on its own, in the same forward pass
        kinds = ALL_PARTS if sites == "all" else ()
        side_maps = {k: _kind_map(sitemap, k) for k in kinds}
        with torch.inference_mode(), ExitStack() as stack:
            if probe is not None:
                stack.enter_context(probe)
            cap = stack.enter_context(Capture(sitemap, grid_values, N, T, observers, tuning))
            sides = {
                k: stack.enter_context(Capture(m, grid_values, N, T, tuning=tuning))
                for k, m in side_maps.items()
            }
            forward = base_forward(model)
            captures = [cap, *sides.values()]
            _forward_batches(captures, forward, ids, batch_size, device, timing, progress, probe)
            timing["forward_calls"] = cap.forward_calls
            return cap.stats(), {k: c.stats() for k, c in sides.items()}, cap, observers

    # the sites are checked on this very model, on the first batch before it is merged
    # (harness.engine.selfcheck); where the check moves or merges sites, that batch is
    # measured again at the checked sites
    found = find_sites(model, sites)
    probe = SiteProbe(model, found)
    try:
        stats, side_stats, cap, observers = measure(found, probe)
        sitemap = probe.checked
    except SitesChanged as changed:
        sitemap = changed.sitemap
        sitemap.self_check["first_batch_measured_again"] = True
        timing["discarded_passes"] = 1  # forward_calls counts the passes that were merged
        stats, side_stats, cap, observers = measure(sitemap, None)
    side_maps = {k: _kind_map(sitemap, k) for k in side_stats}
    activation_dtypes = sorted(cap.activation_dtypes)
    t_analysis = time.perf_counter()
    figures = evaluate(stats, criteria)
    sections = _sections(stats, criteria, as_original, observers)
    timing["analysis_seconds"] = time.perf_counter() - t_analysis
    timing["capture_seconds"] = t_analysis - t_start
    timing["tokens_per_second"] = (
        N * T / timing["forward_seconds"] if timing["forward_seconds"] else None
    )
    timing["self_check_seconds"] = sitemap.self_check["seconds"]
    meta = dict(model_meta or {})
    if "load_seconds" in meta:
        timing["load_seconds"] = meta.pop("load_seconds")
    meta.setdefault("activation_dtype", ",".join(activation_dtypes))
    info = model_info(model, sitemap, **meta)
    data = _data_record(ids, data_info)
    for kind_stats in side_stats.values():  # the observers' arrays are the same pass's
        kind_stats.extra.update({k: v for k, v in stats.extra.items() if k not in kind_stats.extra})
    parts = _site_kind_parts(
        side_stats, side_maps, info, data, criteria, grid_values, timing, as_original, observers
    )
    if parts:
        sections["by_site_kind"] = _by_site_kind(parts)
    return AnalysisResult(
        model=info,
        data=data,
        criteria=_criteria_record(criteria, sitemap, grid_values),
        seed_compatible=figures["seed_compatible"],
        pooled=figures["pooled"],
        per_site=figures["per_site"],
        timing=timing,
        stats=stats,
        sections=sections,
        parts=parts,
    )


def _builtin_observers(model, criteria, grid_values, data_info, *, attribution, perplexity):
    out = []
    if attribution:  # tokens/positions, massive activations, MoE experts: same forward pass
        from harness.attribution.observer import attribution_observers

        out += attribution_observers(
            model, criteria.magnitude, grid_values, bos_token_id=data_info.get("bos_token_id")
        )
    if perplexity:
        from harness.engine.perplexity import Perplexity

        out.append(Perplexity(model))
    return out


def _sections(stats, criteria, as_original, observers) -> dict:
    """The result's sections beside the headline figures: the study's rounding, the figures by
    definition, and each observer's summary (attribution, perplexity)."""
    sections = {
        "seed_compatible_as_original": _as_original(stats, criteria, as_original),
        "by_definition": by_definition(stats, criteria),
    }
    for obs in observers:
        summary = getattr(obs, "summary", None)
        if callable(summary):
            sections.update(summary(stats, criteria))
    return sections


def _site_kind_parts(
    side_stats, side_maps, info, data, criteria, grid_values, timing, as_original, observers
):
    """--sites all: one result per site kind, from the captures that ran beside the main one;
    each with every section a run of that kind alone writes (the observers saw the same pass)."""
    return {
        kind: AnalysisResult(
            model=info,
            data=data,
            criteria={
                **_criteria_record(criteria, side_maps[kind], grid_values),
                "measured_with": "--sites all: every site kind in one forward pass",
            },
            **evaluate(kind_stats, criteria),
            timing=timing,
            stats=kind_stats,
            sections=_sections(kind_stats, criteria, as_original, observers),
        )
        for kind, kind_stats in side_stats.items()
    }


def _by_site_kind(parts: dict) -> dict:
    return {
        k: {
            "seed_compatible": {kk: v for kk, v in p.seed_compatible.items() if kk != "pairs"},
            "pooled": {kk: v for kk, v in p.pooled.items() if kk != "dims"}
            | {"dims": [d["dim"] for d in p.pooled.dims]},
        }
        for k, p in parts.items()
    }


def _check_windows(model, ids: torch.Tensor) -> None:
    """Windows the model can read: no longer than its positions, ids inside its vocabulary."""
    T = ids.shape[1]
    limit = max_positions(model.config)
    if limit is not None and T > limit:
        raise HarnessError(
            f"--seq-len {T} is above this model's maximum of {limit} positions; use --seq-len "
            f"{limit} or less."
        )
    vocab = getattr(model.config, "vocab_size", None)
    if isinstance(vocab, int) and int(ids.max()) >= vocab:
        raise HarnessError(
            f"token id {int(ids.max())} is outside the model's vocabulary of {vocab}; the windows "
            "were made with another tokenizer."
        )


def _batch_size(model, device: torch.device, batch_size: int | None, N: int, T: int) -> int:
    if batch_size is None:
        batch_size = max(1, AUTO_BATCH_TOKENS.get(device.type, 8192) // T)
        if getattr(model.config, "_attn_implementation", None) == "eager":
            # eager attention materialises [B, heads, T, T] scores: keep them near 4 GiB
            heads = config_field(model.config, "num_heads", 32)
            batch_size = max(1, min(batch_size, (4 << 30) // (heads * T * T * 4)))
    if batch_size < 1:
        raise HarnessError(f"--batch-size must be at least 1 (got {batch_size}).")
    return min(batch_size, N)


def _forward_batches(captures, forward, ids, batch_size, device, timing, progress, probe=None):
    """One forward pass per batch for every capture; on out-of-memory the batch is halved and
    retried (a failed batch leaves every capture as it was), down to one window. ``probe``
    (a ``SiteProbe``, hooks in place) rides the first batch and checks the sites before it is
    merged; its hooks are removed once the check has passed."""
    N, T = ids.shape
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=N * T, unit="tok", desc="forward", leave=False)
    start, index = 0, 0
    try:
        while start < N:
            size = min(batch_size, N - start)
            batch = Batch(start, ids[start : start + size], index)
            t0 = time.perf_counter()
            checking = probe is not None and probe.checked is None
            if checking:
                probe.reset(size, T)
            try:
                run_together(captures, forward, batch, probe.check if checking else None)
            except SitesChanged:
                raise
            except Exception as err:
                if checking and not is_oom(err):
                    _check_apart(probe, ids)
                if not is_oom(err):
                    raise
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if size == 1:
                    raise HarnessError(
                        f"out of memory with a single window of {T} tokens on {device}; use a "
                        "shorter --seq-len, more or larger GPUs (--runpod), or --dtype bfloat16."
                    ) from None
                batch_size = max(1, size // 2)
                timing["oom_retries"] += 1
                continue
            if checking:
                probe.close()
            if device.type == "cuda":
                torch.cuda.synchronize()
            timing["forward_seconds"] += time.perf_counter() - t0
            timing["batches"] += 1
            if bar is not None:
                bar.update(size * T)
            start += size
            index += 1
    finally:
        if bar is not None:
            bar.close()
    timing["batch_size"] = batch_size


def _check_apart(probe: SiteProbe, ids: torch.Tensor) -> None:
    """The first batch failed while the self-check rode it (a hook refused a tensor, the model
    raised): the check gets a short pass of its own, whose verdict on the sites comes first.
    Raises its refusal, or ``SitesChanged``; returns when the sites were right or when that
    pass fails too (the batch's own error then tells why)."""
    probe.close()
    apart = SiteProbe(probe.model, probe.sitemap)
    try:
        checked = apart.alone(ids[:1, :CHECK_POSITIONS])
    except HarnessError:
        raise
    except Exception:
        return
    if apart.retarget:
        raise SitesChanged(checked)


def _data_record(ids: torch.Tensor, data_info: dict) -> dict:
    N, T = ids.shape
    data = {
        "dataset": data_info.get("dataset", "tensor"),
        "num_seqs": int(N),
        "seq_len": int(T),
        "stride": int(data_info.get("stride", T)),
        "tokens": int(N * T),
        "bos": data_info.get("bos", "unknown"),
    }
    data.update({k: v for k, v in data_info.items() if k not in data})
    if "windows_sha256" not in data:
        import hashlib

        digest = hashlib.sha256(ids.numpy().astype("<i8").tobytes()).hexdigest()
        data["windows_sha256"] = digest[:16]
    return data


def _kind_map(sitemap, site_set: str):
    """The site map restricted to one site set, sites renumbered."""
    kinds = SITE_SETS[site_set]
    kept = [s for s in sitemap.sites if s.kind in kinds]
    return replace(
        sitemap, site_set=site_set, sites=tuple(replace(s, index=i) for i, s in enumerate(kept))
    )


def _criteria_record(criteria: Criteria, sitemap, grid_values) -> dict:
    return {
        "magnitude": criteria.magnitude,
        "layer_frac": criteria.layer_frac,
        "seq_frac": criteria.seq_frac,
        "layer_unit": criteria.layer_unit,
        "skip_first_position": criteria.skip_first_position,
        "sites": sitemap.site_set,
        "num_sites": len(sitemap.sites),
        "site_names": sitemap.names,
        "site_modules": sitemap.module_names,
        # per site: a layer whose attention and MLP read one tensor (parallel blocks) counts it
        # once; per layer: the layers that hold a site
        "layer_denominator": len(sitemap.sites)
        if criteria.layer_unit == "sites"
        else len({s.layer for s in sitemap.sites}),
        "layer_denominators": {
            "sites": len(sitemap.sites),
            "layers": len({s.layer for s in sitemap.sites}),
        },
        "sites_per_layer": sitemap.sites_per_layer(),
        "shared_input_layers": list(sitemap.shared_input_layers),
        "sites_not_measured": list(sitemap.unmeasured),
        "site_definition": "attn_in / mlp_in: the input of the block's first projection (what "
        "q/k/v, the FFN expansion and the router multiply); attn_out_in: the input of the "
        "attention output projection (where it has hidden-size features); resid_out: the "
        "layer's output",
        "site_self_check": sitemap.self_check,
        "grid": list(grid_values),
        "comparison": "inclusive (>=), fractions compared exactly in integers",
    }
