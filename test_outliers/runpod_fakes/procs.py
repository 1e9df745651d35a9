"""Subprocess helpers of the RunPod tests: a process whose output is collected as it comes, and
a sampler that watches every process's arguments for secret values."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

DRIVE = Path(__file__).with_name("drive.py")


class Proc:
    def __init__(
        self, cmd: list[str], env: dict, cwd: Path | str | None = None, sighup=signal.SIG_DFL
    ):
        # SIGHUP as in a terminal session by default, whatever this test run inherited (a
        # suite started under nohup ignores it, and so would every child)
        self.p = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            preexec_fn=lambda: signal.signal(signal.SIGHUP, sighup),
        )
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def outcomes(self) -> dict:
        out = {}
        for x in self.lines:
            if x.startswith("OUTCOME "):
                d = json.loads(x[8:])
                out[d["model"]] = d
        return out

    def wait(self, timeout: float) -> int:
        code = self.p.wait(timeout)
        self._t.join(5)
        self.p.stdout.close()
        return code


def drive(tmp_path: Path, env: dict, models: dict, sighup=signal.SIG_DFL, **options) -> Proc:
    """Start drive.py (the plugin's part: prepare, run each, close) in a subprocess."""
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({"results_dir": str(tmp_path / "results"), "models": models, "options": options})
    )
    return Proc([sys.executable, str(DRIVE), str(spec)], env, cwd=tmp_path, sighup=sighup)


class ArgvSampler:
    """Scans /proc/*/cmdline every few milliseconds for any of ``secrets``."""

    def __init__(self, *secrets: str, every: float = 0.02):
        self.needles = [s.encode() for s in secrets if s]
        self.every = every
        self.hits: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ArgvSampler:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples += 1
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        argv = f.read()
                except OSError:
                    continue
                if any(n in argv for n in self.needles):
                    self.hits.append(argv.replace(b"\0", b" ").decode(errors="replace")[:200])
            time.sleep(self.every)


def files_containing(root: Path, *secrets: str) -> list[str]:
    """Every file under ``root`` whose bytes contain one of ``secrets``."""
    needles = [s.encode() for s in secrets if s]
    hits = []
    for p in Path(root).rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                data = p.read_bytes()
            except OSError:
                continue
            if any(n in data for n in needles):
                hits.append(str(p))
    return hits
