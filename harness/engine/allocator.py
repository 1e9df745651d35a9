"""The C heap of a CPU run: a fixed mmap threshold, so that freed activations leave the process.

glibc's malloc raises its mmap threshold to the size of the largest block freed so far (up to
32 MiB): after the first forward pass, activation-sized tensors come from the heap, and the
small, long-lived tensors a capture keeps between them (per-site maxima, scratch) pin that heap
so it cannot shrink. Measured on the 8-layer Qwen3 benchmark shape (16 x 256, fresh processes,
docs/performance.md): the peak RSS over a bare forward pass was +0 to +520 MiB with the default
behaviour, from one run to the next, and +8 to +12 MiB with a fixed threshold. Setting one (any
value disables the adjustment) is what ``MALLOC_MMAP_THRESHOLD_`` does; the harness does it for
its own CPU runs. ``OUTLIERS_MALLOC=default`` leaves the allocator as it is. The price is time:
every tensor of 1 MiB or more is a fresh mapping, paged in on first touch, so the CPU forward
pass itself runs slower (docs/performance.md, "What the fixed mmap threshold costs in time").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 1 << 20  # blocks of 1 MiB and more are mapped, and unmapped when freed
_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
_applied: list[int] = []


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> int | None:
    """Fix glibc's mmap threshold for this process (once); the threshold in force, or None
    where the C library is not glibc, the user opted out, or the environment already set it."""
    if _applied:
        return _applied[0]
    if (
        not sys.platform.startswith("linux")
        or os.environ.get("OUTLIERS_MALLOC", "").lower() == "default"
    ):
        return None
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return int(os.environ["MALLOC_MMAP_THRESHOLD_"])  # the user's own setting stands
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, int(threshold)) != 1:
        return None
    _applied.append(int(threshold))
    return _applied[0]
