"""``outliers``: the command line, a thin shell over the library.

    outliers analyze MODEL [options] [--results-dir DIR]   one model -> one result directory
    outliers report [--results-dir DIR] [--reports-dir DIR] [--format table|csv|json|md] [--magnitude M ...]
    outliers models                                the registry as a table
    outliers pods [--terminate [--all]]            the harness's RunPod pods, age and cost
    outliers pods smoke [--gpu T] [--max-minutes M] one cheap pod checks what a sweep relies on
    outliers preflight MODEL... [--configs DIR] [--allow-fallback] [--gpus "NAME:GB,..."]
                                                   will it run here (or there), before any download

Errors a user can cause print one sentence (``error: ...``) and exit with status 2; exit 0 only
when the work was done and written.
"""

from __future__ import annotations

import argparse
import os
import sys

from harness.errors import HarnessError
from harness.models.registry import GROUPS


def _cmd_analyze(args) -> int:
    from harness.options import from_argparse
    from harness.runners.local import run_model

    opts = from_argparse(args)
    if args.quiet:
        from harness.hub import silence_progress_bars

        silence_progress_bars()
    result, run_dir = run_model(
        args.model, opts, progress=not args.quiet, allow_fallback=args.allow_fallback
    )
    if result.parts:  # --sites all: each site kind apart
        dirs = result.sections["result_dirs"]
        print("--sites all: each site kind is reported apart (one forward pass, one result each)")
        print("\n\n".join(_summary(p, d) for p, d in zip(result.parts.values(), dirs, strict=True)))
    else:
        print(_summary(result, run_dir))
    return 0


def _summary(result, run_dir) -> str:
    from tabulate import tabulate

    sc, po, m = result.seed_compatible, result.pooled, result.model

    def pct(x):
        return "-" if x is None else f"{x:.1f}"

    d, c = result.data, result.criteria
    rows = [
        ["model", m.id],
        ["params total / active", f"{m.total_params / 1e9:.3f}B / {m.active_params / 1e9:.3f}B"],
        ["windows", f"{d.num_seqs} x {d.seq_len} (stride {d.stride}, {d.dataset})"],
        ["sites", f"{c.num_sites} ({c.sites})"],
        ["systematic (seq, dim) pairs", sc.num_outliers],
        ["mean / median layer %", f"{pct(sc.mean_layer_pct)} / {pct(sc.median_layer_pct)}"],
        ["mean / median seq %", f"{pct(sc.mean_seq_pct)} / {pct(sc.median_seq_pct)}"],
        *_as_original_row(result),
        ["pooled systematic dims", po.num_dims],
        [
            "sites / positions affected %",
            f"{po.sites_affected_pct:.1f} / {po.positions_affected_pct:.1f}",
        ],
        ["tokens/s", f"{result.timing.tokens_per_second:.0f}"],
        ["result", str(run_dir)],
    ]
    unit = c.get("layer_denominators") or {}
    rows.insert(
        4,
        [
            "layer % counted over",
            f"{c.layer_unit} ({c.layer_denominator}; sites {unit.get('sites', '?')}, layers "
            f"{unit.get('layers', '?')})"
            + (", first position left out" if c.skip_first_position else ""),
        ],
    )
    return tabulate(rows, tablefmt="simple") + _by_definition_table(result)


def _by_definition_table(result) -> str:
    """The headline figures under each layer unit, with and without the first position."""
    from tabulate import tabulate

    defs = result.sections.get("by_definition") or {}
    body = []
    for key, figs in defs.items():
        if figs is None:
            continue
        sc, po = figs["seed_compatible"], figs["pooled"]
        dims = ", ".join(f"{d['dim']} ({d['layer_pct']:.1f}%)" for d in po["dims"][:4]) + (
            " ..." if len(po["dims"]) > 4 else ""
        )
        body.append(
            [
                key.replace("_", " "),
                sc["num_outliers"],
                po["num_dims"],
                f"{po['sites_affected_pct']:.1f}",
                f"{po['positions_affected_pct']:.1f}",
                dims or "-",
            ]
        )
    if not body:
        return ""
    headers = ["layer unit", "pairs", "pooled dims", "units affected %", "positions %", "dims"]
    return "\n\n" + tabulate(body, headers=headers, tablefmt="simple")


