"""One pod's life inside a RunPod run: created with its kill switch, reached over SSH, its pytest
steps started and polled, its results fetched home. ``RunpodRunner`` (``runner.py``) owns the run
(the plan, the threads, the signals, termination); this mixin is the part that talks to one pod.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import threading
import time
from pathlib import Path

from harness.errors import HarnessError
from harness.runners import resume
from harness.runners.outcome import RunFailed, RunOutcome, RunSkipped
from harness.runners.runpod import bring_home, killswitch
from harness.runners.runpod.api import VOLUME_MOUNT, ApiError, env_value, has_key
from harness.runners.runpod.plan import (
    PodPlan,
    allowed_cuda_versions,
    safe_label,
)
from harness.runners.runpod.pods import host_tag, register_run
from harness.runners.runpod.ssh import Ssh, SshError


class PodLifecycle:
    """The per-pod steps of ``RunpodRunner`` (they use its api, options, redactor and log)."""

    def _create(self, task: PodTask, env: dict, gpu_types) -> str:
        """Create the pod (its kill switch armed in its start command); return its GPU type."""
        plan, t = task.plan, self.t
        # the backstop for a run that dies before the watchdog starts: every wait before the
        # SSH login, then the deadline, then the watchdog's slack
        backstop = t.ready_timeout_s + t.ssh_timeout_s + plan.max_minutes * 60 + t.watchdog_slack_s
        cuda = allowed_cuda_versions(plan.image)
        if task.attempt == 0:
            self._say(
                f"{task.label}: asking for hosts with CUDA {', '.join(cuda)} (the image's "
                f"{plan.image.rsplit(':', 1)[-1]} or newer, as RunPod lists them)"
                if cuda
                else f"{task.label}: any host CUDA (the image tag names none)"
            )
        try:
            pod, gpu = self.api.create(
                task.pod_name,
                gpu_types=tuple(gpu_types),
                count=plan.count,
                disk_gb=plan.disk_gb,
                image=plan.image,
                cloud=plan.cloud,
                env=env,
                volume=plan.volume,
                docker_args=killswitch.docker_args(time.time() + backstop, self._deadline_action()),
                cuda_versions=cuda,
                vcpus=plan.vcpus,
                memory_gb=plan.memory_gb,
                cancelled=self._cancel.is_set,
            )
        except ApiError as err:
            self._check_cancel(task)
            raise RunFailed(self.redact(f"{task.label}: no pod was created: {err}")) from None
        with task.lock:
            task.pod_id, task.gpu, task.created = pod["id"], gpu, time.monotonic()
            task.terminated, task.ended = False, None  # a pod given up on ended; this one not
            task.created_at = task.created_at or task.created
            rate = float(pod.get("costPerHr") or 0) or None
            task.segments.append(
                {"id": pod["id"], "gpu": gpu, "rate": rate, "start": task.created, "end": None}
            )
        with self._lock:
            self._run_info["pods"] = [x.pod_id for x in self.tasks if x.pod_id]
            register_run(self.run_id, self._run_info)
        self._say(
            f"{task.label}: pod {task.pod_id} created over {self.api.using} ({gpu} x "
            f"{plan.count}, kill switch at "
            f"{backstop / 60:.0f} min, deadline {plan.max_minutes:.0f} min from SSH login)"
        )
        if not has_key(env_value(pod.get("env"), "PUBLIC_KEY"), env.get("PUBLIC_KEY") or ""):
            self._terminate(task)
            raise RunFailed(
                f"{task.label}: RunPod replaced our PUBLIC_KEY in pod {task.pod_id} (the "
                "account's own SSH keys were injected), so this run could not log in; the pod "
                "was terminated. Remove the account's SSH keys in RunPod's settings or set "
                "SSH_KEY_PATH to one of them."
            )
        return gpu

    def _lifecycle(self, task: PodTask) -> None:
        """Create -> running -> SSH -> watchdog -> tree -> detached job -> poll -> fetch."""
        self._check_cancel(task)
        endpoint, info = self._create_until_running(task)
        task.endpoint = endpoint
        task.rate = float(info.get("costPerHr") or 0) or None
        if task.rate and task.segments:
            task.segments[-1]["rate"] = task.rate
        ssh = self._log_in(task, endpoint)
        # the deadline counts from here: image pull and scheduling are not the run's time
        deadline = time.monotonic() + task.plan.max_minutes * 60
        self._say(f"{task.label}: pod {task.pod_id} reachable at {ssh.address}")
        self._check_cancel(task)
        self._start_watchdog(task, deadline)  # 1. before anything else
        self._checked(  # 2. the working tree
            task,
            _remote(task.name) + '"$PY" "$R/podside.py" unpack "$R/tree"',
            self._tarball,
            "shipping the working tree",
        )
        self._start_job(task)  # 3. detached from this SSH session
        self._say(f"{task.label}: job started on pod {task.pod_id}")
        status = self._poll(task, deadline)
        self._fetch(task, status)

    def _create_until_running(self, task: PodTask):
        """A pod whose container runs: the next GPU type after one whose host had no runtime
        (that pod terminated first); (endpoint, pod info)."""
        plan, t = task.plan, self.t
        env = {
            "PUBLIC_KEY": self._creds.public_key,
            "OUTLIERS_RUN_ID": self.run_id,
            "OUTLIERS_HOST": host_tag(),  # which machine's pod (`outliers pods`)
        }
        if self._creds.pod_hf_token():
            env["HF_TOKEN"] = self._creds.pod_hf_token()  # pod environment, never a command line
        if plan.volume:
            env["HF_HOME"] = f"{VOLUME_MOUNT}/hf-cache"  # the volume: the hub cache only
        types = list(plan.gpu_types)
        while True:
            gpu = self._create(task, env, types)
            self._check_cancel(task)
            try:
                return self.api.wait_ready(
                    task.pod_id, time.monotonic() + t.ready_timeout_s, self._cancel.is_set
                )
            except ApiError as err:
                self._check_cancel(task)
                rest = types[types.index(gpu) + 1 :] if gpu in types else []
                if err.kind not in ("no-runtime", "no-ssh-port") or not rest:
                    raise RunFailed(self.redact(f"{task.label}: {err}")) from None
                old = task.pod_id
                if not self._terminate(task):
                    raise RunFailed(
                        self.redact(f"{task.label}: {err}; it could not be terminated")
                    ) from None
                task.discarded.append(old)
                task.attempt += 1  # a new name: a late-listed create can never adopt this one
                self._say(f"{task.label}: {err}; terminated it, trying {rest[0]}")
                types = rest

    def _log_in(self, task: PodTask, endpoint) -> Ssh:
        t = self.t
        ssh = task.ssh = Ssh(
            endpoint.host,
            endpoint.port,
            t.ssh_user,
            self._key,
            connect_timeout=min(15.0, max(1.0, t.ssh_timeout_s)),
        )
        try:
            ssh.connect_until(
                time.monotonic() + t.ssh_timeout_s,
                self._cancel.is_set,
                pause=min(2.0, max(0.05, t.poll_s)),
            )
        except SshError as err:
            self._check_cancel(task)
            text = str(err).lower()
            why = (
                "it refused our key: check SSH_KEY_PATH"
                if "authentication" in text or "auth" in text.split()
                else "nothing answered with SSH there: the image may start no sshd (RunPod's "
                "images start it in /start.sh, which the pod's start command runs; an image "
                "without /start.sh has none: use a RunPod image with --runpod-image), or retry"
            )
            raise RunFailed(
                f"{task.label}: pod {task.pod_id} never accepted SSH at {ssh.address} within "
                f"{t.ssh_timeout_s:.0f}s ({why}); it was terminated."
            ) from None
        return ssh

    def _start_watchdog(self, task: PodTask, deadline: float) -> None:
        """The kill switch's "armed" line in its log (a pod whose start command did not run
        has no backstop: it is not kept), the pod's python, then the watchdog's own API path
        checked once with the pod's key (a pod that cannot reach the API cannot end itself),
        then the watchdog."""
        t = self.t
        remaining = max(1.0, deadline - time.monotonic() + t.watchdog_slack_s)
        on_end = "none" if self.options.keep else "terminate"
        on_deadline = self._deadline_action()
        self._checked(
            task,
            _remote(task.name)
            + KILL_SWITCH_ARMED
            + FIND_PYTHON
            + (
                'cat > "$R/podside.py" && "$PY" "$R/podside.py" selfcheck "$R" && '
                f'($S nohup "$PY" "$R/podside.py" watchdog "$R" --deadline-in {remaining:.0f} '
                f"--grace {t.watchdog_grace_s:g} --poll {t.watchdog_poll_s:g} --on-end {on_end} "
                f"--on-deadline {on_deadline} --start-grace {t.watchdog_start_grace_s:g} "
                '> "$R/watchdog.out" 2>&1 < /dev/null &) && echo ok'
            ),
            PODSIDE_SOURCE,
            "starting the watchdog",
        )

    def _start_job(self, task: PodTask) -> None:
        extras = pod_extras(task.plan.entries)
        git = self._git
        spec = {
            "run_id": self.run_id,
            "extras": extras,
            "build_with_torch": pod_build_with_torch(extras),
            "git_sha": git.get("sha"),
            "git_dirty": bool(git.get("dirty")),
            "steps": [
                {"label": safe_label(e.id), "model": e.id, "args": self._steps[e.id]}
                for e in task.plan.entries
            ],
        }
        self._checked(
            task,
            _remote(task.name)
            + (
                'cat > "$R/job.json" && '
                '($S nohup "$PY" "$R/podside.py" job "$R" > "$R/job.out" 2>&1 < /dev/null &) && '
                "echo started"
            ),
            json.dumps(spec).encode(),
            "starting the job",
        )

    def _checked(self, task: PodTask, command: str, stdin: bytes | None, what: str) -> bytes:
        try:
            code, out, err = task.ssh.run(command, stdin, timeout=self.t.command_timeout_s)
        except SshError as e:
            self._check_cancel(task)
            raise RunFailed(f"{task.label}: {what} on pod {task.pod_id} failed: {e}") from None
        if code != 0:
            msg = self.redact(" | ".join(err.decode(errors="replace").strip().splitlines()[-3:]))
            raise RunFailed(
                f"{task.label}: {what} on pod {task.pod_id} failed (exit {code}): {msg}"
            )
        return out

    def _status(self, task: PodTask) -> dict:
        ssh = task.ssh
        if not ssh.alive:
            ssh.connect()
        code, out, err = ssh.run(
            _remote(task.name) + STATUS_SH, timeout=min(120.0, self.t.command_timeout_s)
        )
        if code != 0:
            raise SshError(f"status command exit {code}")
        state_text, alive, tail = (out.decode(errors="replace").split("\n@@@\n", 2) + ["", ""])[:3]
        state = json.loads(state_text or "{}")
        return {
            "phase": state.get("phase", "starting"),
            "exit_codes": state.get("exit_codes", {}),
            "job_alive": alive.strip() == "alive",
            "tail": tail.splitlines(),
        }

    def _poll(self, task: PodTask, deadline: float) -> dict:
        t = self.t
        down_since = None
        shown = None
        started = time.monotonic()
        while True:
            self._check_cancel(task)
            if time.monotonic() >= deadline:
                tail = ""
                try:
                    tail = "\n".join(self._status(task).get("tail", [])[-TAIL_LINES:])
                except (SshError, ValueError, OSError):
                    pass
                raise RunFailed(
                    self.redact(
                        f"{task.label}: pod {task.pod_id} passed its deadline of "
                        f"{task.plan.max_minutes:g} min (--runpod-max-minutes) and was terminated; "
                        f"last lines of its log:\n{tail}"
                    )
                )
            try:
                st = self._status(task)
                if down_since is not None:
                    self._say(f"{task.label}: reconnected to pod {task.pod_id}")
                down_since = None
            except (SshError, ValueError, OSError):
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    self._say(
                        f"{task.label}: lost the connection to pod {task.pod_id}; the job "
                        "goes on there, reconnecting"
                    )
                self._check_pod_alive(task)
                if now - down_since > t.reconnect_timeout_s:
                    raise RunFailed(
                        f"{task.label}: pod {task.pod_id} unreachable over SSH for "
                        f"{now - down_since:.0f}s; it was terminated."
                    ) from None
                self._cancel.wait(min(t.poll_s, 2.0))
                continue
            line = next((x for x in reversed(st.get("tail") or []) if x.strip()), "")
            key = (st.get("phase"), line)
            if key != shown:
                shown = key
                elapsed = _fmt_seconds(time.monotonic() - task.created)
                cost = (
                    f", ${task.rate * (time.monotonic() - task.created) / 3600:.2f}"
                    if task.rate
                    else ""
                )
                self._say(
                    f"{task.label} [{task.pod_id} {elapsed}{cost}] {st.get('phase')}: "
                    f"{line.strip()[:110]}"
                )
            if st.get("phase") == "done":
                return st
            if not st.get("job_alive") and (
                st.get("phase") != "starting" or time.monotonic() - started > 60 + 3 * t.poll_s
            ):
                st["phase"] = "lost"  # the job process is gone without writing its end
                return st
            self._cancel.wait(t.poll_s)

    def _check_pod_alive(self, task: PodTask) -> None:
        try:
            pod = self.api.get(task.pod_id)
        except ApiError as err:
            if err.kind != "notfound":
                return  # the API is out of reach: nothing says the pod is gone
            pod = None  # "pod not found": gone
        status = None if pod is None else pod.get("desiredStatus")
        if status in (None, "EXITED", "TERMINATED"):
            task.terminated = status in (None, "TERMINATED")
            raise RunFailed(
                f"{task.label}: pod {task.pod_id} was stopped from elsewhere (status "
                f"{status or 'gone'}: its watchdog, the RunPod console or `outliers pods`)."
            )

    def _fetch(self, task: PodTask, st: dict) -> None:
        data = self._pack(task)
        stage = self.results_dir / ".runpod-incoming" / task.name
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                _extract(tar, stage)
            logs = self.results_dir / LOGS_DIR / self.run_id / task.label
            logs.mkdir(parents=True, exist_ok=True)
            task.runtime = (resume.read_json(stage / "state.json") or {}).get("image")
            for src, dst in (
                ("job.log", "pod.log"),
                ("watchdog.log", "watchdog.log"),
                ("state.json", "state.json"),
            ):
                if (stage / src).is_file():
                    (logs / dst).write_text(self.redact((stage / src).read_text(errors="replace")))
            installed = bring_home.install_results(stage / "out" / "results", self.results_dir)
            try:  # the results are home: the watchdog may now stop the pod
                task.ssh.run(_remote(task.name) + 'touch "$R/fetched"', timeout=30)
            except SshError:
                pass
            log_text = (logs / "pod.log").read_text() if (logs / "pod.log").is_file() else ""
            for e in task.plan.entries:
                task.outcomes[e.id] = self._outcome(task, e, st, stage, logs, log_text, installed)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _pack(self, task: PodTask) -> bytes:
        """The pod's results as a tarball; the pod's watchdog waits (grace period) for this
        fetch, and a dropped connection is retried."""
        until = time.monotonic() + self.t.reconnect_timeout_s
        while True:
            self._check_cancel(task)
            try:
                if not task.ssh.alive:
                    task.ssh.connect()
                code, data, err = task.ssh.run(
                    _remote(task.name) + '"$PY" "$R/podside.py" pack "$R"',
                    timeout=self.t.command_timeout_s,
                )
            except SshError as e:
                if time.monotonic() >= until:
                    raise RunFailed(
                        f"{task.label}: fetching results from pod {task.pod_id} failed: {e}"
                    ) from None
                self._check_pod_alive(task)
                self._cancel.wait(min(self.t.poll_s, 2.0))
                continue
            if code != 0:
                tail = self.redact(err.decode(errors="replace").strip()[-300:])
                raise RunFailed(
                    f"{task.label}: fetching the results of pod {task.pod_id} failed "
                    f"(exit {code}): {tail}"
                )
            return data

    def _outcome(self, task: PodTask, e, st: dict, stage, logs, log_text: str, installed):
        """One model's outcome on the pod: its result home, a skip, or a failure with its log."""
        label = safe_label(e.id)
        bench_path = stage / "out" / f"bench-{label}.json"
        bench = resume.read_json(bench_path) if bench_path.is_file() else None
        if bench is not None:
            (logs / f"benchmark-{label}.json").write_text(self.redact(json.dumps(bench)))
        record = bring_home.pick_benchmark(bring_home.benchmark_records(bench), e.id)
        if record is not None:
            info = record.setdefault("extra_info", {})
            info["where"] = f"runpod:{task.pod_id}"
            info["measured_on_pod"] = True
        found = bring_home.result_for(e, installed)
        codes = st.get("exit_codes") or {}
        code = codes.get(label, codes.get("install"))
        if code == 0 and found is not None:
            return RunOutcome(
                e.id,
                found[0],
                found[1],
                where=f"runpod:{task.pod_id}",
                benchmark=record,
                extra={"log": str(logs / "pod.log"), "run_id": self.run_id},
            )
        tail = _step_tail(log_text, label)
        if code == 0 and " skipped" in tail:
            return RunSkipped(
                self.redact(
                    f"{e.id} was skipped on pod {task.pod_id}; last lines of its log:\n{tail}"
                )
            )
        why = (
            "its job was lost"
            if st.get("phase") == "lost"
            else f"pytest exit {code}"
            if code not in (None, 0)
            else "no result came back"
        )
        return RunFailed(
            self.redact(
                f"{e.id} failed on pod {task.pod_id} ({why}); last lines of its log "
                f"({logs / 'pod.log'}):\n{tail}"
            )
        )


