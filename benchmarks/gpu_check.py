"""GPU check: the forward pass alone (``bare``) vs the harness, on random bf16 models of the
Qwen3-8B shape and the OLMoE-1B-7B shape, 16 x 2048 tokens; prints one table.

    python benchmarks/gpu_check.py                      # on a GPU machine (~3-5 min on an H100)
    python benchmarks/gpu_check.py --device cpu --small # proves the script end to end on a CPU

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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.capture import base_forward  # noqa: E402
from harness.pipeline import AUTO_BATCH_TOKENS, analyze  # noqa: E402
from harness.sites import find_sites  # noqa: E402

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


def build(name: str, small: bool, device: torch.device, dtype: torch.dtype, outliers: int = 8):
    """A random model of ``name``'s shape, built directly on ``device`` in ``dtype``, with
    ``outliers`` dims of gain 20 at every site norm (dense outliers, as in benchmarks/)."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    model_type, shape = SHAPES[name]
    if small:
        shape = {**shape, **SMALL[name], "max_position_embeddings": 4096}
    torch.manual_seed(0)
    with warnings.catch_warnings(), device:
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(CONFIG_MAPPING[model_type](**shape), dtype=dtype)
    model.eval()
    dims = torch.randperm(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    dims = sorted(dims[:outliers].tolist())
    with torch.no_grad():
        for layer in find_sites(model, "ln").layers:  # the norms before attention and MLP
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[dims] = 20.0
    return model, dims


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


def check_model(name: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    t_build = time.perf_counter()
    model, dims = build(name, args.small, device, dtype)
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
    row = {
        "model": name + ("-small" if args.small else "") + ("+attr" if args.attribution else ""),
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
    p.add_argument("--json", default=None, help="also write the raw numbers here")
    args = p.parse_args(argv)
    args.num_seqs = args.num_seqs or (4 if args.small else 16)
    args.seq_len = args.seq_len or (128 if args.small else 2048)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; use --device cpu --small to check the script", file=sys.stderr)
        return 2
    dtype = torch.bfloat16
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
