"""RunpodRunner against the REAL runpod SDK, a fake RunPod API and REAL sshd pods.

Every test ends with the same two checks: no pod is left running (the fake API's record) and no
process is left on any fake pod; fault tests also check that the other model's finished result
came home.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from harness.models.registry import SMALL_24, GpuPlan, ModelEntry
from runpod_fakes.args import fake_args
from runpod_fakes.values import HF_TOKEN, USER_KEY

from harness.runners.outcome import RunFailed, RunOutcome, RunSkipped
from harness.runners.runpod.bring_home import merge_benchmark_json
from harness.runners.runpod.options import RunpodOptions, Timings
from harness.runners.runpod.pods import harness_pods, pods_command, terminate_pods
from harness.runners.runpod.runner import RunpodRunner, dry_run_table

FAKE_PLAN = GpuPlan(SMALL_24, 1, 50)  # the fake models have no config to size them by

pytest_plugins = ["runpod_fakes.fixtures"]


def entries_of(modes: dict) -> list[ModelEntry]:
    return [ModelEntry(m, f"tiny:{m}", "tiny", dtype="float32", gpu=FAKE_PLAN) for m in modes]


def make_runner(tmp_path, modes, lines, expected_for=None, **opts) -> RunpodRunner:
    options = RunpodOptions(enabled=True, timings=Timings.from_env(), **opts)
    return RunpodRunner(
        options,
        tmp_path / "results",
        lambda e: fake_args(e.id, modes[e.id]),
        reporter=lines.append,
        expected_for=expected_for,
    )


def run_models(tmp_path, modes: dict, expected_for=None, during=None, **opts):
    """prepare / run each / close, as the plugin does; returns (runner, outcomes, lines)."""
    lines: list[str] = []
    runner = make_runner(tmp_path, modes, lines, expected_for, **opts)
    outcomes = {}
    try:
        runner.prepare(entries_of(modes))
        if during is not None:
            during(runner)
        for e in entries_of(modes):
            try:
                outcomes[e.id] = runner.run(e)
            except (RunFailed, RunSkipped) as err:
                outcomes[e.id] = err
    finally:
        runner.close()
    return runner, outcomes, lines


def assert_nothing_left(fake) -> None:
    assert [p.id for p in fake.live_pods()] == [], "a pod is left running"
    leftover = fake.wait(
        lambda: not any(fake.pod_processes(p) for p in fake.pods.values()), timeout=5
    )
    assert leftover, "a process is left on a fake pod"


def assert_result_home(outcome, model_id: str) -> None:
    assert isinstance(outcome, RunOutcome), outcome
    assert outcome.where.startswith("runpod:")
    assert (outcome.result_dir / "result.json").is_file()
    assert (outcome.result_dir / "stats.npz").is_file()
    assert outcome.result.model.id == model_id
    assert outcome.result_dir.parent.name == model_id


def user_terminated(fake) -> set:
    return {c["pod"] for c in fake.ops("podTerminate") if c["status"] == 200}


def test_two_models_run_on_two_pods_and_come_home(runpod_env, fake_runpod, tmp_path):
    modes = {"fake_a": "sleep:0.5", "fake_b": "ok"}
    runner, out, lines = run_models(tmp_path, modes)

    creates = fake_runpod.ops("podFindAndDeployOnDemand", status=200)
    assert len(creates) == 2 and {c["auth"] for c in creates} == {"user"}
    assert all(c["name"].startswith(f"outliers-{runner.run_id}-") for c in creates)
    for model in modes:
        o = out[model]
        assert_result_home(o, model)
        pod = fake_runpod.pods[o.where.split(":", 1)[1]]
        assert o.pod["id"] == pod.id and o.pod["gpu"] == "NVIDIA RTX A5000"
        assert o.pod["seconds"] > 0 and o.pod["cost_usd"] > 0
        # the pytest-benchmark record made on the pod
        assert o.benchmark["fullname"].endswith("remote_suite.py::test_fake_model")
        assert o.benchmark["extra_info"]["where"] == o.where
        # the working tree was shipped (tracked + untracked-not-ignored), no virtualenv
        tree = pod.fs / "outliers-runs" / pod.name / "tree"
        assert (tree / "harness" / "runners" / "runpod" / "runner.py").is_file()
        assert not (tree / ".venv").exists()
        # the pod log came home; our options were not forwarded
        log = (tmp_path / "results" / "runpod-logs" / runner.run_id / model / "pod.log").read_text()
        assert f"running {model}: pytest" in log
        assert "--runpod" not in log and "--rerun" not in log
        # the watchdog was the first thing started, before the tree was shipped
        commands = next(t.ssh.commands for t in runner.tasks if t.pod_id == pod.id)
        assert "watchdog" in commands[0] and "unpack" in commands[1]
        for c in commands:
            assert USER_KEY not in c and HF_TOKEN not in c
        # HF_TOKEN and PUBLIC_KEY travelled as pod environment
        assert pod.env["HF_TOKEN"] == HF_TOKEN and pod.env["PUBLIC_KEY"].startswith("ssh-ed25519")
    assert user_terminated(fake_runpod) == set(fake_runpod.pods)
    assert not any("could NOT" in x for x in lines)  # said only when it is true
    # a pod's own watchdog may stop it too, but only once its results were home
    for call in fake_runpod.ops("podTerminate", status=200):
        if call["auth"].startswith("pod:"):
            model = fake_runpod.pods[call["pod"]].name.rsplit("-", 1)[1]
            assert call["t"] >= (out[model].result_dir / "result.json").stat().st_mtime
    summary = runner.summary()
    assert len(summary["pods"]) == 2 and summary["total_cost_usd"] > 0
    merged = merge_benchmark_json(
        {"benchmarks": [{"fullname": "local::other"}]}, [o.benchmark for o in out.values()]
    )
    assert len(merged["benchmarks"]) == 2  # same fullname: the second replaced the first
    assert any("fake_a [" in x and "capturing batch" in x for x in lines), "no progress line"
    for x in lines:
        assert USER_KEY not in x and HF_TOKEN not in x
    assert_nothing_left(fake_runpod)


def test_no_capacity_for_the_first_gpu_type_moves_to_the_next(runpod_env, fake_runpod, tmp_path):
    fake_runpod.faults.no_capacity = {"NVIDIA RTX A5000"}
    runner, out, lines = run_models(tmp_path, {"fake_a": "ok"})
    assert_result_home(out["fake_a"], "fake_a")
    tried = [c["gpu"] for c in fake_runpod.ops("podFindAndDeployOnDemand")]
    assert tried == ["NVIDIA RTX A5000", "NVIDIA GeForce RTX 4090"]
    assert out["fake_a"].pod["gpu"] == "NVIDIA GeForce RTX 4090"
    assert_nothing_left(fake_runpod)


def test_create_pod_error_fails_that_model_and_the_other_goes_on(runpod_env, fake_runpod, tmp_path):
    fake_runpod.faults.create_errors = {"fake_a": "Invalid image name: no such repository"}
    runner, out, _ = run_models(tmp_path, {"fake_a": "ok", "fake_b": "ok"})
    assert isinstance(out["fake_a"], RunFailed)
    assert "no pod was created" in str(out["fake_a"]) and "Invalid image" in str(out["fake_a"])
    assert_result_home(out["fake_b"], "fake_b")
    assert len(fake_runpod.pods) == 1
    assert_nothing_left(fake_runpod)


def test_a_create_that_answers_500_after_creating_adopts_the_pod(runpod_env, fake_runpod, tmp_path):
    fake_runpod.faults.create_then_500 = 1
    runner, out, _ = run_models(tmp_path, {"fake_a": "ok"})
    assert_result_home(out["fake_a"], "fake_a")
    assert len(fake_runpod.pods) == 1, "the retry created a second pod"
    assert_nothing_left(fake_runpod)


def test_ssh_that_never_becomes_ready_fails_and_terminates_the_pod(
    runpod_env, fake_runpod, tmp_path, monkeypatch
):
    monkeypatch.setenv("OUTLIERS_RUNPOD_SSH_TIMEOUT_S", "1.5")
    fake_runpod.faults.ssh_dead = {"fake_a"}
    runner, out, _ = run_models(tmp_path, {"fake_a": "ok", "fake_b": "ok"})
    assert isinstance(out["fake_a"], RunFailed)
    assert "never accepted SSH" in str(out["fake_a"])
    assert_result_home(out["fake_b"], "fake_b")
    assert user_terminated(fake_runpod) >= {out["fake_b"].pod["id"]}
    assert out["fake_a"].pod["status"] == "terminated"
    assert_nothing_left(fake_runpod)


def test_a_remote_crash_fails_with_the_last_lines_of_its_log(runpod_env, fake_runpod, tmp_path):
    runner, out, _ = run_models(tmp_path, {"fake_a": "sleep:0.2,crash", "fake_b": "ok"})
    err = out["fake_a"]
    assert isinstance(err, RunFailed)
    assert "pytest exit 137" in str(err) and "simulated hard crash" in str(err)
    assert_result_home(out["fake_b"], "fake_b")
    assert_nothing_left(fake_runpod)


def test_a_dropped_connection_is_survived_by_the_detached_job(runpod_env, fake_runpod, tmp_path):
    def drop_when_running(runner):
        def go():
            pod = fake_runpod.wait(
                lambda: next(
                    (
                        p
                        for p in fake_runpod.pods.values()
                        if list(p.fs.glob("outliers-runs/*/state.json"))
                        and "run" in next(p.fs.glob("outliers-runs/*/state.json")).read_text()
                    ),
                    None,
                ),
                timeout=20,
            )
            pod.sshd.stop()  # every connection dies with the server
            time.sleep(0.5)
            pod.sshd.start()

        threading.Thread(target=go, daemon=True).start()

    runner, out, lines = run_models(tmp_path, {"fake_a": "sleep:1.5"}, during=drop_when_running)
    assert_result_home(out["fake_a"], "fake_a")
    assert any("lost the connection" in x for x in lines)
    assert any("reconnected" in x for x in lines)
    assert_nothing_left(fake_runpod)


def test_http_429_and_5xx_from_the_api_are_retried(runpod_env, fake_runpod, tmp_path):
    fake_runpod.faults.http_429 = 2
    fake_runpod.faults.http_5xx = 1
    runner, out, _ = run_models(tmp_path, {"fake_a": "ok"})
    assert_result_home(out["fake_a"], "fake_a")
    statuses = [c["status"] for c in fake_runpod.calls]
    assert statuses.count(429) == 2 and statuses.count(502) == 1
    assert_nothing_left(fake_runpod)


def test_the_local_deadline_terminates_a_pod_that_runs_too_long(
    runpod_env, fake_runpod, tmp_path, monkeypatch
):
    # the pod's watchdog gets a minute of slack here, so the local deadline acts first
    monkeypatch.setenv("OUTLIERS_RUNPOD_WATCHDOG_SLACK_S", "60")
    runner, out, _ = run_models(tmp_path, {"fake_a": "sleep:60"}, max_minutes=0.05)
    err = out["fake_a"]
    assert isinstance(err, RunFailed) and "deadline of 0.05 min" in str(err)
    assert "capturing batch" in str(err)  # with the log tail
    assert {c["auth"] for c in fake_runpod.ops("podTerminate", status=200)} == {"user"}
    assert_nothing_left(fake_runpod)


def test_an_existing_result_is_reused_and_no_pod_is_created(runpod_env, fake_runpod, tmp_path):
    from runpod_fakes.remote_suite import write_result

    existing = write_result(str(tmp_path / "results"), "fake_a")  # a schema 1 file
    result = json.loads((existing / "result.json").read_text())
    assert result["schema_version"] == 1 and "num_sequences" in result["data"]

    def expected_for(entry):  # a plan in today's names: the old file answers it all the same
        d, c = result["data"], result["criteria"]
        return {
            "model": {"id": entry.id, "source": {"revision": "rev1"}},
            "data": {"num_seqs": d["num_sequences"]}
            | {k: d[k] for k in ("dataset", "seq_len", "stride", "bos")},
            "criteria": {"sites": c["sites"], "magnitude": c["magnitude"]}
            | {"layer_frac": c["layer_fraction"], "seq_frac": c["seq_fraction"]},
        }

    runner, out, lines = run_models(tmp_path, {"fake_a": "ok"}, expected_for=expected_for)
    assert out["fake_a"].reused and out["fake_a"].result_dir == existing
    assert fake_runpod.calls == []
    assert any("--rerun" in x for x in lines)


def test_keep_leaves_pods_running_and_outliers_pods_terminates_them(
    runpod_env, fake_runpod, tmp_path
):
    runner, out, lines = run_models(tmp_path, {"fake_a": "ok"}, keep=True)
    assert_result_home(out["fake_a"], "fake_a")
    pod_id = out["fake_a"].pod["id"]
    assert [p.id for p in fake_runpod.live_pods()] == [pod_id]
    assert any("kept pod" in x and "ssh -i" in x and "--terminate" in x for x in lines)
    api = runner.api
    rows = harness_pods(api)
    assert [(r["id"], r["leaked"]) for r in rows] == [(pod_id, True)]  # its run has ended
    listed: list[str] = []
    assert pods_command(out=listed.append) == 0  # `outliers pods`
    assert pod_id in listed[0] and "leaked" in listed[0] and "$" in listed[1]
    assert terminate_pods(api) == ([pod_id], [])  # `outliers pods --terminate`
    assert_nothing_left(fake_runpod)


def test_dry_run_prices_the_plan_from_the_api_and_creates_nothing(
    runpod_env, fake_runpod, tmp_path
):
    from harness.models import select

    moe = select("moe")
    text = dry_run_table(moe, RunpodOptions(dry_run=True, timings=Timings.from_env()))
    for e in moe:
        assert e.id in text
    assert "NVIDIA H100 80GB HBM3 x 2" in text  # gpt_oss_120b
    assert "n/a" not in text.split("total")[0]
    assert {c["op"] for c in fake_runpod.calls} == {"gpuTypes"}
    assert fake_runpod.pods == {}


@pytest.mark.parametrize("alone", ["worker", "close", "sweep"])
def test_each_clean_up_path_alone_ends_every_pod(runpod_env, fake_runpod, tmp_path, alone):
    """Interrupted while two pods run (close(), as Ctrl-C does), with every clean-up path but
    one broken: the worker's own terminate when its job ends, close()'s loop over the pods,
    the sweep by run name. Each path alone still ends every pod."""
    import sys

    lines: list[str] = []
    modes = {"fake_a": "sleep:60", "fake_b": "sleep:60"}
    runner = make_runner(tmp_path, modes, lines)
    callers = {"worker": "_finish", "close": "close"}
    real_terminate, real_sweep = runner._terminate, runner._sweep

    def terminate(task):
        caller = sys._getframe(1).f_code.co_name
        if caller in callers.values() and caller != callers.get(alone):
            return False  # this path is broken
        return real_terminate(task)

    runner._terminate = terminate
    runner._sweep = real_sweep if alone == "sweep" else (lambda: None)
    try:
        runner.prepare(entries_of(modes))
        # both pods created and known to the runner (a create still in flight has no id
        # yet: only the sweep by name can find that pod)
        assert fake_runpod.wait(
            lambda: len(runner.tasks) == 2 and all(t.pod_id for t in runner.tasks), timeout=60
        )
    finally:
        runner.close()
    if alone == "worker":  # the workers end after close() stops waiting for them
        fake_runpod.wait(lambda: not fake_runpod.live_pods(), timeout=30)
    assert_nothing_left(fake_runpod)


def test_a_pod_that_cannot_be_terminated_is_named_with_what_to_do(
    runpod_env, fake_runpod, tmp_path
):
    """Every terminate of the user's key fails: the run says so for that pod, in one sentence
    naming the pod and the command, and the pod's own watchdog still ends it."""
    import threading

    fake_runpod.faults.user_terminate_refused = True
    # the pod's own terminate waits until the run has closed: otherwise its watchdog may end
    # the pod before the sweep looks, and the sweep has nothing to say
    held = fake_runpod.faults.pod_terminate_held = threading.Event()
    runner, out, lines = run_models(tmp_path, {"fake_a": "ok"})
    held.set()
    assert_result_home(out["fake_a"], "fake_a")
    pod_id = out["fake_a"].pod["id"]
    assert out["fake_a"].pod["status"] == "unknown"  # not reported as terminated
    said = [x for x in lines if "could NOT terminate" in x]
    assert said and all(pod_id in x for x in said), lines
    # the worker's own sentence, then the sweep's
    assert any(
        f"could NOT terminate pod {pod_id}; run `outliers pods --terminate` or use the RunPod "
        "console" in x
        for x in said
    ), said
    assert any(
        x.endswith(f"could NOT terminate pod {pod_id}; run `outliers pods --terminate`.")
        for x in said
    ), said
    ended = fake_runpod.wait(lambda: not fake_runpod.live_pods(), timeout=30)
    done = [c for c in fake_runpod.ops("podTerminate") if "error" not in c]
    assert ended and {c["auth"] for c in done} == {f"pod:{pod_id}"}
    assert_nothing_left(fake_runpod)
