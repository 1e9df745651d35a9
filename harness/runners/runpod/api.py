"""The RunPod API, through the official ``runpod`` SDK (GraphQL) or RunPod's REST API, with the
retries the SDK lacks.

The SDK (``runpod.api.graphql.run_graphql_query``) posts to ``$RUNPOD_API_BASE_URL/graphql`` and
hides the HTTP status: a 429 or 5xx from the gateway surfaces as a JSON decode error (non-JSON
body), a ``KeyError`` (a JSON body without ``data``), a ``QueryError`` ("Too many requests",
"Something went wrong. Please try again later") or a ``requests`` connection error. All of those
are retried with exponential back-off; "no capacity" messages move on to the next GPU type; any
other error is final. Error texts never carry the GraphQL query (which holds the pod env).

RunPod retires GraphQL in early 2027. With ``api="auto"`` (the default) a GraphQL answer in a
shape the SDK cannot read (the endpoint gone or changed), a "retired" message, or as many
consecutive server/network failures as ``api_retries`` switch this ``RunpodApi`` to REST
(``rest.py``) for the rest of its life, saying so once; ``api="rest"`` uses REST from the
start, ``api="graphql"`` never switches.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass

from harness.errors import HarnessError
from harness.runners.runpod.options import APIS, Timings
from harness.runners.runpod.rest import RestBackend, RestError

CAPACITY_MESSAGES = (
    "no longer any instances available",  # the usual podFindAndDeployOnDemand refusal
    "does not have the resources",
    "not enough free gpus",
    "no gpu found",  # the SDK's own check of an unknown / unlisted GPU type id
    "no instances available",
)
RETRY_MESSAGES = (
    "too many requests",
    "rate limit",
    "try again later",
    "timeout",
    "timed out",
    "temporarily",
    "internal server error",
    "bad gateway",
    "service unavailable",
    "gateway",
)
NOT_FOUND_MESSAGES = ("not found", "does not exist", "no pod")
GONE_MESSAGES = ("retired", "deprecated", "no longer supported", "use the rest api")
VOLUME_MOUNT = "/runpod-volume"  # where a network volume is mounted (it holds the hub cache)


class ApiError(HarnessError):
    """A RunPod API call failed for good; ``kind`` is capacity | auth | fatal | retry."""

    def __init__(self, message: str, kind: str = "fatal"):
        super().__init__(message)
        self.kind = kind


def classify(err: BaseException) -> str:
    """capacity | retry | notfound | auth | shape | gone | fatal."""
    import requests
    from runpod import error as rp_error

    if isinstance(err, rp_error.AuthenticationError):
        return "auth"
    if isinstance(err, RestError):
        if err.status == 401:
            return "auth"
        if err.status == 404:
            return "notfound"
        if err.status in (408, 429) or err.status >= 500:
            msg = err.message.lower()
            return "capacity" if any(m in msg for m in CAPACITY_MESSAGES) else "retry"
    if isinstance(err, (json.JSONDecodeError, requests.exceptions.JSONDecodeError)):
        return "retry"  # a gateway page (429 / 5xx) instead of JSON
    if isinstance(err, requests.exceptions.RequestException):
        return "retry"  # connection refused / reset, read timeout
    if isinstance(err, (KeyError, TypeError, AttributeError)):
        return "shape"  # the SDK met an answer it does not know: not a rate limit, not retried
    msg = str(err).lower()
    if any(m in msg for m in CAPACITY_MESSAGES):
        return "capacity"
    if any(m in msg for m in GONE_MESSAGES):
        return "gone"
    if any(m in msg for m in RETRY_MESSAGES):
        return "retry"
    if any(m in msg for m in NOT_FOUND_MESSAGES):
        return "notfound"
    return "fatal"


def _message(err: BaseException) -> str:
    """The error's own message only (a QueryError also carries the query: never shown)."""
    msg = getattr(err, "message", None) or (err.args[0] if err.args else "") or type(err).__name__
    return str(msg).strip().splitlines()[0][:300]


