"""The Hugging Face hub from here: whether it can be reached, what its cache holds, and quiet progress bars."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse


def silence_progress_bars() -> None:
    """No progress bars from the libraries either (``--quiet``): the hub's downloads,
    transformers' weight loading and GGUF dequantization, datasets' preparation. The env
    variable reaches libraries imported later; the calls reach those already imported."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as tf_logging

    disable_progress_bars()
    tf_logging.disable_progress_bar()
    try:
        import datasets
    except ImportError:  # optional here: only hub datasets need it
        return
    datasets.disable_progress_bars()


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or huggingface.co cannot be reached quickly."""
    if hub_offline():
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def cached_snapshot(hub_id: str, revision: str | None = None) -> Path | None:
    """The local snapshot directory holding the config and weights, or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(
            snapshot_download(
                hub_id,
                revision=revision,
                local_files_only=True,
                allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model", "*.txt"],
            )
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    if not (path / "config.json").is_file():
        return None
    index = path / "model.safetensors.index.json"
    if index.is_file():
        import json

        shards = set(json.loads(index.read_text())["weight_map"].values())
        return path if all((path / s).is_file() for s in shards) else None
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    return path if has_weights else None
