"""Peak memory of one variant in a fresh process; prints one JSON line.

    python -m benchmarks.memprobe qwen3-100m harness --num-seqs 16 --seq-len 512 --batch-size 16

The model is built and every module the variants need is imported first; a tiny forward pass
warms the kernels up (the same for every variant). Then the RSS is read (the baseline), the
kernel's RSS high-water mark is reset (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) and the
variant runs once; its peak is VmHWM - baseline. Where the reset is not possible the peak comes
from ``getrusage`` (ru_maxrss), which may then still hold the peak of building the model: the
JSON says which method was used. benchmarks/measure.py runs it with the default allocator (no
``MALLOC_*`` variable), as a user's process is.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time

MIB = 1024 * 1024


def status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    from harness.engine.host_memory import trim_heap

    gc.collect()
    trim_heap()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workload")
    p.add_argument("variant", choices=("bare", "harness", "naive"))
    p.add_argument("--num-seqs", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--layers-factor", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    import harness.pipeline  # noqa: F401  (imports are not the variant's memory)
    from benchmarks import workloads

    sys.path.insert(0, str(workloads.ROOT / "test_outliers"))
    import oracle  # noqa: F401

    w = workloads.WORKLOADS[args.workload]
    if args.layers_factor != 1:
        w = w.with_layers(args.layers_factor)
    model = workloads.build_model(w)
    ids = workloads.workload_ids(w, args.num_seqs, args.seq_len)
    workloads.run_bare(model, ids[:1, :32], 1)  # kernel warm-up, the same for every variant
    release_free_memory()
    baseline = status_kib("VmRSS")
    method = "VmHWM after clear_refs" if baseline is not None and reset_peak() else "ru_maxrss"
    t0, c0 = time.perf_counter(), time.process_time()
    workloads.VARIANTS[args.variant](model, ids, args.batch_size)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    if method == "ru_maxrss":
        baseline = baseline or 0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    else:
        peak = status_kib("VmHWM")
    itemsize = torch.empty((), dtype=getattr(torch, w.dtype)).element_size()
    batch = min(args.batch_size, args.num_seqs)
    print(
        json.dumps(
            {
                "workload": w.name,
                "variant": args.variant,
                "num_seqs": args.num_seqs,
                "seq_len": args.seq_len,
                "batch_size": batch,
                "num_layers": w.num_layers,
                "params": workloads.num_params(model),
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "baseline_mib": baseline / 1024,
                "peak_mib": peak / 1024,
                "extra_mib": (peak - baseline) / 1024,
                "site_activation_mib": batch * args.seq_len * w.hidden * itemsize / MIB,
                "method": method,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
