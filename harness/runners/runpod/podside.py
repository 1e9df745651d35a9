"""The part of a RunPod run that lives ON the pod. Standard library only: it is copied to the
pod on its own (over SSH stdin) before anything else and runs with the image's ``python3``.

    python3 podside.py watchdog ROOT --deadline-in S --grace S --poll S --on-end ACTION
        Started first, detached (setsid + nohup). Stops the pod when the deadline passes, or
        when the job has ended and its results were fetched (``ROOT/fetched``) or were not
        fetched within the grace period, or when the job process vanished. It uses the pod's
        OWN identity and key, never the user's.
    python3 podside.py job ROOT        Detached: install the project, run each pytest step of
                                       ROOT/job.json, record exit codes in ROOT/state.json.
    python3 podside.py selfcheck ROOT  One query of this pod with the pod's own key (exit 3: the
                                       pod could not end itself).
    python3 podside.py rights ROOT     End this pod with its own key, terminate else stop
                                       (``outliers pods smoke``: which one it may do).
    python3 podside.py status ROOT     One JSON line: phase, exit codes, log tail.
    python3 podside.py probe PATH      One JSON line: python / torch / CUDA / triton, and the
                                       download speed of hub file PATH (``outliers pods smoke``).
    python3 podside.py unpack DIR      Extract a tar.gz from stdin into DIR.
    python3 podside.py pack ROOT       Write a tar.gz of ROOT's outputs to stdout.

What RunPod provides inside a pod (docs.runpod.io/pods/templates/environment-variables,
"Runpod-provided variables"; github.com/runpod/docs pods/templates/environment-variables.mdx):
``RUNPOD_POD_ID`` (the pod's id) and ``RUNPOD_API_KEY`` ("Pod-scoped API key"); the runpodctl
README says every pod comes with runpodctl installed with a pod-scoped API key
(github.com/runpod/runpodctl issue 244), and pods stop themselves with
``runpodctl stop pod $RUNPOD_POD_ID`` (runpodctl issue 149; ``remove`` terminates, issue 27).
These are container environment variables. RunPod's images write every upper-case variable of
the container environment (HF_TOKEN and RUNPOD_API_KEY included) into ``/etc/rp_environment``
for SSH sessions (runpod/containers start.sh ``export_env_vars``: ``printenv | grep -E
'^[A-Z_][A-Z0-9_]*='``), a file any process of the pod can read. The harness reads that file, then the session's
environment, and lets ``/proc/1/environ`` (the container's own, whatever the image's start.sh
does) win over both; it never copies the values anywhere else. Tests point ``OUTLIERS_POD_ENVIRON`` at a fake pod's
environment file instead.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from importlib import metadata

DEFAULT_API = "https://api.runpod.io"
DEFAULT_REST = "https://rest.runpod.io/v1"
# RunPod's front end is reported to reject urllib's default "Python-urllib/3.x" agent.
USER_AGENT = "outlier-harness/0.1 (+runpod pod watchdog)"
# What the image's own build must keep: an install that replaced these would pull GBs of CUDA
# libraries and break the image's kernels (constraints file from ``pip freeze``).
IMAGE_PINNED = ("torch", "torchvision", "torchaudio", "triton", "pytorch-triton", "nvidia-")
# Not copied from the pod environment into the job's environment.
_SESSION_VARS = {
    "PWD",
    "OLDPWD",
    "SHLVL",
    "_",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "HOSTNAME",
    "SSH_CLIENT",
    "SSH_CONNECTION",
    "SSH_TTY",
    "PUBLIC_KEY",
}


# -- the pod's environment ---------------------------------------------------------------------
def _parse_nul(data: bytes) -> dict:
    env = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _parse_exports(text: str) -> dict:
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export ") :]
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            env[key] = value
    return env


def pod_environment() -> dict:
    """The pod's container environment (``/proc/1/environ``) over this session's environment."""
    env = {}
    try:
        with open("/etc/rp_environment") as f:
            env.update(_parse_exports(f.read()))
    except OSError:
        pass
    env.update(os.environ)
    path = os.environ.get("OUTLIERS_POD_ENVIRON") or "/proc/1/environ"
    try:  # the container's own environment wins: the pod identity comes from RunPod
        with open(path, "rb") as f:
            env.update(_parse_nul(f.read()))
    except OSError:
        pass
    return env


# -- small files -------------------------------------------------------------------------------
def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _pid_of(root: str, name: str) -> int | None:
    try:
        with open(os.path.join(root, name)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _log(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()) + text + "\n")


# -- stopping the pod with its own identity ----------------------------------------------------
def _graphql(base: str, key: str, query: str, timeout: float = 30.0) -> dict:
    req = urllib.request.Request(
        base.rstrip("/") + "/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {key}",
            "User-Agent": USER_AGENT,
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = json.loads(resp.read().decode() or "{}")
    if body.get("errors"):
        raise RuntimeError(str(body["errors"][0].get("message", "error"))[:200])
    return body


def _rest(base: str, key: str, method: str, path: str, timeout: float = 30.0) -> int:
    req = urllib.request.Request(
        base.rstrip("/") + path,
        data=b"" if method == "POST" else None,
        headers={"Authorization": f"Bearer {key}", "User-Agent": USER_AGENT},
        method=method,
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status


# (verb, GraphQL mutation and fields, REST method and path, runpodctl commands: new, old)
_WAYS = {
    "terminate": ("podTerminate", "", "DELETE", "", (["pod", "delete"], ["remove", "pod"])),
    "stop": (
        "podStop",
        " { id desiredStatus }",
        "POST",
        "/stop",
        (["pod", "stop"], ["stop", "pod"]),
    ),
}


def _end(verb: str, env: dict, log) -> bool:
    """One way after the other to ``verb`` (terminate | stop) this pod with its own identity:
    GraphQL, REST (GraphQL is to be retired in 2027), runpodctl (new, then old syntax)."""
    pod_id, key = env.get("RUNPOD_POD_ID"), env.get("RUNPOD_API_KEY")
    base = env.get("RUNPOD_API_BASE_URL") or DEFAULT_API
    rest = env.get("RUNPOD_REST_BASE_URL") or DEFAULT_REST
    mutation, fields, method, path, ctl_verbs = _WAYS[verb]
    if pod_id and key:
        query = f'mutation {{ {mutation}(input: {{ podId: "{pod_id}" }}){fields} }}'
        try:
            _graphql(base, key, query)
            log(f"{mutation} {pod_id}: done")
            return True
        except (OSError, ValueError, RuntimeError, urllib.error.URLError) as err:
            log(f"{mutation} {pod_id} failed: {type(err).__name__}: {str(err).replace(key, '***')}")
        try:
            code = _rest(rest, key, method, f"/pods/{pod_id}{path}")
            log(f"REST {method} /pods/{pod_id}{path}: HTTP {code}")
            return True
        except (OSError, ValueError, urllib.error.URLError) as err:
            log(f"REST {method} /pods/{pod_id}{path} failed: {type(err).__name__}")
    else:
        log("RUNPOD_POD_ID / RUNPOD_API_KEY not in the pod environment")
    ctl = shutil.which("runpodctl")
    for words in ctl_verbs if ctl and pod_id else ():
        # runpodctl reads its key from RUNPOD_API_KEY: the container's, not this SSH session's
        try:
            rc = subprocess.call(
                [ctl, *words, pod_id],
                timeout=60,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            log(f"runpodctl {' '.join(words)} {pod_id}: exit {rc}")
            if rc == 0:
                return True
        except (OSError, subprocess.SubprocessError) as err:
            log(f"runpodctl failed: {type(err).__name__}")
    return False


def stop_self(action: str, log, last_resort: bool = False) -> bool:
    """``action`` terminate: terminate the pod, else stop it (a pod-scoped key may be allowed to
    stop only: the GPU bill ends, the disk's goes on until someone terminates it). ``action``
    stop (``--runpod-keep``): stop it; terminate it only as the ``last_resort`` of a stop that
    kept failing. True on success."""
    env = pod_environment()
    if action == "terminate":
        if _end("terminate", env, log):
            return True
        log("could not terminate this pod with its own key: stopping it instead")
        return _end("stop", env, log)
    if _end("stop", env, log):
        return True
    return last_resort and _end("terminate", env, log)


def selfcheck(root: str) -> int:
    """One harmless query of this pod with the pod's own key: the watchdog's path to the API.
    Prints one line; exit 0 when it works, 3 when nothing on the pod could end the pod."""
    env = pod_environment()
    pod_id, key = env.get("RUNPOD_POD_ID"), env.get("RUNPOD_API_KEY")
    base = env.get("RUNPOD_API_BASE_URL") or DEFAULT_API
    why = "RUNPOD_POD_ID / RUNPOD_API_KEY are not in the pod environment"
    if pod_id and key:
        try:
            body = _graphql(base, key, f'query {{ pod(input: {{ podId: "{pod_id}" }}) {{ id }} }}')
            if ((body.get("data") or {}).get("pod") or {}).get("id") == pod_id:
                _log(os.path.join(root, "watchdog.log"), f"API check: pod {pod_id} seen")
                print(f"api ok: pod {pod_id}")
                return 0
            why = "the API does not show this pod to its own key"
        except urllib.error.HTTPError as err:
            why = f"HTTP {err.code} from {base}"
        except (OSError, ValueError, RuntimeError) as err:
            why = f"{type(err).__name__}: {str(err).replace(key, '***')[:200]}"
        rest = env.get("RUNPOD_REST_BASE_URL") or DEFAULT_REST
        try:  # GraphQL retires in 2027: the REST API is the watchdog's second way
            code = _rest(rest, key, "GET", f"/pods/{pod_id}")
            if code == 200:
                _log(os.path.join(root, "watchdog.log"), f"API check: pod {pod_id} seen (REST)")
                print(f"api ok through REST: pod {pod_id} ({why})")
                return 0
        except (OSError, ValueError) as err:
            why += f"; REST: {type(err).__name__}"
    ctl = shutil.which("runpodctl")
    if ctl and pod_id:
        try:
            rc = subprocess.call(
                [ctl, "get", "pod", pod_id],
                timeout=60,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if rc == 0:
                print(f"api ok through runpodctl: pod {pod_id} ({why})")
                return 0
        except (OSError, subprocess.SubprocessError):
            pass
    print(f"the pod's own RunPod key cannot reach its pod ({why})", file=sys.stderr)
    return 3


def rights(root: str) -> int:
    """``outliers pods smoke``'s last step: end this pod as the watchdog would (terminate, else
    stop), detached, a second after the SSH command that started it returned; whoever started
    it reads from the API which of the two the pod's key was allowed."""
    time.sleep(1.0)
    logf = os.path.join(root, "rights.log")
    return 0 if stop_self("terminate", lambda text: _log(logf, text)) else 1


