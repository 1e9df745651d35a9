"""Where outliers live: tokens and positions, massive activations, MoE experts (issue 7).

Everything is computed in the engine's single forward pass per batch:

- token and position attribution is pure post-processing of ``stats.hits_*`` and
  ``stats.token_ids`` (``harness.attribution.tokens``), so it also works on old results;
- ``MassiveActivations`` (``harness.attribution.massive``) hooks the decoder layers' outputs;
- ``ExpertRouting`` (``harness.attribution.experts``) hooks the MoE routers, experts and shared
  experts.

``Attribution`` bundles the two observers; its ``summary`` gives the ``attribution`` section of
result.json, and ``finalize`` stores their arrays in ``stats.extra`` (``attr_*`` keys in
stats.npz), from which ``attribution_section`` recomputes the section at any other criteria.

    from harness.attribution.observer import attribution_observers
    result = analyze(model, windows, observers=attribution_observers(model))
    result.sections["attribution"]          # tokens / massive / experts
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from harness.attribution.experts import ExpertRouting
from harness.attribution.massive import MassiveActivations, decoder_layers
from harness.attribution.section import BOS_KEY, attribution_section
from harness.attribution.tokens import MIN_OCCURRENCES, token_attribution
from harness.engine.architectures import ROUTER_OUTPUTS
from harness.engine.criteria import Criteria
from harness.engine.observer import Batch, Observer
from harness.engine.sites import SiteMap
from harness.engine.statistics import CapturedStats

__all__ = [
    "ROUTER_OUTPUTS",
    "Attribution",
    "ExpertRouting",
    "MassiveActivations",
    "attribution_observers",
    "attribution_section",
    "token_attribution",
]


class Attribution(Observer):
    """Massive activations + expert routing in one observer; ``summary`` -> {"attribution": ...}.

    ``layers``: the decoder-layer modules (needed for massive activations when the SiteMap has
    neither a ``layers`` field nor resid_out sites; ``attribution_observers(model)`` passes them).
    ``magnitude`` / ``grid``: the run's, so that expert hits are kept at the run's magnitude.
    """

    def __init__(
        self,
        magnitude: float = 6.0,
        grid: tuple[float, ...] | None = None,
        *,
        bos_token_id: int | None = None,
        layers=None,
        massive: bool = True,
        experts: bool = True,
        min_occurrences: int = MIN_OCCURRENCES,
    ):
        self.bos_token_id = bos_token_id
        self.min_occurrences = min_occurrences
        self.parts: list[Observer] = []
        if massive:
            self.parts.append(MassiveActivations(layers))
        if experts:
            self.parts.append(ExpertRouting(magnitude, grid))

    def attach(self, sitemap: SiteMap, register: Callable) -> None:
        if not sitemap.routers:
            self.parts = [p for p in self.parts if not isinstance(p, ExpertRouting)]
        for p in self.parts:
            p.attach(sitemap, register)
        self._hit_parts = [p for p in self.parts if type(p).on_hits is not Observer.on_hits]

    def begin_batch(self, batch: Batch) -> None:
        for p in self.parts:
            p.begin_batch(batch)

    def wants_hits(self, site) -> bool:
        return any(p.wants_hits(site) for p in self._hit_parts)

    def on_hits(self, site, pos, level, grid, batch) -> None:
        for p in self._hit_parts:
            p.on_hits(site, pos, level, grid, batch)

    def end_batch(self, batch: Batch) -> None:
        for p in self.parts:
            p.end_batch(batch)

    def abort_batch(self, batch: Batch) -> None:
        for p in self.parts:
            p.abort_batch(batch)

    def finalize(self, stats: CapturedStats) -> None:
        for p in self.parts:
            p.finalize(stats)
        bos = -1 if self.bos_token_id is None else int(self.bos_token_id)
        stats.extra[BOS_KEY] = np.asarray(bos, np.int64)

    def summary(self, stats: CapturedStats, criteria: Criteria) -> dict:
        return {
            "attribution": attribution_section(
                stats,
                criteria,
                bos_token_id=self.bos_token_id,
                min_occurrences=self.min_occurrences,
            )
        }


def _bos_token_id(model: torch.nn.Module) -> int | None:
    bos = getattr(getattr(model, "config", None), "bos_token_id", None)
    if isinstance(bos, (list, tuple)):
        bos = bos[0] if bos else None
    return int(bos) if isinstance(bos, int) else None


def attribution_observers(
    model: torch.nn.Module,
    magnitude: float = 6.0,
    grid: tuple[float, ...] | None = None,
    *,
    bos_token_id: int | None = None,
) -> list[Observer]:
    """The observers to pass to ``analyze(..., observers=...)`` for ``model``: one
    ``Attribution`` with the model's decoder layers and BOS id (``bos_token_id`` overrides the
    config's; pass the tokenizer's)."""
    from harness.engine.sites import find_sites

    layers = decoder_layers(find_sites(model, "residual"))
    bos = bos_token_id if bos_token_id is not None else _bos_token_id(model)
    return [Attribution(magnitude, grid, bos_token_id=bos, layers=layers)]
