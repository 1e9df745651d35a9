"""RunPod's REST API: the path a sweep takes when GraphQL (retired in early 2027) is gone.

The fake serves GraphQL and REST over the same pods; with ``graphql_down`` it answers GraphQL as
a retired endpoint does (410 with a non-GraphQL body, or a 404 page). Each test would fail
without the REST client: the SDK alone cannot create, see or end a pod then.
"""

from __future__ import annotations

import pytest
from runpod_fakes.values import USER_KEY
from test_runpod_pods import assert_nothing_left, assert_result_home, run_models

from harness.runners.runpod import killswitch
from harness.runners.runpod.api import ApiError, RunpodApi
from harness.runners.runpod.options import Timings
from harness.runners.runpod.rest import create_body, graphql_shape

pytest_plugins = ["runpod_fakes.fixtures"]

FIRST, SECOND = "NVIDIA RTX A5000", "NVIDIA GeForce RTX 4090"
SAME_FIELDS = (  # what a pod is asked for, whichever API asks
    "imageName",
    "gpuTypeId",
    "gpuCount",
    "cloudType",
    "containerDiskInGb",
    "minVcpuCount",
    "minMemoryInGb",
    "ports",
    "supportPublicIp",
    "allowedCudaVersions",
)


def _made(fake, via: str) -> list[dict]:
    return [c for c in fake.ops("podFindAndDeployOnDemand", via=via) if c.get("pod")]


def test_a_sweep_switches_to_rest_when_graphql_goes_away(runpod_env, fake_runpod, tmp_path):
    """GraphQL answers the first create, then is gone: the sweep goes on over REST."""
    fake_runpod.faults.graphql_down_after_creates = 1
    runner, out, lines = run_models(tmp_path, {"fake_a": "ok", "fake_b": "ok"}, parallel=1)
    for m in ("fake_a", "fake_b"):
        assert_result_home(out[m], m)
    (over_graphql,) = _made(fake_runpod, "graphql")
    (over_rest,) = _made(fake_runpod, "rest")
    # both pods were asked for the same machine, start command (kill switch), env and CUDA
    for key in SAME_FIELDS:
        assert over_rest["fields"].get(key) == over_graphql["fields"].get(key), key
    g, r = over_graphql["fields"], over_rest["fields"]
    assert set(r["env"]) == set(g["env"]) and r["env"]["PUBLIC_KEY"] == g["env"]["PUBLIC_KEY"]
    assert (
        abs(killswitch.deadline_of(r["dockerArgs"]) - killswitch.deadline_of(g["dockerArgs"])) < 60
    )
    # the switch was said once, and each pod's line says which API made it
    switched = [x for x in lines if "using its REST API" in x]
    assert len(switched) == 1, lines
    assert any(f"pod {over_graphql['pod']} created over graphql" in x for x in lines)
    assert any(f"pod {over_rest['pod']} created over rest" in x for x in lines)
    # after the switch the user's key went to REST only: status, list and terminate
    t_switch = min(c["t"] for c in fake_runpod.calls if c.get("status") == 410)
    after = [c for c in fake_runpod.calls if c["t"] > t_switch and c.get("auth") == "user"]
    assert after and all(c.get("via") == "rest" or c["status"] == 410 for c in after)
    assert len([c for c in after if c["status"] == 410]) <= 1
    assert {c["pod"] for c in fake_runpod.ops("podTerminate", via="rest")} >= {
        over_graphql["pod"],
        over_rest["pod"],
    }
    assert_nothing_left(fake_runpod)


def test_a_sweep_over_rest_alone(runpod_env, fake_runpod, tmp_path):
    """--runpod-api rest, GraphQL gone from the start: create (capacity refusals move on to
    the next type), wait, SSH, fetch, terminate; no GraphQL request from the user's key."""
    fake_runpod.faults.graphql_down = True
    fake_runpod.faults.no_capacity.add(FIRST)
    runner, out, lines = run_models(tmp_path, {"fake_a": "ok"}, api="rest")
    assert_result_home(out["fake_a"], "fake_a")
    assert out["fake_a"].pod["gpu"] == SECOND
    assert [c["gpu"] for c in _made(fake_runpod, "rest")] == [SECOND]
    user = [c for c in fake_runpod.calls if c.get("auth") == "user"]
    assert user and all(c.get("via") == "rest" for c in user), user
    assert not [x for x in lines if "using its REST API" in x]  # nothing to switch from
    assert_nothing_left(fake_runpod)


