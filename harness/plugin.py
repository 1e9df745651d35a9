"""The pytest plugin: options, model parametrization, fixtures and the end-of-session report.

Hooks stay a few lines each; the work is done by ``harness.session.OutlierSession``.
"""

from __future__ import annotations

import pytest

from harness.options import add_to_pytest


def pytest_addoption(parser):
    group = parser.getgroup("outliers", "outlier-feature analysis")
    add_to_pytest(group, parser)
    group.addoption(
        "--reports-dir",
        dest="outliers_reports_dir",
        default="reports",
        help="where summary.md/csv/json and plots/ are written",
    )
    group.addoption(
        "--expect-published",
        dest="outliers_expect_published",
        action="store_true",
        help="fail a model whose count deviates from the published one beyond "
        "--published-tolerance (only when the run used the published settings)",
    )
    group.addoption(
        "--allow-fallback",
        dest="outliers_allow_fallback",
        action="store_true",
        help="let a model run on a dequantized or slow reference path (labelled in its result) "
        "instead of refusing it in preflight",
    )
    group.addoption(
        "--published-tolerance",
        dest="outliers_published_tolerance",
        default=None,
        help="relative tolerance for --expect-published (default 0.25)",
    )
    from harness.runners.runpod.options import add_runpod_options

    add_runpod_options(group)


def pytest_configure(config):
    from harness.errors import HarnessError
    from harness.models.registry import GROUP_MARKERS
    from harness.session import OutlierSession

    for group, what in GROUP_MARKERS.items():  # one marker per study group (-m moe, ...)
        config.addinivalue_line("markers", f"{group}: {what}")

    try:
        config._outliers = OutlierSession(config)
    except HarnessError as err:  # a bad option value: a usage error (rc 4) with its sentence
        raise pytest.UsageError(str(err)) from None


def pytest_generate_tests(metafunc):
    if "model_entry" not in metafunc.fixturenames:
        return
    from harness import models

    params = []
    for entry in models.ENTRIES:
        marks = [getattr(pytest.mark, entry.group)]
        if not entry.offline:
            marks.append(pytest.mark.gpu)
        params.append(pytest.param(entry, id=entry.id, marks=marks))
    # module scope: one load per model, shared by every test of the module
    metafunc.parametrize("model_entry", params, scope="module")


def pytest_collection_finish(session):
    config = session.config
    entries = [
        item.callspec.params["model_entry"]
        for item in session.items
        if hasattr(item, "callspec") and "model_entry" in item.callspec.params
    ]
    config._outliers.prepare(entries)


def _model_skips(terminalreporter) -> list[str]:
    """'<model id>: <reason>' for every skipped model test, once per model (the README promises
    one sentence, which pytest shows only with -rs)."""
    from harness import models

    seen: dict[str, str] = {}
    for rep in terminalreporter.stats.get("skipped", []):
        model_id = rep.nodeid.rsplit("[", 1)[-1].rstrip("]") if "[" in rep.nodeid else None
        if model_id not in models.REGISTRY or model_id in seen:
            continue
        longrepr = rep.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        seen[model_id] = reason.removeprefix("Skipped: ")
    return [f"{m}: {r}" for m, r in seen.items()]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    sess = getattr(config, "_outliers", None)
    if sess is None:
        return
    skips = _model_skips(terminalreporter)
    if skips:
        terminalreporter.write_sep("=", f"{len(skips)} model(s) skipped")
        for line in skips:
            terminalreporter.write_line(line)
    if sess.reused:
        terminalreporter.write_sep("=", f"{len(sess.reused)} model(s) reused")
        for model_id, kept in sess.reused.items():
            terminalreporter.write_line(
                f"{model_id}: kept {kept.result_dir} (same revision, data, criteria and dtype; "
                "--rerun runs it again)"
            )
    if not sess.outcomes:
        return
    paths, text = sess.write_reports()
    if text:
        terminalreporter.write_sep("=", "outlier features")
        terminalreporter.write_line(text)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    # records measured on a pod replace the local ones (which only timed the wait)
    sess = getattr(config, "_outliers", None)
    remote = [o.benchmark for o in (sess.outcomes.values() if sess else ()) if o.benchmark]
    if remote:
        from harness.runners.runpod.bring_home import merge_benchmark_json

        merge_benchmark_json(output_json, remote)


def pytest_unconfigure(config):
    sess = getattr(config, "_outliers", None)
    if sess is not None:
        sess.close()


@pytest.fixture(scope="session")
def outliers_session(request):
    return request.config._outliers


@pytest.fixture(scope="module")
def loaded_model(model_entry, outliers_session):
    loaded = outliers_session.load(model_entry)
    yield loaded
    outliers_session.free(loaded)


@pytest.fixture
def token_windows(model_entry, loaded_model, outliers_session):
    return outliers_session.windows(model_entry, loaded_model)