def _as_original_row(result) -> list:
    orig = result.sections.get("seed_compatible_as_original") or {}
    if orig.get("same_as_exact", True):
        return []
    return [
        [f"pairs as the original computed (|x| >= {orig['threshold']:g})", orig["num_outliers"]]
    ]


def _cmd_models(args) -> int:
    from harness.reports.models_table import registry_table

    print(registry_table(group=args.group, configs=args.configs, download=args.fetch_configs))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from harness.options import add_to_argparse

    parser = argparse.ArgumentParser(
        prog="outliers", description="Outlier features of language models (Dettmers 2022)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("analyze", help="analyse one model and write its result directory")
    p.add_argument("model", help="registry id (see `outliers models`), hub id or local directory")
    add_to_argparse(p)
    p.add_argument(
        "--quiet", action="store_true", help="no progress bars (ours and the libraries')"
    )
    p.add_argument(
        "--allow-fallback",
        action="store_true",
        help="run a dequantized or slow reference path (labelled) instead of refusing",
    )
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("models", help="list the model registry")
    p.add_argument(
        "--group",
        choices=GROUPS,
        default=None,
        help="one study group",
    )
    p.add_argument(
        "--configs",
        default=None,
        help="folder of <org>__<name>/config.json files to count parameters offline",
    )
    p.add_argument(
        "--fetch-configs",
        action="store_true",
        help="download missing config.json files from the hub (small)",
    )
    p.set_defaults(func=_cmd_models)

    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return parser


def _report_command(sub) -> None:
    from harness.reports.command import add_report_command

    add_report_command(sub)


def _preflight_command(sub) -> None:
    from harness.preflight.command import add_preflight_command

    add_preflight_command(sub)


def _pods_command(sub) -> None:
    p = sub.add_parser(
        "pods",
        help="list the harness's RunPod pods with age and cost; `pods smoke`: first-contact check",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=("list", "smoke"),
        default="list",
        help="list (default), or smoke: one cheap pod for a few minutes that checks every path a "
        "sweep relies on, then is terminated",
    )
    p.add_argument(
        "--terminate",
        action="store_true",
        help="terminate leaked pods (made here with no live local run, or past their kill "
        "switch's deadline); other machines' pods need --all",
    )
    p.add_argument("--all", action="store_true", help="with --terminate: every harness pod")
    p.add_argument(
        "--api",
        default="auto",
        choices=("auto", "graphql", "rest"),
        help="RunPod API: auto (GraphQL, then REST when GraphQL fails), graphql or rest",
    )
    p.add_argument("--gpu", default=None, metavar="TYPES", help="smoke: GPU type ids to try")
    p.add_argument("--image", default=None, metavar="IMAGE", help="smoke: the pod image")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=15.0,
        metavar="MIN",
        help="smoke: the pod ends itself after this long at the latest, image pull included "
        "(default 15, at most 30)",
    )

    def run(args) -> int:
        from harness.runners.runpod.pods import pods_command

        if args.action == "smoke":
            from harness.runners.runpod.options import DEFAULT_IMAGE
            from harness.runners.runpod.smoke import smoke

            gpus = tuple(g.strip() for g in args.gpu.split(",") if g.strip()) if args.gpu else None
            rows = smoke(
                gpus=gpus,
                image=args.image or DEFAULT_IMAGE,
                max_minutes=args.max_minutes,
                api_mode=args.api,
            )
            return 1 if any(r.ok is False for r in rows) else 0
        return pods_command(terminate=args.terminate, all=args.all, api=args.api)

    p.set_defaults(func=run)


_EXTRA_COMMANDS = [_report_command, _preflight_command, _pods_command]


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written for the unfinished model.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
