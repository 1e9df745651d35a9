"""What a registry entry is rented on: its explicit ``GpuPlan``, else the smallest plan of the GPU
menu on which preflight's memory model fits a run at the study's settings (16 x 2048 tokens).
``outliers models``, the RunPod plan and preflight's own verdict all read this one model."""

from __future__ import annotations

from dataclasses import dataclass

from harness.preflight.checks import PLAN, preflight


@dataclass(frozen=True)
class Sizing:
    plan: object | None  # harness.models.registry.GpuPlan; None: the config is not at hand
    total_params: int | None
    active_params: int | None  # active without embeddings (MoE: the top-k experts)
    why: str = ""  # why there is no plan, one sentence


def size(entry, *, configs=None, hub: bool | None = False) -> Sizing:
    """``hub=False`` (default) never asks the hub: shipped configs, ``configs`` and the hub cache;
    ``hub=None`` also downloads config.json when the hub is reachable."""
    from harness.errors import HarnessError

    try:
        report = preflight(entry, gpus=PLAN, configs=configs, hub=hub, allow_fallback=True)
    except HarnessError as err:  # e.g. a GGUF entry whose package is absent
        return Sizing(entry.gpu, None, None, str(err))
    facts = report.facts
    total, active = facts.get("total_params"), facts.get("active_params_no_embedding")
    if entry.gpu is not None:
        return Sizing(entry.gpu, total, active)
    if total is None:
        refused = report.refusals
        return Sizing(None, None, None, refused[0].message if refused else "")
    target = report.target
    if facts.get("implied_gpus") is None:
        return Sizing(None, total, active, f"{entry.id} needs more than 8x 80 GB GPUs.")
    from harness.models.registry import GpuPlan

    types, count = facts["implied_gpus"]
    return Sizing(GpuPlan(tuple(types), count, int(target.disk_free_gb)), total, active)
