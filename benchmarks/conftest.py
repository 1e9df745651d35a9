"""pytest surface of the benchmarks (``python -m pytest benchmarks -m perf``): options, the
session object, the closing tables. The measuring lives in measure.py, the tables in report.py."""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("perf", "outlier-harness performance benchmarks")
    group.addoption(
        "--perf-workloads",
        dest="perf_workloads",
        default=None,
        help="comma-separated workloads (default: all of benchmarks/workloads.py)",
    )
    group.addoption(
        "--perf-rounds",
        dest="perf_rounds",
        type=int,
        default=None,
        help="interleaved rounds of bare and harness for every workload (default: per workload)",
    )
    group.addoption(
        "--perf-naive-rounds",
        dest="perf_naive_rounds",
        type=int,
        default=None,
        help="rounds of the naive variant for every workload, 0 = none (default: per workload; "
        "none on qwen3-300m, where it takes ~80 s and ~9 GB)",
    )
    group.addoption(
        "--perf-scaling-workload",
        dest="perf_scaling_workload",
        default="olmoe-small",
        help="the workload of the scaling runs (N = 4, 8, 16, 32 sequences and 2x layers)",
    )
    group.addoption(
        "--perf-scaling-naive",
        dest="perf_scaling_naive",
        action="store_true",
        help="add naive at 32 sequences to the scaling runs (~40 s): its memory grows with N",
    )
    group.addoption(
        "--perf-attribution",
        dest="perf_attribution",
        action="store_true",
        help="the harness variant also runs the attribution observers (tokens, massive "
        "activations, MoE experts), as `pytest -m ...` and `outliers analyze` do by default",
    )
    group.addoption(
        "--perf-report",
        dest="perf_report",
        default=None,
        help="also write the tables to this markdown file (and the raw numbers beside it, .json)",
    )


def pytest_configure(config):
    import os

    from benchmarks.session import PerfSession

    if config.getoption("perf_attribution"):
        os.environ["OUTLIERS_PERF_ATTRIBUTION"] = "1"  # memory probes run in subprocesses

    config._perf = PerfSession(config)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    perf = getattr(config, "_perf", None)
    text = perf.finish() if perf is not None else None
    if text:
        terminalreporter.write_sep("=", "outlier-harness performance")
        terminalreporter.write_line(text)


@pytest.fixture(scope="session")
def perf(request):
    return request.config._perf
