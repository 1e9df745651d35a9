import os
import sys
from importlib.util import find_spec

import pytest

# The hub is never needed for the offline default; real-model tests skip with a reason.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ("harness.plugin",)

# what a run imports (the plugin imports them lazily, so a Python without the project would
# otherwise stop with a traceback from deep inside)
_NEEDED = ("torch", "transformers", "datasets", "numpy", "scipy", "tabulate", "matplotlib")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    missing = [m for m in _NEEDED if find_spec(m) is None]
    if missing:
        raise pytest.UsageError(
            f"{', '.join(missing)} not installed in this Python ({sys.executable}); install the "
            "project first: pip install torch==2.13.0 && pip install -e . (see README.md)."
        )
