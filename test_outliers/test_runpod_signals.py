"""Interrupting the local side of a RunPod run: Ctrl-C cleans up; SIGKILL leaves the pods to
their watchdogs, which stop them with the pod's own credentials (issue 8, "Pod deadline")."""

from __future__ import annotations

import json
import signal
import time

from runpod_fakes.procs import drive

pytest_plugins = ["runpod_fakes.fixtures"]


def _job_running(fake, model: str) -> bool:
    for pod in fake.pods.values():
        if pod.name.endswith(f"-{model}"):
            for state in pod.fs.glob("outliers-runs/*/state.json"):
                try:
                    if json.loads(state.read_text()).get("phase", "").startswith("run"):
                        return True
                except ValueError:
                    return False
    return False


def _pod_of(fake, model: str):
    return next(p for p in fake.pods.values() if p.name.endswith(f"-{model}"))


def test_sigint_mid_run_terminates_every_pod_and_keeps_finished_results(
    runpod_env, fake_runpod, tmp_path
):
    proc = drive(tmp_path, runpod_env, {"fast": "ok", "slow": "sleep:60"})
    try:
        assert fake_runpod.wait(lambda: "fast" in proc.outcomes(), timeout=30), proc.output
        assert fake_runpod.wait(lambda: _job_running(fake_runpod, "slow"), timeout=20)
        proc.p.send_signal(signal.SIGINT)
        code = proc.wait(30)
    finally:
        if proc.p.poll() is None:
            proc.p.kill()
    assert code != 0
    assert "interrupted: terminating" in proc.output
    assert proc.outcomes()["fast"]["ok"]
    assert list((tmp_path / "results" / "fast").glob("*/result.json")), "finished result lost"
    slow = _pod_of(fake_runpod, "slow")
    assert {c["auth"] for c in fake_runpod.ops("podTerminate", pod=slow.id)} >= {"user"}
    assert fake_runpod.live_pods() == []
    assert fake_runpod.wait(lambda: not fake_runpod.pod_processes(slow), timeout=5)


def test_a_sigkilled_sweep_leaves_its_pods_to_their_watchdogs(runpod_env, fake_runpod, tmp_path):
    """Pod "ended": its job finishes, nobody fetches, the watchdog stops it after the grace.
    Pod "late": its job outlives the deadline, the watchdog stops it at the deadline."""
    env = dict(runpod_env, OUTLIERS_RUNPOD_WATCHDOG_GRACE_S="1")
    proc = drive(tmp_path, env, {"ended": "sleep:1", "late": "sleep:60"}, max_minutes=0.1)
    try:
        assert fake_runpod.wait(
            lambda: _job_running(fake_runpod, "ended") and _job_running(fake_runpod, "late"),
            timeout=20,
        ), proc.output
        proc.p.send_signal(signal.SIGKILL)  # no finally, no atexit, no handler
        proc.wait(10)
        pods = [_pod_of(fake_runpod, "ended"), _pod_of(fake_runpod, "late")]
        stopped = fake_runpod.wait(lambda: not fake_runpod.live_pods(), timeout=20)
        assert stopped, [p.name for p in fake_runpod.live_pods()]
    finally:
        if proc.p.poll() is None:
            proc.p.kill()
    for pod, reason in zip(pods, ["not fetched within the grace", "deadline passed"], strict=True):
        calls = [
            c
            for c in fake_runpod.calls
            if c["op"] in ("podTerminate", "podStop") and c.get("pod") == pod.id
        ]
        assert calls and {c["auth"] for c in calls} == {f"pod:{pod.id}"}, calls  # never the user
        log = next(pod.fs.glob("outliers-runs/*/watchdog.log")).read_text()
        assert reason in log, log
        assert pod.key not in log
    assert fake_runpod.wait(lambda: not any(map(fake_runpod.pod_processes, pods)), timeout=5)


def test_a_closed_terminal_sighup_terminates_every_pod(runpod_env, fake_runpod, tmp_path):
    proc = drive(tmp_path, runpod_env, {"slow": "sleep:60"})
    try:
        assert fake_runpod.wait(lambda: _job_running(fake_runpod, "slow"), timeout=20)
        proc.p.send_signal(signal.SIGHUP)
        code = proc.wait(30)
    finally:
        if proc.p.poll() is None:
            proc.p.kill()
    assert code != 0
    assert "terminating this run's pods" in proc.output
    slow = _pod_of(fake_runpod, "slow")
    assert {c["auth"] for c in fake_runpod.ops("podTerminate", pod=slow.id)} >= {"user"}
    assert fake_runpod.live_pods() == []


def test_under_nohup_a_closed_terminal_leaves_the_sweep_running(runpod_env, fake_runpod, tmp_path):
    """SIGHUP ignored when the sweep starts (``nohup``): the user asked it to outlive the
    terminal, so a SIGHUP terminates nothing; the job runs to its end."""
    proc = drive(tmp_path, runpod_env, {"slow": "sleep:3"}, sighup=signal.SIG_IGN)
    try:
        assert fake_runpod.wait(lambda: _job_running(fake_runpod, "slow"), timeout=20)
        proc.p.send_signal(signal.SIGHUP)
        code = proc.wait(60)
    finally:
        if proc.p.poll() is None:
            proc.p.kill()
    assert "terminating this run's pods" not in proc.output
    assert code == 0, proc.output
    assert proc.outcomes()["slow"]["ok"], proc.output


def test_signals_while_closing_never_leave_a_pod_billing(runpod_env, fake_runpod, tmp_path):
    """Issue 34.1: a SIGTERM starts the close; a Ctrl-C and another SIGTERM come while each
    terminate takes the API 1 s. Before, the second signal aborted the loop (exit 143 or a
    KeyboardInterrupt with one of three pods terminated); now every pod is asked to end at
    once, the later signals only say so, and the process exits after all three are gone."""
    fake_runpod.faults.terminate_delay_s = 1.0
    models = {"a": "sleep:60", "b": "sleep:60", "c": "sleep:60"}
    proc = drive(tmp_path, runpod_env, models)
    try:
        assert fake_runpod.wait(
            lambda: all(_job_running(fake_runpod, m) for m in models), timeout=30
        ), proc.output
        proc.p.send_signal(signal.SIGTERM)
        assert fake_runpod.wait(lambda: "terminating this run's pods" in proc.output, timeout=10)
        time.sleep(0.3)
        proc.p.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.p.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    finally:
        if proc.p.poll() is None:
            proc.p.kill()
    assert code != 0
    assert "still terminating this run's pods, please wait" in proc.output
    assert fake_runpod.live_pods() == []
    for m in models:
        pod = _pod_of(fake_runpod, m)
        assert {c["auth"] for c in fake_runpod.ops("podTerminate", pod=pod.id)} >= {"user"}, m
