"""The benchmark session: which workloads and how many rounds, the results, their output."""

from __future__ import annotations

import json
from pathlib import Path

from .report import environment, render

# Rounds of bare and harness per workload, and of the much slower naive variant: on 2 cores one
# pass of 16 x 512 tokens takes ~7 s (olmoe-small), ~10 s (qwen3-100m) and ~35 s (qwen3-300m),
# naive ~2.5x that; naive on qwen3-300m (~80 s, ~9 GB) runs only with --perf-naive-rounds.
# Chosen so that the whole suite takes ~12 min on this 2-core machine: identical passes differ by
# up to +-10 % here, and with 4 rounds the median ratio of qwen3-100m moved between 1.01 and
# 1.05 from run to run.
# The density workloads (~3.5 s a pass) and SmolLM2 (~20 s a pass) run without naive.
ROUNDS = {"olmoe-small": 8, "qwen3-100m": 7, "qwen3-300m": 2, "smollm2-135m": 3}
NAIVE_ROUNDS = {"olmoe-small": 1, "qwen3-100m": 1, "qwen3-300m": 0, "smollm2-135m": 0}
for _pct in ("0", "1", "12.5", "50"):
    ROUNDS[f"density-{_pct}pct"], NAIVE_ROUNDS[f"density-{_pct}pct"] = 5, 0
SEQ_LEN = 512


class PerfSession:
    def __init__(self, config):
        from .workloads import WORKLOADS

        names = config.getoption("perf_workloads")
        self.workloads = list(WORKLOADS) if not names else [n.strip() for n in names.split(",")]
        unknown = [n for n in self.workloads if n not in WORKLOADS]
        if unknown:
            raise ValueError(f"unknown --perf-workloads {unknown}; known: {list(WORKLOADS)}")
        self.rounds_option = config.getoption("perf_rounds")
        self.naive_rounds_option = config.getoption("perf_naive_rounds")
        self.scaling_workload = config.getoption("perf_scaling_workload")
        self.scaling_naive = config.getoption("perf_scaling_naive")
        self.report_path = config.getoption("perf_report")
        self.results: dict = {"time": [], "memory": [], "scaling": []}
        self._probes: dict = {}
        self.command = "python -m pytest " + " ".join(config.invocation_params.args)

    def rounds(self, name: str) -> tuple[int, int]:
        """(rounds of bare and harness, rounds of naive) for workload ``name``."""
        r = self.rounds_option or ROUNDS.get(name, 3)
        naive = self.naive_rounds_option
        return r, min(r, NAIVE_ROUNDS.get(name, 1) if naive is None else naive)

    def probe(
        self, name: str, variant: str, num_seqs: int, batch_size: int, layers_factor=1, run=0
    ):
        """Peak memory of one run in a fresh process (memprobe.py); the same run is reused by
        the memory and the scaling test; ``run`` numbers repeated runs apart."""
        from .measure import probe_memory

        key = (name, variant, num_seqs, batch_size, layers_factor, run)
        if key not in self._probes:
            self._probes[key] = probe_memory(
                name,
                variant,
                num_seqs=num_seqs,
                seq_len=SEQ_LEN,
                batch_size=batch_size,
                layers_factor=layers_factor,
            )
        return self._probes[key]

    def row(self, table: str, name: str) -> dict | None:
        return next((r for r in self.results[table] if r["workload"] == name), None)

    def finish(self) -> str | None:
        """The tables as text (also written to --perf-report), or None when nothing ran."""
        if not any(self.results.values()):
            return None
        self.results["environment"] = environment()
        self.results["command"] = self.command
        text = render(self.results, self.command)
        if self.report_path:
            path = Path(self.report_path)
            path.write_text(text + "\n")
            path.with_suffix(".json").write_text(json.dumps(self.results, indent=1) + "\n")
        return text
