"""The ``attribution`` section of result.json from the statistics alone (no model, no torch):
tokens and positions, massive activations and MoE experts at any criteria, from what the
observers of harness.attribution.observer stored in ``stats.extra``. ``outliers report``
recomputes it here when asked for other criteria."""

from __future__ import annotations

from harness.attribution.expert_figures import expert_section
from harness.attribution.massive_figures import massive_section
from harness.attribution.tokens import MIN_OCCURRENCES, token_attribution
from harness.engine.criteria import Criteria
from harness.engine.statistics import CapturedStats

BOS_KEY = "attr_bos_token_id"


def attribution_section(
    stats: CapturedStats,
    criteria: Criteria,
    *,
    bos_token_id: int | None = None,
    min_occurrences: int = MIN_OCCURRENCES,
) -> dict:
    """The ``attribution`` section of result.json from the statistics alone (no model).

    ``tokens`` always; ``massive`` and ``experts`` when their arrays are in ``stats.extra``
    (else None). ``bos_token_id`` defaults to the one stored at capture time.
    """
    if bos_token_id is None and BOS_KEY in stats.extra and int(stats.extra[BOS_KEY]) >= 0:
        bos_token_id = int(stats.extra[BOS_KEY])
    return {
        "tokens": token_attribution(
            stats, criteria, bos_token_id=bos_token_id, min_occurrences=min_occurrences
        ),
        "massive": massive_section(stats, criteria),
        "experts": expert_section(stats, criteria),
    }