def watchdog(
    root: str,
    deadline_in: float,
    grace: float,
    poll: float,
    on_end: str,
    on_deadline: str,
    start_grace: float = 900.0,
) -> int:
    """Stop the pod at the deadline, once the job has ended (see the module docstring), or when
    no job was started within ``start_grace`` seconds (whoever launched it went away)."""
    logf = os.path.join(root, "watchdog.log")

    def log(text):
        _log(logf, text)

    with open(os.path.join(root, "watchdog.pid"), "w") as f:
        f.write(str(os.getpid()))
    start = time.monotonic()
    deadline = start + deadline_in
    log(f"watching: deadline in {deadline_in:.0f}s, grace {grace:.0f}s, on end: {on_end}")
    ended_at = None
    while True:
        now = time.monotonic()
        reason = action = None
        state = _read_json(os.path.join(root, "state.json"))
        job_pid = _pid_of(root, "job.pid")
        ended = state.get("phase") == "done" or (
            job_pid is not None and not _alive(job_pid) and state.get("phase") != "done"
        )
        if ended and ended_at is None:
            ended_at = now
            log(f"job ended (phase {state.get('phase', 'lost')})")
        if now >= deadline:
            reason, action = "deadline passed", on_deadline
        elif job_pid is None and on_end != "none" and now - start >= start_grace:
            reason, action = "no job was started within the start grace period", on_end
        elif ended_at is not None and on_end != "none":
            if os.path.exists(os.path.join(root, "fetched")):
                reason, action = "job ended and its results were fetched", on_end
            elif now - ended_at >= grace:
                reason, action = "job ended; results not fetched within the grace period", on_end
        if reason:
            log(f"stopping the pod: {reason}")
            for attempt in range(1000):
                if stop_self(action, log, last_resort=attempt >= 10):
                    return 0
                time.sleep(min(60.0, poll * (2 ** min(attempt, 6))))
            return 1
        time.sleep(poll)


