"""What a model test's run came to: a ``RunOutcome`` (its result directory), or ``RunSkipped`` /
``RunFailed`` with one sentence. Runs happen here (``harness.runners.local``, through the
plugin's session) or on rented GPUs (``harness.runners.runpod.runner.RunpodRunner``: ``prepare``
once, ``run(entry)`` per model, ``close`` at session end, where its pods are terminated).
A run never fakes a result: an outcome's ``result_dir`` holds a complete result.json + stats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.engine.result import AnalysisResult
from harness.errors import HarnessError


class RunSkipped(HarnessError):
    """The model cannot run in this environment (no GPU, offline without weights...)."""


class RunFailed(HarnessError):
    """The run started and failed; the message carries the reason (and a log tail if remote)."""


@dataclass
class RunOutcome:
    model_id: str
    result_dir: Path
    result: AnalysisResult  # its result.json, typed
    where: str = "local"  # "local" or "runpod:<pod id>"
    benchmark: dict | None = None  # a pytest-benchmark record made where the model ran
    pod: dict | None = None  # pod id, gpu, count, seconds, cost_usd (remote only)
    reused: bool = False  # an existing result (same model revision, data, criteria) was kept
    extra: dict = field(default_factory=dict)
