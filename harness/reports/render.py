"""Rows as text: the terminal table, CSV with the original study's columns first, JSON, markdown."""

from __future__ import annotations

import csv
import io

from harness.errors import HarnessError
from harness.fileio import dumps
from harness.reports.bootstrap import Interval
from harness.reports.comparability import reference_configuration
from harness.reports.rows import COLUMNS, NOT_COMPARABLE_SETTINGS, Row

FORMATS = ("table", "csv", "json", "md")


# What the table's less obvious columns mean (printed under it, terminal and summary.md)
LEGEND = (
    "published = the figure the original study (or Dettmers' table 4) reported for this model; "
    "dev = our pairs relative to it, shown only when the run used the published settings; "
    "cmp = yes when the row was made like the reference configuration (dtype, data, sites, "
    "criteria), else it is not comparable and drawn hollow; per-layer dims/L% = the pooled "
    "dims and % of layers counted per transformer layer (a layer counts when any of its sites reaches the "
    "magnitude) beside the per-site ones."
)


TABLE_WIDTH = 150  # notes under the terminal table are wrapped to this width


# -- rendering ----------------------------------------------------------------------------------
def _params(n) -> str:
    if n is None:
        return "-"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            v = n / scale
            return f"{v:.3g}{unit}"
    return str(n)


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _ci_text(iv: Interval | None, fmt: str = ".0f") -> str:
    if iv is None or iv.low is None:
        return "-"
    return f"{iv.low:{fmt}}-{iv.high:{fmt}}"


def _dev_text(r: Row) -> str:
    if r.published_num_outliers is None:
        return "-"
    if isinstance(r.published_deviation_pct, str):
        return "n/a*"
    return f"{r.published_deviation_pct:+.0f}%"


_HEADERS = (
    "model",
    "group",
    "total",
    "active",
    "pairs",
    "pairs 95% CI",
    "layer% mean",
    "layer% med",
    "seq% mean",
    "seq% med",
    "dims",
    "sites%",
    "pos%",
    "per-layer dims/L%",
    "published",
    "dev",
    "cmp",
)


def _table_rows(rows: list[Row]) -> tuple[list[str], list[list], list[str]]:
    headers = list(_HEADERS)
    body, notes = [], []
    for r in rows:
        mark = "yes"
        if not r.comparable:
            notes.append(f"[{len(notes) + 1}] {r.label}: {r.comparability}")
            mark = f"NO [{len(notes)}]"
        body.append(
            [
                r.label,
                r.group,
                _params(r.total_params),
                _params(r.active_params),
                r.num_outliers,
                _ci_text(r.ci.get("num_outliers")),
                _pct(r.mean_layer_pct),
                _pct(r.median_layer_pct),
                _pct(r.mean_seq_pct),
                _pct(r.median_seq_pct),
                r.pooled_dims,
                _pct(r.sites_affected_pct),
                _pct(r.positions_affected_pct),
                "-"
                if r.dims_per_layer is None
                else f"{r.dims_per_layer}/{_pct(r.pct_layers_affected)}",
                "-" if r.published_num_outliers is None else f"{r.published_num_outliers:,}",
                _dev_text(r),
                mark,
            ]
        )
    if any(isinstance(r.published_deviation_pct, str) for r in rows):
        notes.append(
            f"n/a* = {NOT_COMPARABLE_SETTINGS}: the run's settings differ from the "
            "published figure's (16 x 2048 FineWeb-Edu, stride 1024, ln, per site, every "
            "position, 6/0.25/0.06, the entry's weights dtype; compared: our count as the "
            "original computed it, activations rounded to bf16)."
        )
    return headers, body, notes


def _csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow(["" if v is None else _csv_value(v) for v in r.export().values()])
    return buf.getvalue()


def _csv_value(v):
    if isinstance(v, float):
        return repr(v)
    return v


def _json(rows: list[Row]) -> str:
    payload = {
        "criteria": rows[0].criteria.to_dict() if rows else None,
        "reference_configuration": reference_configuration(rows),
        "columns": list(COLUMNS),
        "rows": [
            {
                **r.export(),
                "ci": {m: iv.to_dict() for m, iv in r.ci.items()},
                "per_site": r.figures.get("per_site"),
            }
            for r in rows
        ],
    }
    return dumps(payload)


def render(rows: list[Row], fmt: str = "table") -> str:
    """``rows`` as ``table`` (terminal, under ~160 characters wide, notes below), ``csv``
    (``COLUMNS``, floats at full precision), ``json`` or ``md`` (GitHub table + notes)."""
    from tabulate import tabulate

    if fmt == "csv":
        return _csv(rows)
    if fmt == "json":
        return _json(rows)
    if fmt not in FORMATS:
        raise HarnessError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}.")
    headers, body, notes = _table_rows(rows)
    tablefmt = "simple" if fmt == "table" else "github"
    if fmt == "table":  # two-line headers keep the terminal table narrow
        headers = [h.replace(" ", "\n", 1) if " " in h else h for h in headers]
    text = tabulate(body, headers=headers, tablefmt=tablefmt, disable_numparse=True)
    if notes and fmt == "table":
        import textwrap

        wrapped = [textwrap.fill(n, TABLE_WIDTH, subsequent_indent="    ") for n in notes]
        text += "\n\n" + "\n".join(wrapped)
    elif notes:
        text += "\n\n" + "\n\n".join(notes)
    return text