# -- the job -----------------------------------------------------------------------------------
def job(root: str) -> int:
    spec = _read_json(os.path.join(root, "job.json"))
    state_path = os.path.join(root, "state.json")
    with open(os.path.join(root, "job.pid"), "w") as f:
        f.write(str(os.getpid()))
    env = dict(os.environ)
    for key, value in pod_environment().items():
        if key not in _SESSION_VARS:
            env.setdefault(key, value)
    env["PYTHONUNBUFFERED"] = "1"
    env["PIP_BREAK_SYSTEM_PACKAGES"] = "1"  # images whose python is the distribution's (PEP 668)
    if spec.get("git_sha"):
        env["OUTLIERS_GIT_SHA"] = spec["git_sha"]  # provenance: the tree here has no .git
        env["OUTLIERS_GIT_DIRTY"] = "1" if spec.get("git_dirty") else "0"
    env["OUTLIERS_ON_POD"] = "1"  # the harness may skip what only the local side needs (reports)
    tree = os.path.join(root, "tree")
    out = os.path.join(root, "out")
    os.makedirs(os.path.join(out, "results"), exist_ok=True)
    logpath = os.path.join(root, "job.log")
    codes: dict = {}
    state = {"phase": "install", "exit_codes": codes, "started": time.time()}
    _write_json(state_path, state)
    with open(logpath, "ab", buffering=0) as log:

        def say(text):
            log.write(f"[pod] {text}\n".encode())

        try:
            state["image"] = image_runtime()
            _write_json(state_path, state)
            say("image: " + json.dumps(state["image"]))
            install = os.environ.get("OUTLIERS_POD_INSTALL")
            if install is None:
                rc = 0
                for cmd in install_commands(root, spec, env):
                    say("installing: " + " ".join(cmd[1:]))
                    rc = subprocess.call(
                        cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT
                    )
                    if rc != 0:
                        break
            elif install.strip():
                say("installing the project (pod image command)")
                rc = subprocess.call(
                    install, shell=True, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT
                )
            else:
                rc = 0
            codes["install"] = rc
            if rc != 0:
                say(f"install failed with exit code {rc}")
                return rc
            for step in spec.get("steps", []):
                label = step["label"]
                state["phase"] = f"run {label}"
                _write_json(state_path, state)
                cmd = [
                    sys.executable,
                    "-m",
                    "pytest",
                    *step["args"],
                    "--results-dir",
                    os.path.join(out, "results"),
                    "--benchmark-json",
                    os.path.join(out, f"bench-{label}.json"),
                    "-p",
                    "no:cacheprovider",
                ]
                say(f"running {label}: pytest {' '.join(step['args'])}")
                rc = subprocess.call(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
                codes[label] = rc
                say(f"{label} finished with exit code {rc}")
            return 0 if all(v == 0 for v in codes.values()) else 1
        except Exception as err:  # noqa: BLE001 - recorded, the local side reads it
            say(f"job error: {type(err).__name__}: {err}")
            codes.setdefault("job", 1)
            return 1
        finally:
            state["phase"] = "done"
            state["finished"] = time.time()
            _write_json(state_path, state)


def constraints(freeze: str) -> list[str]:
    """The ``pip freeze`` lines of what the image's build pins (torch, triton, CUDA libraries):
    an install must keep them, not resolve newer ones."""
    keep = []
    for line in freeze.splitlines():
        name, sep, _ = line.strip().partition("==")
        low = name.strip().lower().replace("_", "-")
        if sep and any(low == p or (p.endswith("-") and low.startswith(p)) for p in IMAGE_PINNED):
            keep.append(line.strip())
    return keep


def install_commands(root: str, spec: dict, env: dict) -> list[list[str]]:
    """pip commands that install the project into the image's python, keeping its torch:
    the project with its extras under a constraints file made from the image's ``pip freeze``,
    then the packages whose build imports torch without build isolation."""
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze"], env=env, capture_output=True, text=True
    ).stdout
    path = os.path.join(root, "constraints.txt")
    with open(path, "w") as f:
        f.write("\n".join(constraints(frozen)) + "\n")
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--root-user-action=ignore",
        "--disable-pip-version-check",
        "-c",
        path,
    ]
    extras = spec.get("extras") or ""
    # the project's own build needs only setuptools: the image's, when it has one (no download)
    own = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    cmds = [[*pip, *own, "-e", f".[{extras}]" if extras else "."]]
    if spec.get("build_with_torch"):
        cmds.append([*pip, "--no-build-isolation", *spec["build_with_torch"]])
    return cmds


