"""Where a model test runs: here (``LocalRunner``) or on rented GPUs (``harness.runners.runpod``).

Both sit behind one small interface used by the pytest plugin:

    runner.prepare(entries)   once, after collection, with the selected registry entries
    runner.run(entry)         blocks until that model's result exists; returns a RunOutcome
    runner.close()            always called at session end (pods are terminated here)

A runner never fakes a result: ``run`` either returns an outcome whose ``result_dir`` holds a
complete ``result.json`` (+ stats) or raises ``RunSkipped`` / ``RunFailed`` with one sentence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from harness.errors import HarnessError


class RunSkipped(HarnessError):
    """The model cannot run in this environment (no GPU, offline without weights...)."""


class RunFailed(HarnessError):
    """The run started and failed; the message carries the reason (and a log tail if remote)."""


@dataclass
class RunOutcome:
    model_id: str
    result_dir: Path
    result: dict  # the parsed result.json
    where: str = "local"  # "local" or "runpod:<pod id>"
    benchmark: dict | None = None  # a pytest-benchmark record made where the model ran
    pod: dict | None = None  # pod id, gpu, count, seconds, cost_usd (remote only)
    reused: bool = False  # an existing result (same model revision, data, criteria) was kept
    extra: dict = field(default_factory=dict)


class Runner(Protocol):
    def prepare(self, entries: list) -> None: ...

    def run(self, entry) -> RunOutcome: ...

    def close(self) -> None: ...


__all__ = ["RunFailed", "RunOutcome", "RunSkipped", "Runner", "Path"]
