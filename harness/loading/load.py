"""Loading a model and its tokenizer from a registry id, a hub id or a local directory.

Every failure a user can cause ends in one ``HarnessError`` sentence: unknown model, missing
directory, offline without the weights in the cache, gated model without a token, no GPU, out of
memory. Tokens are read from the environment (``HF_TOKEN``) and never logged or recorded.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.errors import HarnessError, WeightsUnavailable
from harness.hub import cached_snapshot, hub_reachable

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class NoGpu(HarnessError):
    """A GPU was asked for and none is usable."""


@dataclass
class ModelSource:
    """Where a model spec points: ``kind`` is registry-hub, hub, local, gguf or tiny."""

    spec: str
    kind: str
    location: str  # hub id or directory
    entry: object | None = None  # models.ModelEntry when the spec is a registry id
    revision: str | None = None

    @property
    def id(self) -> str:
        if self.entry is not None:
            return self.entry.id
        if self.kind == "gguf":
            return Path(self.location).stem
        return Path(self.location).name if self.kind == "local" else self.location


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: ModelSource
    meta: dict = field(default_factory=dict)  # what result.json says about loading


def resolve(spec, revision: str | None = None) -> ModelSource:
    """Registry id, ``tiny:`` id, local directory or hub id -> ``ModelSource``."""
    from harness import models

    if not isinstance(spec, str):  # a registry entry
        spec = spec.id
    if spec in models.REGISTRY:
        entry = models.REGISTRY[spec]
        if entry.is_tiny:
            from harness.loading.tiny_builder import build_tiny

            return ModelSource(spec, "tiny", str(build_tiny(entry.id)), entry)
        if entry.gguf is not None:
            from harness.loading.gguf import packaged_file

            return ModelSource(spec, "gguf", str(packaged_file(*entry.gguf)), entry)
        return ModelSource(spec, "registry-hub", entry.hub_id, entry, revision or entry.revision)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ModelSource(spec, "gguf", str(path.resolve()))
    if path.exists():
        if not (path / "config.json").is_file():
            raise HarnessError(f"{path} has no config.json; point to a saved model directory.")
        return ModelSource(spec, "local", str(path.resolve()))
    if spec.startswith((".", "/", "~")) or os.sep in spec and not HUB_ID.match(spec):
        raise HarnessError(f"no model directory at {spec}; check the path.")
    if HUB_ID.match(spec):
        return ModelSource(spec, "hub", spec, None, revision)
    raise HarnessError(
        f"unknown model {spec!r}: not a registry id (`outliers models` lists them), a hub id "
        "(org/name) or an existing directory."
    )


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise NoGpu(
            "no usable CUDA GPU here; use --device cpu for small models or --runpod to rent one."
        )
    if device not in ("cpu", "cuda"):
        raise HarnessError(f"--device must be auto, cpu or cuda (got {device!r}).")
    return device


def resolve_dtype(dtype: str, source: ModelSource, config=None) -> torch.dtype:
    if dtype == "auto":
        if source.entry is not None:
            dtype = source.entry.dtype
        else:
            found = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
            dtype = str(found).replace("torch.", "") if found else "float32"
    if dtype not in DTYPES:
        raise HarnessError(f"--dtype must be auto, bfloat16, float16 or float32 (got {dtype!r}).")
    return DTYPES[dtype]


def check_available(source: ModelSource) -> None:
    """Raise ``WeightsUnavailable`` when the weights are not cached and cannot be downloaded."""
    if source.kind not in ("hub", "registry-hub"):
        return
    if cached_snapshot(source.location, source.revision) is not None:
        return
    if not hub_reachable():
        raise WeightsUnavailable(
            f"{source.location} is not in the local Hugging Face cache and the hub cannot be "
            "reached (offline); pre-download it with `hf download "
            f"{source.location}`, use --runpod, or run a model that is cached."
        )


def _translate_load_error(err: BaseException, source: ModelSource) -> HarnessError | None:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = source.location
    if isinstance(err, GatedRepoError) or "gated" in str(err).lower():
        return HarnessError(
            f"{name} is a gated model: accept its license on huggingface.co and set HF_TOKEN "
            "in the environment (or .env)."
        )
    if isinstance(err, RevisionNotFoundError):
        return HarnessError(f"revision {source.revision!r} of {name} does not exist on the hub.")
    if isinstance(err, RepositoryNotFoundError):
        return HarnessError(
            f"no model {name} on the Hugging Face hub (or it is private and HF_TOKEN is not set)."
        )
    if isinstance(err, LocalEntryNotFoundError) or "couldn't connect" in str(err).lower():
        return WeightsUnavailable(
            f"{name} is not in the local Hugging Face cache and the hub cannot be reached; "
            f"pre-download it with `hf download {name}` or use --runpod."
        )
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower():
        return HarnessError(
            f"{name} does not fit in memory here; use more or larger GPUs (--runpod) or a "
            "smaller --dtype."
        )
    if isinstance(err, OSError) and "no file named" in str(err).lower():
        return HarnessError(
            f"{name} has a config.json but no weights (model.safetensors or pytorch_model.bin); "
            "point to a directory saved with its weights."
        )
    if isinstance(err, ValueError) and "json" in type(err).__name__.lower() + str(err).lower():
        return HarnessError(
            f"the config of {name} is not valid JSON; fix it or download the model again."
        )
    if isinstance(err, ValueError) and "model type" in str(err).lower():
        return HarnessError(
            f"this transformers ({_tf_version()}) does not know the architecture of {name}; "
            "upgrade transformers."
        )
    return None


def _tf_version() -> str:
    import transformers

    return transformers.__version__


def load(
    spec,
    *,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    preflight=None,
) -> LoadedModel:
    """Load model + tokenizer through ``from_pretrained`` (multi-GPU with device_map="auto").

    ``preflight`` (a ``harness.preflight.verdict.PreflightReport``) adds what its fallback needs (e.g.
    ``Mxfp4Config(dequantize=True)``); the weight format and kernel path are read back from the
    loaded model, and a path other than the one preflight expected is refused unless the
    report allows fallbacks."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = resolve(spec, revision)
    device = resolve_device(device)
    check_available(source)
    token = os.environ.get("HF_TOKEN") or None
    trust = bool(getattr(source.entry, "trust_remote_code", False))
    common = dict(revision=source.revision, token=token, trust_remote_code=trust)
    location = source.location
    if source.kind == "gguf":  # transformers reads and dequantizes the file itself
        from harness.loading.gguf import load_kwargs

        location, gguf_kwargs = load_kwargs(Path(source.location))
        common.update(gguf_kwargs)
    t0 = time.perf_counter()
    try:
        config = AutoConfig.from_pretrained(location, **common)
        torch_dtype = resolve_dtype(dtype, source, config)
        kwargs = dict(common, dtype=torch_dtype)
        kwargs.update(dict(getattr(source.entry, "load_kwargs", ()) or ()))
        if preflight is not None:
            kwargs.update(preflight.load_kwargs)
        if device == "cuda":
            kwargs["device_map"] = "auto"
        tok_kwargs = dict(common)
        if source.kind == "gguf":  # each config read parses the whole file (~9 s for 135M)
            kwargs["config"] = tok_kwargs["config"] = config
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(location, **tok_kwargs)
    except HarnessError:
        raise
    except Exception as err:
        translated = _translate_load_error(err, source)
        if translated is not None:
            raise translated from None
        raise
    model.eval()
    if device == "cuda":
        _refuse_offloading(model, source)
    config = model.config
    meta = {
        "id": source.id,
        "source": {
            "kind": source.kind,
            "hub_id": source.location if "hub" in source.kind else None,
            "path": source.location if source.kind in ("local", "tiny", "gguf") else None,
            "revision": source.revision,
            "commit": getattr(config, "_commit_hash", None),
        },
        "requested_dtype": str(torch_dtype).replace("torch.", ""),
        "load_seconds": round(time.perf_counter() - t0, 3),
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "experts_implementation": getattr(config, "_experts_implementation", None),
        "quantization": _quantization(model),
    }
    if source.entry is not None:
        meta["group"] = source.entry.group
    _record_kernel_path(meta, model, preflight, source)
    if source.kind == "gguf":
        from harness.loading.gguf import describe

        gguf = describe(Path(source.location))
        meta["source"]["gguf"] = gguf
        meta["weight_format"] = (
            f"gguf {gguf['quantization']} (dequantized to {meta['requested_dtype']})"
        )
        meta["quantization"] = {"quant_method": "gguf", "file_type": gguf["quantization"]}
    return LoadedModel(model, tokenizer, source, meta)


