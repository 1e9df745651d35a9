"""A fake RunPod GraphQL API, in-process (http.server in a thread), for the REAL ``runpod`` SDK.

The SDK posts ``{"query": ...}`` to ``$RUNPOD_API_BASE_URL/graphql`` with ``Authorization: Bearer
<key>``. This server answers the queries the harness sends (shapes from
``runpod/api/queries`` and ``runpod/api/mutations`` of runpod 1.12): ``gpuTypes``,
``podFindAndDeployOnDemand``, ``pod``, ``myself { pods }``, ``myself { networkVolumes }``,
``podTerminate``, ``podStop``; it records every call (operation, which key, pod, HTTP status).

Each created pod gets a folder, a pod-scoped API key (as RunPod gives ``RUNPOD_API_KEY`` inside a
pod), an environment file standing for the container environment (``/proc/1/environ`` on a real
pod), and a real ``sshd`` (``runpod_fakes.sshd``) mapped as its public ``22/tcp``. Terminating
or stopping a pod kills its sshd and every process running from its folder.

Faults (``FakeRunpod.faults``): GPU types without capacity, create errors, HTTP 429 / 5xx for the
next N user calls, a pod whose SSH never answers, a create that makes the pod and answers 500
(and shows in the pod list only ``list_lag_s`` later), hosts whose CUDA driver is older than the
image needs (with ``allowedCudaVersions`` such a host is not offered; without it the container
never starts: ``runtime`` stays null), hosts whose containers never start, "pod not found" just
after creation, the account's SSH keys injected over our ``PUBLIC_KEY``, a pod key the API
refuses. As the real service: GraphQL errors are HTTP 200 ``{"errors": [...]}``, a 429 is plain
text, a 502 an HTML page, urllib's default User-Agent is refused (403, as RunPod's front end),
a pod's own key may be refused podTerminate while podStop works, GraphQL may be gone from the
start or after N creates (the REST API, ``/v1/pods``: create, list, get, stop, delete, is served
too, over the same pods).

A created pod runs its start command (``dockerArgs``, with the pod's environment, in its own
process group: the container), as RunPod does; the image's own start is the fake's sshd.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .sshd import Sshd, free_port

GPUS = {
    # id: (displayName, memoryInGb, securePrice, communityPrice) per GPU-hour
    "NVIDIA RTX A5000": ("RTX A5000", 24, 0.27, 0.16),
    "NVIDIA GeForce RTX 4090": ("RTX 4090", 24, 0.69, 0.34),
    "NVIDIA L4": ("L4", 24, 0.43, 0.0),
    "NVIDIA RTX A6000": ("RTX A6000", 48, 0.49, 0.33),
    "NVIDIA A100 80GB PCIe": ("A100 PCIe", 80, 1.64, 1.19),
    "NVIDIA A100-SXM4-80GB": ("A100 SXM", 80, 1.74, 1.39),
    "NVIDIA H100 80GB HBM3": ("H100 SXM", 80, 2.99, 2.69),
    "NVIDIA H100 PCIe": ("H100 PCIe", 80, 2.39, 1.99),
}
NO_CAPACITY = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)


@dataclass
class Faults:
    no_capacity: set = field(default_factory=set)  # GPU type ids that never have capacity
    create_errors: dict = field(default_factory=dict)  # pod-name substring -> error, used once
    create_errors_repeat: bool = False  # ... or every time
    http_429: int = 0  # the next N user-key requests answer 429 (text body, as a gateway does)
    http_5xx: int = 0  # the next N user-key requests answer 502 (HTML body)
    ssh_dead: set = field(default_factory=set)  # pod-name substrings whose SSH port is closed
    create_then_500: int = 0  # the next N creates make the pod, then answer 500
    list_lag_s: float = 0.0  # such a pod shows in the pod list only this long after
    host_cuda: dict = field(default_factory=dict)  # GPU type id -> its hosts' CUDA (default 12.8)
    no_runtime: set = field(default_factory=set)  # GPU type ids whose containers never start
    notfound_gets: int = 0  # the first N pod queries after a create answer "pod not found"
    account_keys: bool = False  # RunPod puts the account's SSH keys in PUBLIC_KEY
    account_keys_merged: bool = False  # ... after ours, one key per line
    pod_key_refused: bool = False  # the API refuses pod-scoped keys (401)
    user_terminate_refused: bool = False  # a terminate with the user's key fails for good
    # a pod's own terminate or stop fails while this event is unset (None: never held), over
    # GraphQL and REST alike
    pod_terminate_held: threading.Event | None = None
    terminate_delay_s: float = 0.0  # a user's podTerminate answers only after this long
    pod_terminate_refused: bool = False  # a pod's own key may stop its pod, not terminate it
    pod_stop_errors: int = 0  # the next N podStop calls answer "Something went wrong"
    # every GraphQL request answers 410 with a non-GraphQL JSON body (True), or 404 with an
    # HTML page ("html"): the API retired
    graphql_down: bool | str = False
    graphql_down_after_creates: int | None = None  # ... once this many GraphQL creates made pods
    rest_5xx: int = 0  # the next N user-key REST requests answer 502
    rest_stop_errors: int = 0  # the next N REST stops answer 500
    ignore_start_command: bool = False  # the container ignores dockerArgs (a custom image)
    no_ssh_port: set = field(default_factory=set)  # GPU types whose pods get no public 22/tcp


@dataclass
class FakePod:
    id: str
    name: str
    gpu: str
    count: int
    image: str
    cloud: str
    disk: int
    env: dict
    key: str  # the pod-scoped API key
    root: Path
    fs: Path  # what the pod's processes see as their storage ($OUTLIERS_POD_ROOT)
    port: int
    created: float
    status: str = "RUNNING"
    gets: int = 0
    sshd: Sshd | None = None
    fields: dict = field(default_factory=dict)  # every deploy field, as sent
    starts: bool = True  # False: the container never starts (runtime null forever)
    listed_after: float = 0.0  # time.time() from which the pod list shows it
    container: subprocess.Popen | None = None
    volume: str | None = None

    @property
    def price(self) -> float:
        return GPUS[self.gpu][2] * self.count


class FakeRunpod:
    def __init__(
        self,
        folder: Path,
        user_key: str,
        python: str,
        *,
        ready_after: int = 1,
        pod_env: dict | None = None,
        install: str | None = None,
    ):
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.user_key = user_key
        self.python = python
        self.ready_after = ready_after  # get_pod answers without ports this many times
        self.pod_env = dict(pod_env or {})
        # the pod's install command; "" runs the real one (podside.install_commands)
        self.install = install if install is not None else f'"{python}" -c "import harness, models"'
        self.faults = Faults()
        self.pods: dict[str, FakePod] = {}
        self.calls: list[dict] = []
        self.agents: list[tuple] = []  # (who, User-Agent) of every request
        self.download_bytes = 1_400_000  # what a GET (a hub file download) answers
        self.secrets: dict = {}  # RunPod secrets: {{ RUNPOD_SECRET_<name> }} in a pod's env
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # -- server ---------------------------------------------------------------------------------
    def start(self) -> FakeRunpod:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _rest(self, method):
                auth = self.headers.get("Authorization", "")
                key = auth[7:] if auth.startswith("Bearer ") else ""
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, payload = fake.handle_rest(
                    method, self.path, key, self.headers.get("User-Agent", ""), body
                )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_DELETE(self):  # noqa: N802
                self._rest("DELETE")

            def do_GET(self):  # noqa: N802 - the REST API, or the Hugging Face hub's downloads
                if self.path.startswith("/v1/"):
                    return self._rest("GET")
                data = b"x" * fake.download_bytes
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802
                if self.path.startswith("/v1/"):
                    return self._rest("POST")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                auth = self.headers.get("Authorization", "")
                key = auth[7:] if auth.startswith("Bearer ") else ""
                status, ctype, payload = fake.handle(body, key, self.headers.get("User-Agent", ""))
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "1")
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        for pod in list(self.pods.values()):
            self._kill_pod(pod)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- queries --------------------------------------------------------------------------------
    def record(self, **call) -> None:
        call["t"] = time.time()
        with self.lock:
            self.calls.append(call)

    def who(self, key: str) -> str | None:
        if key == self.user_key:
            return "user"
        for pod in self.pods.values():
            if key == pod.key:
                return f"pod:{pod.id}"
        return None

    def handle(self, body: bytes, key: str, agent: str = ""):
        try:
            query = json.loads(body)["query"]
        except (ValueError, KeyError):
            return 400, "application/json", {"errors": [{"message": "bad request"}]}
        op = _operation(query)
        who = self.who(key)
        self.agents.append((who, agent))
        if agent.startswith("Python-urllib") or not agent:
            self.record(op=op, auth=who or "unknown", status=403, agent=agent)
            return 403, "text/html", b"<html><body>error code: 1010</body></html>"
        if who is None or (who.startswith("pod:") and self.faults.pod_key_refused):
            self.record(op=op, auth="unknown", status=401)
            return 401, "application/json", {"errors": [{"message": "Unauthorized"}]}
        gone = self.faults.graphql_down or (
            self.faults.graphql_down_after_creates is not None
            and len([c for c in self.ops("podFindAndDeployOnDemand") if c.get("pod")])
            >= self.faults.graphql_down_after_creates
        )
        if gone:  # what a retired endpoint answers: no GraphQL body at all
            self.record(op=op, auth=who, status=410)
            if self.faults.graphql_down == "html":
                return 404, "text/html", b"<html><body>404 Not Found</body></html>"
            return 410, "application/json", {"message": "GraphQL has been retired: use REST"}
        with self.lock:
            if who == "user" and self.faults.http_429 > 0:
                self.faults.http_429 -= 1
                self.record(op=op, auth=who, status=429)
                return 429, "text/plain", b"Too Many Requests"
            if who == "user" and self.faults.http_5xx > 0:
                self.faults.http_5xx -= 1
                self.record(op=op, auth=who, status=502)
                return 502, "text/html", b"<html><body>502 Bad Gateway</body></html>"
        try:
            return self._answer(op, query, who)
        except _GqlError as err:
            self.record(**{"op": op, "auth": who, "status": 200, **err.extra, "error": str(err)})
            return 200, "application/json", {"errors": [{"message": str(err)}]}

    def _answer(self, op: str, q: str, who: str):
        if op == "gpuTypes":
            m = re.search(r'gpuTypes\(input: \{id: "([^"]+)"\}\)', q)
            ids = [m.group(1)] if m else list(GPUS)
            self.record(op=op, auth=who, status=200, gpu=m.group(1) if m else None)
            return (
                200,
                "application/json",
                {"data": {"gpuTypes": [_gpu(i) for i in ids if i in GPUS]}},
            )
        if op == "podFindAndDeployOnDemand":
            return self._create(q, who)
        if op == "pod":
            pod_id = re.search(r'podId: "([^"]+)"', q).group(1)
            self._only_own(who, pod_id, op)
            pod = self.pods.get(pod_id)
            with self.lock:
                if who == "user" and self.faults.notfound_gets > 0:
                    self.faults.notfound_gets -= 1
                    raise _GqlError("pod not found", pod=pod_id)
            self.record(op=op, auth=who, status=200, pod=pod_id)
            if pod is None or pod.status == "TERMINATED":
                return 200, "application/json", {"data": {"pod": None}}
            pod.gets += 1
            return 200, "application/json", {"data": {"pod": self._pod_json(pod)}}
        if op == "myself":
            if who != "user":
                raise _GqlError("forbidden for a pod-scoped key")
            self.record(op="myself", auth=who, status=200)
            if "networkVolumes" in q:
                vols = [{"id": "vol1", "name": "hub-cache", "size": 500, "dataCenterId": "EU-RO-1"}]
                return (
                    200,
                    "application/json",
                    {"data": {"myself": {"id": "user1", "pubKey": "", "networkVolumes": vols}}},
                )
            now = time.time()
            pods = [
                self._pod_json(p)
                for p in self.pods.values()
                if p.status != "TERMINATED" and now >= p.listed_after
            ]
            return 200, "application/json", {"data": {"myself": {"pods": pods}}}
        if op in ("podTerminate", "podStop"):
            pod_id = re.search(r'podId: "([^"]+)"', q).group(1)
            self._only_own(who, pod_id, op)
            pod = self.pods.get(pod_id)
            if pod is None or pod.status == "TERMINATED":
                raise _GqlError("pod not found", pod=pod_id)
            if op == "podTerminate" and who == "user" and self.faults.user_terminate_refused:
                raise _GqlError("pod is locked by a pending operation", pod=pod_id)
            if op == "podTerminate" and who == "user" and self.faults.terminate_delay_s:
                time.sleep(self.faults.terminate_delay_s)
            held = self.faults.pod_terminate_held
            if who.startswith("pod:") and held is not None and not held.is_set():
                raise _GqlError("pod is locked by a pending operation", pod=pod_id)
            if (
                op == "podTerminate"
                and who.startswith("pod:")
                and self.faults.pod_terminate_refused
            ):
                raise _GqlError("forbidden: this key may not terminate pods", pod=pod_id)
            with self.lock:
                if op == "podStop" and self.faults.pod_stop_errors > 0:
                    self.faults.pod_stop_errors -= 1
                    raise _GqlError("Something went wrong. Please try again later.", pod=pod_id)
            self._end_pod(pod, op, who)
            if op == "podTerminate":
                return 200, "application/json", {"data": {"podTerminate": None}}
            return (
                200,
                "application/json",
                {"data": {"podStop": {"id": pod.id, "desiredStatus": "EXITED"}}},
            )
        self.record(op=op, auth=who, status=200, error="unsupported")
        raise _GqlError(f"unsupported operation {op}")

    def _end_pod(self, pod, op: str, who: str, via: str = "graphql") -> None:
        self.record(op=op, auth=who, status=200, pod=pod.id, via=via)
        pod.status = "TERMINATED" if op == "podTerminate" else "EXITED"
        # the container dies after the answer has left
        threading.Timer(0.2, self._kill_pod, args=(pod,)).start()

    def handle_rest(self, method: str, path: str, key: str, agent: str, body: bytes = b""):
        """RunPod's REST API (rest.runpod.io/v1), the part the harness uses: POST /pods,
        GET /pods, GET /pods/{id}, POST /pods/{id}/stop, DELETE /pods/{id}."""
        who = self.who(key)
        parts = [p for p in path.split("?")[0].split("/") if p][1:]  # after "v1"
        op = {
            ("POST", 1): "rest:create",
            ("GET", 1): "rest:list",
            ("GET", 2): "rest:get",
            ("POST", 3): "rest:stop",
            ("DELETE", 2): "rest:delete",
        }.get((method, len(parts)), "rest:?")
        if not agent or agent.startswith("Python-urllib"):
            self.record(op=op, auth=who or "unknown", status=403, via="rest")
            return 403, {"error": "forbidden"}
        if who is None or (who.startswith("pod:") and self.faults.pod_key_refused):
            self.record(op=op, auth="unknown", status=401, via="rest")
            return 401, {"error": "Unauthorized"}
        with self.lock:
            if who == "user" and self.faults.rest_5xx > 0:
                self.faults.rest_5xx -= 1
                self.record(op=op, auth=who, status=502, via="rest")
                return 502, {"error": "bad gateway"}
        if op == "rest:create":
            if who != "user":
                return 403, {"error": "forbidden for a pod-scoped key"}
            try:
                fields = rest_deploy_fields(json.loads(body or b"{}"))
            except (ValueError, KeyError, TypeError, IndexError) as err:
                self.record(op=op, auth=who, status=400, via="rest", error=str(err))
                return 400, {"error": f"invalid request body: {err}"}
            try:
                pod, _, then_500 = self._make_pod(fields, who, "rest")
            except _GqlError as err:
                self.record(**{"op": op, "auth": who, "status": 400, **err.extra})
                return 400, {"error": str(err)}
            if then_500:
                return 500, {"error": "Something went wrong. Please try again later."}
            return 201, _rest_pod(self._pod_json(pod))
        if op == "rest:list":
            if who != "user":
                return 403, {"error": "forbidden for a pod-scoped key"}
            self.record(op=op, auth=who, status=200, via="rest")
            now = time.time()
            return 200, [
                _rest_pod(self._pod_json(p))
                for p in self.pods.values()
                if p.status != "TERMINATED" and now >= p.listed_after
            ]
        pod_id = parts[1] if len(parts) > 1 else ""
        if who.startswith("pod:") and who != f"pod:{pod_id}":
            return 403, {"error": "a pod-scoped key reaches its own pod only"}
        pod = self.pods.get(pod_id)
        if pod is None or pod.status == "TERMINATED":
            self.record(op=op, auth=who, status=404, pod=pod_id, via="rest")
            return 404, {"error": "pod not found"}
        if op == "rest:get":
            self.record(op=op, auth=who, status=200, pod=pod_id, via="rest")
            pod.gets += 1
            return 200, _rest_pod(self._pod_json(pod))
        # the same locks as over GraphQL: the pod's own end falls back to REST
        held = self.faults.pod_terminate_held
        locked = (op == "rest:delete" and who == "user" and self.faults.user_terminate_refused) or (
            op in ("rest:delete", "rest:stop")
            and who.startswith("pod:")
            and held is not None
            and not held.is_set()
        )
        if locked:
            self.record(op=op, auth=who, status=409, pod=pod_id, via="rest")
            return 409, {"error": "pod is locked by a pending operation"}
        if op == "rest:delete":
            if who.startswith("pod:") and self.faults.pod_terminate_refused:
                self.record(op=op, auth=who, status=403, pod=pod_id, via="rest")
                return 403, {"error": "forbidden: this key may not terminate pods"}
            self._end_pod(pod, "podTerminate", who, via="rest")
            return 204, {}
        if op == "rest:stop":
            with self.lock:
                if self.faults.rest_stop_errors > 0:
                    self.faults.rest_stop_errors -= 1
                    self.record(op=op, auth=who, status=500, pod=pod_id, via="rest")
                    return 500, {"error": "Something went wrong"}
            self._end_pod(pod, "podStop", who, via="rest")
            return 200, _rest_pod(self._pod_json(pod))
        return 404, {"error": f"no route {method} {path}"}

    def _only_own(self, who: str, pod_id: str, op: str) -> None:
        if who.startswith("pod:") and who != f"pod:{pod_id}":
            raise _GqlError("forbidden: a pod-scoped key reaches its own pod only", pod=pod_id)

    def _create(self, q: str, who: str):
        if who != "user":
            raise _GqlError("forbidden for a pod-scoped key")
        pod, env, then_500 = self._make_pod(deploy_fields(q), who, "graphql")
        if then_500:
            return 500, "text/html", b"<html>500 Internal Server Error</html>"
        return (
            200,
            "application/json",
            {
                "data": {
                    "podFindAndDeployOnDemand": {
                        "id": pod.id,
                        "imageName": pod.image,
                        "env": [f"{k}={v}" for k, v in env.items()],
                        "machineId": "m-" + pod.id,
                        "machine": {"podHostId": pod.id + "-host"},
                    }
                }
            },
        )

    def _make_pod(self, fields: dict, who: str, via: str):
        """Create a pod from deploy fields (GraphQL names); (pod, env sent, answer 500?)."""
        name = fields.get("name")
        gpu = fields.get("gpuTypeId")
        env = fields.get("env", {})
        info = {
            "op": "podFindAndDeployOnDemand",
            "auth": who,
            "name": name,
            "gpu": gpu,
            "fields": fields,
            "via": via,
        }
        host_cuda = self.faults.host_cuda.get(gpu, "12.8")
        allowed = fields.get("allowedCudaVersions")
        if gpu not in GPUS:  # (over GraphQL the SDK's own gpuTypes check refuses it first)
            raise _GqlError(f'gpuTypeIds: "{gpu}" is not a valid GPU type', **info)
        with self.lock:
            if gpu in self.faults.no_capacity:
                raise _GqlError(NO_CAPACITY, **info)
            if allowed is not None and host_cuda not in allowed:
                raise _GqlError(NO_CAPACITY, **info)  # no host of that type has such a driver
            for part, message in list(self.faults.create_errors.items()):
                if part in (name or ""):
                    if not self.faults.create_errors_repeat:
                        del self.faults.create_errors[part]
                    raise _GqlError(message, **info)
            then_500 = self.faults.create_then_500 > 0
            if then_500:
                self.faults.create_then_500 -= 1
            pod_id = secrets.token_hex(6)
        need = image_cuda(fields.get("imageName") or "")
        starts = gpu not in self.faults.no_runtime and (need is None or _version(host_cuda) >= need)
        root = self.dir / "pods" / pod_id
        fs = root / "fs"
        fs.mkdir(parents=True)
        (root / "tmp").mkdir()
        dead = any(s in (name or "") for s in self.faults.ssh_dead) or not starts
        account = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIACCOUNTKEY acct"
        if self.faults.account_keys:
            env = {**env, "PUBLIC_KEY": account}
        elif self.faults.account_keys_merged:
            env = {**env, "PUBLIC_KEY": f"{env.get('PUBLIC_KEY', '')}\n{account}"}
        pod = FakePod(
            pod_id,
            name,
            gpu,
            int(fields.get("gpuCount") or 1),
            fields.get("imageName"),
            fields.get("cloudType"),
            int(fields.get("containerDiskInGb") or 0),
            env,
            "podkey-" + secrets.token_hex(12),
            root,
            fs,
            free_port(),
            time.time(),
            fields=fields,
            starts=starts,
            listed_after=time.time() + (self.faults.list_lag_s if then_500 else 0.0),
            volume=fields.get("networkVolumeId"),
        )
        environ = {
            **{k: self._fill_secrets(v) for k, v in env.items()},
            **self.pod_env,
            "RUNPOD_POD_ID": pod.id,
            "RUNPOD_API_KEY": pod.key,  # pod-scoped, as RunPod sets it inside pods
            "RUNPOD_API_BASE_URL": self.url,
            "RUNPOD_REST_BASE_URL": self.url + "/v1",
            "RUNPOD_GPU_COUNT": str(pod.count),
        }
        (root / "pod.environ").write_bytes(
            b"".join(f"{k}={v}".encode() + b"\0" for k, v in environ.items())
        )
        if starts and fields.get("dockerArgs") and not self.faults.ignore_start_command:
            # the container's start command, in its own process group (killed with the pod)
            pod.container = subprocess.Popen(
                shlex.split(fields["dockerArgs"]),
                env={
                    **environ,
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "TMPDIR": str(root / "tmp"),
                },
                cwd=str(root),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        if not dead:
            home = root / "home"
            home.mkdir()
            pod.sshd = Sshd(
                root / "sshd",
                env.get("PUBLIC_KEY", ""),
                {
                    "HOME": str(home),  # the pod's own home: not this machine's shell setup
                    "OUTLIERS_POD_ROOT": str(fs),
                    "OUTLIERS_POD_PYTHON": self.python,
                    "OUTLIERS_POD_ENVIRON": str(root / "pod.environ"),
                    "TMPDIR": str(root / "tmp"),  # the container's /tmp
                    **(
                        {"OUTLIERS_POD_INSTALL": self.install.replace('"', "'")}
                        if self.install
                        else {}
                    ),
                },
                port=pod.port,
            ).start()
        with self.lock:
            self.pods[pod.id] = pod
        self.record(status=500 if then_500 else 200, pod=pod.id, **info)
        return pod, env, then_500

    def _fill_secrets(self, value: str) -> str:
        """What RunPod does to ``{{ RUNPOD_SECRET_name }}`` in a pod's env, inside the pod."""
        return re.sub(
            r"\{\{ RUNPOD_SECRET_([A-Za-z0-9_-]+) \}\}",
            lambda m: self.secrets.get(m.group(1), ""),
            value,
        )

    def _pod_json(self, pod: FakePod) -> dict:
        ready = pod.status == "RUNNING" and pod.starts and pod.gets > self.ready_after
        portless = pod.gpu in self.faults.no_ssh_port
        return {
            "id": pod.id,
            "name": pod.name,
            "desiredStatus": pod.status,
            "costPerHr": round(pod.price, 4),
            "gpuCount": pod.count,
            "imageName": pod.image,
            "containerDiskInGb": pod.disk,
            "env": [f"{k}={v}" for k, v in pod.env.items()],
            "dockerArgs": pod.fields.get("dockerArgs") or "",
            "uptimeSeconds": int(time.time() - pod.created),
            "machine": {"gpuDisplayName": GPUS[pod.gpu][0]},
            "runtime": {
                "ports": []
                if portless
                else [
                    {
                        "ip": "127.0.0.1",
                        "isIpPublic": True,
                        "privatePort": 22,
                        "publicPort": pod.port,
                        "type": "tcp",
                    }
                ]
            }
            if ready
            else None,
        }

    # -- pod processes --------------------------------------------------------------------------
    def _kill_pod(self, pod: FakePod) -> None:
        if pod.sshd is not None:
            pod.sshd.stop()
        if pod.container is not None:
            try:
                os.killpg(pod.container.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            pod.container.wait()
        needle = str(pod.fs).encode()
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if needle in cmdline:
                try:
                    os.kill(int(d), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # -- what tests ask ------------------------------------------------------------------------
    def ops(self, op: str, **match) -> list[dict]:
        with self.lock:
            return [
                c
                for c in self.calls
                if c["op"] == op and all(c.get(k) == v for k, v in match.items())
            ]

    def live_pods(self) -> list[FakePod]:
        """Pods still billing: not terminated and not stopped."""
        return [p for p in self.pods.values() if p.status == "RUNNING"]

    def pod_processes(self, pod: FakePod) -> list[int]:
        needle = str(pod.fs).encode()
        found = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        if needle in f.read():
                            found.append(int(d))
                except OSError:
                    continue
        return found

    def wait(self, predicate, timeout: float = 10.0, every: float = 0.05):
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            got = predicate()
            if got:
                return got
            time.sleep(every)
        return predicate()


def deploy_fields(q: str) -> dict:
    """The input fields of a podFindAndDeployOnDemand mutation, parsed from the GraphQL text."""
    body = q[q.index("input:") :]
    out: dict = {}
    for m in re.finditer(r'(\w+): "([^"]*)"', body):
        out.setdefault(m.group(1), m.group(2))
    for m in re.finditer(r"(\w+): (true|false|null|\d+|[A-Z]+)(?=[,\s}])", body):
        v = m.group(2)
        out.setdefault(
            m.group(1),
            {"true": True, "false": False, "null": None}.get(v, int(v) if v.isdigit() else v),
        )
    cuda = re.search(r"allowedCudaVersions: \[([^\]]*)\]", body)
    if cuda:
        out["allowedCudaVersions"] = re.findall(r'"([^"]+)"', cuda.group(1))
    out["env"] = dict(re.findall(r'\{ key: "([^"]*)", value: "([^"]*)" \}', body))
    out.pop("key", None)
    out.pop("value", None)
    return out


def rest_deploy_fields(body: dict) -> dict:
    """A REST ``POST /pods`` body as the GraphQL deploy fields it stands for (the fake keeps one
    create). Types are checked as the REST API's schema has them."""
    if not isinstance(body.get("gpuTypeIds"), list) or not body["gpuTypeIds"]:
        raise ValueError("gpuTypeIds must be a non-empty array")
    for key in ("env",):
        if not isinstance(body.get(key, {}), dict):
            raise ValueError(f"{key} must be an object")
    for key in ("ports", "dockerStartCmd", "allowedCudaVersions"):
        if key in body and not isinstance(body[key], list):
            raise ValueError(f"{key} must be an array")
    fields = {
        "name": body["name"],
        "imageName": body["imageName"],
        "gpuTypeId": body["gpuTypeIds"][0],
        "gpuCount": body.get("gpuCount", 1),
        "cloudType": body.get("cloudType", "SECURE"),
        "containerDiskInGb": body.get("containerDiskInGb"),
        "minVcpuCount": body.get("minVCPUPerGPU"),
        "minMemoryInGb": body.get("minRAMPerGPU"),
        "ports": ",".join(body.get("ports") or []),
        "supportPublicIp": body.get("supportPublicIp"),
        "networkVolumeId": body.get("networkVolumeId"),
        "volumeMountPath": body.get("volumeMountPath"),
        "dockerArgs": shlex.join(body["dockerStartCmd"]) if body.get("dockerStartCmd") else "",
        "env": dict(body.get("env") or {}),
    }
    if "allowedCudaVersions" in body:
        fields["allowedCudaVersions"] = list(body["allowedCudaVersions"])
    return fields


def image_cuda(image: str) -> tuple | None:
    """The CUDA an image needs, from its tag (the fake's own reading, not the harness's)."""
    m = re.search(r"cuda(\d+)\.(\d+)|cu(\d\d)(\d)", image.rsplit(":", 1)[-1])
    if not m:
        return None
    return (int(m.group(1) or m.group(3)), int(m.group(2) or m.group(4)))


def _version(v: str) -> tuple:
    return tuple(int(x) for x in v.split(".")[:2])


class _GqlError(Exception):
    def __init__(self, message: str, **extra):
        super().__init__(message)
        self.extra = extra


def _rest_pod(pod: dict) -> dict:
    """A pod as REST v1 gives it (the GraphQL shape's fields, renamed where REST names them:
    ``env`` an object, ``publicIp`` and ``portMappings`` for the SSH port, ``image``)."""
    ports = (pod.get("runtime") or {}).get("ports") or []
    ssh = next((p for p in ports if p.get("privatePort") == 22), None)
    started = time.time() - pod["uptimeSeconds"]
    return {
        "id": pod["id"],
        "name": pod["name"],
        "desiredStatus": pod["desiredStatus"],
        "costPerHr": str(pod["costPerHr"]),  # a string in REST's answers
        "gpuCount": pod["gpuCount"],
        "image": pod["imageName"],
        "containerDiskInGb": pod["containerDiskInGb"],
        "env": dict(e.split("=", 1) for e in pod["env"]),
        "dockerStartCmd": shlex.split(pod["dockerArgs"]) if pod["dockerArgs"] else None,
        "gpu": {"displayName": pod["machine"]["gpuDisplayName"], "count": pod["gpuCount"]},
        "publicIp": ssh["ip"] if ssh else None,
        "portMappings": {"22": ssh["publicPort"]} if ssh else {},
        "lastStartedAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(started)),
    }


def _operation(query: str) -> str:
    for op in ("podFindAndDeployOnDemand", "podTerminate", "podStop", "gpuTypes", "myself"):
        if re.search(rf"\b{op}\b", query):
            return op
    if re.search(r"\bpod\(input", query):
        return "pod"
    return "unknown"


def _gpu(gpu_id: str) -> dict:
    name, mem, secure, community = GPUS[gpu_id]
    return {
        "id": gpu_id,
        "displayName": name,
        "memoryInGb": mem,
        "maxGpuCount": 8,
        "manufacturer": "Nvidia",
        "cudaCores": 0,
        "secureCloud": secure > 0,
        "communityCloud": community > 0,
        "securePrice": secure,
        "communityPrice": community,
        "oneMonthPrice": None,
        "threeMonthPrice": None,
        "oneWeekPrice": None,
        "communitySpotPrice": None,
        "secureSpotPrice": None,
        "lowestPrice": {"minimumBidPrice": None, "uninterruptablePrice": secure},
    }
