"""Performance of the engine against its physical limit (``bare``: the forward pass alone) and
against the brute-force way (``naive``: keep every site activation, then analyse).

Targets (issue 5), on the 2-core CPU machine, 16 x 512 tokens, dense planted outliers:
- harness / bare <= 1.05 in time (medians of interleaved rounds in one process), and the time
  inside the engine <= 5 % of the bare pass; at 12.5 and 50 % planted dims <= 1.15 (issue 33);
- peak memory harness - bare <= 2 x one site activation + 64 MiB;
- naive / harness >= 3 in time or >= 5 in peak memory above the loaded model;
- the harness is linear in tokens and flat in memory with the number of sequences.
"""

from __future__ import annotations

import os
import statistics

import pytest

from benchmarks.measure import EngineClock, Interleaved, paired_ratio
from benchmarks.workloads import (
    WORKLOADS,
    build_model,
    num_params,
    planted_dims,
    run_bare,
    run_harness,
    run_naive,
    unavailable,
    warm_up,
    workload_ids,
)
from harness.pipeline import AUTO_BATCH_TOKENS

pytestmark = pytest.mark.perf

NUM_SEQS, SEQ_LEN = 16, 512
MEMORY_RUNS = 5  # fresh harness processes per workload, each within the memory budget
BATCH = AUTO_BATCH_TOKENS["cpu"] // SEQ_LEN  # what the harness picks on the CPU: 16 windows
TIME_RATIO, NAIVE_TIME, NAIVE_MEMORY = 1.05, 3.0, 5.0
# issue 33: synthetic densities far above real models' (12.5 and 50 % of the dims planted) may
# cost up to 1.15; real densities (0-1 %, SmolLM2) keep 1.05 and an engine share of 5 % at most
DENSE_TIME_RATIO = {"density-12.5pct": 1.15, "density-50pct": 1.15}
ENGINE_SHARE = 0.05
SCALING_SEQS = (4, 8, 16, 32)


def _workload(perf, name):
    if name not in perf.workloads:
        pytest.skip(f"{name} is not in --perf-workloads")
    why = unavailable(WORKLOADS[name])
    if why:
        pytest.skip(why)
    return WORKLOADS[name]


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_time_harness_vs_bare(name, perf, benchmark):
    w = _workload(perf, name)
    model = build_model(w)
    ids = workload_ids(w, NUM_SEQS, SEQ_LEN)
    warm_up(model, ids, BATCH)  # not timed: one-time costs, at the full batch shape
    out, clock, engine = {}, EngineClock(), []

    def harness():
        with clock:
            out["harness"] = run_harness(model, ids, BATCH)
        engine.append(clock.take() + out["harness"].timing["analysis_seconds"])

    calls = {
        "bare": lambda: run_bare(model, ids, BATCH),
        "harness": harness,
        "naive": lambda: out.__setitem__("naive", run_naive(model, ids, BATCH)),
    }
    rounds, naive_rounds = perf.rounds(name)
    if not naive_rounds:
        del calls["naive"]
    il = Interleaved(calls, max_rounds={"naive": naive_rounds})
    benchmark.pedantic(il.round, rounds=rounds, iterations=1, warmup_rounds=0)
    while il.rounds < rounds:  # pytest-benchmark disabled (--benchmark-disable): still measure
        il.round()
    t = il.timings
    # the variants did the same work: every planted dim found, by both
    planted = planted_dims(w)
    if planted:  # with none planted, whatever random weights give is the workload
        assert [d["dim"] for d in out["harness"].pooled["dims"]] == planted
        if "naive" in out:
            assert sorted(out["naive"]["dims"]) == planted
    others = [x for v in t.values() for x in v.others]
    row = {
        "workload": name,
        "params": num_params(model),
        "sites": len(out["harness"].criteria["site_names"]),
        "tokens": NUM_SEQS * SEQ_LEN,
        "batch_size": BATCH,
        "rounds": rounds,
        "timings": {k: v.to_dict() for k, v in t.items()},
        "harness_over_bare": t["harness"].median / t["bare"].median,
        "harness_over_bare_paired": paired_ratio(t["harness"], t["bare"]),
        "harness_over_bare_min": t["harness"].min / t["bare"].min,
        "engine_seconds": engine,
        "engine_share": statistics.median(engine) / t["bare"].median,
        "naive_over_harness": t["naive"].median / t["harness"].median if "naive" in t else None,
        "harness_hits": int(out["harness"].stats.hits_dim.size),
        "others_cpu_max": max(others),
        "others_cpu_median": statistics.median(others),
    }
    out.clear()
    perf.results["time"].append(row)
    benchmark.extra_info.update({k: v for k, v in row.items() if k != "timings"})
    benchmark.extra_info["medians"] = {k: v.median for k, v in t.items()}
    limit = DENSE_TIME_RATIO.get(name, TIME_RATIO)
    if name not in DENSE_TIME_RATIO:
        assert row["engine_share"] <= ENGINE_SHARE, (
            f"the engine took {100 * row['engine_share']:.1f}% of the bare pass (> 5%)"
        )
    assert row["harness_over_bare"] <= limit, (
        f"harness/bare = {row['harness_over_bare']:.3f} > {limit} (medians "
        f"{t['harness'].median:.2f}s / {t['bare'].median:.2f}s; paired "
        f"{row['harness_over_bare_paired']:.3f}; time inside the engine "
        f"{100 * row['engine_share']:.1f}% of bare; other processes used up to "
        f"{100 * row['others_cpu_max']:.0f}% of the {os.cpu_count()} cores meanwhile)"
    )


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_peak_memory_harness_vs_bare(name, perf):
    _workload(perf, name)
    variants = ["bare", "harness"] + (["naive"] if perf.rounds(name)[1] else [])
    runs = {v: perf.probe(name, v, NUM_SEQS, BATCH) for v in variants}
    # the harness in MEMORY_RUNS fresh processes: every one within the budget, not the median
    harness_runs = [runs["harness"]] + [
        perf.probe(name, "harness", NUM_SEQS, BATCH, run=i) for i in range(1, MEMORY_RUNS)
    ]
    bare_runs = [runs["bare"]] + [
        perf.probe(name, "bare", NUM_SEQS, BATCH, run=i) for i in range(1, 3)
    ]
    bare = statistics.median(r["extra_mib"] for r in bare_runs)
    act = runs["harness"]["site_activation_mib"]
    row = {
        "workload": name,
        "site_activation_mib": act,
        "budget_mib": 2 * act + 64,
        "method": runs["harness"]["method"],
        **{v: r["extra_mib"] for v, r in runs.items()},
        "bare": bare,
        "harness": max(r["extra_mib"] for r in harness_runs),
        "harness_runs": [r["extra_mib"] for r in harness_runs],
        "bare_runs": [r["extra_mib"] for r in bare_runs],
        "seconds": {v: r["seconds"] for v, r in runs.items()},
    }
    if "naive" in runs:
        row["naive_over_harness"] = row["naive"] / max(row["harness"], 1.0)
    perf.results["memory"].append(row)
    over = [x - bare for x in row["harness_runs"] if x - bare > row["budget_mib"]]
    assert not over, f"{len(over)} of {MEMORY_RUNS} fresh harness runs over the budget: {row}"


