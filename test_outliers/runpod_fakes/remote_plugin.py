"""Options of the fake remote suite, loaded with ``-p test_outliers.runpod_fakes.remote_plugin``.

``--results-dir`` is the harness plugin's option; it is declared here only when no other plugin
or conftest declared it (checked after they have all loaded), so the fake suite runs with or
without the harness plugin.
"""

import pytest

OPTIONS = (
    ("--results-dir", {"default": "results"}),
    ("--fake-model", {"default": None}),
    ("--fake-mode", {"default": "ok"}),
)


@pytest.hookimpl(hookwrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    yield
    for name, kwargs in OPTIONS:
        try:
            parser.addoption(name, action="store", **kwargs)
        except ValueError:  # already declared by the harness plugin
            pass


def pytest_benchmark_generate_machine_info(config):
    """Skip py-cpuinfo's slow probe (about a second per run); fake pods all look alike."""
    import platform

    return {
        "node": platform.node(),
        "machine": platform.machine(),
        "system": "fake-pod",
        "python_version": platform.python_version(),
        "cpu": {},
    }
