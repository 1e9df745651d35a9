"""How the benchmarks measure.

- Time: every variant in ONE process, on the same model and the same token ids, interleaved
  round by round (the order rotates each round), so that drift and noise from other processes
  fall on all variants alike. Reported: median, min and max per variant, and ratios of medians.
- Peak memory: ONE subprocess per (model, variant), because a process's RSS high-water mark
  only grows: ``benchmarks/memprobe.py`` builds the model, warms the kernels up, subtracts the
  RSS it has then, and reports the high-water mark of the variant's run above it. The probes run
  with the C library's default allocator settings, as a user's process has them: no
  ``MALLOC_*`` variable, no ``mallopt`` anywhere (the harness leaves the allocator alone).
  glibc's adaptive mmap threshold keeps freed activations in the heap, so identical bare runs
  differ by up to ~70 MiB: the bare peak is the median of 3 runs.
- Engine time: the harness runs are timed as a whole, and the time spent inside the engine's
  own code (per-site reductions, per-batch merge, statistics, criteria) is clocked as well
  (``EngineClock``), a direct measure of the overhead that the noise of the forward pass on a
  shared machine does not blur.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# every MALLOC_* setting of this process removed: the probes see the default allocator
NO_MALLOC_ENV = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_ARENA_MAX",
    "MALLOC_TOP_PAD_",
)


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have used (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Contention:
    """Share of the machine's CPU time used by OTHER processes while a block ran (0 = none,
    1 = all cores busy with others): the noise that no statistic of ours can remove."""

    def __enter__(self):
        self.b0, self.c0, self.t0 = busy_seconds(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        if self.b0 is None or wall <= 0:
            self.share = float("nan")
            return
        others = busy_seconds() - self.b0 - (time.process_time() - self.c0)
        self.share = max(0.0, others) / (wall * (os.cpu_count() or 1))


@dataclass
class Timing:
    """Wall-clock seconds of one variant over the rounds (plus CPU seconds and the load)."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)  # other processes' CPU share, 0..1

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def max(self) -> float:
        return max(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median: 0 when every round took the same time."""
        return (self.max - self.min) / self.median

    def to_dict(self) -> dict:
        return {
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "load_average": self.load,
            "others_cpu_share": self.others,
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "spread": self.spread,
        }


class Interleaved:
    """Rounds of every call once, the order rotating each round; ``max_rounds`` caps the rounds
    of slow variants (they then run in the first rounds only)."""

    def __init__(self, calls: dict[str, Callable[[], object]], max_rounds: dict | None = None):
        self.calls = calls
        self.max_rounds = dict(max_rounds or {})
        self.timings = {name: Timing() for name in calls}
        self.rounds = 0

    def round(self) -> None:
        names = list(self.calls)
        k = self.rounds % len(names)
        for name in names[k:] + names[:k]:
            t = self.timings[name]
            if len(t.seconds) >= self.max_rounds.get(name, 1 << 30):
                continue
            gc.collect()
            load = load_average()
            with Contention() as busy:
                t0, c0 = time.perf_counter(), time.process_time()
                self.calls[name]()
                t.seconds.append(time.perf_counter() - t0)
                t.cpu_seconds.append(time.process_time() - c0)
            t.load.append(load)
            t.others.append(busy.share)
        self.rounds += 1


class EngineClock:
    """Seconds spent inside the engine's own code during the harness runs: every hook it
    registers (the per-site reductions and the observers' hooks, e.g. attribution), the
    per-batch merge, the observers' per-batch bookkeeping, ``Capture.stats``; the criteria and
    the observers' summaries come from ``result.timing["analysis_seconds"]``. Use as a context
    manager around the runs."""

    METHODS = ("_merged_parts", "stats")

    def __init__(self):
        self.seconds = 0.0
        self._saved = {}

    def _timed(self, f: Callable) -> Callable:
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed

    def __enter__(self):
        from harness.engine.capture import Capture

        for name in (*self.METHODS, "register", "__enter__"):
            self._saved[name] = getattr(Capture, name)
        for name in self.METHODS:
            setattr(Capture, name, self._timed(self._saved[name]))
        register, enter = self._saved["register"], self._saved["__enter__"]

        def timed_register(cap, module, fn, mode="output"):
            return register(cap, module, self._timed(fn), mode)

        def timed_enter(cap):
            for obs in cap.observers:  # instance attributes shadow the class's methods
                for name in ("begin_batch", "end_batch"):
                    setattr(obs, name, self._timed(getattr(obs, name)))
            return enter(cap)

        Capture.register, Capture.__enter__ = timed_register, timed_enter
        return self

    def __exit__(self, *exc):
        from harness.engine.capture import Capture

        for name, original in self._saved.items():
            setattr(Capture, name, original)
        self._saved.clear()

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def paired_ratio(num: Timing, den: Timing) -> float:
    """Median over the rounds of num / den measured in the same round."""
    n = min(len(num.seconds), len(den.seconds))
    return statistics.median(a / b for a, b in zip(num.seconds[:n], den.seconds[:n], strict=True))


def probe_memory(
    workload: str,
    variant: str,
    *,
    num_seqs: int,
    seq_len: int,
    batch_size: int,
    layers_factor: int = 1,
    timeout: float = 900,
) -> dict:
    """Peak RSS of one variant run in a fresh process (see memprobe.py); a dict of MiB and s."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.memprobe",
        workload,
        variant,
        "--num-seqs",
        str(num_seqs),
        "--seq-len",
        str(seq_len),
        "--batch-size",
        str(batch_size),
        "--layers-factor",
        str(layers_factor),
    ]
    env = {k: v for k, v in os.environ.items() if k not in NO_MALLOC_ENV}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
