"""The memory and disk model: weights, one layer's activation peak, the capture's buffers, per device."""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.config_fields import config_field
from harness.engine.tuning import DEFAULT_CHUNK_ELEMENTS
from harness.preflight.kernels import (
    MXFP4_BYTES_PER_PARAM,
)
from harness.preflight.targets import GIB, Target, plan_target
from harness.preflight.verdict import OK, REFUSE, WARN

CUDA_CONTEXT_GIB = 1.0  # CUDA context + cuBLAS workspace, per GPU


FRAGMENTATION = 1.25  # allocator slack on the activation peak (CPU calibration: 1.0-1.2x)


DISK_FACTOR = 1.05  # checkpoint as stored x this (index, tokenizer, partial files)


AUTO_BATCH_TOKENS = {"cpu": 8192, "cuda": 32768}  # = harness.analyze.AUTO_BATCH_TOKENS


CHUNK_ELEMENTS = DEFAULT_CHUNK_ELEMENTS["cuda"]  # the capture's scratch bound on a GPU


NUM_GRID = 9  # magnitudes captured per run: len(harness.engine.statistics.make_grid(6.0))


MEMORY_FORMULA = (
    "per GPU = weights / n (+ one decoder layer when n > 1: the split is per layer) "
    f"+ {CUDA_CONTEXT_GIB:g} GiB CUDA context + capture (uint8 union [B,T,H] + one chunk scratch "
    "min(B*T*H, 2^25) x 6 bytes (an int32 and a uint8 level map, a quarter of the chunk gathered) "
    "+ per-sequence statistics) "
    f"+ {FRAGMENTATION:g} x the peak of one layer = 4 x [B*T, hidden] residual-sized tensors "
    "+ max(attention: q,k,v,o projections (+ 3 x [B, heads, T, T] scores under eager attention); "
    "MLP: 3 x [B*T, intermediate] dense, or B*T*top_k x (3 x moe_intermediate + 2 x hidden) routed "
    "+ the shared expert; linear attention: 4 x [B*T, conv_dim] (+ fp32 copies on the reference "
    "path)), all in the loaded dtype; B = the analysis batch (32768 tokens / T on a GPU, at most "
    "num_seqs); needed = weights + n x (context + capture) + activations"
)


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
        def g(name, default=0):
            return config_field(cfg, name, default)

        hidden, heads = g("hidden_size"), g("num_heads")
        inter = g("intermediate_size", default=4 * hidden)
        moe = counts.is_moe
        some_dense = g("first_dense_layers") or getattr(cfg, "mlp_only_layers", None)
        moe_inter = g("moe_intermediate_size", default=inter) if moe else 0
        shared = g("shared_intermediate_size") or g("num_shared_experts") * moe_inter
        kd, vd = g("linear_key_head_dim"), g("linear_value_head_dim")
        kh, vh = g("linear_num_key_heads"), g("linear_num_value_heads")
        return cls(
            hidden=hidden,
            layers=g("num_layers", default=1),
            heads=heads,
            kv_heads=g("num_kv_heads", default=heads),
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
    """The capture's buffers on one device: union, chunk scratch (an int32 and a uint8 map, and
    the dense columns gathered side by side: at most a quarter of a chunk, float32 at most),
    per-sequence stats."""
    union = batch * T * s.hidden
    scratch = min(union, CHUNK_ELEMENTS) * (4 + 1 + 1)
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


def smallest_plan(s: _Shape, weights: float, ab: int, T: int, N: int):
    """The smallest plan of the GPU menu on which this memory model fits a run at the automatic
    batch (a ``GpuPlan`` with the menu's fallback types), or None above 8x 80 GB. The one GPU
    sizing model: preflight's verdict and what a RunPod run rents both come from it."""
    from harness.models.registry import A100_80, SMALL_24, GpuPlan

    menu = [(SMALL_24, 1), (("NVIDIA RTX A6000",), 1)] + [(A100_80, k) for k in range(1, 9)]
    for types, count in menu:
        target = plan_target(GpuPlan(types, count))
        if estimate(s, weights, ab, T, _batch(None, T, N, target), target)["fits"]:
            return GpuPlan(types, count)
    return None


def implied_plan(s: _Shape, weights: float, ab: int, T: int, N: int) -> str:
    plan = smallest_plan(s, weights, ab, T, N)
    return "more than 8x 80 GB" if plan is None else plan_target(plan).label


def pod_disk_gb(stored_gb: float) -> int:
    """Container disk for a checkpoint of ``stored_gb``: the download's partial files and the
    image's own layers on top, in steps of 10 GB."""
    return max(50, 10 * math.ceil(1.5 * stored_gb / 10) + 30)


def _memory_row(report, s, weights, ab, T, N, batch_size, target) -> None:
    batch = _batch(batch_size, T, N, target)
    est = estimate(s, weights, ab, T, batch, target)
    smallest = smallest_plan(s, weights, ab, T, N)
    plan = implied_plan(s, weights, ab, T, N)
    report.facts.update(
        implied_gpus=None if smallest is None else [list(smallest.gpu_types), smallest.count],
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
        from harness.hub import cached_snapshot

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
