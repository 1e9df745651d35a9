import os

# The hub is never needed for the offline default; real-model tests skip with a reason.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ("harness.plugin",)