PODSIDE_SOURCE = (Path(__file__).with_name("podside.py")).read_bytes()


LOGS_DIR = "runpod-logs"  # <results>/runpod-logs/<run id>/<pod label>/: pod.log, bench, pod.json


TAIL_LINES = 25


# The status of a pod's job in plain shell (no Python start-up per poll): state.json, whether
# the job process lives (a zombie does not), the log's last 200 lines.
STATUS_SH = (
    'cat "$R/state.json" 2>/dev/null || echo "{}"; printf "\\n@@@\\n"; '
    'p=$(cat "$R/job.pid" 2>/dev/null); '
    's=$( [ -n "$p" ] && cut -d")" -f2- "/proc/$p/stat" 2>/dev/null | awk \'{print $1}\'); '
    'if [ -n "$s" ] && [ "$s" != Z ]; then echo alive; else echo dead; fi; printf "@@@\\n"; '
    'tail -n 200 "$R/job.log" 2>/dev/null; true'
)


def _remote(name: str) -> str:
    """Shell prologue on the pod: ``$R`` = this pod's folder, ``$PY`` = its python.

    A real pod uses /workspace and the python that imports torch (found once, by
    ``FIND_PYTHON``, and kept in ``$R/python``: on newer images ``python3`` may be a system
    Python without torch); the test pods set OUTLIERS_POD_ROOT and OUTLIERS_POD_PYTHON in their
    sshd (SetEnv). ``name`` is [A-Za-z0-9._-] only.
    """
    return (
        f'B="${{OUTLIERS_POD_ROOT:-/workspace}}"; R="$B/outliers-runs/{name}"; '
        'PY="${OUTLIERS_POD_PYTHON:-$(cat "$R/python" 2>/dev/null)}"; PY="${PY:-python3}"; '
        "if command -v setsid >/dev/null 2>&1; then S=setsid; else S=; fi; "
    )


