"""``outliers pods``: the harness's pods with age and cost, and ending leaked ones.

A pod belongs to the harness when its name is ``outliers-<run id>-<label>``. A run in progress
registers itself in a state folder (``$OUTLIERS_STATE_DIR``, default
``~/.cache/outliers-harness/runpod``), and every pod carries a tag of the machine that created it
(``OUTLIERS_HOST`` in its environment: a hash, not the host name). A harness pod is

- *live* when a run registered on this machine (its process alive) claims it;
- *leaked* when this machine created it and no live run claims it, or, whoever created it, when
  it is past the deadline of its kill switch (``killswitch.deadline_of`` its start command) or
  has had no container for ``NO_RUNTIME_MINUTES``;
- *elsewhere* otherwise: another machine's sweep on the same account, which may well be live.

``terminate_pods()`` ends leaked pods, ``terminate_pods(all=True)`` every harness pod (elsewhere
ones included); pods not named by the harness are never touched. A stopped pod (``EXITED``:
what a pod whose own key may only stop is left as) still bills its disk and is listed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

from harness.fileio import atomic_write_bytes
from harness.runners.runpod.plan import POD_PREFIX

RUN_ID_RE = r"\d{8}T\d{6}-[0-9a-f]{4}"
NAME_RE = re.compile(rf"^{POD_PREFIX}-(?P<run>{RUN_ID_RE})-(?P<label>.+)$")


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + os.urandom(2).hex()


def run_id_of(pod_name: str | None) -> str | None:
    m = NAME_RE.match(pod_name or "")
    return m.group("run") if m else None


def state_dir() -> Path:
    return Path(
        os.environ.get("OUTLIERS_STATE_DIR")
        or Path.home() / ".cache" / "outliers-harness" / "runpod"
    )


def register_run(run_id: str, info: dict) -> Path | None:
    """Record a live run (best effort: an unwritable state folder only weakens ``leaked``)."""
    d = state_dir() / "runs"
    path = d / f"{run_id}.json"
    data = {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(), **info}
    try:
        atomic_write_bytes(path, json.dumps(data, indent=1).encode())
    except OSError:
        return None
    return path


def unregister_run(run_id: str) -> None:
    try:
        (state_dir() / "runs" / f"{run_id}.json").unlink()
    except OSError:
        pass


def live_runs(here_only: bool = False) -> set[str]:
    """Run ids registered by processes still alive on this machine (and, unless
    ``here_only``, every run another machine registered in a shared state folder)."""
    live = set()
    d = state_dir() / "runs"
    host = socket.gethostname()
    for p in d.glob("*.json") if d.is_dir() else []:
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if data.get("host") != host:
            if not here_only:
                live.add(data.get("run_id"))  # another machine's run: not ours to judge
            continue
        try:
            os.kill(int(data["pid"]), 0)
            live.add(data.get("run_id"))
        except (ProcessLookupError, KeyError, ValueError):
            continue
        except PermissionError:
            live.add(data.get("run_id"))
    return live


NO_RUNTIME_MINUTES = 30  # a pod without a container this long never will have one
# after its kill switch's deadline, the switch has had this long to end the pod (it retries
# every 30 s for half an hour)
DEADLINE_SLACK_S = 40 * 60


def host_tag() -> str:
    """This machine, as its pods' ``OUTLIERS_HOST`` names it: a hash of the host name."""
    import hashlib

    return hashlib.sha256(f"outliers:{socket.gethostname()}".encode()).hexdigest()[:12]


def registered_here() -> set[str]:
    """Run ids this machine's registry holds, alive or not."""
    d = state_dir() / "runs"
    host, out = socket.gethostname(), set()
    for p in d.glob("*.json") if d.is_dir() else []:
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if data.get("host") == host:
            out.add(data.get("run_id"))
    return out


