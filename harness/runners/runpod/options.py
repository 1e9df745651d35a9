"""The ``--runpod*`` options: declared once, read into one frozen ``RunpodOptions``.

``add_runpod_options(group)`` takes a pytest option group (``parser.getgroup(...)``) or an argparse
parser / group, so the pytest plugin and the ``outliers`` CLI share one declaration.
Timings that only tests and unusual setups change (poll intervals, timeouts, retries) are not
command-line options: they come from ``OUTLIERS_RUNPOD_<NAME>`` environment variables
(``Timings.from_env``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

# A stable release of RunPod's PyTorch image (github.com/runpod/containers, official-templates/
# pytorch, naming <release>-cu<CUDA>-torch<version>-<os>): torch 2.8.0 built for CUDA 12.8.1.
# The older "2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04" name is a legacy tag built with a
# nightly torch. Its CUDA version also sets which hosts may run it (allowedCudaVersions).
DEFAULT_IMAGE = "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404"
CLOUDS = ("SECURE", "COMMUNITY", "ALL")
APIS = ("auto", "graphql", "rest")

# Options of ours that must never reach the pod's pytest: (name, takes a value).
RUNPOD_FLAGS = {
    "--runpod": False,
    "--runpod-dry-run": False,
    "--runpod-pack": False,
    "--runpod-keep": False,
    "--runpod-gpu": True,
    "--runpod-image": True,
    "--runpod-cloud": True,
    "--runpod-volume": True,
    "--runpod-max-minutes": True,
    "--runpod-parallel": True,
    "--runpod-ship": True,
    "--runpod-api": True,
    "--rerun": False,
}
# Options the pod run sets itself (its own paths), also removed from forwarded arguments.
POD_OWNED = {
    "--results-dir": True,
    "--reports-dir": True,  # reports are made here, over the fetched results
    "--junitxml": True,
    "--junit-xml": True,
    "--benchmark-json": True,
    "--benchmark-autosave": False,
    "--benchmark-save": True,
    "--basetemp": True,
}


@dataclass(frozen=True)
class Timings:
    """Waits, timeouts and retries of a RunPod run (seconds unless named otherwise)."""

    poll_s: float = 10.0  # local status poll of a running pod job
    ready_timeout_s: float = 900.0  # pod RUNNING with its SSH port mapped
    ssh_timeout_s: float = 300.0  # first SSH login after the port is mapped
    reconnect_timeout_s: float = 900.0  # a dropped connection may stay down this long
    command_timeout_s: float = 600.0  # one SSH command (shipping the tree, fetching results)
    api_retries: int = 6  # attempts of one API call (429, 5xx, network)
    backoff_s: float = 2.0  # first back-off; doubles per retry, capped at 60 s
    adopt_polls: int = 6  # after a failed create, look for the pod by name this many times
    adopt_wait_s: float = 10.0  # ... this far apart (RunPod's pod list lags behind a create)
    # "Something went wrong" (RunPod's generic answer, also to malformed input) is retried
    # this often per GPU type, and a create gives up on a type after this long
    generic_retries: int = 2
    create_type_s: float = 120.0
    no_ssh_port_s: float = 120.0  # RUNNING with a container but no public 22/tcp this long
    watchdog_poll_s: float = 15.0  # the pod's watchdog checks this often
    watchdog_grace_s: float = 900.0  # after the job ends, wait this long for the fetch
    watchdog_slack_s: float = 120.0  # the pod's deadline is the local one plus this
    watchdog_start_grace_s: float = 900.0  # no job started this long after the watchdog: stop
    close_join_s: float = 90.0  # close() waits this long for worker threads
    ssh_user: str = "root"

    @classmethod
    def from_env(cls, environ=None) -> Timings:
        env = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = env.get(f"OUTLIERS_RUNPOD_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            if f.name == "ssh_user":
                values[f.name] = raw
            elif f.name in ("api_retries", "adopt_polls", "generic_retries"):
                values[f.name] = int(raw)
            else:
                values[f.name] = float(raw)
        return cls(**values)


@dataclass(frozen=True)
class RunpodOptions:
    enabled: bool = False
    dry_run: bool = False
    pack: bool = False
    keep: bool = False
    gpu: tuple[str, ...] | None = None  # overrides every plan's GPU type list
    image: str = DEFAULT_IMAGE
    cloud: str = "SECURE"
    volume: str | None = None  # network volume id, mounted at /runpod-volume: the hub cache
    max_minutes: float | None = None  # None: twice the plan's estimate
    parallel: int = 4
    ship: tuple[str, ...] = ()  # untracked paths to ship besides the tracked files
    rerun: bool = False
    api: str = "auto"  # auto | graphql | rest (RunPod retires GraphQL in early 2027)
    timings: Timings = field(default_factory=Timings.from_env)

    @property
    def active(self) -> bool:
        return self.enabled or self.dry_run


def add_runpod_options(group) -> None:
    """Declare the RunPod options on a pytest option group or an argparse parser."""
    add = getattr(group, "addoption", None) or group.add_argument
    add(
        "--runpod",
        action="store_true",
        default=False,
        help="run the selected model tests on RunPod GPU pods instead of locally",
    )
    add(
        "--runpod-dry-run",
        action="store_true",
        default=False,
        help="print the RunPod plan (GPUs, disk, $/h, estimated cost) and create nothing",
    )
    add(
        "--runpod-pack",
        action="store_true",
        default=False,
        help="let small single-GPU models share one pod",
    )
    add(
        "--runpod-keep",
        action="store_true",
        default=False,
        help="leave the pods running at the end and print how to reach and terminate them",
    )
    add(
        "--runpod-gpu",
        action="store",
        default=None,
        metavar="TYPES",
        help="comma-separated RunPod GPU type ids, in order of preference (overrides the plan)",
    )
    add(
        "--runpod-image",
        action="store",
        default=DEFAULT_IMAGE,
        metavar="IMAGE",
        help=f"container image of the pods (default {DEFAULT_IMAGE})",
    )
    add(
        "--runpod-cloud",
        action="store",
        default="SECURE",
        choices=CLOUDS,
        help="RunPod cloud type: SECURE, COMMUNITY or ALL (default SECURE)",
    )
    add(
        "--runpod-volume",
        action="store",
        default=None,
        metavar="VOLUME_ID",
        help="network volume id for the Hugging Face cache (mounted at /runpod-volume)",
    )
    add(
        "--runpod-api",
        action="store",
        default="auto",
        choices=APIS,
        help="RunPod API: auto (GraphQL, switching to REST when GraphQL fails; the default), "
        "graphql, or rest (rest.runpod.io/v1; it lists no GPU prices)",
    )
    add(
        "--runpod-max-minutes",
        action="store",
        default=None,
        type=float,
        metavar="MIN",
        help="hard deadline of every pod, enforced locally and by a watchdog on the pod "
        "(default: twice the plan's download + load + analysis estimate)",
    )
    add(
        "--runpod-parallel",
        action="store",
        default=4,
        type=int,
        metavar="N",
        help="at most N pods at a time (default 4)",
    )
    add(
        "--runpod-ship",
        action="store",
        default=None,
        metavar="PATHS",
        help="comma-separated untracked files or folders to send to the pods besides the files "
        "git tracks (default: none)",
    )
    add(
        "--rerun",
        action="store_true",
        default=False,
        help="run a model even when a result with the same revision, data, criteria and dtype "
        "exists (local runs and --runpod)",
    )


def _get(config, name):
    getoption = getattr(config, "getoption", None)
    if getoption is not None:
        return getoption(name, None)
    return getattr(config, name, None)


def options_from_config(config, timings: Timings | None = None) -> RunpodOptions:
    """Read the declared options from a pytest ``Config`` (or an argparse namespace)."""
    gpu = _get(config, "runpod_gpu")
    cloud = (_get(config, "runpod_cloud") or "SECURE").upper()
    if cloud not in CLOUDS:
        from harness.errors import HarnessError

        raise HarnessError(f"--runpod-cloud must be one of {', '.join(CLOUDS)}, not {cloud!r}.")
    parallel = int(_get(config, "runpod_parallel") or 4)
    api = (_get(config, "runpod_api") or "auto").lower()
    if api not in APIS:
        from harness.errors import HarnessError

        raise HarnessError(f"--runpod-api must be one of {', '.join(APIS)}, not {api!r}.")
    return RunpodOptions(
        enabled=bool(_get(config, "runpod")),
        dry_run=bool(_get(config, "runpod_dry_run")),
        pack=bool(_get(config, "runpod_pack")),
        keep=bool(_get(config, "runpod_keep")),
        gpu=tuple(g.strip() for g in gpu.split(",") if g.strip()) if gpu else None,
        image=_get(config, "runpod_image") or DEFAULT_IMAGE,
        cloud=cloud,
        volume=_get(config, "runpod_volume") or None,
        max_minutes=_get(config, "runpod_max_minutes"),
        parallel=max(1, parallel),
        ship=tuple(p.strip() for p in (_get(config, "runpod_ship") or "").split(",") if p.strip()),
        rerun=bool(_get(config, "rerun")),
        api=api,
        timings=timings or Timings.from_env(),
    )


def strip_forwarded_args(args) -> list[str]:
    """``args`` without our ``--runpod*`` / ``--rerun`` options and without the options whose
    values the pod sets itself (results dir, benchmark JSON): what may be forwarded to a pod."""
    table = {**RUNPOD_FLAGS, **POD_OWNED}
    out: list[str] = []
    skip = False
    for arg in map(str, args):
        if skip:
            skip = False
            continue
        name, eq, _ = arg.partition("=")
        if name in table:
            skip = table[name] and not eq
            continue
        out.append(arg)
    return out
