"""The captured statistics: everything the criteria need, small enough to keep (KB to MB).

One ``CapturedStats`` holds, for a run over N windows of T tokens at S sites of hidden size H,
reductions at every magnitude of a grid (so figures can be recomputed offline at any grid value):

- ``site_max[S, H]`` (float32): max |x| per site and dim over all positions;
- ``site_counts[S, G]`` (int64): number of values with |x| >= grid[g] at site s;
- ``seq_max[N, H]`` (float32): max |x| per sequence and dim over all sites and positions;
- ``seq_site_count[G, N, H]`` (int32): number of sites at which dim d reaches grid[g] in seq n;
- ``site_seq_level[S, N, H]`` (uint8): how many grid magnitudes max |x| of dim d reaches at site
  s in sequence n (0..G); per-sequence detail for bootstraps over sequences;
- ``seq_pos_count[G, N, H]`` (int32): positions of seq n where dim d reaches grid[g] at ANY site;
- ``seq_occ[G, N, H]`` (int64): values with |x| >= grid[g] at dim d over all sites and positions
  of seq n;
- ``hits_indptr/hits_dim/hits_level`` (CSR over positions p = n * T + t, dims ascending within
  a position): every (position, dim) where some site reaches grid[0]; ``hits_level`` = how many
  grid values that max over sites reaches (1..G). 3 bytes per hit. This is the per-position
  union that Dettmers' "% of positions affected" needs for any set of systematic dims;
- ``token_ids[N, T]`` (int32): the windows themselves, for attribution;
- ``first_position`` (``FirstPosition``): the window's first position apart: the max |x| and
  levels over the other positions, and that position's own levels, so that every figure can also
  be computed without it (``without_first_position``; massive activations live there).

``by_layer()`` and ``without_first_position()`` return statistics of the same shape whose sites
are the transformer layers (a layer reaches a magnitude where any of its sites does) or whose
windows start at their second position: the criteria and the bootstrap read them unchanged.

``grid`` holds the magnitudes as given (float64); comparisons were made exactly
(|x| >= m over the real numbers, x as stored in the activation dtype).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

DEFAULT_GRID: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 50.0, 100.0)
STATS_SCHEMA = 1


def make_grid(magnitude: float, grid: tuple[float, ...] | None = None) -> tuple[float, ...]:
    """The sorted grid of magnitudes a run captures: ``grid`` (default ``DEFAULT_GRID``) plus
    the run's own ``magnitude``."""
    from harness.errors import HarnessError

    values = set(DEFAULT_GRID if grid is None else grid) | {float(magnitude)}
    if any(not np.isfinite(v) or v <= 0 for v in values):
        raise HarnessError(
            f"magnitudes must be positive finite numbers (got {sorted(values)}); "
            "use e.g. --magnitude 6."
        )
    if len(values) > 254:
        raise HarnessError("at most 254 grid magnitudes can be captured in one run.")
    return tuple(sorted(float(v) for v in values))


@dataclass(eq=False)
class FirstPosition:
    """What the statistics need beside their arrays to leave each window's first position out."""

    site_max_rest: np.ndarray  # [S, H] float32: max |x| over positions 1..T-1
    seq_max_rest: np.ndarray  # [N, H] float32
    site_seq_level_rest: np.ndarray  # [S, N, H] uint8: grid levels of the max over 1..T-1
    site_seq_level_first: np.ndarray  # [S, N, H] uint8: grid level of |x| at position 0

    def __eq__(self, other) -> bool:  # the same values, array by array
        return isinstance(other, FirstPosition) and all(
            np.array_equal(getattr(self, n), getattr(other, n)) for n in _FIRST_FIELDS
        )

    __hash__ = None


_FIRST_FIELDS = ("site_max_rest", "seq_max_rest", "site_seq_level_rest", "site_seq_level_first")
_SITE_NAME = re.compile(r"^layers\.(\d+)\.")


