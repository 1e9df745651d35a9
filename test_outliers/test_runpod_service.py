"""RunPod as the real service behaves (issue: kill switch, CUDA filter, lagging lists...).

Each test puts the fake API into one behaviour of the real service and checks that the run
still ends every pod and does what a paying user expects. Each would fail without its fix: the
fake refuses urllib's default User-Agent, never starts a container on an old driver, lists a
created-then-500 pod late, refuses ``podStop`` of a volume pod, injects the account's keys.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from runpod_fakes.values import REPO, USER_KEY
from test_runpod_pods import assert_nothing_left, assert_result_home, run_models

from harness.runners.outcome import RunFailed
from harness.runners.runpod import killswitch, podside
from harness.runners.runpod.api import RunpodApi
from harness.runners.runpod.options import Timings
from harness.runners.runpod.plan import MEMORY_GB_PER_GPU, VCPUS_PER_GPU

pytest_plugins = ["runpod_fakes.fixtures"]

FIRST, SECOND = "NVIDIA RTX A5000", "NVIDIA GeForce RTX 4090"  # the tiny plans' first two types


def _creates(fake):
    """The creates that made a pod (a refusal is a GraphQL error, also HTTP 200)."""
    return [c for c in fake.ops("podFindAndDeployOnDemand") if c.get("pod")]


def test_every_pod_is_created_with_its_kill_switch_cuda_filter_and_machine_size(
    runpod_env, fake_runpod, tmp_path
):
    before = time.time()
    runner, out, _ = run_models(tmp_path, {"fake_a": "ok"})
    assert_result_home(out["fake_a"], "fake_a")
    (create,) = _creates(fake_runpod)
    f = create["fields"]
    t = Timings.from_env()
    backstop = t.ready_timeout_s + t.ssh_timeout_s + 30 * 60 + t.watchdog_slack_s
    deadline = killswitch.deadline_of(f["dockerArgs"])
    assert before + backstop - 1 <= deadline <= time.time() + backstop + 1
    assert f["allowedCudaVersions"][0] == "12.8" and "12.4" not in f["allowedCudaVersions"]
    assert f["minVcpuCount"] == VCPUS_PER_GPU and f["minMemoryInGb"] == MEMORY_GB_PER_GPU
    assert f["startSsh"] is True and f["env"]["PUBLIC_KEY"].startswith("ssh-ed25519")
    # the watchdog's calls carried our User-Agent (the fake refuses urllib's default)
    pod_agents = {a for who, a in fake_runpod.agents if who and who.startswith("pod:")}
    assert pod_agents == {podside.USER_AGENT}
    # provenance: the pod's python / torch, and the commit of the shipped tree
    info = out["fake_a"].pod
    assert info["image_runtime"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["image_runtime"]["torch"]
    pod = fake_runpod.pods[info["id"]]
    job = (pod.fs / "outliers-runs" / pod.name / "job.json").read_text()
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout
    if head.strip():
        assert head.strip() in job
    assert_nothing_left(fake_runpod)


def _pod_without_ssh(fake, monkeypatch, name: str, **create) -> dict:
    """One pod made straight through the API (no runner, no SSH): what only its own start
    command or its own key can end."""
    monkeypatch.setenv("RUNPOD_API_BASE_URL", fake.url)
    api = RunpodApi(USER_KEY, Timings(api_retries=2, backoff_s=0.01))
    fake.faults.ssh_dead.add(name)
    pod, _ = api.create(
        f"outliers-{name}",
        gpu_types=(FIRST,),
        count=1,
        disk_gb=10,
        image="runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404",
        cloud="SECURE",
        **{"env": {}, **create},
    )
    return pod


def test_the_kill_switch_ends_a_pod_whose_creator_is_gone(fake_runpod, monkeypatch):
    """No SSH, no watchdog, no local process: only the start command can end this pod."""
    pod = _pod_without_ssh(
        fake_runpod,
        monkeypatch,
        "orphan",
        env={"PUBLIC_KEY": "ssh-ed25519 AAAA test"},
        docker_args=killswitch.docker_args(time.time() + 2),
    )
    ended = fake_runpod.wait(lambda: fake_runpod.ops("podTerminate", pod=pod["id"]), timeout=20)
    assert ended and ended[0]["auth"] == f"pod:{pod['id']}" and ended[0]["status"] == 200
    assert ended[0]["t"] >= killswitch.deadline_of(fake_runpod.pods[pod["id"]].fields["dockerArgs"])
    log_file = fake_runpod.pods[pod["id"]].root / "tmp" / "outliers-killswitch.log"
    # the switch logs "done" after the API has answered: give it the moment it needs
    fake_runpod.wait(lambda: "podTerminate: done" in log_file.read_text(), timeout=10)
    log = log_file.read_text()
    assert "deadline passed" in log and "podTerminate: done" in log
    assert fake_runpod.agents and all(
        a == killswitch.USER_AGENT for who, a in fake_runpod.agents if who == f"pod:{pod['id']}"
    )
    assert fake_runpod.live_pods() == []


def test_hosts_with_an_old_cuda_driver_are_never_rented(runpod_env, fake_runpod, tmp_path):
    fake_runpod.faults.host_cuda[FIRST] = "12.4"  # this type's hosts cannot run a cu128 image
    runner, out, _ = run_models(tmp_path, {"fake_a": "ok"})
    assert_result_home(out["fake_a"], "fake_a")
    assert out["fake_a"].pod["gpu"] == SECOND
    assert [c["gpu"] for c in _creates(fake_runpod)] == [SECOND]
    assert_nothing_left(fake_runpod)


def test_a_container_that_never_starts_is_terminated_and_the_next_type_tried(
    runpod_env, fake_runpod, tmp_path, monkeypatch
):
    monkeypatch.setenv("OUTLIERS_RUNPOD_READY_TIMEOUT_S", "2")
    fake_runpod.faults.no_runtime.add(FIRST)  # runtime stays null on these hosts
    runner, out, lines = run_models(tmp_path, {"fake_a": "ok"})
    assert_result_home(out["fake_a"], "fake_a")
    first, second = _creates(fake_runpod)
    assert (first["gpu"], second["gpu"]) == (FIRST, SECOND)
    assert {c["auth"] for c in fake_runpod.ops("podTerminate", pod=first["pod"])} == {"user"}
    assert out["fake_a"].pod["discarded_pods"] == [first["pod"]]
    assert out["fake_a"].pod["seconds"] >= 2.0  # the first pod's 2 s wait is paid time too
    assert any("never started" in x and "trying" in x for x in lines)
    # issue 34.7: each attempt is named apart, so a create answered 500 and adopted by its name
    # can never adopt the pod given up on
    assert second["name"] == first["name"] + "-r1"
    # issue 34.10: each pod at its own type's rate (A5000 $0.27/h, 4090 $0.69/h, secure)
    pods = {p["id"]: p for p in out["fake_a"].pod["pods"]}
    assert (
        pods[first["pod"]]["usd_per_hour"] == 0.27 and pods[second["pod"]]["usd_per_hour"] == 0.69
    )
    paid = out["fake_a"].pod["cost_usd"]
    assert paid < 0.69 * out["fake_a"].pod["seconds"] / 3600  # not the last rate on all of it
    assert_nothing_left(fake_runpod)


def test_a_running_pod_without_a_public_ssh_port_moves_to_the_next_type(
    runpod_env, fake_runpod, tmp_path, monkeypatch
):
    """Issue 34.9: a container that runs but gets no public 22/tcp is given up on after
    ``no_ssh_port_s``, not after the whole 900 s ready wait; the next type is tried."""
    monkeypatch.setenv("OUTLIERS_RUNPOD_NO_SSH_PORT_S", "1")
    monkeypatch.setenv("OUTLIERS_RUNPOD_READY_TIMEOUT_S", "60")
    fake_runpod.faults.no_ssh_port.add(FIRST)
    start = time.monotonic()
    runner, out, lines = run_models(tmp_path, {"fake_a": "ok"})
    assert_result_home(out["fake_a"], "fake_a")
    assert [c["gpu"] for c in _creates(fake_runpod)] == [FIRST, SECOND]
    assert any("no public SSH port" in x for x in lines)
    assert time.monotonic() - start < 40
    assert_nothing_left(fake_runpod)


def test_a_pod_whose_start_command_did_not_run_is_not_kept(runpod_env, fake_runpod, tmp_path):
    """Issue 34.4: the kill switch is checked armed (its log line) on every sweep pod before the
    watchdog starts; a pod whose image ignored the start command is terminated."""
    fake_runpod.faults.ignore_start_command = True
    runner, out, _ = run_models(tmp_path, {"fake_a": "ok"})
    err = out["fake_a"]
    assert isinstance(err, RunFailed) and "the kill switch is not armed" in str(err)
    for pod in fake_runpod.pods.values():
        assert not list(pod.fs.glob("outliers-runs/*/job.json"))
    assert_nothing_left(fake_runpod)


def test_something_went_wrong_is_capped_and_a_cancel_stops_the_create(fake_runpod, monkeypatch):
    """Issue 34.8: RunPod's generic "Something went wrong" (also its answer to malformed input)
    moves on to the next type after ``generic_retries``; a cancelled run stops creating."""
    from harness.runners.runpod.api import ApiError

    monkeypatch.setenv("RUNPOD_API_BASE_URL", fake_runpod.url)
    api = RunpodApi(
        USER_KEY, Timings(api_retries=6, backoff_s=0.01, generic_retries=2, adopt_polls=1)
    )
    generic = "Something went wrong. Please try again later."
    fake_runpod.faults.create_errors = {"g": generic}
    fake_runpod.faults.create_errors_repeat = True
    kw = dict(count=1, disk_gb=10, image="runpod/pytorch:x", cloud="SECURE", env={})
    with pytest.raises(ApiError, match='answered "Something went wrong" for every GPU type'):
        api.create("outliers-g", gpu_types=(FIRST, SECOND), **kw)
    per_type = [c["gpu"] for c in fake_runpod.ops("podFindAndDeployOnDemand")]
    assert per_type == [FIRST, FIRST, SECOND, SECOND]  # 2 each, not 6 with back-off
    with pytest.raises(ApiError) as err:
        api.create("outliers-g", gpu_types=(FIRST,), cancelled=lambda: True, **kw)
    assert err.value.kind == "cancelled"
    assert len(fake_runpod.ops("podFindAndDeployOnDemand")) == 4  # nothing sent


@pytest.mark.parametrize("value", ['a "quoted" comment', "back\\slash", "two\nlines"])
def test_an_env_value_the_sdk_cannot_send_is_refused_before_creating(
    fake_runpod, monkeypatch, value
):
    """Issue 34.14: the SDK pastes env values into GraphQL unescaped."""
    from harness.runners.runpod.api import ApiError

    monkeypatch.setenv("RUNPOD_API_BASE_URL", fake_runpod.url)
    api = RunpodApi(USER_KEY, Timings(api_retries=2, backoff_s=0.01))
    with pytest.raises(ApiError, match="^the pod environment variable PUBLIC_KEY holds a"):
        api.create(
            "outliers-e",
            gpu_types=(FIRST,),
            count=1,
            disk_gb=10,
            image="runpod/pytorch:x",
            cloud="SECURE",
            env={"PUBLIC_KEY": f"ssh-ed25519 AAAA {value}"},
        )
    assert fake_runpod.calls == []


def test_a_create_answered_500_is_found_in_a_lagging_list_not_created_twice(
    runpod_env, fake_runpod, tmp_path
):
    fake_runpod.faults.create_then_500 = 1
    fake_runpod.faults.list_lag_s = 0.4  # the pod list shows it only after a while
    runner, out, _ = run_models(tmp_path, {"fake_a": "ok"})
    assert_result_home(out["fake_a"], "fake_a")
    assert len(fake_runpod.pods) == 1, "a second pod was created"
    assert_nothing_left(fake_runpod)


def test_not_found_just_after_creation_is_waited_out(runpod_env, fake_runpod, tmp_path):
    fake_runpod.faults.notfound_gets = 2
    runner, out, _ = run_models(tmp_path, {"fake_a": "ok"})
    assert_result_home(out["fake_a"], "fake_a")
    assert_nothing_left(fake_runpod)


def test_the_deadline_counts_from_the_ssh_login_not_the_creation(runpod_env, fake_runpod, tmp_path):
    # ~8 s of "starting" (image pull) at a 0.2 s poll, more than the whole deadline (7.2 s),
    # which the run itself (a pytest start-up, ~2-4 s on a loaded 2-core machine) fits twice
    fake_runpod.ready_after = 40
    runner, out, _ = run_models(tmp_path, {"fake_a": "sleep:0.5"}, max_minutes=0.12)
    assert_result_home(out["fake_a"], "fake_a")
    assert_nothing_left(fake_runpod)


def test_the_account_keys_replacing_ours_fail_fast(runpod_env, fake_runpod, tmp_path):
    fake_runpod.faults.account_keys = True
    runner, out, _ = run_models(tmp_path, {"fake_a": "ok"})
    err = out["fake_a"]
    assert isinstance(err, RunFailed) and "replaced our PUBLIC_KEY" in str(err)
    assert len(fake_runpod.ops("pod")) <= 1  # no waiting for an SSH that cannot work
    assert_nothing_left(fake_runpod)


def test_the_account_keys_beside_ours_are_fine(runpod_env, fake_runpod, tmp_path):
    """Issue 34.2: RunPod may merge the account's keys with ours in PUBLIC_KEY (one a line);
    ours is among them, so the run logs in. Before, the equality test terminated every pod."""
    fake_runpod.faults.account_keys_merged = True
    runner, out, _ = run_models(tmp_path, {"fake_a": "ok"})
    assert_result_home(out["fake_a"], "fake_a")
    (pod,) = fake_runpod.pods.values()
    assert pod.env["PUBLIC_KEY"].count("\n") == 1  # ours, then the account's
    assert_nothing_left(fake_runpod)


def test_a_pod_whose_own_key_cannot_reach_the_api_is_not_kept(runpod_env, fake_runpod, tmp_path):
    fake_runpod.faults.pod_key_refused = True  # nothing on the pod could end it
    runner, out, _ = run_models(tmp_path, {"fake_a": "ok"})
    err = out["fake_a"]
    assert isinstance(err, RunFailed) and "own RunPod key cannot reach its pod" in str(err)
    assert "starting the watchdog" in str(err)
    for pod in fake_runpod.pods.values():  # no job was started on it
        assert not list(pod.fs.glob("outliers-runs/*/job.json"))
    assert_nothing_left(fake_runpod)


def test_keep_with_a_network_volume_stops_at_the_deadline(runpod_env, fake_runpod, tmp_path):
    """Issue 34.11/13: a network-volume pod can stop (RunPod bills a stopped pod's disk, not its
    GPUs), so --runpod-keep stops it at its deadline; the volume is mounted away from
    /workspace, where the run folders are: they never pile up on the paid volume."""
    runner, out, lines = run_models(
        tmp_path, {"fake_a": "sleep:60"}, keep=True, volume="vol1", max_minutes=0.05
    )
    (create,) = _creates(fake_runpod)
    fields = create["fields"]
    assert fields["networkVolumeId"] == "vol1" and fields["volumeMountPath"] == "/runpod-volume"
    assert fields["env"]["HF_HOME"] == "/runpod-volume/hf-cache"
    pod = next(iter(fake_runpod.pods.values()))
    ended = fake_runpod.wait(lambda: pod.status == "EXITED", timeout=20)
    assert ended, [c for c in fake_runpod.calls if c.get("pod") == pod.id]
    assert fake_runpod.ops("podStop", status=200) and not fake_runpod.ops("podTerminate")
    assert any("stops it: the GPUs stop billing" in x for x in lines)
    api = RunpodApi(USER_KEY, Timings(api_retries=2, backoff_s=0.01))
    assert api.terminate(pod.id)
    assert_nothing_left(fake_runpod)


def test_a_failed_stop_is_retried_not_turned_into_a_terminate(fake_runpod, monkeypatch):
    """Issue 34.11: a podStop answered "Something went wrong" (RunPod's generic error) leaves a
    kept pod to the next attempt; only the last resort of a stop that kept failing terminates."""
    pod = _pod_without_ssh(fake_runpod, monkeypatch, "vol", volume="vol1")
    monkeypatch.setenv(
        "OUTLIERS_POD_ENVIRON", str(fake_runpod.pods[pod["id"]].root / "pod.environ")
    )
    fake = fake_runpod.pods[pod["id"]]
    log = []
    fake_runpod.faults.pod_stop_errors = 2  # GraphQL podStop fails twice, REST's stop once
    fake_runpod.faults.rest_stop_errors = 1
    assert not podside.stop_self("stop", log.append)
    assert fake.status == "RUNNING" and not fake_runpod.ops("podTerminate")
    assert podside.stop_self("stop", log.append)
    assert fake.status == "EXITED"
    fake.status = "RUNNING"
    fake_runpod.faults.pod_stop_errors, fake_runpod.faults.rest_stop_errors = 1, 1
    assert podside.stop_self("stop", log.append, last_resort=True)
    assert fake.status == "TERMINATED"


def test_a_pod_installs_the_project_keeping_the_image_torch(
    runpod_env, tmp_path, ssh_key, monkeypatch
):
    """The real install path on a fake pod: its own venv (the image's python with its torch),
    ``pip freeze`` constraints, the project installed editable from the shipped tree."""
    from runpod_fakes.fake_api import FakeRunpod

    venv = tmp_path / "image-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    # the "image's" packages (torch, pip, setuptools...) are this environment's, read-only
    child = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    import site

    parents = [p for p in site.getsitepackages() if os.path.isdir(p)]
    with open(os.path.join(child, "image.pth"), "w") as f:
        f.write("\n".join(parents) + "\n")
    fake = FakeRunpod(tmp_path / "fake2", USER_KEY, py, install="", pod_env={"HF_HUB_OFFLINE": "1"})
    fake.start()
    try:
        monkeypatch.setenv("RUNPOD_API_BASE_URL", fake.url)
        runner, out, _ = run_models(tmp_path, {"fake_a": "ok"})
        assert_result_home(out["fake_a"], "fake_a")
        pod = next(iter(fake.pods.values()))
        run = pod.fs / "outliers-runs" / pod.name
        import importlib.metadata as md

        torch_pin = f"torch=={md.version('torch')}"
        assert torch_pin in (run / "constraints.txt").read_text().splitlines()
        log = (run / "job.log").read_text()
        assert (
            "installing: -m pip install" in log
            and "-c " in log
            and "finished with exit code 0" in log
        )
        # the project went into the image's python; its torch is the one it had
        show = subprocess.run(
            [py, "-c", "import harness, torch; print(harness.__file__); print(torch.__version__)"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        ).stdout.splitlines()
        assert str(run / "tree") in show[0] and show[1] == md.version("torch")
        assert_nothing_left(fake)
    finally:
        fake.stop()


def _smoke(env: dict, timeout: float, *extra: str) -> subprocess.CompletedProcess:
    """`outliers pods smoke --max-minutes 3` in its own process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "pods", "smoke", "--max-minutes", "3", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_outliers_pods_smoke_checks_every_path_then_ends_its_pod(runpod_env, fake_runpod):
    fake_runpod.pod_env["HF_ENDPOINT"] = fake_runpod.url  # the hub's file server, faked
    start = time.monotonic()
    proc = _smoke(runpod_env, 120)
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    print(out, f"wall {wall:.1f} s")
    assert "at most $0.01" in out  # A5000 at $0.27/h for 3 minutes: the cheapest priced type
    for check in (
        "create a pod",
        "our PUBLIC_KEY honoured",
        "image pulled, container up",
        "SSH login with our key",
        "python / torch / CUDA / triton",
        "the pod's key reaches its pod (watchdog)",
        "kill switch armed",
        "the pod's key may end its pod",
        "terminated, gone from the pod list",
    ):
        line = next(x for x in out.splitlines() if x.startswith(f"| {check}"))
        assert "| ok " in line, line
    assert "1.4 MB at" in out and "MB/s" in out
    assert "0 check(s) failed" in out
    rights = next(x for x in out.splitlines() if x.startswith("| the pod's key may end"))
    assert "terminate: yes" in rights
    (pod,) = fake_runpod.pods.values()
    assert pod.gpu == "NVIDIA RTX A5000" and pod.status == "TERMINATED"
    assert USER_KEY not in out + proc.stderr
    assert_nothing_left(fake_runpod)


def test_the_smoke_check_passes_over_rest_with_graphql_gone(runpod_env, fake_runpod):
    """GraphQL retired: every check still passes (the price is unknown: REST lists none)."""
    fake_runpod.pod_env["HF_ENDPOINT"] = fake_runpod.url
    fake_runpod.faults.graphql_down = True
    proc = _smoke(runpod_env, 120)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "using its REST API" in out and "(price unknown)" in out
    assert "over rest" in next(x for x in out.splitlines() if x.startswith("| create a pod"))
    assert "0 check(s) failed" in out
    user = [c for c in fake_runpod.calls if c.get("auth") == "user" and c["status"] != 410]
    assert user and all(c.get("via") == "rest" for c in user)
    (pod,) = fake_runpod.pods.values()
    assert pod.status == "TERMINATED"
    assert_nothing_left(fake_runpod)


def test_the_smoke_check_reports_a_pod_key_that_cannot_reach_the_api(runpod_env, fake_runpod):
    fake_runpod.faults.pod_key_refused = True
    fake_runpod.pod_env["HF_ENDPOINT"] = fake_runpod.url
    proc = _smoke(runpod_env, 120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "the pod's key reaches" in x)
    assert "FAILED" in line and "cannot reach its pod" in line
    assert "1 check(s) failed" in proc.stdout
    assert_nothing_left(fake_runpod)


def test_the_smoke_check_says_when_the_pod_key_may_only_stop(runpod_env, fake_runpod):
    """Issue 34.3/16: the smoke table says which of terminate / stop the pod's own key may do;
    the user's terminate then ends the stopped pod, and TERMINATED in the list counts as gone."""
    fake_runpod.faults.pod_terminate_refused = True
    fake_runpod.pod_env["HF_ENDPOINT"] = fake_runpod.url
    proc = _smoke(runpod_env, 180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("| the pod's key may end"))
    assert "terminate: no, stop: yes" in line
    gone = next(x for x in proc.stdout.splitlines() if x.startswith("| terminated, gone"))
    assert "| ok " in gone
    assert_nothing_left(fake_runpod)


def test_a_runpod_secret_carries_the_hf_token_so_it_never_leaves_this_machine(
    runpod_env, fake_runpod, tmp_path, monkeypatch
):
    from runpod_fakes.values import HF_TOKEN

    monkeypatch.setenv("RUNPOD_HF_TOKEN_SECRET", "hf_token")
    fake_runpod.secrets["hf_token"] = HF_TOKEN  # the account's secret, set in the console
    runner, out, _ = run_models(tmp_path, {"fake_a": "ok"})
    assert_result_home(out["fake_a"], "fake_a")
    (create,) = _creates(fake_runpod)
    assert create["fields"]["env"]["HF_TOKEN"] == "{{ RUNPOD_SECRET_hf_token }}"
    assert HF_TOKEN not in repr(create)
    pod = fake_runpod.pods[create["pod"]]
    assert f"HF_TOKEN={HF_TOKEN}".encode() in (pod.root / "pod.environ").read_bytes()
    assert_nothing_left(fake_runpod)


def _harness_pod(fake, monkeypatch, run: str, label: str, host: str, **create) -> str:
    monkeypatch.setenv("RUNPOD_API_BASE_URL", fake.url)
    api = RunpodApi(USER_KEY, Timings(api_retries=2, backoff_s=0.01))
    fake.faults.ssh_dead.add(label)
    pod, _ = api.create(
        f"outliers-{run}-{label}",
        gpu_types=(FIRST,),
        count=1,
        disk_gb=10,
        image="runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404",
        cloud="SECURE",
        env={"OUTLIERS_HOST": host},
        **create,
    )
    return pod["id"]


def test_outliers_pods_leaves_other_machines_sweeps_and_says_when_a_terminate_failed(
    runpod_env, fake_runpod, monkeypatch
):
    """Issue 34.6 and 34.4: a harness pod made on another machine (its tag is not ours, this
    machine's registry does not know its run) may be a live sweep: `--terminate` leaves it and
    says so; one made here with no live run is leaked; one past its kill-switch deadline is
    leaked whoever made it. A terminate that fails makes the command exit 1."""
    from harness.runners.runpod.pods import DEADLINE_SLACK_S, harness_pods, host_tag, pods_command

    far = time.time() + 3600
    other = _harness_pod(fake_runpod, monkeypatch, "20261207T010101-aaaa", "x", "0123456789ab")
    mine = _harness_pod(fake_runpod, monkeypatch, "20261207T010101-bbbb", "y", host_tag())
    late = _harness_pod(
        fake_runpod,
        monkeypatch,
        "20261207T010101-cccc",
        "z",
        "0123456789ab",
        docker_args=killswitch.docker_args(far),
    )
    api = RunpodApi(USER_KEY, Timings(api_retries=2, backoff_s=0.01))
    states = {r["id"]: r["state"] for r in harness_pods(api)}
    assert states == {other: "elsewhere", mine: "leaked", late: "elsewhere"}
    later = {r["id"]: (r["state"], r["why"]) for r in harness_pods(api, far + DEADLINE_SLACK_S + 1)}
    assert later[late] == ("leaked", "past its kill-switch deadline")
    lines: list[str] = []
    assert pods_command(terminate=True, out=lines.append) == 0
    assert fake_runpod.pods[mine].status == "TERMINATED"
    assert fake_runpod.pods[other].status == "RUNNING" == fake_runpod.pods[late].status
    assert any("left 2 pod(s) of other machines' runs" in x for x in lines), lines
    fake_runpod.faults.user_terminate_refused = True
    lines.clear()
    assert pods_command(terminate=True, all=True, out=lines.append) == 1
    assert any("could NOT terminate 2 pod(s)" in x for x in lines), lines
    fake_runpod.faults.user_terminate_refused = False
    assert pods_command(terminate=True, all=True, out=lines.append) == 0
    assert fake_runpod.live_pods() == []


def test_a_pod_key_that_may_only_stop_stops_its_pod(fake_runpod, monkeypatch):
    """Issue 34.3: RunPod documents only `runpodctl pod stop` from inside a pod. Where the pod's
    own key is refused podTerminate (GraphQL and REST), the kill switch and the watchdog stop
    the pod instead (its GPUs stop billing), and `outliers pods` lists it as stopped."""
    from harness.runners.runpod.pods import harness_pods, pods_table

    fake_runpod.faults.pod_terminate_refused = True
    pod_id = _harness_pod(
        fake_runpod,
        monkeypatch,
        "20261207T020202-dddd",
        "stoponly",
        "0123456789ab",
        docker_args=killswitch.docker_args(time.time() + 2),
    )
    fake = fake_runpod.pods[pod_id]
    assert fake_runpod.wait(lambda: fake.status == "EXITED", timeout=30), fake_runpod.calls
    refused = [c for c in fake_runpod.calls if c.get("pod") == pod_id and c.get("error")]
    assert any("may not terminate" in c["error"] for c in refused)
    assert fake_runpod.ops("rest:delete", status=403)
    log = (fake.root / "tmp" / "outliers-killswitch.log").read_text()
    assert "could not terminate: stopping instead" in log and "podStop: done" in log
    api = RunpodApi(USER_KEY, Timings(api_retries=2, backoff_s=0.01))
    (row,) = harness_pods(api)
    assert row["status"] == "EXITED" and "EXITED (stopped: its disk bills)" in pods_table([row])
    # the watchdog's path: the same fallback
    fake.status = "RUNNING"
    monkeypatch.setenv("OUTLIERS_POD_ENVIRON", str(fake.root / "pod.environ"))
    lines = []
    assert podside.stop_self("terminate", lines.append)
    assert fake.status == "EXITED" and any("stopping it instead" in x for x in lines)
