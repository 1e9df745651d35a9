"""RunPod's REST API (``rest.runpod.io/v1``), behind the same calls as the SDK's GraphQL ones.

RunPod retires its GraphQL API in early 2027. ``RunpodApi`` uses this client when asked to
(``--runpod-api rest``) or when GraphQL stops answering in its own shape (``auto``). Every answer
is turned into the GraphQL shape the rest of the harness reads (``desiredStatus``, ``runtime``
ports, ``env`` as ``K=V`` lines, ``dockerArgs`` as one string), so nothing above ``api.py`` knows
which API spoke.

What REST v1 does not give: GPU types and their prices (prices come from a pod's own
``costPerHr`` once it exists), and a pod's ``runtime``: a pod counts as having a container once
its SSH port is mapped (``publicIp`` + ``portMappings["22"]``).
"""

from __future__ import annotations

import json
import os
import shlex
import time
from datetime import datetime

DEFAULT_REST = "https://rest.runpod.io/v1"
USER_AGENT = "outliers-harness/rest"


class RestError(Exception):
    """A REST answer with an HTTP error status; the message is RunPod's own, never the body
    we sent (which holds the pod env)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class RestBackend:
    """The calls ``RunpodApi`` makes, over REST; thread-safe (one request per call)."""

    name = "rest"

    def __init__(self, api_key: str, base: str | None = None, timeout_s: float = 30.0):
        self._key = api_key
        self.base = (base or os.environ.get("RUNPOD_REST_BASE_URL") or DEFAULT_REST).rstrip("/")
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, body: dict | None = None):
        import requests

        answer = requests.request(
            method,
            self.base + path,
            headers={
                "Authorization": f"Bearer {self._key}",
                "User-Agent": USER_AGENT,
                "Content-Type": "application/json",
            },
            data=None if body is None else json.dumps(body),
            timeout=self.timeout_s,
        )
        if answer.status_code >= 400:
            raise RestError(answer.status_code, _error_text(answer))
        if answer.status_code == 204 or not answer.content:
            return None
        return answer.json()

    # -- the SDK's calls, REST-side ----------------------------------------------------------
    def get_gpu(self, gpu_type: str, count: int = 1):
        raise RestError(404, f"no price for {gpu_type}: RunPod's REST API lists no GPU types")

    def get_pod(self, pod_id: str) -> dict | None:
        try:
            return graphql_shape(self._request("GET", f"/pods/{pod_id}"))
        except RestError as err:
            if err.status == 404:
                return None  # as GraphQL answers {"pod": null}
            raise

    def get_pods(self) -> list[dict]:
        return [graphql_shape(p) for p in self._request("GET", "/pods") or []]

    def create_pod(self, spec: dict) -> dict:
        return graphql_shape(self._request("POST", "/pods", create_body(spec)))

    def terminate_pod(self, pod_id: str) -> None:
        self._request("DELETE", f"/pods/{pod_id}")


def create_body(spec: dict) -> dict:
    """The ``POST /pods`` body of one pod spec (the neutral spec ``RunpodApi.create`` builds)."""
    body = {
        "name": spec["name"],
        "imageName": spec["image"],
        "computeType": "GPU",
        "gpuTypeIds": [spec["gpu"]],
        "gpuCount": spec["count"],
        "cloudType": spec["cloud"],
        "containerDiskInGb": spec["disk_gb"],
        "volumeInGb": 0,
        "minVCPUPerGPU": spec["vcpus"],
        "minRAMPerGPU": spec["memory_gb"],
        "ports": ["22/tcp"],
        "supportPublicIp": True,
        "env": dict(spec["env"] or {}),
    }
    if spec.get("docker_args"):
        body["dockerStartCmd"] = shlex.split(spec["docker_args"])
    if spec.get("volume"):
        body["networkVolumeId"] = spec["volume"]
        body["volumeMountPath"] = spec["volume_mount"]
    if spec.get("cuda_versions"):
        body["allowedCudaVersions"] = list(spec["cuda_versions"])
    return body


def graphql_shape(pod: dict | None) -> dict | None:
    """A REST v1 pod in the GraphQL shape the harness reads."""
    if pod is None:
        return None
    ip, mapped = pod.get("publicIp"), (pod.get("portMappings") or {}).get("22")
    ports = (
        [
            {
                "ip": ip,
                "isIpPublic": True,
                "privatePort": 22,
                "publicPort": int(mapped),
                "type": "tcp",
            }
        ]
        if ip and mapped
        else []
    )
    env = pod.get("env") or {}
    start = pod.get("dockerStartCmd")
    cost = pod.get("costPerHr")  # REST gives it as a string
    gpu = pod.get("gpu") or ((pod.get("machine") or {}).get("gpuType")) or {}
    return {
        "id": pod.get("id"),
        "name": pod.get("name"),
        "desiredStatus": pod.get("desiredStatus"),
        "costPerHr": float(cost) if cost not in (None, "") else None,
        "gpuCount": pod.get("gpuCount"),
        "imageName": pod.get("image") or pod.get("imageName"),
        "containerDiskInGb": pod.get("containerDiskInGb"),
        "env": [f"{k}={v}" for k, v in env.items()] if isinstance(env, dict) else list(env),
        "dockerArgs": shlex.join(start) if isinstance(start, list) else (start or ""),
        "uptimeSeconds": _uptime(pod),
        "machine": {"gpuDisplayName": gpu.get("displayName")},
        "runtime": {"ports": ports} if ports else None,
    }


def _uptime(pod: dict) -> float:
    if pod.get("uptimeSeconds") is not None:
        return float(pod["uptimeSeconds"])
    started = pod.get("lastStartedAt")
    if not started:
        return 0.0
    try:
        t = datetime.fromisoformat(str(started).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
    return max(0.0, time.time() - t)


def _error_text(answer) -> str:
    """RunPod's error message from an error answer (JSON ``error`` / ``message``, else the
    first line of the body, else the status)."""
    try:
        data = answer.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            if data.get(key):
                return str(data[key]).strip().splitlines()[0][:300]
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return str(data[0].get("error") or data[0].get("message") or data[0])[:300]
    text = (answer.text or "").strip()
    if text and not text.startswith("<"):
        return text.splitlines()[0][:300]
    return f"HTTP {answer.status_code}"
