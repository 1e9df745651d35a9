"""The model registry: ``REGISTRY`` maps an id to its ``ModelEntry``."""

from __future__ import annotations

from harness.models.reference import REFERENCE
from harness.models.registry import GROUPS, GpuPlan, ModelEntry, Published
from harness.models.study import STUDY
from harness.models.tiny import TINY

from harness.errors import HarnessError

ENTRIES: tuple[ModelEntry, ...] = STUDY + REFERENCE + TINY
REGISTRY: dict[str, ModelEntry] = {e.id: e for e in ENTRIES}
assert len(REGISTRY) == len(ENTRIES), "duplicate registry ids"


def get(model_id: str) -> ModelEntry:
    try:
        return REGISTRY[model_id]
    except KeyError:
        raise HarnessError(
            f"unknown model {model_id!r}; `outliers models` lists the registry, or pass a hub id "
            "(org/name) or a local directory."
        ) from None


def select(group: str) -> list[ModelEntry]:
    return [e for e in ENTRIES if e.group == group]


__all__ = [
    "ENTRIES",
    "GROUPS",
    "GpuPlan",
    "ModelEntry",
    "Published",
    "REGISTRY",
    "get",
    "select",
]
