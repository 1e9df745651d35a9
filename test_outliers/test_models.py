"""One test per registry model: run the analysis, record the metrics, check an honest run.

Selected with marks and ids: ``pytest -m tiny``, ``pytest -m moe``, ``pytest -k qwen3_0.6b``.
"""


def test_outlier_features(model_entry, loaded_model, token_windows, benchmark, outliers_session):
    outcome = outliers_session.run(model_entry, loaded_model, token_windows, benchmark)
    failures = outliers_session.check(model_entry, outcome, benchmark)
    assert not failures, "; ".join(failures)
