"""Peak memory of a CPU run in a fresh process with the C library's default allocator settings,
as a user's process has them (no MALLOC_* variable, no mallopt anywhere; the capture itself
gives the heap's free pages back past ``CaptureTuning.heap_slack``).

The oracle is the bare forward pass of the same model on the same tokens, also in fresh
processes with the default allocator (the median of 3: glibc's heap makes single runs vary by
+-30 MiB here). Every harness run may add at most 2 site activations + 64 MiB to it. Before the
site self-check kept its copies in slots reserved before the pass and dropped its weak
references layer by layer (harness/engine/selfcheck.py), the harness measured +260 to +510 MiB
over a bare pass at this shape (docs/performance.md, "The CPU heap").
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MALLOC = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "MALLOC_TOP_PAD_")
RUNS = 3


def _probe(variant: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in MALLOC}
    clean.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "benchmarks.memprobe", "density-0pct", variant]
    cmd += ["--num-seqs", "16", "--seq-len", "256", "--batch-size", "16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=clean, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_every_fresh_cpu_run_stays_within_its_memory_budget():
    bare = [_probe("bare") for _ in range(RUNS)]
    runs = [_probe("harness") for _ in range(RUNS)]
    if any(r["method"] != "VmHWM after clear_refs" for r in bare + runs):
        pytest.skip("this kernel cannot reset the RSS high-water mark")
    base = statistics.median(r["extra_mib"] for r in bare)
    budget = 2 * runs[0]["site_activation_mib"] + 64
    over = [round(r["extra_mib"] - base) for r in runs if r["extra_mib"] - base > budget]
    assert not over, (
        f"{len(over)} of {RUNS} harness runs over bare + {budget} MiB: +{over} MiB; "
        f"bare {[round(r['extra_mib']) for r in bare]}, "
        f"harness {[round(r['extra_mib']) for r in runs]}"
    )
