"""How the capture's reductions are sized and scheduled: one value passed to ``Capture``.

None of these change a figure (the engine tests run every path against a brute-force oracle at
extreme settings); they trade scratch memory against the number of small operations, and pick
between the two strategies of the one torch path by density (``reductions.reduce_site``).
The measurements behind the defaults are in docs/performance.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# Elements per chunk of whole sequences, by device type: bounds the scratch next to the
# activation itself (the CPU's a few MiB, so the scratch stays in cache; the GPU's a few
# hundred MiB at most, a small share of its memory, few kernel launches).
DEFAULT_CHUNK_ELEMENTS = MappingProxyType({"cpu": 1 << 20, "cuda": 1 << 25})


@dataclass(frozen=True)
class CaptureTuning:
    """Sizes and thresholds of the capture's reductions (defaults: docs/performance.md).

    - ``chunk_elements``: elements of an activation reduced at once, by device type (other
      device types: the largest). Also the bound the GPU memory model assumes for scratch
      (``preflight.memory``).
    - ``dense_fraction``: a dim (column) of a chunk gets a grid level for every value (dense)
      instead of a re-read of only its blocks whose max reaches grid[0] (sparse) when more than
      this fraction of its blocks do: a gathered block costs ~10x a value of the dense pass.
    - ``dense_columns``: when more than this fraction of a chunk's columns are dense, the
      whole chunk is, without gathering those columns first.
    - ``hook_threads``: CPU threads for every hook's reductions (None: the forward pass's
      count). Hooks are many small operations; when other processes share the cores, each
      multi-threaded one can wait a scheduler time slice for its second thread (up to 10x
      slower hooks measured).
    """

    chunk_elements: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_CHUNK_ELEMENTS))
    dense_fraction: float = 0.25
    dense_columns: float = 0.25
    hook_threads: int | None = 1

    def __post_init__(self):
        if not self.chunk_elements or min(self.chunk_elements.values()) < 1:
            raise ValueError("CaptureTuning.chunk_elements: a positive count per device type")
        if self.hook_threads is not None and self.hook_threads < 1:
            raise ValueError("CaptureTuning.hook_threads: None or at least 1")

    def chunk(self, device_type: str) -> int:
        """Elements per chunk on a device of this type."""
        return self.chunk_elements.get(device_type, max(self.chunk_elements.values()))

    def sequences_per_chunk(self, device_type: str, batch: int, per_sequence: int) -> int:
        """Whole sequences per chunk (at least 1, at most the batch)."""
        return max(1, min(batch, self.chunk(device_type) // max(1, per_sequence)))
