"""Model configs without weights: from a folder of config.json files, the hub cache, or the hub.

Used to count parameters and plan GPUs before anything is downloaded.
"""

from __future__ import annotations

import json
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


def find_config(entry=None, source=None, *, configs=None, config=None, download: bool = True):
    """The one config look-up: ``(raw config.json dict or None, built config or None, origin)``.

    In order: ``config`` (a ``PretrainedConfig``, a dict, a file or a folder), the model's own
    folder, a GGUF file's metadata, the ``configs`` folder and the configs shipped with the
    registry, a built tiny replica, then the hub cache and (``download``, hub reachable) a
    download of config.json alone. ``source`` (a ``harness.loading.load.ModelSource``) defaults
    to the entry's. Gated or missing on the hub: not at hand (preflight's access row says why).
    """
    from transformers import PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return config.to_dict(), config, "given config"
    if isinstance(config, dict):
        return dict(config), None, "given config"
    if source is None:
        from harness.errors import WeightsUnavailable
        from harness.loading.load import resolve

        try:
            source = resolve(entry)
        except WeightsUnavailable:  # a GGUF entry whose package is not installed
            return None, None, "not at hand"
    paths: list[Path] = []
    if config is not None:
        paths.append(Path(config) / "config.json" if Path(config).is_dir() else Path(config))
    if source.kind == "local":
        paths.append(Path(source.location) / "config.json")
    if source.kind == "gguf":  # the config is in the file's metadata
        from harness.loading.gguf import read_config

        built = read_config(Path(source.location))
        return built.to_dict(), built, source.location
    if entry is not None and not entry.is_tiny:
        paths += config_files(entry, configs)
    if source.kind == "tiny":  # built here (cached): its folder, not the "tiny:" id
        from harness.loading.tiny_builder import build_tiny

        paths.append(Path(build_tiny(source.entry.id)) / "config.json")
    for p in paths:
        if p.is_file():
            try:
                return json.loads(p.read_text()), None, str(p.parent)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise HarnessError(
                    f"{p} is not valid JSON ({getattr(err, 'msg', type(err).__name__)}); "
                    "fix it or download the model's config.json again."
                ) from None
    if "hub" in source.kind and (path := _hub_config(source.location, source.revision, download)):
        return json.loads(Path(path).read_text()), None, "hub"
    return None, None, "not at hand"


def _hub_config(hub_id: str, revision: str | None, download: bool) -> str | None:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    from harness.hub import hub_reachable

    cached = try_to_load_from_cache(hub_id, "config.json", revision=revision)
    if isinstance(cached, str):
        return cached
    if not download or not hub_reachable():
        return None
    try:  # a few kB; weights are never fetched here
        token = os.environ.get("HF_TOKEN") or None
        return hf_hub_download(hub_id, "config.json", revision=revision, token=token)
    except Exception:  # noqa: BLE001 - gated or missing: not at hand
        return None


def entry_config(entry, *, configs: str | Path | None = None, download: bool = False):
    """The ``transformers`` config of a registry entry, or None when it is not at hand."""
    from transformers import CONFIG_MAPPING

    raw, built, _ = find_config(entry, configs=configs, download=download)
    if built is not None or raw is None:
        return built
    if raw.get("model_type") not in CONFIG_MAPPING:
        return None  # this transformers does not know it: preflight says so
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CONFIG_MAPPING[raw["model_type"]].from_dict(raw)
