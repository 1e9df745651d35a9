"""Provenance of a run: versions, hardware and code, recorded in every result.

Nothing secret is recorded: no tokens, keys, hostnames or user names.
"""

from __future__ import annotations

import functools
import platform
from importlib import metadata
from pathlib import Path

import torch

from harness import gitinfo

PACKAGES = (
    "torch",
    "transformers",
    "accelerate",
    "datasets",
    "tokenizers",
    "numpy",
    "huggingface_hub",
    "safetensors",
    "kernels",
    "triton",
)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def harness_version() -> str:
    return _version("outlier-harness") or "0+unknown"


@functools.lru_cache(maxsize=1)
def git_state() -> dict | None:
    """The harness checkout's commit and whether it has local changes (None outside one)."""
    return gitinfo.git_state(Path(__file__).resolve().parent.parent)


def gpus() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append({"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)})
    return out


def environment() -> dict:
    """Versions and hardware of this process, for result.json's ``environment`` section."""
    devices = gpus()
    return {
        "harness_version": harness_version(),
        "git": git_state(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "packages": {name: v for name in PACKAGES if (v := _version(name))},
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "gpu_count": len(devices),
        "gpus": devices,
        "gpu_name": devices[0]["name"] if devices else None,
        "cpu_threads": torch.get_num_threads(),
    }