@dataclass
class Endpoint:
    host: str
    port: int


class GraphqlBackend:
    """The SDK's GraphQL calls, under the names ``RunpodApi`` dispatches on."""

    name = "graphql"

    def __init__(self, rp):
        self._rp = rp

    def get_gpu(self, gpu_type: str, count: int = 1):
        return self._rp.get_gpu(gpu_type, count)

    def get_pod(self, pod_id: str):
        return self._rp.get_pod(pod_id)

    def get_pods(self):
        return self._rp.get_pods()

    def create_pod(self, spec: dict):
        return self._rp.create_pod(
            spec["name"],
            spec["image"],
            spec["gpu"],
            cloud_type=spec["cloud"],
            gpu_count=spec["count"],
            container_disk_in_gb=spec["disk_gb"],
            volume_in_gb=0,
            min_vcpu_count=spec["vcpus"],
            min_memory_in_gb=spec["memory_gb"],
            ports="22/tcp",
            support_public_ip=True,
            start_ssh=True,
            env=spec["env"],
            network_volume_id=spec["volume"],
            volume_mount_path=spec["volume_mount"],
            docker_args=spec["docker_args"] or "",
            allowed_cuda_versions=spec["cuda_versions"],
        )

    def terminate_pod(self, pod_id: str):
        return self._rp.terminate_pod(pod_id)