@dataclass
class CapturedStats:
    grid: np.ndarray
    site_names: list[str]
    num_seqs: int
    seq_len: int
    hidden_size: int
    site_max: np.ndarray
    site_counts: np.ndarray
    seq_max: np.ndarray
    seq_site_count: np.ndarray
    site_seq_level: np.ndarray
    seq_pos_count: np.ndarray
    seq_occ: np.ndarray
    hits_indptr: np.ndarray
    hits_dim: np.ndarray
    hits_level: np.ndarray
    token_ids: np.ndarray
    first_position: FirstPosition | None = None  # None in statistics written before it existed
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # observers' arrays
    unit: str = "sites"  # "layers" for ``by_layer()``'s statistics
    skips_first_position: bool = False  # ``without_first_position()``'s statistics

    @property
    def num_sites(self) -> int:
        return len(self.site_names)

    @property
    def site_layers(self) -> np.ndarray:
        """The transformer layer of each site (from its name, ``layers.<i>.<kind>``; a site
        named otherwise is a layer of its own)."""
        out, other = [], 1 << 30
        for name in self.site_names:
            m = _SITE_NAME.match(name)
            out.append(int(m.group(1)) if m else other)
            other += 0 if m else 1
        return np.asarray(out, dtype=np.int64)

    @property
    def num_layers(self) -> int:
        """Distinct transformer layers holding a site: the per-layer denominator."""
        return len(np.unique(self.site_layers))

    def by_layer(self) -> CapturedStats:
        """These statistics with the transformer layers as their sites: a layer reaches a
        magnitude for a dim where any of its sites does (Dettmers' "at least 25% of transformer
        layers"); ``site_counts`` adds its sites' values up."""
        if self.unit == "layers":
            return self
        layers = self.site_layers
        order = np.argsort(layers, kind="stable")
        lay = layers[order]
        starts = np.flatnonzero(np.r_[True, lay[1:] != lay[:-1]])

        def group(a):  # max over the sites of each layer, along axis 0
            return np.maximum.reduceat(np.asarray(a)[order], starts, axis=0)

        level = group(self.site_seq_level)
        first = self.first_position
        if first is not None:
            first = FirstPosition(
                group(first.site_max_rest),
                first.seq_max_rest,
                group(first.site_seq_level_rest),
                group(first.site_seq_level_first),
            )
        return replace(
            self,
            site_names=[
                f"layers.{int(i)}" if i < (1 << 30) else self.site_names[order[k]]
                for k, i in zip(starts, lay[starts], strict=True)
            ],
            site_max=group(self.site_max),
            site_counts=np.add.reduceat(np.asarray(self.site_counts)[order], starts, axis=0),
            site_seq_level=level,
            seq_site_count=_count_sites(level, len(self.grid)),
            first_position=first,
            unit="layers",
        )

    def without_first_position(self) -> CapturedStats:
        """These statistics over positions 1..T-1 of each window. Raises a one-sentence error
        for statistics captured before the first position was kept apart."""
        from harness.errors import HarnessError

        if self.skips_first_position:
            return self
        first = self.first_position
        if first is None:
            raise HarnessError(
                "this result's stats.npz was captured before the first position was kept apart; "
                "rerun the model to get figures without it."
            )
        if self.seq_len < 2:
            raise HarnessError("windows of one token have no positions besides the first.")
        N, T, G = self.num_seqs, self.seq_len, len(self.grid)
        counts = np.diff(self.hits_indptr)
        row_first = np.arange(N) * T
        keep_row = np.ones(N * T, dtype=bool)
        keep_row[row_first] = False
        keep_hit = np.repeat(keep_row, counts)
        # the first position's hits: one position of each window, per (grid level, dim)
        starts, lengths = self.hits_indptr[row_first], counts[row_first]
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        take = np.repeat(starts, lengths) + within
        seq_of = np.repeat(np.arange(N), lengths)
        first_pos = np.zeros((G, N, self.hidden_size), dtype=np.int32)
        dims, levels = np.asarray(self.hits_dim)[take], np.asarray(self.hits_level)[take]
        for g in range(G):
            sel = levels > g
            first_pos[g, seq_of[sel], dims[sel].astype(np.int64)] = 1
        indptr = np.zeros(N * (T - 1) + 1, dtype=np.int64)
        np.cumsum(counts[keep_row], out=indptr[1:])
        lev_first = first.site_seq_level_first
        occ_first = np.stack([(lev_first > g).sum(axis=0) for g in range(G)])  # [G, N, H]
        counts_first = np.stack([(lev_first > g).sum(axis=(1, 2)) for g in range(G)], axis=1)
        return replace(
            self,
            seq_len=T - 1,
            site_max=first.site_max_rest,
            site_counts=np.asarray(self.site_counts) - counts_first,
            seq_max=first.seq_max_rest,
            site_seq_level=first.site_seq_level_rest,
            seq_site_count=_count_sites(first.site_seq_level_rest, G),
            seq_pos_count=np.asarray(self.seq_pos_count) - first_pos,
            seq_occ=np.asarray(self.seq_occ) - occ_first,
            hits_indptr=indptr,
            hits_dim=np.asarray(self.hits_dim)[keep_hit],
            hits_level=np.asarray(self.hits_level)[keep_hit],
            token_ids=np.asarray(self.token_ids)[:, 1:],
            skips_first_position=True,
        )

    @property
    def num_positions(self) -> int:
        return self.num_seqs * self.seq_len

    def hits_of(self, dims, level: int) -> np.ndarray:
        """Mask of the hits of ``dims`` at grid level ``level`` or above, aligned with
        ``hits_dim`` (a lookup table of dims, not a sorted search over millions of hits)."""
        wanted = np.zeros(self.hidden_size, dtype=bool)
        wanted[np.asarray(dims, dtype=np.int64)] = True
        return (np.asarray(self.hits_level) >= level) & wanted[np.asarray(self.hits_dim)]

    def hits_positions(self) -> np.ndarray:
        """Position index (n * T + t) of every hit, aligned with ``hits_dim``."""
        counts = np.diff(self.hits_indptr)
        return np.repeat(np.arange(len(counts), dtype=np.int64), counts)

    def grid_index(self, magnitude: float) -> int:
        """Index of ``magnitude`` on the grid; raises a one-sentence error if it is not there."""
        from harness.errors import HarnessError

        matches = np.flatnonzero(np.isclose(self.grid, float(magnitude), rtol=0, atol=1e-9))
        if len(matches) == 0:
            raise HarnessError(
                f"magnitude {magnitude:g} was not captured in this result (its grid is "
                f"{', '.join(f'{g:g}' for g in self.grid)}); pick one of those or rerun with "
                f"--magnitude {magnitude:g}."
            )
        return int(matches[0])

    # -- storage -------------------------------------------------------------------------
    def to_npz_bytes(self) -> bytes:
        arrays = {}
        if self.unit != "sites" or self.skips_first_position:
            raise ValueError("only the captured statistics are stored, not a view of them")
        for f in fields(self):
            if f.name in _NOT_ARRAYS:
                continue
            arrays[f.name] = np.asarray(getattr(self, f.name))
        if self.first_position is not None:
            for name in _FIRST_FIELDS:
                arrays[f"first__{name}"] = np.asarray(getattr(self.first_position, name))
        arrays["site_names"] = np.array(self.site_names, dtype=np.str_)
        arrays["stats_schema"] = np.array(STATS_SCHEMA)
        for key, value in self.extra.items():
            arrays[f"extra__{key}"] = np.asarray(value)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> CapturedStats:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        extra = {k[len("extra__") :]: v for k, v in data.items() if k.startswith("extra__")}
        kwargs = {}
        if all(f"first__{n}" in data for n in _FIRST_FIELDS):
            kwargs["first_position"] = FirstPosition(*(data[f"first__{n}"] for n in _FIRST_FIELDS))
        for f in fields(cls):
            if f.name in _NOT_ARRAYS and f.name != "site_names":
                continue
            value = data[f.name]
            if f.name == "site_names":
                value = [str(s) for s in value]
            elif f.name in ("num_seqs", "seq_len", "hidden_size"):
                value = int(value)
            kwargs[f.name] = value
        return cls(**kwargs, extra=extra)


_NOT_ARRAYS = ("extra", "site_names", "first_position", "unit", "skips_first_position")


def _count_sites(level: np.ndarray, G: int) -> np.ndarray:
    """[G, N, H] int32: how many sites (rows of ``level`` [S, N, H]) reach each grid level."""
    return np.stack([(level > g).sum(axis=0, dtype=np.int32) for g in range(G)])