@pytest.mark.parametrize("gone", [True, "html"])
def test_graphql_gone_switches_once_and_graphql_mode_never(fake_runpod, monkeypatch, gone):
    """A 410 with a non-GraphQL body switches at once; a 404 page (the SDK sees a JSON decode
    error, as from a gateway) after ``api_retries`` failures in a row; --runpod-api graphql
    reports the failure instead."""
    monkeypatch.setenv("RUNPOD_API_BASE_URL", fake_runpod.url)
    monkeypatch.setenv("RUNPOD_REST_BASE_URL", fake_runpod.url + "/v1")
    fake_runpod.faults.graphql_down = gone
    said: list[str] = []
    t = Timings(api_retries=3, backoff_s=0.01)
    api = RunpodApi(USER_KEY, t, log=said.append)
    assert api.list() == [] and api.using == "rest" and len(said) == 1
    assert api.list() == [] and len(said) == 1
    graphql = [c for c in fake_runpod.calls if c["status"] == 410]
    assert len(graphql) == (1 if gone is True else 3)
    stuck = RunpodApi(USER_KEY, t, api="graphql")
    with pytest.raises(ApiError):
        stuck.list()
    assert stuck.using == "graphql"


def test_rest_answers_read_as_graphql_ones(fake_runpod, monkeypatch):
    """The same pod, asked for over each API, reads the same to the harness."""
    monkeypatch.setenv("RUNPOD_API_BASE_URL", fake_runpod.url)
    monkeypatch.setenv("RUNPOD_REST_BASE_URL", fake_runpod.url + "/v1")
    gql = RunpodApi(USER_KEY, Timings(api_retries=2, backoff_s=0.01), api="graphql")
    rest = RunpodApi(USER_KEY, Timings(api_retries=2, backoff_s=0.01), api="rest")
    pod, _ = rest.create(
        "outliers-shape",
        gpu_types=(FIRST,),
        count=1,
        disk_gb=10,
        image="runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404",
        cloud="SECURE",
        env={"PUBLIC_KEY": "ssh-ed25519 AAAA test"},
        docker_args="sleep 30",
    )
    for _ in range(3):  # the fake maps the SSH port after a few looks
        a, b = gql.get(pod["id"]), rest.get(pod["id"])
    for key in ("id", "name", "desiredStatus", "env", "dockerArgs", "runtime", "machine"):
        assert a[key] == b[key], key
    assert a["costPerHr"] == pytest.approx(b["costPerHr"])
    assert abs(a["uptimeSeconds"] - b["uptimeSeconds"]) <= 2
    assert rest.gpu_price(FIRST) is None  # REST lists no GPU types: the price is unknown
    assert gql.gpu_price(FIRST) == pytest.approx(0.27)
    assert rest.terminate(pod["id"]) and rest.get(pod["id"]) is None
    assert fake_runpod.ops("podTerminate", via="rest", pod=pod["id"])
    assert_nothing_left(fake_runpod)


def test_the_rest_body_holds_what_graphql_sends():
    """No fake: the body's names and types are REST v1's (arrays, an env object)."""
    spec = {
        "name": "n",
        "image": "img",
        "gpu": FIRST,
        "cloud": "SECURE",
        "count": 2,
        "disk_gb": 50,
        "vcpus": 8,
        "memory_gb": 60,
        "env": {"A": "1"},
        "volume": "vol1",
        "volume_mount": "/runpod-volume",
        "docker_args": "bash -c 'echo x | base64 -d > /tmp/k && exec sh /tmp/k'",
        "cuda_versions": ["12.8", "12.9"],
    }
    body = create_body(spec)
    assert body["gpuTypeIds"] == [FIRST] and body["gpuCount"] == 2
    assert body["dockerStartCmd"] == ["bash", "-c", "echo x | base64 -d > /tmp/k && exec sh /tmp/k"]
    assert body["env"] == {"A": "1"} and body["ports"] == ["22/tcp"]
    assert body["networkVolumeId"] == "vol1" and body["volumeMountPath"] == "/runpod-volume"
    assert body["allowedCudaVersions"] == ["12.8", "12.9"] and body["supportPublicIp"] is True
    back = graphql_shape({"id": "p", "dockerStartCmd": body["dockerStartCmd"], "costPerHr": "0.74"})
    assert back["dockerArgs"] == spec["docker_args"] and back["costPerHr"] == 0.74
    assert back["runtime"] is None  # no SSH port mapped yet
