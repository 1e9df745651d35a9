"""Model configs without weights: from a folder of config.json files, the hub cache, or the hub.

Used to count parameters and plan GPUs before anything is downloaded.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .errors import HarnessError

CONFIGS_ENV = "OUTLIERS_CONFIGS_DIR"  # a folder like shared/hf-configs: <org>__<name>/config.json


def configs_dir(explicit: str | Path | None = None) -> Path | None:
    value = explicit or os.environ.get(CONFIGS_ENV)
    return Path(value) if value else None


def entry_config(entry, *, configs: str | Path | None = None, download: bool = False):
    """The ``transformers`` config of a registry entry, or None when it is not at hand."""
    from transformers import AutoConfig

    folder = configs_dir(configs)
    candidates = []
    if folder is not None:
        names = [entry.config_dir, entry.hub_id.replace("/", "__")]
        candidates += [folder / n for n in names if n]
    if entry.is_tiny:
        from .tiny import build_tiny

        candidates.append(Path(build_tiny(entry.id)))
    if entry.gguf is not None:  # the config is in the file's metadata
        from .errors import WeightsUnavailable
        from .gguf_files import packaged_file, read_config

        try:
            return read_config(packaged_file(*entry.gguf))
        except WeightsUnavailable:
            return None
    for c in candidates:
        if (c / "config.json").is_file():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return AutoConfig.from_pretrained(c)
    if entry.is_tiny:
        return None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(entry.hub_id, "config.json", revision=entry.revision)
    path = cached if isinstance(cached, str) else None
    if path is None and download:
        from .loading import hub_reachable

        if hub_reachable():
            try:
                path = hf_hub_download(
                    entry.hub_id,
                    "config.json",
                    revision=entry.revision,
                    token=os.environ.get("HF_TOKEN") or None,
                )
            except Exception as err:  # gated, missing: the caller reports "unknown"
                if "gated" in str(err).lower():
                    raise HarnessError(
                        f"{entry.hub_id} is gated: accept its license on huggingface.co and set "
                        "HF_TOKEN."
                    ) from None
                path = None
    if path is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoConfig.from_pretrained(Path(path).parent)