def image_runtime(env: dict | None = None) -> dict:
    """python / torch / CUDA / triton of this pod's image (provenance of the run), read from
    the installed distributions without importing torch (seconds per pod otherwise)."""

    def version(*names):
        for n in names:
            try:
                return metadata.version(n)
            except metadata.PackageNotFoundError:
                continue
        return None

    out = {"python": platform.python_version(), "torch": version("torch")}
    out["triton"] = version("triton", "pytorch-triton")
    out["cuda"] = None
    try:
        spec = importlib.util.find_spec("torch")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            with open(os.path.join(folder, "version.py")) as f:
                m = re.search(r"^cuda\s*(?::\s*\S+\s*)?=\s*['\"]([^'\"]+)['\"]", f.read(), re.M)
            out["cuda"] = m.group(1) if m else None
            break
    except (OSError, ImportError, ValueError):
        pass
    return out


def probe(path: str) -> int:
    """One JSON line for ``outliers pods smoke``: the image's python / torch / CUDA / triton
    and the download speed of ``path``, a small file on the Hugging Face hub (``HF_ENDPOINT``
    of the pod's environment, as the hub client reads it)."""
    out = {"runtime": image_runtime()}
    base = pod_environment().get("HF_ENDPOINT") or "https://huggingface.co"
    url = base.rstrip("/") + "/" + path.lstrip("/")
    start = time.monotonic()
    try:
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(req, timeout=60) as resp:
            n = len(resp.read())
        out["download"] = {"bytes": n, "seconds": time.monotonic() - start}
    except (OSError, ValueError) as err:
        out["download"] = {"error": f"{type(err).__name__}: {str(err)[:120]}"}
    print(json.dumps(out))
    return 0