class RunpodApi:
    """Thread-safe wrapper of the API calls the harness uses, over GraphQL or REST."""

    def __init__(
        self,
        api_key: str,
        timings: Timings | None = None,
        redact=str,
        sleep=time.sleep,
        *,
        api: str = "auto",
        log=None,
    ):
        import runpod

        if api not in APIS:
            raise HarnessError(f"--runpod-api must be one of {', '.join(APIS)}, not {api!r}.")
        runpod.api_key = api_key  # the SDK never reads RUNPOD_API_KEY on its own
        self.t = timings or Timings()
        self.redact = redact
        self._sleep = sleep
        self._rng = random.Random()
        self._lock = threading.Lock()
        self.calls = 0
        self.mode = api
        self._graphql = GraphqlBackend(runpod)
        self._rest = RestBackend(api_key)
        self.backend = self._rest if api == "rest" else self._graphql
        self._log = log or (lambda line: None)
        self._graphql_failures = 0  # consecutive retryable GraphQL failures, all calls together

    @property
    def using(self) -> str:
        """Which API answers now: graphql | rest."""
        return self.backend.name

    # -- one call with retries ---------------------------------------------------------------
    def call(self, what: str, op: str, *args, retry_notfound: bool = False, attempts=None):
        """``op`` (a backend method name) with retries; switches GraphQL -> REST in auto mode."""
        attempts = max(1, self.t.api_retries if attempts is None else attempts)
        last = None
        i = 0
        while i < attempts:
            backend = self.backend
            with self._lock:
                self.calls += 1
            try:
                out = getattr(backend, op)(*args)
                if backend is self._graphql:
                    with self._lock:
                        self._graphql_failures = 0
                return out
            except Exception as err:  # noqa: BLE001 - classified below
                kind = classify(err)
                last = err
                if self._switch_to_rest(backend, kind, what, err) and not (
                    op == "create_pod" and kind == "retry"
                ):
                    i = 0  # REST gets its own attempts
                    continue
                # (a create that failed retryably may have made its pod: ``create`` looks for it
                # by name before it asks REST for one)
                if kind == "gone":
                    kind = "fatal"
                if kind == "auth":
                    raise ApiError(
                        "RunPod refused the API key (401): check RUNPOD_API_KEY.", "auth"
                    ) from None
                if kind == "capacity":
                    raise ApiError(self.redact(f"{what}: {_message(err)}"), "capacity") from None
                if kind == "notfound" and not retry_notfound:
                    raise ApiError(self.redact(f"{what}: {_message(err)}"), "notfound") from None
                if kind == "shape":
                    raise ApiError(
                        self.redact(
                            f"{what}: the RunPod API answered in a shape the runpod SDK does not "
                            f"expect ({type(err).__name__}: {_message(err)}); upgrade it with "
                            "`pip install -U runpod`, use --runpod-api rest, or report this."
                        ),
                        "fatal",
                    ) from None
                if kind == "fatal":
                    raise ApiError(self.redact(f"{what}: {_message(err)}"), "fatal") from None
                i += 1
                if i < attempts:
                    self._sleep(self._backoff(i - 1))
        raise ApiError(
            self.redact(
                f"{what} failed {attempts} times (rate limit, server or network error: "
                f"{_message(last)}); try again later."
            ),
            "retry",
        )

    def _switch_to_rest(self, backend, kind: str, what: str, err: BaseException) -> bool:
        """Whether this GraphQL failure moves the session to REST (auto mode only): an answer
        the SDK cannot read, a retirement message, or ``api_retries`` retryable failures in a
        row over all calls."""
        if self.mode != "auto" or backend is not self._graphql:
            return False
        with self._lock:
            if kind == "retry":
                self._graphql_failures += 1
                if self._graphql_failures < max(1, self.t.api_retries):
                    return False
            elif kind not in ("shape", "gone"):
                return False
            if self.backend is self._graphql:
                self.backend = self._rest
                self._log(
                    self.redact(
                        f"RunPod's GraphQL API failed ({what}: {type(err).__name__}: "
                        f"{_message(err)}); using its REST API ({self._rest.base}) from now on"
                    )
                )
        return True

    def _backoff(self, i: int) -> float:
        base = min(60.0, self.t.backoff_s * (2**i))
        return base * (0.5 + self._rng.random() / 2)

    # -- queries -----------------------------------------------------------------------------
    def gpu_price(self, gpu_type: str, count: int = 1, cloud: str = "SECURE") -> float | None:
        """$/h of ONE GPU of ``gpu_type`` in ``cloud`` (None when the API lists no price)."""
        try:
            info = self.call(f"price of {gpu_type}", "get_gpu", gpu_type, count)
        except ApiError as err:
            if err.kind in ("capacity", "notfound"):
                return None
            raise
        secure, community = info.get("securePrice"), info.get("communityPrice")
        if cloud == "SECURE":
            price = secure
        elif cloud == "COMMUNITY":
            price = community
        else:
            price = min((p for p in (secure, community) if p), default=None)
        return float(price) if price else None

    def get(self, pod_id: str) -> dict | None:
        return self.call(f"get pod {pod_id}", "get_pod", pod_id)

    def list(self) -> list[dict]:
        return list(self.call("list pods", "get_pods") or [])

    def find_by_name(self, name: str) -> dict | None:
        for pod in self.list():
            if pod.get("name") == name and pod.get("desiredStatus") != "TERMINATED":
                return pod
        return None

    # -- mutations ---------------------------------------------------------------------------
    def create(
        self,
        name: str,
        *,
        gpu_types: tuple[str, ...],
        count: int,
        disk_gb: int,
        image: str,
        cloud: str,
        env: dict,
        volume: str | None = None,
        docker_args: str | None = None,
        cuda_versions: list[str] | None = None,
        vcpus: int = 1,
        memory_gb: int = 1,
        on_try=None,
        cancelled=lambda: False,
    ) -> tuple[dict, str]:
        """Create one pod, trying each GPU type in order; return (pod, gpu type).

        A call that failed with a retryable error may still have created the pod (RunPod has
        been seen to answer 500 after creating it, and its pod list lags behind): before each
        retry the pod is looked up by its unique name several times, ``adopt_wait_s`` apart,
        and adopted if it appears.
        """
        if self.mode != "rest":  # REST sends JSON: only the SDK's GraphQL text breaks
            check_env(env)
        refusals = []
        for gpu in gpu_types:
            if on_try:
                on_try(gpu)
            attempts = max(1, self.t.api_retries)
            generic = 0
            until = time.monotonic() + self.t.create_type_s
            for i in range(attempts):
                if cancelled():
                    raise ApiError(f"create pod {name}: cancelled", "cancelled")
                try:
                    pod = self.call(
                        f"create pod {name} on {gpu}",
                        "create_pod",
                        {
                            "name": name,
                            "image": image,
                            "gpu": gpu,
                            "cloud": cloud,
                            "count": count,
                            "disk_gb": disk_gb,
                            "vcpus": vcpus,
                            "memory_gb": memory_gb,
                            "env": env,
                            "volume": volume,
                            # not /workspace: the run folders stay off the paid volume
                            "volume_mount": VOLUME_MOUNT,
                            "docker_args": docker_args or "",
                            "cuda_versions": cuda_versions,
                        },
                        attempts=1,
                    )
                    return pod, gpu
                except ApiError as err:
                    if err.kind == "capacity" or (
                        # REST refuses a type it does not offer as bad input, naming it
                        err.kind == "fatal"
                        and self.using == "rest"
                        and gpu in str(err).partition(": ")[2]  # RunPod's words, not ours
                    ):
                        refusals.append(f"{gpu}: {err}")
                        break
                    if err.kind != "retry":
                        raise
                    adopted = self._adopt(name, cancelled)
                    if adopted is not None:
                        return adopted, gpu
                    generic += "something went wrong" in str(err).lower()
                    if generic >= max(1, self.t.generic_retries) or time.monotonic() >= until:
                        # RunPod's generic answer, also to malformed input: not worth minutes
                        refusals.append(f"{gpu}: {err}")
                        break
                    if i + 1 == attempts:
                        raise ApiError(
                            f"create pod {name} on {gpu} failed {attempts} times (rate limit, "
                            f"server or network error); try again later.",
                            "retry",
                        ) from None
                    self._wait(self._backoff(i), cancelled)
        generic = [r for r in refusals if "something went wrong" in r.lower()]
        if generic and len(generic) == len(refusals):
            raise ApiError(
                f'create pod {name}: RunPod answered "Something went wrong" for every GPU '
                f"type ({', '.join(gpu_types)}); that is also its answer to a request it cannot "
                "read: try again later, or check --runpod-image and the pod settings.",
                "retry",
            )
        raise ApiError(
            f"no capacity for {name} on any of {', '.join(gpu_types)} (cloud {cloud}); try "
            "--runpod-cloud ALL or other types with --runpod-gpu.",
            "capacity",
        )

    def _wait(self, seconds: float, cancelled) -> None:
        """Sleep ``seconds`` in steps, returning early when ``cancelled()``."""
        end = time.monotonic() + seconds
        while not cancelled():
            left = end - time.monotonic()
            if left <= 0:
                return
            self._sleep(min(left, 0.5))

    def _adopt(self, name: str, cancelled=lambda: False) -> dict | None:
        """The pod called ``name``, if a failed create made it; the list may show it late."""
        polls = max(1, self.t.adopt_polls)
        for i in range(polls):
            if cancelled():
                return None
            if i:
                self._wait(self.t.adopt_wait_s, cancelled)
            try:
                pod = self.find_by_name(name)
            except ApiError:
                pod = None
            if pod is not None:
                return pod
        return None

    def terminate(self, pod_id: str) -> bool:
        """Terminate ``pod_id``; True when it is gone (already gone counts)."""
        try:
            self.call(f"terminate pod {pod_id}", "terminate_pod", pod_id)
            return True
        except ApiError as err:
            if err.kind == "notfound":
                return True
            try:
                pod = self.get(pod_id)
            except ApiError:
                return False
            return pod is None or pod.get("desiredStatus") == "TERMINATED"

    # -- readiness ---------------------------------------------------------------------------
    def wait_ready(self, pod_id: str, until: float, cancelled=lambda: False, poll=None):
        """Poll until the pod is RUNNING with a public 22/tcp mapping; return (Endpoint, pod).

        A pod the API does not know yet just after creation is waited for (the lists lag). On
        a timeout the ApiError's kind says why: ``no-runtime`` when the container never started
        (an image the host's CUDA driver cannot run, a pull that failed: another machine may
        do), ``timeout`` otherwise.
        """
        poll = self.t.poll_s if poll is None else poll
        pod = None
        portless_since = None
        while True:
            if cancelled():
                raise ApiError(f"pod {pod_id}: cancelled while starting", "cancelled")
            try:
                pod = self.call(f"get pod {pod_id}", "get_pod", pod_id, retry_notfound=True)
            except ApiError as err:
                if err.kind != "retry" or time.monotonic() >= until:
                    raise
                pod = None
            if pod is not None:
                status = pod.get("desiredStatus")
                if status in ("EXITED", "TERMINATED"):
                    raise ApiError(f"pod {pod_id} is {status} before it ever ran", "fatal")
                endpoint = ssh_endpoint(pod)
                if status == "RUNNING" and endpoint is not None:
                    return endpoint, pod
                if status == "RUNNING" and pod.get("runtime"):
                    # a container, but no public 22/tcp: this host will not give one
                    portless_since = portless_since or time.monotonic()
                    if time.monotonic() - portless_since >= self.t.no_ssh_port_s:
                        raise ApiError(
                            f"pod {pod_id} runs but has no public SSH port (22/tcp) after "
                            f"{self.t.no_ssh_port_s:.0f}s: its host gives none",
                            "no-ssh-port",
                        )
            if time.monotonic() >= until:
                if pod is not None and not pod.get("runtime"):
                    raise ApiError(
                        f"pod {pod_id}: its container never started (no runtime) within the "
                        "wait: the image could not be pulled or the host's CUDA driver is too "
                        "old for it",
                        "no-runtime",
                    )
                raise ApiError(
                    f"pod {pod_id} was not RUNNING with an SSH port within the wait; RunPod may "
                    "be short of machines: try again or use --runpod-gpu.",
                    "timeout",
                )
            self._sleep(min(poll, max(0.0, until - time.monotonic())) or 0.01)