def _refuse_offloading(model, source: ModelSource) -> None:
    offloaded = sorted(
        {str(v) for v in (getattr(model, "hf_device_map", None) or {}).values()} & {"cpu", "disk"}
    )
    if offloaded:
        raise HarnessError(
            f"{source.id} does not fit on the GPUs here and would be offloaded to "
            f"{' and '.join(offloaded)} (slow, and not the run you asked for); use more or larger "
            "GPUs (--runpod) or a smaller --dtype."
        )


def _record_kernel_path(meta: dict, model, preflight, source: ModelSource) -> None:
    """meta["weight_format"] / ["kernel_path"] as loaded; refuse an unexpected fallback."""
    from harness.loading.kernel_path import kernel_path_of

    actual = kernel_path_of(model)
    meta["weight_format"] = actual["weight_format"]
    meta["kernel_path"] = actual["kernel_path"]
    if actual["experts_implementation"]:
        meta["experts_implementation"] = actual["experts_implementation"]
    if preflight is None:
        return
    meta["preflight"] = preflight.provenance()
    expected = preflight.facts.get("kernel_path")
    if expected and expected != actual["kernel_path"] and not preflight.allow_fallback:
        raise HarnessError(
            f"{source.id} loaded on the {actual['kernel_path']!r} path although preflight expected "
            f"{expected!r}; check the GPU and packages, or pass --allow-fallback to run it labelled."
        )


def _quantization(model) -> dict | None:
    q = getattr(model.config, "quantization_config", None)
    if q is None:
        return None
    q = q.to_dict() if hasattr(q, "to_dict") else dict(q)
    return {k: q.get(k) for k in ("quant_method", "dequantize") if k in q}


def free(loaded: LoadedModel | None) -> None:
    """Drop a model and give its memory back (between model tests)."""
    import gc

    if loaded is not None:
        loaded.model = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
