"""The deadline every pod carries from its first second: a timer in the pod's start command.

The watchdog (``podside.py``) only runs once SSH works, which can take many minutes after the pod
starts billing; a closed terminal, a SIGKILL or a power cut before that would leave a pod with
nothing to stop it. So the create call itself sets the container's start command (the SDK's
``docker_args``, RunPod's "Docker command"): a shell script that forks a timer and then runs the
image's normal start (``/start.sh`` in RunPod's images: sshd, then sleep). The timer removes the
pod with the pod's own credentials (``RUNPOD_POD_ID``, ``RUNPOD_API_KEY`` of the container
environment) at an absolute time, by GraphQL, then REST (``DELETE /v1/pods/{id}``: GraphQL is
to be retired in 2027), then ``runpodctl``; where the pod's key may not terminate, it stops the
pod, so a container restart re-arms the same deadline instead of a
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
REST="${RUNPOD_REST_BASE_URL:-https://rest.runpod.io/v1}"
# the key travels on curl's stdin (-H @-), never in its arguments (the process list)
gql() {
  Q="{\"query\": \"mutation { $1(input: {podId: \\\"$RUNPOD_POD_ID\\\"})$2 }\"}"
  OUT=$(printf 'Authorization: Bearer %s\n' "$RUNPOD_API_KEY" | curl -sS -m 30 -X POST \
    -H 'Content-Type: application/json' -A '__UA__' -H @- --data "$Q" "$BASE/graphql" 2>&1) &&
    case "$OUT" in *'"errors"'*) ;; *'"data"'*) echo "$1: done" >> "$LOG"; return 0 ;; esac
  echo "$1 failed: $(echo "$OUT" | head -c 200)" >> "$LOG"; return 1
}
rest() {
  CODE=$(printf 'Authorization: Bearer %s\n' "$RUNPOD_API_KEY" | curl -sS -m 30 -o /dev/null \
    -w '%{http_code}' -X "$1" -A '__UA__' -H @- "$REST/pods/$RUNPOD_POD_ID$2" 2>> "$LOG")
  case "$CODE" in 2*) echo "REST $1 /pods/{id}$2: done" >> "$LOG"; return 0 ;; esac
  echo "REST $1 /pods/{id}$2 failed: HTTP $CODE" >> "$LOG"; return 1
}
ctl() {
  command -v runpodctl >/dev/null 2>&1 || return 1
  runpodctl "$@" >> "$LOG" 2>&1 && echo "runpodctl $1 $2: done" >> "$LOG"
}
terminate_pod() {
  if command -v curl >/dev/null 2>&1; then gql podTerminate '' && return 0; rest DELETE '' && return 0; fi
  ctl pod delete "$RUNPOD_POD_ID" || ctl remove pod "$RUNPOD_POD_ID"
}
stop_pod() {
  if command -v curl >/dev/null 2>&1; then gql podStop ' { id }' && return 0; rest POST /stop && return 0; fi
  ctl pod stop "$RUNPOD_POD_ID" || ctl stop pod "$RUNPOD_POD_ID"
}
# terminate, else stop (a pod-scoped key may be allowed to stop only: the GPU bill ends, the
# disk's goes on until `outliers pods --terminate`); a kept pod is stopped, and terminated only
# when stopping failed for half an hour ($1: the attempt)
end_pod() {
  if [ "$ACTION" = stop ]; then
    stop_pod && return 0
    [ "$1" -ge 60 ] && terminate_pod
    return 1
  fi
  terminate_pod && return 0
  echo "could not terminate: stopping instead" >> "$LOG"
  stop_pod
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
  until end_pod "$N"; do N=$((N + 1)); [ "$N" -gt 60 ] && break; sleep 30; done
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
