"""SSH to a pod with paramiko: no local ``ssh`` process, so nothing lands in a process list.

Secrets never travel in a command string: commands name files and paths only; data (the working
tree, the job spec) goes over the channel's stdin. ``Ssh.commands`` keeps every command string
sent, so tests can check that.
"""

from __future__ import annotations

import select
import threading
import time

from harness.errors import HarnessError


class SshError(HarnessError):
    """The pod could not be reached or a command could not complete over SSH."""


class Ssh:
    def __init__(self, host: str, port: int, user: str, key, *, connect_timeout: float = 15.0):
        self.host, self.port, self.user = host, port, user
        self._key = key  # a paramiko PKey
        self.connect_timeout = connect_timeout
        self._client = None
        self._lock = threading.Lock()
        self.commands: list[str] = []

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def connect(self) -> None:
        import paramiko

        self.close()
        client = paramiko.SSHClient()
        # Pods are fresh machines with fresh host keys: trust on first use, per connection.
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                self.host,
                self.port,
                username=self.user,
                pkey=self._key,
                look_for_keys=False,
                allow_agent=False,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
            )
        except (paramiko.SSHException, OSError, EOFError) as err:
            client.close()
            raise SshError(
                f"cannot log in to {self.address} ({type(err).__name__}: {err})"
            ) from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        self._client = client

    def connect_until(self, until: float, cancelled=lambda: False, pause: float = 1.0) -> None:
        """Retry ``connect`` until it works or ``until`` (monotonic) passes."""
        last = None
        while True:
            if cancelled():
                raise SshError(f"cancelled while connecting to {self.address}")
            try:
                self.connect()
                return
            except SshError as err:
                last = err
            if time.monotonic() >= until:
                raise SshError(f"{last}; gave up waiting") from None
            time.sleep(min(pause, max(0.01, until - time.monotonic())))

    @property
    def alive(self) -> bool:
        t = self._client.get_transport() if self._client else None
        return bool(t and t.is_active())

    def run(self, command: str, stdin: bytes | None = None, timeout: float = 60.0):
        """Run ``command`` on the pod; return (exit code, stdout bytes, stderr bytes)."""
        import paramiko

        if not self.alive:
            raise SshError(f"not connected to {self.address}")
        self.commands.append(command)
        deadline = time.monotonic() + timeout
        try:
            chan = self._client.get_transport().open_session(timeout=self.connect_timeout)
            chan.settimeout(max(1.0, timeout))
            chan.exec_command(command)
            if stdin:
                view = memoryview(stdin)
                while view:
                    sent = chan.send(view[:65536])
                    view = view[sent:]
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            while True:
                if chan.recv_ready():
                    out += chan.recv(1 << 16)
                    continue
                if chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                    continue
                if chan.exit_status_ready():
                    # drain what arrived with the exit status
                    while chan.recv_ready():
                        out += chan.recv(1 << 16)
                    while chan.recv_stderr_ready():
                        err += chan.recv_stderr(1 << 16)
                    break
                if chan.closed and not chan.recv_ready():
                    break
                if time.monotonic() > deadline:
                    chan.close()
                    raise SshError(f"command on {self.address} took longer than {timeout:.0f}s")
                select.select([chan], [], [], 0.2)
            code = chan.recv_exit_status()
            chan.close()
            return code, bytes(out), bytes(err)
        except (TimeoutError, paramiko.SSHException, OSError, EOFError) as e:
            raise SshError(f"connection to {self.address} failed ({type(e).__name__})") from None

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001
                pass
            self._client = None
