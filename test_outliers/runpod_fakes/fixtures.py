"""pytest fixtures of the RunPod tests: a fake API with real-sshd pods, credentials, timings.

Test modules load them with ``pytest_plugins = ["runpod_fakes.fixtures"]``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from .fake_api import FakeRunpod
from .sshd import keygen, sshd_available
from .values import FAST, HF_TOKEN, USER_KEY


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory) -> Path:
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    return keygen(tmp_path_factory.mktemp("userkey") / "id_ed25519")


@pytest.fixture
def fake_runpod(tmp_path, ssh_key):
    fake = FakeRunpod(
        tmp_path / "fake", USER_KEY, sys.executable, pod_env={"HF_HUB_OFFLINE": "1"}
    ).start()
    yield fake
    fake.stop()


@pytest.fixture
def runpod_env(fake_runpod, ssh_key, tmp_path, monkeypatch) -> dict:
    """The environment of a RunPod run against the fake (also applied to this process)."""
    env = {
        "RUNPOD_API_BASE_URL": fake_runpod.url,
        "RUNPOD_REST_BASE_URL": fake_runpod.url + "/v1",
        "RUNPOD_API_KEY": USER_KEY,
        "HF_TOKEN": HF_TOKEN,
        "SSH_KEY_PATH": str(ssh_key),
        "OUTLIERS_STATE_DIR": str(tmp_path / "state"),
        "HF_HUB_OFFLINE": "1",
        **{f"OUTLIERS_RUNPOD_{k.upper()}": v for k, v in FAST.items()},
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)  # no stray .env of the checkout
    return {**os.environ, **env}
