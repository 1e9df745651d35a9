"""The packages a model's fast path needs: probed as transformers probes them, without importing torch kernels."""

from __future__ import annotations

import importlib
import sys
import warnings
from importlib import metadata

HARNESS_TRANSFORMERS = ">=5.0,<6"  # pyproject's requirement, when the package metadata is absent


# A package probe imports module, looks up what transformers looks up, reads dist's version.
PROBES = {
    "gguf": ("gguf", ("GGUFReader",), "gguf"),
    "triton": ("triton", (), "triton"),
    "kernels": ("kernels", (), "kernels"),
    "fla": (
        "fla.ops.gated_delta_rule",
        ("chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule"),
        "flash-linear-attention",
    ),
    "causal_conv1d": (
        "causal_conv1d",
        ("causal_conv1d_fn", "causal_conv1d_update"),
        "causal-conv1d",
    ),
}


# -- packages -----------------------------------------------------------------------------------
def probe(name: str) -> str | None:
    """The version of package ``name`` when it imports with what transformers looks up, else
    None. Imports for real: a blocked import (``sys.modules[x] = None``) reads as missing."""
    module_name, attrs, dist = PROBES[name]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - any import failure: transformers falls back too
        return None
    if any(getattr(module, a, None) is None for a in attrs):
        return None
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        top = sys.modules.get(module_name.split(".")[0])
        return str(getattr(top, "__version__", None) or "unknown")


def _vtuple(text) -> tuple[int, ...]:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(str(text)).release
    except InvalidVersion:
        return ()


def _kernels_range() -> tuple[str, str]:
    try:
        from transformers.utils.import_utils import KERNELS_MAX_VERSION, KERNELS_MIN_VERSION
    except ImportError:  # an older transformers: the floor its own message names
        return "0.12.0", "999"
    return KERNELS_MIN_VERSION, KERNELS_MAX_VERSION


def _transformers_requirement() -> str:
    try:
        for req in metadata.requires("outlier-harness") or ():
            head, _, spec = req.partition("transformers")
            if not head and spec[:1] in "<>=!~" and ";" not in spec:
                return spec.strip()
    except metadata.PackageNotFoundError:
        pass
    return HARNESS_TRANSFORMERS