# The kill switch logs "armed" when the pod's start command runs it; without that line nothing
# on the pod ends it if this machine goes away before the watchdog runs.
KILL_SWITCH_ARMED = (
    f'KS="{killswitch.LOG_PATH}"; if ! grep -q "armed: deadline" "$KS" 2>/dev/null; then '
    'echo "the kill switch is not armed on this pod (no armed line in $KS: the image or '
    'RunPod ignored its start command)" >&2; exit 4; fi; '
)


# Run once, first: the interpreter of the image that imports torch, written to $R/python.
FIND_PYTHON = (
    'mkdir -p "$R" && if [ -z "$OUTLIERS_POD_PYTHON" ]; then for c in python3 python '
    "/opt/conda/bin/python /usr/local/bin/python3 /usr/bin/python3; do "
    'if "$c" -c "import torch" >/dev/null 2>&1; then PY="$c"; break; fi; done; fi; '
    'echo "$PY" > "$R/python" && '
)


# Packages whose build imports torch: installed with --no-build-isolation against the image's
# torch (an isolated build would download the newest torch and pick a wheel built for it).
BUILD_WITH_TORCH = {"linear-attention": ["causal-conv1d"]}


def pod_extras(entries) -> str:
    """The project extras a pod installs, only those its models need: ``mxfp4`` (the MXFP4
    kernels of gpt-oss), ``linear-attention`` (flash-linear-attention for Qwen3-Next)."""
    extras = []
    if any("gpt-oss" in e.hub_id for e in entries):
        extras.append("mxfp4")
    if any("qwen3-next" in e.hub_id.lower() for e in entries):
        extras.append("linear-attention")
    return ",".join(extras)