def harness_pods(api, now: float | None = None) -> list[dict]:
    """Rows for every harness pod: id, name, run, status, gpu, age_h, usd_per_hour, cost_usd,
    state (live | leaked | elsewhere), why, leaked."""
    from harness.runners.runpod.api import env_value
    from harness.runners.runpod.killswitch import deadline_of

    now = time.time() if now is None else now
    live, mine, tag = live_runs(here_only=True), registered_here(), host_tag()
    rows = []
    for pod in api.list():
        run = run_id_of(pod.get("name"))
        if run is None or pod.get("desiredStatus") == "TERMINATED":
            continue
        uptime = float(pod.get("uptimeSeconds") or 0)
        rate = float(pod.get("costPerHr") or 0)
        deadline = deadline_of(pod.get("dockerArgs") or "")
        here = env_value(pod.get("env"), "OUTLIERS_HOST") == tag or run in mine
        if deadline is not None and now > deadline + DEADLINE_SLACK_S:
            state, why = "leaked", "past its kill-switch deadline"
        elif (
            not pod.get("runtime")
            and pod.get("desiredStatus") == "RUNNING"
            and uptime > NO_RUNTIME_MINUTES * 60
        ):
            state, why = "leaked", f"no container after {NO_RUNTIME_MINUTES} min"
        elif run in live:
            state, why = "live", ""
        elif here:
            state, why = "leaked", "no live run on this machine claims it"
        else:
            state, why = "elsewhere", "made on another machine (maybe a live sweep)"
        rows.append(
            {
                "id": pod.get("id"),
                "name": pod.get("name"),
                "run": run,
                "status": pod.get("desiredStatus"),
                "gpu": f"{(pod.get('machine') or {}).get('gpuDisplayName') or '?'} x "
                f"{pod.get('gpuCount') or '?'}",
                "age_h": uptime / 3600,
                "usd_per_hour": rate,
                "cost_usd": rate * uptime / 3600,
                "state": state,
                "why": why,
                "leaked": state == "leaked",
            }
        )
    return rows


def pods_table(rows: list[dict]) -> str:
    from tabulate import tabulate

    if not rows:
        return "no harness pods"
    body = [
        [
            r["id"],
            r["name"],
            "EXITED (stopped: its disk bills)" if r["status"] == "EXITED" else r["status"],
            r["gpu"],
            f"{r['age_h']:.2f}",
            f"{r['usd_per_hour']:.2f}",
            f"{r['cost_usd']:.2f}",
            r["state"] + (f": {r['why']}" if r["why"] else ""),
        ]
        for r in rows
    ]
    return tabulate(
        body,
        headers=["id", "name", "status", "GPU", "age h", "$/h", "$ so far", "run"],
        tablefmt="github",
        disable_numparse=True,
    )


def terminate_pods(api, *, all: bool = False) -> tuple[list[str], list[str]]:  # noqa: A002
    """Terminate leaked harness pods (every harness pod with ``all``: other machines' too);
    return (terminated ids, ids that could not be terminated)."""
    done, failed = [], []
    for row in harness_pods(api):
        if row["leaked"] or all:
            (done if api.terminate(row["id"]) else failed).append(row["id"])
    return done, failed


def pods_command(
    *,
    terminate: bool = False,
    all: bool = False,  # noqa: A002
    out=print,
    api: str = "auto",
) -> int:
    """What ``outliers pods [--terminate [--all]]`` does; returns the exit status."""
    from harness.runners.runpod.api import RunpodApi
    from harness.runners.runpod.credentials import Redactor, load_credentials
    from harness.runners.runpod.options import Timings

    creds = load_credentials(need_ssh=False)
    mode = api
    api = RunpodApi(
        creds.api_key, Timings.from_env(), Redactor(*creds.secrets()), api=mode, log=out
    )
    rows = harness_pods(api)
    out(pods_table(rows))
    if rows:
        total = sum(r["cost_usd"] for r in rows)
        out(f"{len(rows)} harness pods, ${total:.2f} so far at their current rates")
    if terminate:
        ids, failed = terminate_pods(api, all=all)
        out(f"terminated {len(ids)} pod(s){': ' + ', '.join(ids) if ids else ''}")
        elsewhere = [r["id"] for r in rows if r["state"] == "elsewhere"]
        if elsewhere and not all:
            out(
                f"left {len(elsewhere)} pod(s) of other machines' runs ({', '.join(elsewhere)}): "
                "`outliers pods --terminate --all` ends them too"
            )
        if failed:
            out(
                f"could NOT terminate {len(failed)} pod(s): {', '.join(failed)}; retry, or end "
                "them in the RunPod console"
            )
            return 1
    return 0
