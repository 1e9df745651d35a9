"""outlier-harness: outlier features of any Hugging Face causal LM, by Dettmers et al.'s criteria.

The notebook API (imported lazily: ``import harness`` loads neither torch nor transformers)::

    import harness

    loaded = harness.load("smollm2_135m")                    # registry id, hub id, dir or .gguf
    windows = harness.load_windows(loaded.tokenizer, harness.DataSpec("builtin", num_seqs=4,
                                                                      seq_len=128))
    result = harness.analyze(loaded.model, windows)          # one forward pass per batch
    result.seed_compatible.num_outliers, result.pooled.num_dims   # typed records (engine.result)
    harness.evaluate(result.stats, harness.Criteria(4.0, 0.25, 0.06))   # re-threshold offline
    harness.read_result("results/<model>/<run>")            # the same AnalysisResult, read back

``analyze`` accepts any causal LM module and an [N, T] tensor of token ids (or ``Windows``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from pathlib import Path

# public name -> module that defines it
_API = {
    "analyze": "pipeline",
    "AnalysisResult": "engine.result",
    "load": "loading.load",
    "load_windows": "data.windows",
    "DataSpec": "data.windows",
    "Windows": "data.windows",
    "read_result": "engine.result_files",
    "read_stats": "engine.result_files",
    "evaluate": "engine.criteria",
    "Criteria": "engine.criteria",
    "find_sites": "engine.sites",
    "HarnessError": "errors",
}

__all__ = sorted(_API)


class _RegistryFolder(importlib.abc.MetaPathFinder):
    """``harness.models`` from the repository's ``models/`` folder for a checkout used without
    installing it (a pod's unpacked tree, ``benchmarks/gpu_check.py``); an installed harness
    (pyproject maps ``harness.models`` to that folder) never reaches this finder."""

    folder = Path(__file__).resolve().parent.parent / "models"

    def find_spec(self, name, path=None, target=None):
        if name != "harness.models" or not (self.folder / "__init__.py").is_file():
            return None
        init = self.folder / "__init__.py"
        return importlib.util.spec_from_file_location(
            name, init, submodule_search_locations=[str(self.folder)]
        )


if not any(isinstance(f, _RegistryFolder) for f in sys.meta_path):
    sys.meta_path.append(_RegistryFolder())


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
