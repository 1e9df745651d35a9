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
    - ``hook_threads``: CPU threads for every hook's reductions (None, the default: the
      forward pass's count, and the process's thread settings left alone). Hooks are many
      small operations; when other processes share the cores, each multi-threaded one can
      wait a scheduler time slice for its second thread (up to 10x slower hooks measured), and
      1 avoids that. But a count is set with ``torch.set_num_threads``, which also turns off
      MKL's dynamic threading for the whole process: the model's own matrix products inside
      parallel regions (CPU flash attention) then start nested thread teams (SmolLM2, one
      16 x 512 pass: 138,240 more allocations, and MKL buffers kept in the heap).
    - ``heap_slack``: on the CPU, how far the resident memory may grow during a batch's pass,
      in site activations plus 64 MiB, before a hook gives the C heap's free pages back
      (``host_memory.HeapWatch``, glibc only; None: never). Without it SmolLM2's pass
      peaked at 282-401 MiB over five fresh runs, with where glibc placed its blocks.
    """

    chunk_elements: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_CHUNK_ELEMENTS))
    dense_fraction: float = 0.25
    dense_columns: float = 0.25
    hook_threads: int | None = None
    heap_slack: float | None = 4.0

    def __post_init__(self):
        if not self.chunk_elements or min(self.chunk_elements.values()) < 1:
            raise ValueError("CaptureTuning.chunk_elements: a positive count per device type")
        if self.hook_threads is not None and self.hook_threads < 1:
            raise ValueError("CaptureTuning.hook_threads: None or at least 1")
        if self.heap_slack is not None and not self.heap_slack >= 0:
            raise ValueError("CaptureTuning.heap_slack: None or at least 0")

    def chunk(self, device_type: str) -> int:
        """Elements per chunk on a device of this type."""
        return self.chunk_elements.get(device_type, max(self.chunk_elements.values()))

    def sequences_per_chunk(self, device_type: str, batch: int, per_sequence: int) -> int:
        """Whole sequences per chunk (at least 1, at most the batch)."""
        return max(1, min(batch, self.chunk(device_type) // max(1, per_sequence)))
