"""Does a figure change with model size? Rank correlation and a step-vs-line test.

Pure functions over small arrays: one point per model, x = log10(parameter count), y = one
figure (seed-compatible pairs, mean layer %, ...). Nothing here reads result files;
``analyze_trends`` takes one flat dict per model (``row_from_result`` makes one from a
result.json dict).

Conventions (every figure states them, so they are written down once here):

- **Spearman rho**: ``scipy.stats.spearmanr`` (Pearson correlation of average ranks, so ties are
  allowed). Undefined (NaN) when x or y is constant.
- **Permutation p-value**, two-sided, H0: y is exchangeable with respect to x. The statistic is
  |rho|; a permutation counts when its |rho| >= the observed |rho| (up to 1e-9, for rounding).
  With n! <= 40320 (n <= 8) every permutation is enumerated, the observed one included, and
  p = count / n! (exact; the smallest possible p is 2 / n!, so n = 4 can never reach 0.05).
  Otherwise ``n_perm`` random permutations (seeded) and p = (count + 1) / (n_perm + 1).
- **Bootstrap CI**: ``n_boot`` resamples of the (x, y) pairs with replacement (seeded), rho of
  each, percentile interval. A resample whose x or y is constant has no rho: it is left out
  and counted (``n_boot_degenerate``); the interval is NaN when fewer than 100 remain.
- **Step vs line** on the points sorted by x. STEP: a constant level on each side of a split
  between two consecutive DISTINCT x values, each side >= 2 points; the split with the smallest
  residual sum of squares (RSS) is kept (the first one on a tie). LINE: least squares
  y = a + b x. Gaussian BIC with the variance profiled out:
  ``BIC = n ln(RSS / n) + k ln(n)``, k = 3 for the step (two levels + split point), k = 2 for
  the line (intercept + slope); the variance is a parameter of both and is counted in neither,
  which leaves the difference unchanged. ``delta_bic = BIC_line - BIC_step``: positive favours
  the step (> 2 weakly, > 6 strongly, the usual Kass & Raftery reading). ``lr_stat =
  n ln(RSS_line / RSS_step)`` is the likelihood-ratio statistic (2 x log LR); it does not
  follow a chi-square law, because the split is searched for. Searching the split also makes
  the BIC penalty of one parameter optimistic: on pure Gaussian noise at evenly spaced x
  (simulated, 2000 series each for n = 6, 8, 12, 20) delta_bic > 2 in 9-13% of series and
  delta_bic > 6 in 1-1.6%. Read a weak preference on ~10 models as weak.
  An RSS of 0 is floored at 1e-12 x the total sum of squares, so a noise-free fit gives a large
  finite delta. The split point is reported midway (in x) between the two sides, and as
  ``10 ** split_x`` parameters.
- Non-finite points (None, NaN, inf) are dropped before anything is computed; ``n`` counts the
  points used. With fewer than ``MIN_POINTS`` (4) points nothing is tested.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

MIN_POINTS = 4
EXACT_MAX_PERMUTATIONS = 40320  # 8!
P_THRESHOLD = 0.05
BIC_WEAK = 2.0
BIC_STRONG = 6.0

# Flat row keys (see ``row_from_result``) and how sentences name them.
METRIC_LABELS: dict[str, str] = {
    "num_outliers": "seed-compatible pairs",
    "mean_layer_pct": "mean layer %",
    "mean_seq_pct": "mean seq %",
    "num_dims": "pooled dims",
    "sites_affected_pct": "sites affected %",
    "positions_affected_pct": "positions affected %",
}
DEFAULT_METRICS: tuple[str, ...] = tuple(METRIC_LABELS)
X_LABELS: dict[str, str] = {"total_params": "total params", "active_params": "active params"}


@dataclass(frozen=True)
class Correlation:
    rho: float
    p_value: float
    p_method: str  # "exact" | "monte-carlo" | "undefined"
    n_permutations: int  # n! when exact
    ci_low: float
    ci_high: float
    n_boot: int
    n_boot_degenerate: int


@dataclass(frozen=True)
class ChangePoint:
    split_x: float  # midway between the two sides, in x units (log10 params)
    split_params: float | None  # 10 ** split_x (None past float range: x was not log10)
    left_max_x: float  # largest x of the left side
    right_min_x: float  # smallest x of the right side
    n_left: int
    n_right: int
    level_left: float
    level_right: float
    rss_step: float
    rss_line: float
    line_intercept: float
    line_slope: float
    bic_step: float
    bic_line: float
    delta_bic: float  # bic_line - bic_step: positive favours the step
    lr_stat: float  # n ln(rss_line / rss_step)


@dataclass(frozen=True)
class TrendResult:
    metric: str
    x: str
    n: int
    models: tuple[str, ...]
    correlation: Correlation | None  # None when n < MIN_POINTS
    change_point: ChangePoint | None  # None when n < MIN_POINTS or no valid split
    verdict: str

    def to_dict(self) -> dict:
        """JSON-ready: NaN and inf become None (result files are written with allow_nan=False)."""
        return _json_safe(asdict(self))


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------------------------------------
# The statistics


def _as_float(value) -> float:
    """A number as float; None, bools, strings and other non-numbers as NaN."""
    if value is None or isinstance(value, (bool, str, bytes)):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def finite_pairs(x: Iterable, y: Iterable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, kept) as float arrays with every pair holding a None / NaN / inf dropped;
    ``kept`` are the indices of the pairs kept."""
    xs = np.array([_as_float(v) for v in x], dtype=float)
    ys = np.array([_as_float(v) for v in y], dtype=float)
    if xs.shape != ys.shape:
        raise ValueError(f"x and y differ in length ({xs.size} != {ys.size})")
    kept = np.flatnonzero(np.isfinite(xs) & np.isfinite(ys))
    return xs[kept], ys[kept], kept


