"""Plays the pytest plugin's part in a subprocess: prepare, run each model, close.

    python drive.py SPEC.json

SPEC: {"results_dir": ..., "models": {"model_id": "fake mode", ...}, "options": {...}}.
Prints one JSON line per model ({"model", "ok", "where", "error", "pod"}) as each finishes.
Credentials and the API address come from the environment, as in a real run.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from harness.models.registry import SMALL_24, GpuPlan, ModelEntry  # noqa: E402

from harness.runners.outcome import RunFailed, RunSkipped  # noqa: E402
from harness.runners.runpod.options import RunpodOptions, Timings  # noqa: E402
from harness.runners.runpod.runner import RunpodRunner  # noqa: E402

sys.path.insert(0, str(HERE))
from args import fake_args  # noqa: E402

FAKE_PLAN = GpuPlan(SMALL_24, 1, 50)  # the fake models have no config to size them by


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    modes = spec["models"]
    entries = [ModelEntry(m, f"tiny:{m}", "tiny", dtype="float32", gpu=FAKE_PLAN) for m in modes]
    options = RunpodOptions(enabled=True, timings=Timings.from_env(), **spec.get("options", {}))
    runner = RunpodRunner(
        options,
        spec["results_dir"],
        lambda e: fake_args(e.id, modes[e.id]),
        reporter=lambda line: print(line, flush=True),
    )
    try:
        runner.prepare(entries)
        for e in entries:
            try:
                out = runner.run(e)
                line = {
                    "model": e.id,
                    "ok": True,
                    "where": out.where,
                    "pod": out.pod,
                    "result_dir": str(out.result_dir),
                }
            except (RunFailed, RunSkipped) as err:
                line = {"model": e.id, "ok": False, "error": str(err)}
            print("OUTCOME " + json.dumps(line), flush=True)
    finally:
        runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