MOE_NAIVE = (
    "at 16 x 512 tokens the MoE forward pass's own transients (~390 MiB: top-4 expert inputs "
    "and outputs) are as large as the fp64 activations naive keeps (512 MiB); naive's memory "
    "grows with N, the harness's does not (--perf-scaling-naive; docs/performance.md)"
)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(reason=MOE_NAIVE, strict=False))
        if n == "olmoe-small"
        else n
        for n in WORKLOADS
    ],
)
def test_naive_costs_more_than_harness(name, perf):
    """The design matters: keeping every activation costs >= 3x the time or >= 5x the memory."""
    _workload(perf, name)
    timed, mem = perf.row("time", name), perf.row("memory", name)
    t = timed and timed["naive_over_harness"]
    m = mem and mem.get("naive_over_harness")
    if t is None and m is None:
        pytest.skip(f"naive was not run on {name} (see --perf-naive-rounds)")
    assert (t or 0) >= NAIVE_TIME or (m or 0) >= NAIVE_MEMORY, (
        f"naive/harness = {t} in time, {m} in peak memory"
    )


def test_scaling_linear_in_tokens_flat_in_memory(perf):
    name = perf.scaling_workload
    w = WORKLOADS[name]

    def probe(variant, n, layers_factor=1):
        r = dict(perf.probe(name, variant, n, BATCH, layers_factor), tokens=n * SEQ_LEN)
        perf.results["scaling"].append(r)
        return r

    by_n = {n: probe("harness", n) for n in SCALING_SEQS}
    double = probe("harness", 16, layers_factor=2)
    if perf.scaling_naive:
        probe("naive", 32)  # for comparison: naive keeps every activation, it grows with N
    # per-sequence tables: max, levels, counts at every grid value, hits: well under 1 MiB here
    per_seq_mib = w.hidden * (2 * w.num_layers + 16 * 11) / 2**20 + 0.25
    slack = 32  # MiB of allocator noise
    # 16 and 32 sequences run at the same batch size: twice the tokens, twice the time, same
    # memory (wide time bounds: other processes on the machine add noise to single runs)
    t_ratio = by_n[32]["seconds"] / by_n[16]["seconds"]
    grow = by_n[32]["extra_mib"] - by_n[16]["extra_mib"]
    l_ratio = double["seconds"] / by_n[16]["seconds"]
    assert grow <= 16 * per_seq_mib + slack, f"memory grew by {grow:.0f} MiB from 16 to 32 seqs"
    assert double["extra_mib"] - by_n[16]["extra_mib"] <= slack, (double, by_n[16])
    assert 1.5 <= t_ratio <= 2.7, f"32 vs 16 sequences took {t_ratio:.2f}x the time"
    assert 1.5 <= l_ratio <= 2.7, f"2x the layers took {l_ratio:.2f}x the time"
