"""What an observer of the capture's forward pass sees: the batch, every site activation, and
the sparse hits the engine found (attribution, massive activations, experts, perplexity)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.engine.sites import Site, SiteMap
from harness.engine.statistics import CapturedStats
from harness.engine.tuning import CaptureTuning


@dataclass
class Batch:
    """What observers learn about the batch being processed."""

    start: int  # index of its first sequence in the run
    token_ids: torch.Tensor  # [B, T] on the CPU
    index: int = 0

    @property
    def size(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.token_ids.shape[1])


class Observer:
    """Extra reductions in the same forward pass (attribution, massive activations, ...).

    Subclasses override what they need. ``attach`` may register its own hooks through
    ``register`` (they are removed with the engine's). ``on_site`` sees every site activation as
    [B, T, H] after the engine's reductions; it must reduce on the device and keep nothing of
    activation size beyond the batch. ``on_hits`` (only called when a subclass overrides it)
    gets the engine's sparse hits of a site, so that an observer need not read the activation
    again to find them: ``pos`` = flat indices into the site's [B, T, H] (b * T * H + t * H +
    d) of every value with |x| >= ``grid[0]``, ``level`` = its grid level (1..len(grid):
    |x| >= grid[level - 1], compared in the activation's dtype), in no particular order; it may
    be called more than once per site and batch (one call per chunk of sequences, with empty
    tensors for a chunk without hits). Every hook registered through ``register`` runs under the
    capture's thread setting (``CaptureTuning.hook_threads``); ``tuning`` is the capture's,
    set before ``attach``.
    """

    tuning: CaptureTuning = CaptureTuning()

    def attach(self, sitemap: SiteMap, register: Callable) -> None: ...

    def begin_batch(self, batch: Batch) -> None: ...

    def on_site(self, site: Site, x: torch.Tensor, batch: Batch) -> None: ...

    def on_hits(
        self,
        site: Site,
        pos: torch.Tensor,
        level: torch.Tensor,
        grid: tuple[float, ...],
        batch: Batch,
    ) -> None: ...

    def wants_hits(self, site: Site) -> bool:
        """Whether ``on_hits`` should get the hits of ``site`` (asked once, after ``attach``);
        where no observer wants them, the engine builds no hit list on its dense paths."""
        return type(self).on_hits is not Observer.on_hits

    def end_batch(self, batch: Batch) -> None: ...

    def abort_batch(self, batch: Batch) -> None: ...

    def finalize(self, stats: CapturedStats) -> None: ...
