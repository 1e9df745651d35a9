"""``outliers pods smoke``: the step before a first sweep, on one cheap pod, for a few minutes.

It creates one pod the way a sweep does (kill switch, CUDA filter, our PUBLIC_KEY), checks every
path a sweep relies on, prints one table, and terminates the pod, then shows it gone from the
account's pod list. The pod ends itself at its kill-switch deadline whatever happens here, so the
printed dollar ceiling (the GPU's $/h times that deadline) is the most it can cost.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from harness.errors import HarnessError
from harness.runners.runpod import killswitch
from harness.runners.runpod.api import ApiError, RunpodApi, env_value, has_key
from harness.runners.runpod.credentials import Redactor, load_credentials, load_private_key
from harness.runners.runpod.options import DEFAULT_IMAGE, Timings
from harness.runners.runpod.plan import (
    MEMORY_GB_PER_GPU,
    POD_PREFIX,
    VCPUS_PER_GPU,
    allowed_cuda_versions,
)
from harness.runners.runpod.pods import host_tag, new_run_id, register_run, unregister_run
from harness.runners.runpod.ssh import Ssh, SshError

# Small, cheap, widely stocked types first; the cheapest one the API prices is tried first.
SMOKE_GPUS = (
    "NVIDIA RTX A4000",
    "NVIDIA RTX A5000",
    "NVIDIA GeForce RTX 3090",
    "NVIDIA GeForce RTX 4090",
    "NVIDIA L4",
    "NVIDIA RTX A6000",
)
PROBE_FILE = "openai-community/gpt2/resolve/main/tokenizer.json"  # 1.4 MB, public
# the image pull alone can take minutes (runpod/pytorch images are several GB): room for it
DEFAULT_MINUTES = 15.0


@dataclass
class Check:
    what: str
    ok: bool | None  # None: measured, no pass/fail
    result: str
    seconds: float | None = None


def smoke(
    *,
    gpus: tuple[str, ...] | None = None,
    image: str = DEFAULT_IMAGE,
    max_minutes: float = DEFAULT_MINUTES,
    cloud: str = "SECURE",
    out=print,
    api: RunpodApi | None = None,
    credentials=None,
    api_mode: str = "auto",
) -> list[Check]:
    """Run the first-contact check; return its rows (the pod is gone when this returns)."""
    if not 1 <= max_minutes <= 30:
        raise HarnessError(f"--max-minutes must be between 1 and 30, not {max_minutes:g}.")
    t = Timings.from_env()
    creds = credentials or load_credentials()
    redact = Redactor(*creds.secrets())
    key = load_private_key(creds.ssh_key_path)
    api = api or RunpodApi(creds.api_key, t, redact, api=api_mode, log=out)
    types, rate = _cheapest_first(api, gpus, cloud)
    ceiling = rate * max_minutes / 60 if rate != float("inf") else None
    out(
        f"smoke test: one pod of {types[0]} (+{len(types) - 1} fallback), {image}; it ends "
        f"itself after {max_minutes:g} min at the latest"
        + (f": at most ${ceiling:.2f}" if ceiling is not None else " (price unknown)")
    )
    run_id = new_run_id()
    name = f"{POD_PREFIX}-{run_id}-smoke"
    register_run(run_id, {"pods": []})
    rows: list[Check] = []
    pod_id = None
    t0 = time.monotonic()
    try:
        env = {
            "PUBLIC_KEY": creds.public_key,
            "OUTLIERS_RUN_ID": run_id,
            "OUTLIERS_HOST": host_tag(),
        }
        try:
            pod, gpu = api.create(
                name,
                gpu_types=types,
                count=1,
                disk_gb=30,
                image=image,
                cloud=cloud,
                env=env,
                docker_args=killswitch.docker_args(time.time() + max_minutes * 60),
                cuda_versions=allowed_cuda_versions(image),
                vcpus=VCPUS_PER_GPU,
                memory_gb=MEMORY_GB_PER_GPU,
            )
        except ApiError as err:
            rows.append(Check("create a pod", False, str(err), time.monotonic() - t0))
            return rows
        pod_id = pod["id"]
        mark = time.monotonic()
        rows.append(Check("create a pod", True, f"{pod_id} on {gpu}, over {api.using}", mark - t0))
        ours = has_key(env_value(pod.get("env"), "PUBLIC_KEY"), creds.public_key)
        rows.append(
            Check(
                "our PUBLIC_KEY honoured",
                ours,
                "yes" if ours else "no: RunPod put the account's own SSH keys in its place",
            )
        )
        deadline = time.monotonic() + max_minutes * 60 - 30
        ssh, pod_rate = _up_and_logged_in(api, t, key, pod_id, deadline, rows)
        rate = pod_rate or rate
        if ssh is None:
            return rows
        try:
            rows += _on_pod(ssh, name, redact)
            reaches = next((r.ok for r in rows if r.what.startswith("the pod's key reaches")), None)
            if reaches:
                rows.append(_pod_key_rights(api, ssh, name, pod_id))
        finally:
            ssh.close()
        return rows
    finally:
        if pod_id is not None:
            start = time.monotonic()
            gone = api.terminate(pod_id)
            listed = gone and _wait_gone(api, pod_id)
            rows.append(
                Check(
                    "terminated, gone from the pod list",
                    bool(listed),
                    "yes" if listed else f"NO: end pod {pod_id} in the RunPod console",
                    time.monotonic() - start,
                )
            )
        unregister_run(run_id)
        spent = (time.monotonic() - t0) / 3600 * rate if rate != float("inf") else None
        out(table(rows))
        out(
            f"{sum(1 for r in rows if r.ok is False)} check(s) failed; pod time "
            f"{time.monotonic() - t0:.0f} s"
            + (f", about ${spent:.2f}" if spent is not None else "")
        )


def _cheapest_first(api, gpus, cloud) -> tuple[tuple[str, ...], float]:
    """The GPU types to try, cheapest first, and the first one's $/h (inf: not priced)."""
    priced = []
    for g in gpus or SMOKE_GPUS:
        price = api.gpu_price(g, 1, cloud)
        if price is not None or gpus or api.using == "rest":  # REST lists no prices
            priced.append((price if price is not None else float("inf"), g))
    if not priced:
        raise HarnessError(
            f"RunPod prices none of {', '.join(SMOKE_GPUS)} in cloud {cloud}; name a type with "
            "--gpu."
        )
    priced.sort()
    return tuple(g for _, g in priced), priced[0][0]