def _centered_ranks(v: np.ndarray) -> np.ndarray:
    r = stats.rankdata(v, axis=-1)
    return r - r.mean(axis=-1, keepdims=True)


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """scipy's Spearman rho; NaN (no warning) when x or y is constant or n < 2."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


@functools.lru_cache(maxsize=8)
def _all_permutations(n: int) -> np.ndarray:
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.intp)
    perms.setflags(write=False)
    return perms


def permutation_pvalue(
    x: Sequence[float], y: Sequence[float], *, n_perm: int = 10000, seed: int = 0
) -> tuple[float, str, int]:
    """Two-sided permutation p-value of Spearman rho: (p, method, permutations used).

    Exact enumeration (the observed order included, p = count / n!) when n! <= 40320, else
    ``n_perm`` seeded random permutations with p = (count + 1) / (n_perm + 1). NaN with method
    "undefined" when rho is undefined (constant x or y, n < 2)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = x.size
    if n < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, "undefined", 0
    if n_perm < 1:
        raise ValueError("n_perm must be at least 1")
    rx, ry = _centered_ranks(x), _centered_ranks(y)
    # Permuting y keeps its multiset of ranks, so rho = (rx . ry[perm]) / const: compare dots.
    scale = math.sqrt(float(rx @ rx) * float(ry @ ry))
    observed = abs(float(rx @ ry))
    tol = 1e-9 * scale
    if math.factorial(n) <= EXACT_MAX_PERMUTATIONS:
        perms = _all_permutations(n)
        count = int(np.sum(np.abs(ry[perms] @ rx) >= observed - tol))
        return count / len(perms), "exact", len(perms)
    rng = np.random.default_rng([seed, 1])
    perms = rng.permuted(np.broadcast_to(np.arange(n), (n_perm, n)), axis=1)
    count = int(np.sum(np.abs(ry[perms] @ rx) >= observed - tol))
    return (count + 1) / (n_perm + 1), "monte-carlo", n_perm


