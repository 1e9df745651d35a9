"""The capture's batch buffers kept out of the CPU heap, and the heap's free pages given back.

A CPU tensor's bytes come from glibc's malloc. Blocks above its mmap threshold get a mapping
of their own, returned to the system when freed; the threshold rises to the largest such
block freed (up to 32 MiB), so a forward pass's activations soon come from the heap, where
freed space is reused and returned only from the heap's top. A block the capture keeps
through the pass, made there, sits between the activations the pass frees and reuses: the
pass then has to go higher for the next ones, and the memory is not given back before the
pass ends (docs/performance.md, "The CPU heap"). So every buffer the capture holds for a
batch is made here: on the CPU as an anonymous mapping of its own (zero-filled, pages given
to the process only where written, unmapped when the tensor is freed); on other devices by
the device's own allocator, which has none of this. What the heap still keeps resident after
the pass's own frees, ``HeapWatch`` gives back past a slack.
"""

from __future__ import annotations

import ctypes
import math
import mmap

import torch


def empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """An uninitialised tensor (zero-filled on the CPU) of ``shape`` and ``dtype`` on ``device``,
    outside the CPU heap."""
    device = torch.device(device)
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    shape = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else (shape,)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    # the tensor holds the mapping (frombuffer keeps its buffer) and unmaps it when freed
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(buf, dtype=torch.uint8, count=nbytes).view(dtype).view(shape)


def zeros(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """A zero tensor of ``shape`` and ``dtype`` on ``device``, outside the CPU heap."""
    t = empty(shape, dtype, device)
    if t.device.type != "cpu":  # anonymous mappings are zero-filled already
        t.zero_()
    return t


def _malloc_trim():
    try:  # glibc's; other C libraries (musl, macOS, Windows) have none
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def resident_bytes() -> int | None:
    """The process's resident memory (``/proc/self/statm``), or None where there is none."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * mmap.PAGESIZE
    except (OSError, ValueError, IndexError):
        return None


class HeapWatch:
    """Gives the C heap's free pages back (``trim_heap``) once the resident memory has grown
    more than a slack since ``start``: a read of /proc per check, a trim only past the slack
    (with a trim at every site, SmolLM2's pass measured 1.097 x the bare one: the pages it
    faults in again after each trim)."""

    def __init__(self):
        self._base: int | None = None

    def start(self) -> None:
        self._base = resident_bytes()

    def check(self, slack: int) -> bool:
        """True when the heap was trimmed."""
        if self._base is None or _MALLOC_TRIM is None:
            return False
        now = resident_bytes()
        if now is None or now - self._base <= slack:
            return False
        return trim_heap()


def trim_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``); False where
    the C library has no such call.

    glibc gives memory back from the heap's top only, when what is free there passes its trim
    threshold, and never from below a live block. During a forward pass the capture's hooks
    allocate between the pass's activations, so where the pass's blocks land, and how much
    freed heap stays resident, varies from run to run: SmolLM2's pass peaked at 282-401 MiB
    (bare: 256-373) with the capture's own buffers all outside the heap. ``malloc_trim`` also
    returns the free pages inside the heap, so that after it the process holds about what is
    live (docs/performance.md, "The CPU heap", stop 42)."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