def pod_build_with_torch(extras: str) -> list[str]:
    return [p for x in extras.split(",") if x for p in BUILD_WITH_TORCH.get(x, [])]


def _fmt_seconds(s: float) -> str:
    s = int(s)
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class PodTask:
    """One pod and the models it runs."""

    def __init__(self, plan: PodPlan, run_id: str):
        self.plan = plan
        self.name = plan.name(run_id)
        self.pod_id: str | None = None
        self.gpu: str | None = None
        self.rate: float | None = None  # $/h of the whole pod, from the API
        self.created: float | None = None  # monotonic, of the pod in use
        self.created_at: float | None = None  # monotonic, of the first pod (cost counts all)
        self.discarded: list[str] = []  # pods given up on (their container never started)
        self.attempt = 0  # pods created for this task before the current one
        # every pod this task created: id, gpu, $/h, monotonic start and end (cost of each)
        self.segments: list[dict] = []
        self.runtime: dict | None = None  # python / torch / CUDA / triton found on the pod
        self.ended: float | None = None
        self.endpoint = None
        self.ssh: Ssh | None = None
        self.terminated = False
        self.kept = False
        self.pod_info: dict | None = None
        self.outcomes: dict = {}  # entry id -> RunOutcome | RunFailed | RunSkipped
        self.done = threading.Event()
        self.lock = threading.Lock()

    @property
    def label(self) -> str:
        return self.plan.label

    @property
    def pod_name(self) -> str:
        """The name of the pod to create now: each new attempt is named apart."""
        return self.name if self.attempt == 0 else f"{self.name}-r{self.attempt}"


def _extract(tar: tarfile.TarFile, dest: Path) -> None:
    try:
        tar.extractall(dest, filter="data")
    except TypeError:  # Python without extraction filters
        for m in tar.getmembers():
            if m.name.startswith(("/", "..")) or ".." in Path(m.name).parts:
                raise HarnessError(f"unsafe path {m.name!r} in a pod archive") from None
        tar.extractall(dest)


def _step_tail(log_text: str, label: str, n: int = TAIL_LINES) -> str:
    """The last lines of one step's part of the pod log (the whole log when not found)."""
    lines = log_text.splitlines()
    start = next((i for i, x in enumerate(lines) if x.startswith(f"[pod] running {label}:")), None)
    if start is not None:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("[pod] running ")),
            len(lines),
        )
        lines = lines[start:end]
    return "\n".join(lines[-n:])
