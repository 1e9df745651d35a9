"""Which tokens and positions carry the systematic outlier dims: pure post-processing.

A *hit* of dim d is a token position where d reaches the magnitude at ANY site of the run (the
per-position union Dettmers' "% of sequence positions" counts). That is exactly
``stats.hits_*`` at the magnitude's grid level, so ``token_attribution`` needs no model and no
observer: it works on old results and at any re-threshold on the captured grid.
"""

from __future__ import annotations

import numpy as np

from harness.engine.criteria import Criteria, pooled_dims
from harness.engine.statistics import CapturedStats

MIN_OCCURRENCES = 10  # a token must occur this often in the windows to be ranked by hit rate
TOP_TOKENS = 10
MAX_DIMS = 128  # per-dim rows in result.json (a random model can make every dim systematic)


def position_buckets(seq_len: int) -> list[tuple[int, int]]:
    """Log2 buckets of token positions, inclusive: (0, 0), (1, 1), (2, 3), (4, 7), ...,
    the last one clipped to ``seq_len - 1``."""
    out = [(0, 0)]
    lo = 1
    while lo < seq_len:
        out.append((lo, min(2 * lo - 1, seq_len - 1)))
        lo *= 2
    return out if seq_len > 0 else []


def _bucket_of(t: np.ndarray) -> np.ndarray:
    """Bucket index of positions t (0 -> 0, 1 -> 1, 2-3 -> 2, 4-7 -> 3, ...)."""
    t = np.asarray(t, dtype=np.int64)
    out = np.zeros(t.shape, dtype=np.int64)
    pos = t > 0
    out[pos] = np.floor(np.log2(t[pos])).astype(np.int64) + 1
    return out


def _tokens(ids: np.ndarray, occ_ids: np.ndarray, occ_counts: np.ndarray, min_occ: int, top: int):
    """Top tokens by hit count and by hit rate among ``ids`` (the token ids of the hits)."""
    if len(ids) == 0:
        return [], []
    uid, hits = np.unique(ids, return_counts=True)
    occ = occ_counts[np.searchsorted(occ_ids, uid)]
    rate = hits / occ

    def row(i):
        return {
            "id": int(uid[i]),
            "hits": int(hits[i]),
            "occurrences": int(occ[i]),
            "rate": round(float(rate[i]), 6),
        }

    by_count = np.lexsort((uid, -hits))[:top]
    eligible = np.flatnonzero(occ >= min_occ)
    order = np.lexsort((uid[eligible], -occ[eligible], -rate[eligible]))[:top]
    return [row(i) for i in by_count], [row(i) for i in eligible[order]]


def _distinct_sorted(a: np.ndarray) -> np.ndarray:
    """np.unique of an ascending array, without its sort."""
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if len(a) else a


def _row(pos, T, N, token_ids_flat, bos_token_id, occ, buckets, min_occ, top) -> dict:
    ids_of = token_ids_flat[pos]
    t = pos % T
    n = int(len(pos))
    at0 = int((t == 0).sum())
    bucket_hits = np.bincount(_bucket_of(t), minlength=len(buckets))[: len(buckets)]
    bucket_size = np.array([(hi - lo + 1) * N for lo, hi in buckets], dtype=np.int64)
    by_count, by_rate = _tokens(ids_of, occ[0], occ[1], min_occ, top)
    bos = None
    if bos_token_id is not None:
        bos_occ = int((token_ids_flat == bos_token_id).sum())
        bos_hits = int((ids_of == bos_token_id).sum())
        bos = {
            "hits": bos_hits,
            "occurrences": bos_occ,
            "share_of_hits": bos_hits / n if n else None,
            "rate": bos_hits / bos_occ if bos_occ else None,
        }
    return {
        "hits": n,
        "hit_rate": n / (N * T),
        "position0": {
            "hits": at0,
            "share_of_hits": at0 / n if n else None,
            "rate": at0 / N,  # share of the windows whose first position is a hit
        },
        "bos": bos,
        "bucket_hits": [int(v) for v in bucket_hits],
        "bucket_rate": [
            round(float(h / s), 6) for h, s in zip(bucket_hits, bucket_size, strict=True)
        ],
        "top_tokens_by_count": by_count,
        "top_tokens_by_rate": by_rate,
    }


def token_attribution(
    stats: CapturedStats,
    criteria: Criteria,
    *,
    bos_token_id: int | None = None,
    min_occurrences: int = MIN_OCCURRENCES,
    top: int = TOP_TOKENS,
    max_dims: int = MAX_DIMS,
) -> dict:
    """Token and position attribution of every pooled systematic dim at ``criteria``.

    Guarantees: for each dim, ``hits`` = number of positions where it reaches the magnitude at
    any site (= its pooled position count); ``position0.share_of_hits`` and ``bos.share_of_hits``
    are shares of those hits; ``bucket_hits[i]`` counts hits with position in ``buckets[i]`` and
    ``bucket_rate[i]`` divides by the number of positions in that bucket over all windows;
    ``top_tokens_by_count`` ranks token ids by hits (ties: smaller id first);
    ``top_tokens_by_rate`` ranks hits / occurrences of the token in the windows, among tokens
    occurring at least ``min_occurrences`` times (so that a singleton cannot reach rate 1).
    The row ``any`` is the union over the systematic dims; per-dim rows are kept for the
    ``max_dims`` dims with most hits (``dims_truncated`` says when some were left out). Token ids are not decoded here
    (``harness.reports.attribution.decode_tables``).
    """
    dims, arr = pooled_dims(stats, criteria)
    level = arr["g"] + 1
    N, T = stats.num_seqs, stats.seq_len
    flat = np.asarray(stats.token_ids).reshape(-1).astype(np.int64)
    occ = np.unique(flat, return_counts=True)
    pos_all = stats.hits_positions()
    keep = stats.hits_of(dims, level)
    pos, dim = pos_all[keep], np.asarray(stats.hits_dim)[keep]
    buckets = position_buckets(T)
    args = (T, N, flat, bos_token_id, occ, buckets, min_occurrences, top)
    # hits grouped by dim, positions ascending (hits_dim is uint16 up to 65,536 dims, whose
    # stable sort is numpy's radix sort)
    order = np.argsort(dim, kind="stable")
    bounds = (
        np.searchsorted(dim[order], dims, side="left"),
        np.searchsorted(dim[order], dims, side="right"),
    )
    n_hits = bounds[1] - bounds[0]
    shown = np.sort(np.argsort(-n_hits, kind="stable")[:max_dims])  # most hits, by dim
    rows = [
        {"dim": int(dims[i]), **_row(pos[order[bounds[0][i] : bounds[1][i]]], *args)} for i in shown
    ]
    out = {
        "definition": "hit of dim d = a token position where d reaches |x| >= magnitude at any "
        "site of the run (union over sites)",
        "magnitude": criteria.magnitude,
        "num_positions": N * T,
        "buckets": [list(b) for b in buckets],
        "min_occurrences_for_rate": min_occurrences,
        "bos_token_id": bos_token_id,
        "num_dims": int(len(dims)),
        "dims_truncated": bool(len(dims) > len(rows)),  # rows kept: the max_dims with most hits
        "dims": rows,
        "any": _row(_distinct_sorted(pos), *args) if len(dims) else None,
    }
    return out
