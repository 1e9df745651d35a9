"""What is shown: the environment line and the time, memory and scaling tables (markdown)."""

from __future__ import annotations

import os
import platform
import sys


def environment() -> dict:
    import numpy
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    return {
        "device": f"CPU: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
    }


def _fmt_time(t) -> str:
    if t is None:
        return "-"
    if len(t["seconds"]) == 1:
        return f"{t['median']:.2f} (1 run)"
    return f"{t['median']:.2f} [{t['min']:.2f}-{t['max']:.2f}]"


def _r(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def time_table(rows: list[dict]) -> str:
    out = [
        "| model | params | sites | tokens | rounds | bare s | harness s | naive s "
        "| harness/bare | paired | engine share | naive/harness | others' CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["timings"]
        out.append(
            f"| {r['workload']} | {r['params'] / 1e6:.0f}M | {r['sites']} | {r['tokens']} "
            f"| {r['rounds']} | {_fmt_time(t.get('bare'))} | {_fmt_time(t.get('harness'))} "
            f"| {_fmt_time(t.get('naive'))} | {_r(r['harness_over_bare'])} "
            f"| {_r(r['harness_over_bare_paired'])} | {100 * r['engine_share']:.1f}% "
            f"| {_r(r.get('naive_over_harness'), 2)} "
            f"| {100 * r['others_cpu_median']:.0f}% (max {100 * r['others_cpu_max']:.0f}%) |"
        )
    return "\n".join(out)


def memory_table(rows: list[dict]) -> str:
    out = [
        "| model | one site activation MiB | bare +MiB | harness +MiB | naive +MiB "
        "| harness - bare MiB | budget MiB | naive/harness |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['workload']} | {r['site_activation_mib']:.0f} | {r['bare']:.0f} "
            f"| {r['harness']:.0f} | {_r(r.get('naive'), 0)} | {r['harness'] - r['bare']:.0f} "
            f"| {r['budget_mib']:.0f} | {_r(r.get('naive_over_harness'), 2)} |"
        )
    return "\n".join(out)


def scaling_table(rows: list[dict]) -> str:
    out = [
        "| model | variant | layers | N seqs | tokens | s | ms per 1k tokens | +MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['workload']} | {r['variant']} | {r['num_layers']} | {r['num_seqs']} "
            f"| {r['tokens']} "
            f"| {r['seconds']:.2f} | {1000 * r['seconds'] / (r['tokens'] / 1000):.0f} "
            f"| {r['extra_mib']:.0f} |"
        )
    return "\n".join(out)


def render(results: dict, command: str) -> str:
    env = results.get("environment") or environment()
    parts = [
        f"device: {env['device']}; python {env['python']}, torch {env['torch']}, "
        f"transformers {env['transformers']}",
        f"command: {command}",
    ]
    if results.get("time"):
        parts += ["", "time (one process, interleaved rounds; median [min-max] seconds):", ""]
        parts.append(time_table(results["time"]))
    if results.get("memory"):
        parts += ["", "peak RSS above the loaded model (one subprocess per variant):", ""]
        parts.append(memory_table(results["memory"]))
    if results.get("scaling"):
        parts += ["", "scaling (one subprocess per row, batch size 16, one run each):", ""]
        parts.append(scaling_table(results["scaling"]))
    return "\n".join(parts)
