"""``outliers pods``: the harness's pods with age and cost, and ending leaked ones.

A pod belongs to the harness when its name is ``outliers-<run id>-<label>``. A run in progress
registers itself in a state folder (``$OUTLIERS_STATE_DIR``, default
``~/.cache/outliers-harness/runpod``); a harness pod is *leaked* when no live run on this machine
claims its run id. ``terminate_pods()`` ends leaked pods, ``terminate_pods(all=True)`` every
harness pod; pods not named by the harness are never touched.
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


def live_runs() -> set[str]:
    """Run ids registered by processes still alive on this machine."""
    live = set()
    d = state_dir() / "runs"
    host = socket.gethostname()
    for p in d.glob("*.json") if d.is_dir() else []:
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if data.get("host") != host:
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


def harness_pods(api) -> list[dict]:
    """Rows for every harness pod: id, name, run, status, gpu, age_h, usd_per_hour, cost_usd,
    leaked."""
    live = live_runs()
    rows = []
    for pod in api.list():
        run = run_id_of(pod.get("name"))
        if run is None:
            continue
        uptime = float(pod.get("uptimeSeconds") or 0)
        rate = float(pod.get("costPerHr") or 0)
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
                "leaked": run not in live,
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
            r["status"],
            r["gpu"],
            f"{r['age_h']:.2f}",
            f"{r['usd_per_hour']:.2f}",
            f"{r['cost_usd']:.2f}",
            "leaked" if r["leaked"] else "live",
        ]
        for r in rows
    ]
    return tabulate(
        body,
        headers=["id", "name", "status", "GPU", "age h", "$/h", "$ so far", "run"],
        tablefmt="github",
        disable_numparse=True,
    )


def terminate_pods(api, *, all: bool = False) -> list[str]:  # noqa: A002 - mirrors --all
    """Terminate leaked harness pods (every harness pod with ``all``); return their ids."""
    done = []
    for row in harness_pods(api):
        if row["leaked"] or all:
            if api.terminate(row["id"]):
                done.append(row["id"])
    return done


def pods_command(*, terminate: bool = False, all: bool = False, out=print) -> int:  # noqa: A002
    """What ``outliers pods [--terminate [--all]]`` does; returns the exit status."""
    from harness.runners.runpod.api import RunpodApi
    from harness.runners.runpod.credentials import Redactor, load_credentials
    from harness.runners.runpod.options import Timings

    creds = load_credentials(need_ssh=False)
    api = RunpodApi(creds.api_key, Timings.from_env(), Redactor(*creds.secrets()))
    rows = harness_pods(api)
    out(pods_table(rows))
    if rows:
        total = sum(r["cost_usd"] for r in rows)
        out(f"{len(rows)} harness pods, ${total:.2f} so far at their current rates")
    if terminate:
        ids = terminate_pods(api, all=all)
        out(f"terminated {len(ids)} pod(s){': ' + ', '.join(ids) if ids else ''}")
    return 0
