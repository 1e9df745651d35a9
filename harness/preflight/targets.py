"""Where a model is meant to run: this machine, the GPUs named with --gpus, or a RunPod plan."""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

CARD_USABLE = 0.985  # a card sold as "80 GB" reports ~79.2 GiB


# Compute capability by a fragment of the GPU name (NVIDIA's published tables).
CAPABILITY = (
    ("H200", (9, 0)),
    ("H100", (9, 0)),
    ("B200", (10, 0)),
    ("A100", (8, 0)),
    ("A40", (8, 6)),
    ("A6000", (8, 6)),
    ("A5000", (8, 6)),
    ("A4000", (8, 6)),
    ("4090", (8, 9)),
    ("L40", (8, 9)),
    ("L4", (8, 9)),
    ("3090", (8, 6)),
    ("T4", (7, 5)),
    ("V100", (7, 0)),
)


# -- targets: where the model is meant to run ---------------------------------------------------
@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float  # what a model may use: free memory here, ~nominal for a plan
    capability: tuple[int, int] | None = None


@dataclass(frozen=True)
class Target:
    """This machine (``cuda`` / ``cpu``), a registry ``plan``, or GPUs ``given`` on the CLI."""

    kind: str
    gpus: tuple[Gpu, ...] = ()
    host_memory_gib: float | None = None  # kind "cpu"
    disk_free_gb: float | None = None  # None: unknown
    label: str = ""

    @property
    def device(self) -> str:
        return "cpu" if self.kind == "cpu" else "cuda"

    @property
    def local(self) -> bool:
        return self.kind in ("cuda", "cpu")


def capability_of(name: str) -> tuple[int, int] | None:
    return next((cc for frag, cc in CAPABILITY if frag.upper() in name.upper()), None)


def plan_target(plan) -> Target:
    """A registry ``GpuPlan`` as a target: ``count`` x its first GPU type, its disk."""
    from harness.models.registry import GPU_MEMORY_GB

    name = plan.gpu_types[0]
    gb = GPU_MEMORY_GB.get(name, 80)
    gpus = (Gpu(name, gb * CARD_USABLE, capability_of(name)),) * plan.count
    label = f"{plan.count}x {name} ({gb} GB)"
    return Target("plan", gpus, disk_free_gb=float(plan.disk_gb), label=label)


def parse_gpus(text: str) -> Target:
    """``"NAME:GB,..."`` (``"2xH100:80"`` repeats one) -> a target whose disk is unknown."""
    gpus: list[Gpu] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, gb = part.rpartition(":")
        head, x, rest = name.partition("x")
        count, name = (int(head), rest) if x and head.isdigit() else (1, name)
        try:
            value = float(gb)
        except ValueError:
            value = 0.0
        if not name.strip() or value <= 0:
            raise HarnessError(
                "--gpus expects NAME:GB entries separated by commas, e.g. 'H100:80,H100:80' or "
                f"'2xH100:80' (got {part!r})."
            )
        gpus += [Gpu(name.strip(), value * CARD_USABLE, capability_of(name))] * count
    if not gpus:
        raise HarnessError("--gpus names no GPU; e.g. --gpus 'H100:80'.")
    label = ", ".join(f"{k}x {n}" for n, k in Counter(g.name for g in gpus).items())
    return Target("given", tuple(gpus), label=label)


def local_target(device: str = "auto") -> Target | None:
    """The GPUs present (free memory of each), this host for ``device="cpu"``, or None when a
    GPU is asked for and there is none."""
    import torch  # here, not at module import: the CLI builds its parser without torch

    if device != "cpu" and torch.cuda.is_available():
        gpus = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free = torch.cuda.mem_get_info(i)[0] / GIB
            gpus.append(Gpu(props.name, free, (props.major, props.minor)))
        label = f"{len(gpus)}x {gpus[0].name} (here)"
        return Target("cuda", tuple(gpus), disk_free_gb=_cache_free_gb(), label=label)
    if device == "cuda":
        return None
    return Target(
        "cpu",
        host_memory_gib=_host_available_gib(),
        disk_free_gb=_cache_free_gb(),
        label="this CPU host",
    )


def _host_available_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return None


def _cache_free_gb() -> float | None:
    from huggingface_hub import constants

    path = Path(constants.HF_HUB_CACHE)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free / 1e9
    except OSError:
        return None


GIB = 2**30
