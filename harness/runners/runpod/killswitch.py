"""The deadline every pod carries from its first second: a timer in the pod's start command.

The watchdog (``podside.py``) only runs once SSH works, which can take many minutes after the pod
starts billing; a closed terminal, a SIGKILL or a power cut before that would leave a pod with
nothing to stop it. So the create call itself sets the container's start command (the SDK's
``docker_args``, RunPod's "Docker command"): a shell script that forks a timer and then runs the
image's normal start (``/start.sh`` in RunPod's images: sshd, then sleep). The timer removes the
pod with the pod's own credentials (``RUNPOD_POD_ID``, ``RUNPOD_API_KEY`` of the container
environment) at an absolute time, so a container restart re-arms the same deadline instead of a
new one.

The SDK pastes ``docker_args`` into the GraphQL string between double quotes without escaping
(``runpod/api/mutations/pods.py``), so the script travels base64-encoded inside a command that
holds no double quote, backslash or newline.
"""

from __future__ import annotations

import base64
import re

USER_AGENT = "outlier-harness/0.1 (+runpod pod kill switch)"
# The timer and its log live outside /workspace: a network volume there outlives the pod.
SCRIPT_PATH = "${TMPDIR:-/tmp}/outliers-killswitch.sh"
LOG_PATH = "${TMPDIR:-/tmp}/outliers-killswitch.log"

_SCRIPT = r"""#!/bin/sh
# outlier-harness kill switch: the pod ends itself at DEADLINE (epoch seconds), whatever happens
# to the machine that created it.
DEADLINE=__DEADLINE__
ACTION=__ACTION__
LOG="__LOG__"
BASE="${RUNPOD_API_BASE_URL:-https://api.runpod.io}"
end_pod() {
  if [ "$ACTION" = stop ]; then M=podStop; F=' { id }'; V=stop; else M=podTerminate; F=''; V=remove; fi
  Q="{\"query\": \"mutation { $M(input: {podId: \\\"$RUNPOD_POD_ID\\\"})$F }\"}"
  if command -v curl >/dev/null 2>&1; then
    OUT=$(curl -sS -m 30 -X POST -H 'Content-Type: application/json' -A '__UA__' \
      -H "Authorization: Bearer $RUNPOD_API_KEY" --data "$Q" "$BASE/graphql" 2>&1) &&
      case "$OUT" in *'"errors"'*) ;; *'"data"'*) echo "$M: done" >> "$LOG"; return 0 ;; esac
    echo "$M failed: $(echo "$OUT" | head -c 200)" >> "$LOG"
    if [ "$M" = podStop ]; then ACTION=terminate; fi  # a pod with a network volume cannot stop
  fi
  if command -v runpodctl >/dev/null 2>&1 && runpodctl $V pod "$RUNPOD_POD_ID" >> "$LOG" 2>&1; then
    echo "runpodctl $V: done" >> "$LOG"; return 0
  fi
  return 1
}
(
  echo "armed: deadline $DEADLINE, action $ACTION" >> "$LOG"
  while :; do
    LEFT=$((DEADLINE - $(date +%s)))
    [ "$LEFT" -le 0 ] && break
    if [ "$LEFT" -gt 30 ]; then sleep 30; else sleep "$LEFT"; fi
  done
  echo "deadline passed: ending the pod" >> "$LOG"
  N=0
  until end_pod; do N=$((N + 1)); [ "$N" -ge 60 ] && break; sleep 30; done
) < /dev/null > /dev/null 2>&1 &
if [ -x /start.sh ]; then exec /start.sh; fi
exec sleep infinity
"""


def script(deadline_epoch: float, action: str = "terminate") -> str:
    """The kill-switch shell script for a pod ending itself at ``deadline_epoch``."""
    if action not in ("terminate", "stop"):
        raise ValueError(f"kill switch action must be terminate or stop, not {action!r}")
    return (
        _SCRIPT.replace("__DEADLINE__", str(int(deadline_epoch)))
        .replace("__ACTION__", action)
        .replace("__LOG__", LOG_PATH)
        .replace("__UA__", USER_AGENT)
    )


def docker_args(deadline_epoch: float, action: str = "terminate") -> str:
    """The pod's start command: decode the script, run it (it then runs the image's start)."""
    b64 = base64.b64encode(script(deadline_epoch, action).encode()).decode()
    return f"bash -c 'echo {b64} | base64 -d > {SCRIPT_PATH} && exec sh {SCRIPT_PATH}'"


def deadline_of(args: str) -> int | None:
    """The deadline a start command made by ``docker_args`` carries (None: not ours)."""
    m = re.search(r"echo ([A-Za-z0-9+/=]+) \| base64 -d", args or "")
    if not m:
        return None
    try:
        text = base64.b64decode(m.group(1)).decode()
    except ValueError:
        return None
    d = re.search(r"^DEADLINE=(\d+)$", text, re.M)
    return int(d.group(1)) if d else None
