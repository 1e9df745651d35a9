"""The pytest selection a fake pod runs for one model (see remote_suite.py)."""


def fake_args(model: str, mode: str) -> list[str]:
    return [
        "test_outliers/runpod_fakes/remote_suite.py",
        "-p",
        "test_outliers.runpod_fakes.remote_plugin",
        "--noconftest",
        "-p",
        "no:hypothesispytest",
        "-q",
        "-s",
        "--fake-model",
        model,
        "--fake-mode",
        mode,
        "--runpod-keep",
        "--rerun",
        "--runpod-gpu=X",  # ours: stripped before forwarding
    ]
