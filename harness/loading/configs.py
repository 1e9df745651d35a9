"""Model configs without weights: from a folder of config.json files, the hub cache, or the hub.

Used to count parameters and plan GPUs before anything is downloaded.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import harness.models
from harness.errors import HarnessError

CONFIGS_ENV = "OUTLIERS_CONFIGS_DIR"  # a folder of <org>__<name>/config.json files
# The public config.json files of the studied models, shipped with the registry (see its
# SOURCES.md): sizes, GPU plans and preflight work on a fresh clone, offline.
SHIPPED_CONFIGS = Path(harness.models.__file__).resolve().parent / "configs"


def configs_dir(explicit: str | Path | None = None) -> Path | None:
    value = explicit or os.environ.get(CONFIGS_ENV)
    return Path(value) if value else None


def config_files(entry, configs: str | Path | None = None) -> list[Path]:
    """Where a registry entry's config.json may be, in order: the folder given (or
    ``$OUTLIERS_CONFIGS_DIR``), then the configs shipped in ``models/configs``."""
    names = [n for n in (entry.config_dir, entry.hub_id.replace("/", "__")) if n]
    folders = [f for f in (configs_dir(configs), SHIPPED_CONFIGS) if f is not None]
    return [f / n / "config.json" for f in folders for n in names]


def entry_config(entry, *, configs: str | Path | None = None, download: bool = False):
    """The ``transformers`` config of a registry entry, or None when it is not at hand."""
    from transformers import AutoConfig

    candidates = [] if entry.is_tiny else [p.parent for p in config_files(entry, configs)]
    if entry.is_tiny:
        from harness.loading.tiny_builder import build_tiny

        candidates.append(Path(build_tiny(entry.id)))
    if entry.gguf is not None:  # the config is in the file's metadata
        from harness.errors import WeightsUnavailable
        from harness.loading.gguf import packaged_file, read_config

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
        from harness.hub import hub_reachable

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
