"""Values shared by the RunPod tests: the run's (fake) secrets and its quick timings."""

import getpass
import secrets
from pathlib import Path

# Secret values of the test run: recognisable, never real.
USER_KEY = "rpa_TESTUSERKEY_" + secrets.token_hex(8)
HF_TOKEN = "hf_TESTTOKEN_" + secrets.token_hex(8)
REPO = Path(__file__).resolve().parents[2]

FAST = {  # OUTLIERS_RUNPOD_<NAME>: keeps the whole RunPod test set quick
    "poll_s": "0.2",
    "ready_timeout_s": "10",
    "ssh_timeout_s": "4",
    "reconnect_timeout_s": "15",
    "command_timeout_s": "30",
    "api_retries": "4",
    "backoff_s": "0.05",
    "adopt_polls": "3",
    "adopt_wait_s": "0.3",
    "watchdog_poll_s": "0.2",
    "watchdog_grace_s": "60",
    "watchdog_slack_s": "0",
    "close_join_s": "20",
    "ssh_user": getpass.getuser(),
}