def bootstrap_ci(
    x: Sequence[float],
    y: Sequence[float],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, int]:
    """Percentile bootstrap interval of Spearman rho: (low, high, degenerate resamples).

    Pairs are resampled with replacement (seeded). Resamples with constant x or constant y have
    no rho and are left out; (NaN, NaN) when fewer than 100 resamples remain."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = x.size
    if n < 2:
        return math.nan, math.nan, n_boot
    rng = np.random.default_rng([seed, 2])
    idx = rng.integers(0, n, size=(n_boot, n))
    rx, ry = _centered_ranks(x[idx]), _centered_ranks(y[idx])
    sxx, syy = np.sum(rx * rx, axis=1), np.sum(ry * ry, axis=1)
    ok = (sxx > 0) & (syy > 0)
    rho = np.sum(rx * ry, axis=1)[ok] / np.sqrt(sxx[ok] * syy[ok])
    degenerate = int(n_boot - ok.sum())
    if rho.size < 100:
        return math.nan, math.nan, degenerate
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(np.clip(rho, -1.0, 1.0), [alpha, 1.0 - alpha])
    return float(low), float(high), degenerate


def correlation(
    x: Sequence[float],
    y: Sequence[float],
    *,
    n_perm: int = 10000,
    n_boot: int = 2000,
    seed: int = 0,
) -> Correlation:
    """Spearman rho with its permutation p-value and bootstrap 95% CI (conventions: module doc)."""
    p, method, used = permutation_pvalue(x, y, n_perm=n_perm, seed=seed)
    low, high, degenerate = bootstrap_ci(x, y, n_boot=n_boot, seed=seed)
    return Correlation(spearman_rho(x, y), p, method, used, low, high, n_boot, degenerate)


def _bic(rss: float, n: int, k: int) -> float:
    return n * math.log(rss / n) + k * math.log(n)


def change_point(x: Sequence[float], y: Sequence[float]) -> ChangePoint | None:
    """Best two-level step vs a straight line (conventions: module doc). None when no split
    leaves >= 2 points on each side between distinct x values (e.g. n < 4, constant x)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = x.size
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    best = None
    for k in range(2, n - 1):  # left = xs[:k], right = xs[k:]
        if xs[k - 1] == xs[k]:
            continue
        left, right = ys[:k], ys[k:]
        rss = float(np.sum((left - left.mean()) ** 2) + np.sum((right - right.mean()) ** 2))
        if best is None or rss < best[0]:
            best = (rss, k)
    if best is None:
        return None
    rss_step, k = best
    design = np.column_stack([np.ones(n), xs])
    (intercept, slope), *_ = np.linalg.lstsq(design, ys, rcond=None)
    rss_line = float(np.sum((ys - intercept - slope * xs) ** 2))
    tss = float(np.sum((ys - ys.mean()) ** 2))
    floor = max(1e-12 * tss, 1e-300)
    rss_step_f, rss_line_f = max(rss_step, floor), max(rss_line, floor)
    bic_step, bic_line = _bic(rss_step_f, n, 3), _bic(rss_line_f, n, 2)
    split_x = float((xs[k - 1] + xs[k]) / 2.0)
    return ChangePoint(
        split_x=split_x,
        split_params=float(10.0**split_x) if split_x < 300 else None,
        left_max_x=float(xs[k - 1]),
        right_min_x=float(xs[k]),
        n_left=k,
        n_right=n - k,
        level_left=float(ys[:k].mean()),
        level_right=float(ys[k:].mean()),
        rss_step=rss_step,
        rss_line=rss_line,
        line_intercept=float(intercept),
        line_slope=float(slope),
        bic_step=bic_step,
        bic_line=bic_line,
        delta_bic=bic_line - bic_step,
        lr_stat=n * math.log(rss_line_f / rss_step_f),
    )


def trend(
    x: Iterable,
    y: Iterable,
    *,
    metric: str = "y",
    x_name: str = "x",
    models: Sequence[str] | None = None,
    n_perm: int = 10000,
    n_boot: int = 2000,
    seed: int = 0,
) -> TrendResult:
    """Every test of this module for one (x, y) series; x must be log10(parameter count) for
    ``split_params`` and the sentence to mean anything. Non-finite pairs are dropped first."""
    xs, ys, kept = finite_pairs(x, y)
    names = tuple(models[i] for i in kept) if models is not None else ()
    corr = cp = None
    if xs.size >= MIN_POINTS:
        corr = correlation(xs, ys, n_perm=n_perm, n_boot=n_boot, seed=seed)
        cp = change_point(xs, ys)
    result = TrendResult(metric, x_name, int(xs.size), names, corr, cp, "")
    sentence = describe(metric_label(metric), x_label(x_name), result)
    return TrendResult(metric, x_name, int(xs.size), names, corr, cp, sentence)


