"""A REAL OpenSSH server as a fake pod's SSH endpoint.

``sshd -D -f <private config> -e`` on 127.0.0.1 and a free port, running as the current user,
with generated host keys, its own ``AuthorizedKeysFile`` (the pod's ``PUBLIC_KEY``), no system
configuration, ``StrictModes no`` and ``UsePAM no``. ``SetEnv`` gives every session the fake pod's
layout (``OUTLIERS_POD_ROOT``, ``OUTLIERS_POD_PYTHON``, ...), as RunPod's image gives a real pod
its ``/workspace``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def sshd_available() -> str | None:
    """None when an sshd and ssh-keygen are usable here, else the reason they are not."""
    if not Path(SSHD).is_file():
        return "openssh-server is not installed (run .ci/install-sshd.sh)"
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen is not installed (run .ci/install-sshd.sh)"
    return None


def keygen(path: Path) -> Path:
    """An unencrypted ed25519 key pair at ``path`` / ``path.pub``."""
    path = Path(path)
    if not path.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fake-pod", "-f", str(path)],
            check=True,
            stdin=subprocess.DEVNULL,
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


class Sshd:
    def __init__(self, folder: Path, authorized_key: str, setenv: dict, port: int | None = None):
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.setenv = dict(setenv)
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()  # a pod's kill timer and the fake's stop may race
        (self.dir / "authorized_keys").write_text(authorized_key.strip() + "\n")
        keygen(self.dir / "host_ed25519")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
        env = " ".join(f'{k}="{v}"' for k, v in self.setenv.items())
        (self.dir / "sshd_config").write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {self.dir / 'host_ed25519'}\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\n"
            "PrintMotd no\n"
            "MaxStartups 100\n"
            "MaxSessions 50\n"
            "LogLevel ERROR\n" + (f"SetEnv {env}\n" if env else "")
        )

    def start(self, wait: float = 5.0) -> Sshd:
        log = open(self.dir / "sshd.log", "ab")
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        until = time.monotonic() + wait
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.dir / 'sshd.log').read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("sshd did not listen in time")

    def stop(self) -> None:
        """Kill the server and every connection it serves (a dropped network, for the client)."""
        with self._lock:
            proc, self.proc = self.proc, None
        if proc is None:
            return
        victims = [proc.pid, *descendants(proc.pid)]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def restart(self) -> Sshd:
        self.stop()
        return self.start()
