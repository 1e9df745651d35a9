"""The engine's strategies forced one at a time (a ``CaptureTuning`` each), so that a test runs
every chunk through one of them: re-read candidate blocks only ("sparse"), a level map of the
whole chunk ("dense"), of the gathered columns that have a candidate ("columns"), or the default
choice by density ("default")."""

from __future__ import annotations

from harness.engine.tuning import CaptureTuning

INF = float("inf")
TUNINGS = {
    "default": CaptureTuning(),
    "sparse": CaptureTuning(dense_fraction=INF),
    "dense": CaptureTuning(dense_fraction=-1.0),
    "columns": CaptureTuning(dense_fraction=0.0, dense_columns=INF),
}
PATHS = list(TUNINGS)


def tuning(path: str, **changes) -> CaptureTuning:
    """The tuning of ``path`` with ``changes`` (e.g. chunk_elements)."""
    from dataclasses import replace

    return replace(TUNINGS[path], **changes)