def _up_and_logged_in(api, t, key, pod_id, deadline, rows) -> tuple[Ssh | None, float | None]:
    """The "container up" and "SSH login" rows; the logged-in session (None when a step failed)
    and the pod's own $/h."""
    mark = time.monotonic()
    try:
        endpoint, info = api.wait_ready(pod_id, min(deadline, time.monotonic() + 600))
    except ApiError as err:
        rows.append(Check("image pulled, container up", False, str(err), time.monotonic() - mark))
        return None, None
    rate = float(info.get("costPerHr") or 0) or None
    up = f"SSH port {endpoint.host}:{endpoint.port}"
    rows.append(Check("image pulled, container up", True, up, time.monotonic() - mark))
    mark = time.monotonic()
    ssh = Ssh(endpoint.host, endpoint.port, t.ssh_user, key, connect_timeout=15)
    try:
        ssh.connect_until(min(deadline, time.monotonic() + t.ssh_timeout_s), lambda: False)
    except SshError as err:
        rows.append(Check("SSH login with our key", False, str(err), time.monotonic() - mark))
        return None, rate
    rows.append(Check("SSH login with our key", True, ssh.address, time.monotonic() - mark))
    return ssh, rate


def _on_pod(ssh: Ssh, name: str, redact) -> list[Check]:
    from harness.runners.runpod.lifecycle import FIND_PYTHON, PODSIDE_SOURCE, _remote

    rows = []
    pre = _remote(name) + FIND_PYTHON
    start = time.monotonic()
    code, _, err = ssh.run(pre + 'cat > "$R/podside.py"', PODSIDE_SOURCE, timeout=120)
    if code != 0:
        return [Check("copy the pod-side script", False, redact(err.decode()[-200:]))]
    code, data, err = ssh.run(
        _remote(name) + f'"$PY" "$R/podside.py" probe {PROBE_FILE}', timeout=180
    )
    try:
        probe = json.loads(data.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        probe = {}
    rt = probe.get("runtime") or {}
    has_torch = bool(rt.get("torch"))
    rows.append(
        Check(
            "python / torch / CUDA / triton",
            has_torch,
            " / ".join(str(rt.get(k) or "-") for k in ("python", "torch", "cuda", "triton"))
            if rt
            else redact(err.decode()[-200:]),
            time.monotonic() - start,
        )
    )
    start = time.monotonic()
    code, data, err = ssh.run(_remote(name) + '"$PY" "$R/podside.py" selfcheck "$R"', timeout=120)
    rows.append(
        Check(
            "the pod's key reaches its pod (watchdog)",
            code == 0,
            redact((data if code == 0 else err).decode().strip()[-200:]),
            time.monotonic() - start,
        )
    )
    code, data, _ = ssh.run(f"cat {killswitch.LOG_PATH} 2>/dev/null", timeout=60)
    armed = "armed: deadline" in data.decode(errors="replace")
    rows.append(
        Check(
            "kill switch armed",
            armed,
            data.decode(errors="replace").strip().splitlines()[0] if armed else "no log found",
        )
    )
    dl = probe.get("download") or {}
    if "bytes" in dl:
        mbps = dl["bytes"] / 1e6 / max(dl["seconds"], 1e-6)
        rows.append(
            Check(
                "hub download",
                None,
                f"{dl['bytes'] / 1e6:.1f} MB at {mbps:.1f} MB/s",
                dl["seconds"],
            )
        )
    else:
        rows.append(Check("hub download", False, dl.get("error") or "no answer"))
    return rows


def _pod_key_rights(api: RunpodApi, ssh: Ssh, name: str, pod_id: str) -> Check:
    """Which of terminate / stop the pod's own key may do: the pod ends itself as its watchdog
    would (terminate, else stop) and the API says how it ended. RunPod documents only stopping
    from inside a pod; a stopped pod's disk bills until it is terminated."""
    from harness.runners.runpod.lifecycle import _remote

    start = time.monotonic()
    ssh.run(
        _remote(name)
        + '($S nohup "$PY" "$R/podside.py" rights "$R" > /dev/null 2>&1 < /dev/null &)',
        timeout=60,
    )
    status = "RUNNING"
    while time.monotonic() - start < 90:
        time.sleep(1.0)
        try:
            pod = api.get(pod_id)
        except ApiError as err:
            pod = None if err.kind == "notfound" else {"desiredStatus": status}
        status = "TERMINATED" if pod is None else pod.get("desiredStatus")
        if status in ("TERMINATED", "EXITED"):
            break
    result = {
        "TERMINATED": (True, "terminate: yes"),
        "EXITED": (True, "terminate: no, stop: yes (a stopped pod's disk bills until terminated)"),
    }.get(status, (False, "neither terminate nor stop: only this machine can end its pods"))
    return Check("the pod's key may end its pod", *result, time.monotonic() - start)


def _wait_gone(api: RunpodApi, pod_id: str, timeout: float = 60.0) -> bool:
    """Gone from the account's list, or listed as TERMINATED (the list may lag)."""
    until = time.monotonic() + timeout
    while True:
        try:
            if all(
                p.get("id") != pod_id or p.get("desiredStatus") == "TERMINATED" for p in api.list()
            ):
                return True
        except ApiError:
            pass
        if time.monotonic() >= until:
            return False
        time.sleep(1.0)


def table(rows: list[Check]) -> str:
    from tabulate import tabulate

    body = [
        [
            r.what,
            {True: "ok", False: "FAILED", None: ""}[r.ok],
            r.result,
            "" if r.seconds is None else f"{r.seconds:.1f}",
        ]
        for r in rows
    ]
    return tabulate(
        body, headers=["check", "", "result", "s"], tablefmt="github", disable_numparse=True
    )
