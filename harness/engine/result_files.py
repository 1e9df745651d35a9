"""Result files: one directory per (model, data, criteria) run, written atomically.

    <results>/<model id>/<data slug>__<criteria slug>/
        result.json   small, human-readable: every headline figure, settings and provenance
        stats.npz     the captured statistics (``CapturedStats``), enough to recompute every
                      figure at any grid magnitude and any fractions without a model

A run is written into a hidden temporary directory and renamed into place, so a crash never
leaves a directory that looks complete; readers skip hidden directories.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from pathlib import Path

from harness.engine.result import AnalysisResult, as_result
from harness.engine.statistics import CapturedStats
from harness.errors import HarnessError
from harness.fileio import dumps, fsync_write, replace_dir

RESULT_FILE = "result.json"
STATS_FILE = "stats.npz"


def slug(text: str, limit: int | None = None) -> str:
    """``text`` as a file-name part: runs of other characters become one ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-")[:limit] or "x"


def _slug(text: str) -> str:
    return slug(text, 60)


def run_dir_name(result: AnalysisResult | dict) -> str:
    """``<data slug>__<criteria slug>__<dtype>``: stable for the same data, criteria and dtype
    (a bf16 and an fp32 run of one model live side by side)."""
    result = as_result(result)
    d, c, m = result.data, result.criteria, result.model
    dataset = _slug(str(d.dataset or "data").rsplit("/", 1)[-1])
    data = (
        f"{dataset}-{d.num_seqs}x{d.seq_len}-s{d.stride}-bos_{d.bos or 'none'}"
        f"-{str(d.windows_sha256 or '')[:8]}"
    )
    crit = f"{c.sites}-m{c.magnitude:g}-l{c.layer_frac:g}-q{c.seq_frac:g}"
    # the defaults keep the names of the runs written before these settings existed
    if (c.layer_unit or "sites") != "sites":
        crit += f"-u{c.layer_unit}"
    if c.skip_first_position:
        crit += "-nofirst"
    return f"{data}__{crit}__{_slug(m.activation_dtype or m.dtype or '')}"


def ensure_writable(path: str | Path, flag: str) -> Path:
    """Prove that files can be written in ``path`` (creating it for the test, then removing what
    was created), before any model is loaded: an unwritable output directory must not cost a
    whole run."""
    path = Path(path).expanduser()
    created = [p for p in (path, *path.parents) if not p.exists()]  # nearest first
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
        for p in created:  # leave no trace: the run creates what it writes
            p.rmdir()
    except OSError as err:
        raise HarnessError(
            f"{flag} {path} is not writable ({err.strerror or type(err).__name__}); choose a "
            f"directory you can write to with {flag}."
        ) from None
    return path


def write_result(
    result: AnalysisResult | dict,
    results_root: str | Path,
    *,
    stats: CapturedStats | None = None,
    environment: dict | None = None,
) -> Path:
    """Write ``result.json`` and ``stats.npz`` atomically; return the run directory."""
    result = as_result(result)
    stats = stats if stats is not None else result.stats
    if stats is None:
        raise ValueError("write_result needs the captured statistics")
    payload = result.to_dict()
    if environment is not None:
        payload["environment"] = environment
    parent = Path(results_root) / _slug(result.model.id)
    final = parent / run_dir_name(result)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        clean_stale(parent)
        tmp = parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as err:
        raise HarnessError(
            f"cannot write results under {parent} ({err.strerror}); pass a writable --results-dir."
        ) from None
    try:
        fsync_write(tmp / STATS_FILE, stats.to_npz_bytes())
        fsync_write(tmp / RESULT_FILE, dumps(payload).encode())
        replace_dir(tmp, final)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise HarnessError(
                f"no space left on the device of {parent} while writing the result (nothing was "
                "written); free some space or pass another --results-dir."
            ) from None
        raise
    return final


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


QUIET_S = 600  # seconds a dead writer's directory must be untouched before it is removed


def clean_stale(parent: Path, max_age_s: float = 24 * 3600) -> None:
    """Remove the half-written ``.tmp-*`` directories of runs that died (their process is gone,
    or they are older than a day), and put back a previous result whose replacement was
    interrupted between its two renames (``.old-*`` with no final directory)."""
    import time

    now = time.time()
    for p in parent.glob(".*-*"):
        if not p.is_dir() or not p.name.startswith((".tmp-", ".old-")):
            continue
        pid = p.name.rsplit("-", 2)[-2]
        dead = not (pid.isdigit() and _pid_alive(int(pid)))
        try:
            age = now - p.stat().st_mtime
        except FileNotFoundError:
            continue
        # a pid means something on this host only (results folders can be shared): a dead
        # writer's directory must also be quiet for a while
        if not ((dead and age > QUIET_S) or age > max_age_s):
            continue
        if p.name.startswith(".old-"):
            final = parent / p.name[len(".old-") :].rsplit("-", 2)[0]
            if not final.exists():
                try:
                    os.rename(p, final)
                    continue
                except OSError:
                    pass
        shutil.rmtree(p, ignore_errors=True)


def is_run_dir(path: Path) -> bool:
    return (
        path.is_dir()
        and not path.name.startswith(".")
        and (path / RESULT_FILE).is_file()
        and (path / STATS_FILE).is_file()
    )


def find_run_dirs(results_root: str | Path) -> list[Path]:
    """Every complete run directory under ``results_root`` (or the directory itself)."""
    root = Path(results_root)
    if is_run_dir(root):
        return [root]
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.rglob(RESULT_FILE)):
        run = p.parent
        if any(part.startswith(".") for part in run.relative_to(root).parts):
            continue
        if is_run_dir(run):
            found.append(run)
    return found


def read_result(run_dir: str | Path) -> AnalysisResult:
    """A run directory's result.json as a typed result (its statistics: ``read_stats``);
    schema 1 files are read with today's names."""
    path = Path(run_dir) / RESULT_FILE
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise HarnessError(f"cannot read {path} ({err}); rerun the model or delete it.") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path} is not a result file; rerun the model or delete it.")
    return AnalysisResult.from_json(data, where=str(path))


def read_stats(run_dir: str | Path) -> CapturedStats:
    path = Path(run_dir) / STATS_FILE
    try:
        return CapturedStats.load(path)
    except (OSError, KeyError, ValueError) as err:
        raise HarnessError(f"cannot read {path} ({err}); rerun the model.") from None