def status(root: str, tail: int = 30) -> int:
    state = _read_json(os.path.join(root, "state.json"))
    lines: list[str] = []
    try:
        with open(os.path.join(root, "job.log"), "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 65536))
            lines = f.read().decode(errors="replace").splitlines()[-tail:]
    except OSError:
        pass
    job_pid = _pid_of(root, "job.pid")
    wd_pid = _pid_of(root, "watchdog.pid")
    print(
        json.dumps(
            {
                "phase": state.get("phase", "starting"),
                "exit_codes": state.get("exit_codes", {}),
                "job_alive": bool(job_pid and _alive(job_pid)),
                "watchdog_alive": bool(wd_pid and _alive(wd_pid)),
                "tail": lines,
            }
        )
    )
    return 0


def unpack(dest: str) -> int:
    os.makedirs(dest, exist_ok=True)
    data = sys.stdin.buffer.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        try:
            tar.extractall(dest, filter="data")
        except TypeError:  # Python < 3.10.12 has no extraction filters
            tar.extractall(dest)
    return 0


def pack(root: str) -> int:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("out", "job.log", "watchdog.log", "state.json"):
            path = os.path.join(root, name)
            if os.path.exists(path):
                tar.add(path, arcname=name)
    sys.stdout.buffer.write(buf.getvalue())
    sys.stdout.buffer.flush()
    return 0


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="podside")
    sub = p.add_subparsers(dest="mode", required=True)
    w = sub.add_parser("watchdog")
    w.add_argument("root")
    w.add_argument("--deadline-in", type=float, required=True)
    w.add_argument("--grace", type=float, default=900.0)
    w.add_argument("--poll", type=float, default=15.0)
    w.add_argument("--on-end", choices=("terminate", "stop", "none"), default="terminate")
    w.add_argument("--on-deadline", choices=("terminate", "stop"), default="terminate")
    w.add_argument("--start-grace", type=float, default=900.0)
    for name in ("job", "pack", "selfcheck", "rights"):
        sub.add_parser(name).add_argument("root")
    s = sub.add_parser("status")
    s.add_argument("root")
    s.add_argument("--tail", type=int, default=30)
    sub.add_parser("unpack").add_argument("dest")
    sub.add_parser("probe").add_argument("path")
    a = p.parse_args(argv)
    if a.mode == "watchdog":
        return watchdog(
            a.root, a.deadline_in, a.grace, a.poll, a.on_end, a.on_deadline, a.start_grace
        )
    if a.mode == "job":
        return job(a.root)
    if a.mode == "selfcheck":
        return selfcheck(a.root)
    if a.mode == "rights":
        return rights(a.root)
    if a.mode == "status":
        return status(a.root, a.tail)
    if a.mode == "unpack":
        return unpack(a.dest)
    if a.mode == "probe":
        return probe(a.path)
    return pack(a.root)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
