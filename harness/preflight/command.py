"""``outliers preflight MODEL...``: the reports as one table, exit 2 when a model is refused."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from harness.preflight.checks import preflight
from harness.preflight.verdict import WARN, PreflightReport


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
