"""RunPod sweeps: ``pytest ... --runpod`` runs the selected model tests on rented GPU pods.

Public surface (the pytest plugin and the ``outliers`` CLI use these):

- ``add_runpod_options(group)``, ``options_from_config(config)``, ``RunpodOptions``
- ``RunpodRunner(options, results_dir, pytest_args_for, reporter, expected_for=...)``
- ``dry_run_table(entries, options)``, ``plan_table(rows)``
- ``merge_benchmark_json(output_json, remote_records)``, ``same_run(a, b)``
- ``pods_command(terminate=..., all=...)`` and the functions under it in ``pods``

Importing this package does not import the ``runpod`` SDK or paramiko; they load on first use.
"""

from harness.runners.resume import same_run
from harness.runners.runpod.collect import merge_benchmark_json
from harness.runners.runpod.options import (
    DEFAULT_IMAGE,
    RunpodOptions,
    Timings,
    add_runpod_options,
    options_from_config,
    strip_forwarded_args,
)
from harness.runners.runpod.plan import make_plans, plan_rows, plan_table

__all__ = [
    "DEFAULT_IMAGE",
    "RunpodOptions",
    "RunpodRunner",
    "Timings",
    "add_runpod_options",
    "dry_run_table",
    "make_plans",
    "merge_benchmark_json",
    "options_from_config",
    "plan_rows",
    "plan_table",
    "pods_command",
    "same_run",
    "strip_forwarded_args",
]


def __getattr__(name):  # lazy: the runner pulls in the SDK and paramiko
    if name in ("RunpodRunner", "dry_run_table"):
        from harness.runners.runpod import runner

        return getattr(runner, name)
    if name == "pods_command":
        from harness.runners.runpod.pods import pods_command

        return pods_command
    raise AttributeError(name)