def check_env(env: dict) -> None:
    """Refuse, before anything is created, a pod environment value the runpod SDK cannot send:
    it pastes values into its GraphQL text between double quotes without escaping, so a
    double quote, a backslash or a newline breaks the request (RunPod answers "Something went
    wrong") or changes it."""
    for key, value in (env or {}).items():
        for char, what in (('"', "a double quote"), ("\\", "a backslash"), ("\n", "a newline")):
            if char in str(value):
                raise ApiError(
                    f"the pod environment variable {key} holds {what}, which the runpod SDK "
                    "cannot send; remove it (for PUBLIC_KEY: the comment of the key in "
                    "SSH_KEY_PATH's .pub file, or use another key).",
                    "fatal",
                )


def env_value(env, key: str) -> str | None:
    """``key``'s value in a pod's env as the API gives it (["K=V", ...] or {K: V})."""
    if isinstance(env, dict):
        return env.get(key)
    for item in env or []:
        k, sep, v = str(item).partition("=")
        if sep and k == key:
            return v
    return None


def has_key(public_keys: str | None, ours: str) -> bool:
    """Whether our public key (its type and base64, the comment aside) is among the lines of a
    pod's ``PUBLIC_KEY``: RunPod may put the account's keys there with ours (with
    ``startSsh``), one per line, and that is fine; only ours missing keeps us out."""
    if public_keys is None:
        return True  # the API did not echo the env: nothing says ours was replaced
    want = tuple(ours.split()[:2])
    for line in public_keys.replace("\\n", "\n").splitlines():
        words = line.split()
        if any(tuple(words[i : i + 2]) == want for i in range(len(words) - 1)):
            return True
    return False


def ssh_endpoint(pod: dict) -> Endpoint | None:
    runtime = pod.get("runtime") or {}
    for p in runtime.get("ports") or []:
        if p.get("privatePort") == 22 and p.get("isIpPublic") and p.get("type") == "tcp":
            return Endpoint(str(p["ip"]), int(p["publicPort"]))
    return None
