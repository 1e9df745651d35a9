"""``outliers report``: the command over result directories (a thin shell over collect / render / write_reports)."""

from __future__ import annotations

import time

from harness.engine.criteria import Criteria
from harness.errors import HarnessError
from harness.reports.bootstrap import DEFAULT_RESAMPLES
from harness.reports.collect import collect
from harness.reports.render import FORMATS, render
from harness.reports.summary import summary_for_terminal, write_reports


# -- the `outliers report` command --------------------------------------------------------------
def add_report_command(sub) -> None:
    """Add ``outliers report`` to the CLI's subparsers."""
    from harness.options import OPTIONS

    helps = {o.name: o.help for o in OPTIONS}
    p = sub.add_parser(
        "report", help="tables, exports and plots from result directories (no model is run)"
    )
    p.add_argument(
        "--results-dir",
        default="results",
        help="where the result directories are, as for analyze and pytest (default: results)",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="print this format on stdout (default: the terminal table and paths)",
    )
    p.add_argument(
        "--magnitude",
        type=float,
        default=None,
        help=helps["magnitude"] + "; re-thresholds from stats.npz (a grid value)",
    )
    p.add_argument("--layer-frac", type=float, default=None, help=helps["layer_frac"])
    p.add_argument("--seq-frac", type=float, default=None, help=helps["seq_frac"])
    p.add_argument(
        "--layer-unit",
        choices=("sites", "layers"),
        default=None,
        help=helps["layer_unit"] + "; re-thresholds from stats.npz",
    )
    p.add_argument(
        "--skip-first-position",
        action="store_true",
        default=None,
        help=helps["skip_first_position"] + "; re-thresholds from stats.npz",
    )
    p.add_argument(
        "--reports-dir",
        default=None,
        help="write the reports (tables, exports, plots) into this directory, as pytest "
        "--reports-dir does; without it nothing is written",
    )
    p.add_argument(
        "--resamples",
        type=int,
        default=DEFAULT_RESAMPLES,
        help="bootstrap resamples over sequences for the 95%% intervals (0: none)",
    )
    p.add_argument("--no-plots", action="store_true", help="tables and exports only")
    p.set_defaults(func=run_report_command)


def criteria_from_flags(
    magnitude, layer_frac, seq_frac, layer_unit=None, skip_first_position=None
) -> Criteria | None:
    """None when no flag was given (figures as recorded); otherwise the flags, with Dettmers'
    values (per site, every position) for the ones left out."""
    given = (magnitude, layer_frac, seq_frac, layer_unit, skip_first_position)
    if all(v is None for v in given):
        return None
    d = Criteria()
    return Criteria(
        d.magnitude if magnitude is None else magnitude,
        d.layer_frac if layer_frac is None else layer_frac,
        d.seq_frac if seq_frac is None else seq_frac,
        d.layer_unit if layer_unit is None else layer_unit,
        bool(skip_first_position),
    )


def run_report_command(args) -> int:
    import sys

    t0 = time.perf_counter()
    criteria = criteria_from_flags(
        args.magnitude, args.layer_frac, args.seq_frac, args.layer_unit, args.skip_first_position
    )
    rows = collect(args.results_dir, criteria, resamples=args.resamples)
    if not rows:
        raise HarnessError(
            f"no result directories under {args.results_dir}; run `pytest -m tiny` or "
            "`outliers analyze MODEL` first, or pass --results-dir DIR."
        )
    # files only when asked for (--reports-dir): a stdout format has no side effects
    paths = (
        write_reports(rows, args.reports_dir, plots=not args.no_plots) if args.reports_dir else {}
    )
    if args.format is None:
        print(summary_for_terminal(rows, paths))
    else:
        print(render(rows, args.format), end="" if args.format == "csv" else "\n")
        if args.reports_dir:
            took = time.perf_counter() - t0
            print(f"reports written to {args.reports_dir} ({took:.1f} s)", file=sys.stderr)
    return 0