# ---------------------------------------------------------------------------------------------
# Words


def format_params(n: float | None, digits: int = 3) -> str:
    """6.7e9 -> '6.7B', 3.5e8 -> '350M' (at least ``digits`` significant digits, never an
    exponent: 2.98e5 -> '298K', not '3e+02K')."""
    if n is None or not math.isfinite(n):
        return "?"
    units = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"), (1.0, ""))
    for i, (scale, unit) in enumerate(units):
        if abs(n) >= scale or scale == 1.0:
            v = n / scale
            decimals = max(0, digits - len(str(int(abs(v)))))
            text = f"{v:.{decimals}f}".rstrip("0").rstrip(".") if decimals else f"{v:.0f}"
            if text == "1000" and i > 0:  # 999,999 rounds up into the next unit
                return f"1{units[i - 1][1]}"
            return text + unit
    return f"{n:g}"


def metric_label(metric: str) -> str:
    """How sentences and tables name a metric key ("mean_layer_pct" -> "mean layer %")."""
    return METRIC_LABELS.get(metric.rsplit(".", 1)[-1], metric)


def x_label(x_name: str) -> str:
    """How sentences and tables name an x key ("total_params" or "total_params_b" ->
    "total params")."""
    key = x_name.rsplit(".", 1)[-1]
    return X_LABELS.get(key.removesuffix("_b"), x_name)


def _num(v: float | None, fmt: str = ".2f") -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, fmt)


def _p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else f"{p:.2g}"


def _level(v: float) -> str:
    return f"{v:.3g}"


def describe(metric_name: str, x_name: str, result: TrendResult) -> str:
    """One plain sentence: is ``metric_name`` monotonic in ``x_name`` (permutation p < 0.05),
    and is a step favoured over a line (delta BIC > 2 weakly, > 6 strongly)? Claims nothing
    with fewer than 4 points or a constant series. Never raises on a well-formed result."""
    n = result.n
    if n < MIN_POINTS or result.correlation is None:
        return (
            f"{metric_name} vs {x_name}: only {n} model{'s' if n != 1 else ''} with a value, "
            f"too few to test (at least {MIN_POINTS} needed)."
        )
    c, cp = result.correlation, result.change_point
    if c.p_method == "undefined":
        return (
            f"{metric_name} vs {x_name}: {metric_name} or {x_name} is the same for all {n} "
            "models, nothing to test."
        )
    stats_text = (
        f"rho = {_num(c.rho)}, p = {_p(c.p_value)}, 95% CI {_num(c.ci_low)} to {_num(c.ci_high)}"
    )
    # two methods answer one question: the permutation test (is rho far from 0 under
    # shuffling?) and the bootstrap interval (where is rho over resampled models?); a claim
    # needs both, and a disagreement is said as such
    significant = c.p_value < P_THRESHOLD
    excludes_zero = (
        c.ci_low is not None
        and c.ci_high is not None
        and math.isfinite(c.ci_low)
        and math.isfinite(c.ci_high)
        and (c.ci_low > 0 or c.ci_high < 0)
    )
    if significant and excludes_zero:
        direction = "increases" if c.rho > 0 else "decreases"
        head = f"{metric_name}: {direction} with {x_name} ({stats_text})"
    elif not significant and not excludes_zero:
        head = f"{metric_name}: no monotonic relation with {x_name} ({stats_text})"
    else:
        head = (
            f"{metric_name} vs {x_name}: inconclusive ({stats_text}): the permutation test and "
            "the bootstrap interval disagree, as they can with few models or tied values"
        )
    if cp is None:
        tail = "no step test (no split leaves 2 models on each side)"
    elif cp.delta_bic > BIC_WEAK and math.isfinite(cp.delta_bic):
        strength = "strongly" if cp.delta_bic > BIC_STRONG else "weakly"
        way = "up" if cp.level_right > cp.level_left else "down"
        tail = (
            f"a step {way} at ~{format_params(cp.split_params, 2)} params "
            f"({_level(cp.level_left)} -> {_level(cp.level_right)}) is {strength} favoured over "
            f"a line (ΔBIC = {_num(cp.delta_bic, '.1f')})"
        )
    else:
        tail = f"no step (ΔBIC = {_num(cp.delta_bic, '.1f')})"
    return f"{head}; {tail}."


