"""What a RunPod run will rent: one pod per model (or per pack of small models), its GPU type
list (fallbacks in order), GPU count and disk from the registry's GPU plan or, where an entry
gives none, from preflight's memory model of its config (``harness.preflight.sizing``), and a
time estimate (setup + download + load + analysis) that sets the default deadline (twice it)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from harness.errors import HarnessError
from harness.models.registry import DTYPE_BYTES, GpuPlan
from harness.runners.runpod.options import RunpodOptions

POD_PREFIX = "outliers"  # every pod of the harness is named "<prefix>-<run id>-<label>"
SETUP_S = 420.0  # scheduling, image pull, SSH, pip install
DOWNLOAD_BYTES_PER_S = 100e6  # Hugging Face hub to a RunPod data centre, sustained (cautious)
LOAD_BYTES_PER_S = 1.0e9  # safetensors from container disk to GPU memory
ANALYSIS_FIXED_S = 120.0
EFFECTIVE_FLOPS_PER_GPU = 30e12  # bf16 forward with capture hooks, batch 1
DEFAULT_TOKENS = 16 * 2048
VOLUME_CONTAINER_DISK_GB = 40  # with a network volume: the image, the project, the logs
# The deadline counts from the first SSH login (image pull and scheduling are not in it); a
# default never goes below this, so a slow install on a small model is not killed mid-run.
MIN_DEADLINE_MINUTES = 30.0
# What RunPod's allowedCudaVersions accepts (the host driver's CUDA version), oldest first.
RUNPOD_CUDA_VERSIONS = (
    "11.8",
    "12.0",
    "12.1",
    "12.2",
    "12.3",
    "12.4",
    "12.5",
    "12.6",
    "12.7",
    "12.8",
    "12.9",
    "13.0",
)
VCPUS_PER_GPU = 4
MEMORY_GB_PER_GPU = 24  # host RAM: safetensors pages, tokenizer, the dataset; not the weights
PACKABLE_GROUPS = ("dense", "reference", "tiny")


@dataclass(frozen=True)
class Estimate:
    setup_s: float
    download_s: float
    load_s: float
    analysis_s: float

    @property
    def total_s(self) -> float:
        return self.setup_s + self.download_s + self.load_s + self.analysis_s


@dataclass(frozen=True)
class PodPlan:
    label: str  # model id, or "pack1", "pack2"...
    entries: tuple  # ModelEntry, in run order
    gpu_types: tuple[str, ...]
    count: int
    disk_gb: int
    image: str
    cloud: str
    volume: str | None
    estimate: Estimate
    max_minutes: float
    vcpus: int = VCPUS_PER_GPU
    memory_gb: int = MEMORY_GB_PER_GPU
    price_per_gpu_hour: float | None = None  # of the first type the API prices
    priced_gpu: str | None = None
    extra: dict = field(default_factory=dict)

    def name(self, run_id: str) -> str:
        return f"{POD_PREFIX}-{run_id}-{self.label}"

    @property
    def price_per_hour(self) -> float | None:
        return None if self.price_per_gpu_hour is None else self.price_per_gpu_hour * self.count

    @property
    def estimated_cost(self) -> float | None:
        p = self.price_per_hour
        return None if p is None else p * self.estimate.total_s / 3600


def bytes_per_param(entry) -> float:
    if "gpt-oss" in entry.hub_id:
        return 0.55  # MXFP4 experts (4.25 bits) + bf16 attention: ~13 GB / 21B, ~65 GB / 117B
    return float(DTYPE_BYTES.get(entry.dtype, 2))


def estimate(entry, count: int, total: float, active: float, tokens: int = DEFAULT_TOKENS):
    weight_bytes = total * bytes_per_param(entry)
    if entry.is_tiny:
        return Estimate(SETUP_S, 0.0, 5.0, 30.0)
    analysis = ANALYSIS_FIXED_S + 2 * active * tokens / (EFFECTIVE_FLOPS_PER_GPU * max(1, count))
    return Estimate(
        SETUP_S, weight_bytes / DOWNLOAD_BYTES_PER_S, weight_bytes / LOAD_BYTES_PER_S, analysis
    )


def gpu_plan_of(entry) -> tuple[GpuPlan, float, float]:
    """(the plan, total and active parameters) of ``entry``, or one sentence saying why not."""
    from harness.preflight.sizing import size

    sized = size(entry, hub=None)  # config.json from the hub when it is not at hand here
    if sized.plan is None:
        raise HarnessError(
            f"cannot size the GPUs of {entry.id} ({sized.why.rstrip('.')}); put its config.json "
            "at $OUTLIERS_CONFIGS_DIR/<org>__<name>/config.json or let this machine reach the "
            "hub, or give its registry entry a GpuPlan."
        )
    total = float(sized.total_params or 1e6)
    return sized.plan, total, float(sized.active_params or total)


def make_plans(entries, options: RunpodOptions) -> list[PodPlan]:
    """One plan per entry; with ``options.pack``, small single-GPU dense models share pods."""
    singles, packable = [], {}
    for e in entries:
        g, total, active = gpu_plan_of(e)
        types = tuple(options.gpu) if options.gpu else g.gpu_types
        est = estimate(e, g.count, total, active)
        item = (e, types, g.count, g.disk_gb, est)
        if options.pack and e.group in PACKABLE_GROUPS and g.count == 1:
            packable.setdefault(types, []).append(item)
        else:
            singles.append(item)
    plans = []
    for e, types, count, disk, est in singles:
        plans.append(_plan(e.id, (e,), types, count, disk, est, options))
    for i, (types, items) in enumerate(packable.items(), 1):
        if len(items) == 1:
            e, types, count, disk, est = items[0]
            plans.append(_plan(e.id, (e,), types, count, disk, est, options))
            continue
        est = Estimate(
            SETUP_S,
            sum(x[4].download_s for x in items),
            sum(x[4].load_s for x in items),
            sum(x[4].analysis_s for x in items),
        )
        disk = min(1000, sum(x[3] for x in items))
        plans.append(_plan(f"pack{i}", tuple(x[0] for x in items), types, 1, disk, est, options))
    return plans


def _plan(label, entries, types, count, disk, est, options) -> PodPlan:
    minutes = options.max_minutes or max(MIN_DEADLINE_MINUTES, math.ceil(2 * est.total_s / 60))
    if options.volume:
        # the weights go to the network volume's hub cache, not the container disk
        disk = min(disk, VOLUME_CONTAINER_DISK_GB)
    return PodPlan(
        safe_label(label),
        entries,
        tuple(types),
        count,
        int(disk),
        options.image,
        options.cloud,
        options.volume,
        est,
        float(minutes),
        vcpus=VCPUS_PER_GPU * count,
        memory_gb=MEMORY_GB_PER_GPU * count,
    )


def cuda_of_image(image: str) -> tuple[int, int] | None:
    """The CUDA version an image is built for, from its tag: ``cuda12.8.1`` or ``cu1281``."""
    tag = image.rsplit(":", 1)[-1]
    m = re.search(r"cuda(\d+)\.(\d+)", tag)
    if m:
        return int(m.group(1)), int(m.group(2))
    m = re.search(r"(?:^|-)cu(\d{2})(\d)\d*(?:-|$)", tag)
    if m:
        return int(m.group(1)), int(m.group(2))
    return None


def allowed_cuda_versions(image: str) -> list[str] | None:
    """Host CUDA versions able to run ``image`` (a driver is backward compatible: its version
    or newer); None when the tag does not say, so any host may be given."""
    need = cuda_of_image(image)
    if need is None:
        return None
    return [v for v in RUNPOD_CUDA_VERSIONS if tuple(map(int, v.split("."))) >= need]


def safe_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label)[:40]


def price_plans(api, plans: list[PodPlan]) -> list[PodPlan]:
    """Each plan with the $/GPU-hour of its first GPU type that the API prices."""
    cache: dict = {}
    out = []
    for p in plans:
        price = gpu = None
        for t in p.gpu_types:
            key = (t, p.count, p.cloud)
            if key not in cache:
                cache[key] = api.gpu_price(t, p.count, p.cloud)
            if cache[key]:
                price, gpu = cache[key], t
                break
        out.append(replace(p, price_per_gpu_hour=price, priced_gpu=gpu))
    return out


def plan_rows(plans: list[PodPlan]) -> list[dict]:
    rows = []
    for p in plans:
        rows.append(
            {
                "model": ", ".join(e.id for e in p.entries),
                "gpu": f"{p.priced_gpu or p.gpu_types[0]} x {p.count}",
                "fallbacks": len(p.gpu_types) - 1,
                "disk_gb": p.disk_gb,
                "usd_per_hour": p.price_per_hour,
                "est_hours": p.estimate.total_s / 3600,
                "est_usd": p.estimated_cost,
                "max_minutes": p.max_minutes,
            }
        )
    return rows


def plan_table(rows: list[dict]) -> str:
    """The dry-run table (tabulate), with a total row."""
    from tabulate import tabulate

    def money(x):
        return "n/a" if x is None else f"{x:,.2f}"

    body = [
        [
            r["model"],
            r["gpu"] + (f" (+{r['fallbacks']} fallback)" if r["fallbacks"] else ""),
            r["disk_gb"],
            money(r["usd_per_hour"]),
            f"{r['est_hours']:.2f}",
            money(r["est_usd"]),
            f"{r['max_minutes']:.0f}",
        ]
        for r in rows
    ]

    def total(values):
        """Their sum; "n/a" when no value is known (no API key: no prices), "(partial)" when
        only some are."""
        known = [v for v in values if v is not None]
        if not known:
            return "n/a"
        return money(sum(known)) + ("" if len(known) == len(values) else " (partial)")

    hours = sum(r["est_hours"] for r in rows)
    body.append(
        [
            "total",
            f"{len(rows)} pods",
            sum(r["disk_gb"] for r in rows),
            total([r["usd_per_hour"] for r in rows]),
            f"{hours:.2f}",
            total([r["est_usd"] for r in rows]),
            "",
        ]
    )
    headers = ["model", "GPU x count", "disk GB", "$/h", "est. h", "est. $", "deadline min"]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
