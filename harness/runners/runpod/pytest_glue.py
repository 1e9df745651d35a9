"""What the pytest plugin needs from a pytest session to run its models on RunPod.

``make_runner(session, entries)`` (``session`` is ``harness.session.OutlierSession``) builds a
prepared ``RunpodRunner``:

- each pod runs exactly the tests that were selected here for its model: their node ids, plus
  every option of this invocation except the selection (paths, ``-k``, ``-m``), our ``--runpod*``
  / ``--rerun`` options and the paths the pod sets itself (results dir, benchmark JSON);
- a model whose result (same revision, data spec, criteria and dtype) is already in the results
  directory is not run again unless ``--rerun`` (``expected_run``);
- progress lines go to pytest's terminal reporter.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.runners.resume import expected_run
from harness.runners.runpod.options import options_from_config, strip_forwarded_args
from harness.runners.runpod.ship import project_root

_SELECTION_VALUE = {"-k", "-m", "--deselect", "--ignore", "--ignore-glob"}


def forwarded_args(config) -> list[str]:
    """This invocation's arguments minus the selection and the options a pod must not get."""
    raw = [str(a) for a in config.invocation_params.args]
    positional = {str(p) for p in (getattr(config.option, "file_or_dir", None) or [])}
    out, i = [], 0
    while i < len(raw):
        a = raw[i]
        name = a.split("=", 1)[0]
        if a in _SELECTION_VALUE:
            i += 2
            continue
        if name in _SELECTION_VALUE or (a[:2] in ("-k", "-m") and len(a) > 2 and a[1] != "-"):
            i += 1  # --deselect=x, -kEXPR, -mEXPR
            continue
        if a in positional:
            i += 1
            continue
        out.append(a)
        i += 1
    return strip_forwarded_args(out)


def node_ids_by_entry(config, project_dir: Path) -> dict[str, list[str]]:
    """Node ids (relative to the project root, as on the pod) of the selected items, per model."""
    session = config.pluginmanager.get_plugin("session")
    by: dict[str, list[str]] = {}
    for item in getattr(session, "items", None) or []:
        callspec = getattr(item, "callspec", None)
        entry = callspec.params.get("model_entry") if callspec is not None else None
        if entry is None:
            continue
        rel = Path(os.path.relpath(item.path, project_dir)).as_posix()
        rest = item.nodeid.split("::", 1)[1] if "::" in item.nodeid else ""
        by.setdefault(entry.id, []).append(f"{rel}::{rest}" if rest else rel)
    return by


class TerminalLines:
    """Writes a line to pytest's terminal even while output is captured (as live logging does);
    the runner calls it from the main thread only."""

    def __init__(self, config):
        self.tr = config.pluginmanager.get_plugin("terminalreporter")
        self.capman = config.pluginmanager.get_plugin("capturemanager")

    def write_line(self, text: str) -> None:
        if self.tr is None:
            print(text, flush=True)
            return
        if self.capman is None:
            self.tr.write_line(text)
            return
        with self.capman.global_and_fixture_disabled():
            self.tr.ensure_newline()
            self.tr.write_line(text)
            self.tr.flush()


def make_runner(session, entries):
    """A prepared ``RunpodRunner`` for the plugin's session (see the module docstring)."""
    from harness.runners.runpod.runner import RunpodRunner

    config = session.config
    project_dir = project_root()
    base = forwarded_args(config)
    node_ids = node_ids_by_entry(config, project_dir)

    def pytest_args_for(entry) -> list[str]:
        ids = node_ids.get(entry.id)
        if ids:
            return [*base, *sorted(set(ids))]
        return [*base, "-k", entry.id]  # not from a collected item: best effort

    runner = RunpodRunner(
        options_from_config(config),
        session.options.results_dir,
        pytest_args_for,
        reporter=TerminalLines(config),
        expected_for=lambda e: expected_run(session.options_for(e), e),
        project_dir=project_dir,
        exclude=(getattr(session, "reports_dir", "reports"),),
    )
    runner.prepare(entries)
    return runner