# ---------------------------------------------------------------------------------------------
# Rows of models


def row_from_result(result: dict) -> dict:
    """A flat row for ``analyze_trends`` from a result.json dict: id, total / active params,
    seed-compatible num_outliers / mean_layer_pct / mean_seq_pct, pooled num_dims /
    sites_affected_pct / positions_affected_pct (missing figures are None)."""
    model = result.get("model", {})
    seed = result.get("seed_compatible", {}) or {}
    pooled = result.get("pooled", {}) or {}
    return {
        "id": model.get("id"),
        "total_params": model.get("total_params"),
        "active_params": model.get("active_params"),
        "num_outliers": seed.get("num_outliers"),
        "mean_layer_pct": seed.get("mean_layer_pct"),
        "mean_seq_pct": seed.get("mean_seq_pct"),
        "num_dims": pooled.get("num_dims"),
        "sites_affected_pct": pooled.get("sites_affected_pct"),
        "positions_affected_pct": pooled.get("positions_affected_pct"),
    }


def _lookup(row: dict, key: str):
    """``row[key]``, else a dotted path into nested dicts (``"pooled.num_dims"``); None if absent."""
    if key in row:
        return row[key]
    value = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _log10_params(value, scale: float = 1.0) -> float:
    v = _as_float(value) * scale
    return math.log10(v) if math.isfinite(v) and v > 0 else math.nan


def analyze_trends(
    rows: Sequence[dict],
    metrics: Sequence[str] = DEFAULT_METRICS,
    xs: Sequence[str] = ("total_params", "active_params"),
    *,
    n_perm: int = 10000,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[TrendResult]:
    """One ``TrendResult`` per (metric, x), metrics outer. ``rows`` hold one model each; a key
    may be a dotted path into nested dicts. x values are parameter COUNTS (a key ending in
    ``_b`` is read as billions) and are tested on a log10 scale; a row whose metric or x is
    None / NaN / not positive is skipped for that pair only."""
    labels = [
        str(r.get("id") or r.get("model_name") or r.get("model") or i) for i, r in enumerate(rows)
    ]
    out = []
    for metric in metrics:
        y = [_lookup(r, metric) for r in rows]
        for x_key in xs:
            scale = 1e9 if x_key.endswith("_b") else 1.0
            x = [_log10_params(_lookup(r, x_key), scale) for r in rows]
            out.append(
                trend(
                    x,
                    y,
                    metric=metric,
                    x_name=x_key,
                    models=labels,
                    n_perm=n_perm,
                    n_boot=n_boot,
                    seed=seed,
                )
            )
    return out


def trend_table(results: Sequence[TrendResult], tablefmt: str = "github") -> str:
    """The results as a table (tabulate): metric, vs, n, rho, p, CI, step split, ΔBIC, verdict."""
    from tabulate import tabulate

    body = []
    for r in results:
        c, cp = r.correlation, r.change_point
        body.append(
            [
                metric_label(r.metric),
                x_label(r.x),
                r.n,
                _num(c.rho) if c else "",
                _p(c.p_value) if c else "",
                f"{_num(c.ci_low)} to {_num(c.ci_high)}" if c else "",
                format_params(cp.split_params) if cp else "",
                _num(cp.delta_bic, ".1f") if cp else "",
                r.verdict,
            ]
        )
    headers = ["metric", "vs", "n", "rho", "p", "95% CI", "step split", "ΔBIC", "verdict"]
    return tabulate(body, headers=headers, tablefmt=tablefmt, disable_numparse=True)


__all__ = [
    "ChangePoint",
    "Correlation",
    "DEFAULT_METRICS",
    "METRIC_LABELS",
    "TrendResult",
    "X_LABELS",
    "analyze_trends",
    "bootstrap_ci",
    "change_point",
    "correlation",
    "describe",
    "format_params",
    "permutation_pvalue",
    "row_from_result",
    "spearman_rho",
    "trend",
    "trend_table",
]
