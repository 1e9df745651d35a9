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
- ``token_ids[N, T]`` (int32): the windows themselves, for attribution.

``grid`` holds the magnitudes as given (float64); comparisons were made exactly
(|x| >= m over the real numbers, x as stored in the activation dtype).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, fields
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
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # observers' arrays

    @property
    def num_sites(self) -> int:
        return len(self.site_names)

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
        for f in fields(self):
            if f.name in ("extra", "site_names"):
                continue
            arrays[f.name] = np.asarray(getattr(self, f.name))
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
        for f in fields(cls):
            if f.name == "extra":
                continue
            value = data[f.name]
            if f.name == "site_names":
                value = [str(s) for s in value]
            elif f.name in ("num_seqs", "seq_len", "hidden_size"):
                value = int(value)
            kwargs[f.name] = value
        return cls(**kwargs, extra=extra)
