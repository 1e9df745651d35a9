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
from dataclasses import dataclass, field
from pathlib import Path

from harness.engine.statistics import CapturedStats
from harness.errors import HarnessError
from harness.fileio import dumps, fsync_write, replace_dir

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
STATS_FILE = "stats.npz"


@dataclass
class AnalysisResult:
    """What ``harness.analyze`` returns. ``to_dict()`` is exactly what result.json holds, minus
    the ``environment`` section that the caller adds (``write_result(..., environment=...)``)."""

    model: dict
    data: dict
    criteria: dict
    seed_compatible: dict
    pooled: dict
    per_site: list
    timing: dict
    stats: CapturedStats = field(repr=False)
    sections: dict = field(default_factory=dict)  # observers' summaries (attribution, ...)
    # --sites all: one result per site kind ("ln", "residual"), measured in the same pass; a
    # run writes these, never the pooled one (residual values are far larger than block
    # inputs: one layer denominator over both makes almost every dim "systematic")
    parts: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        out = {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "data": self.data,
            "criteria": self.criteria,
            "seed_compatible": self.seed_compatible,
            "pooled": self.pooled,
            "per_site": self.per_site,
            "timing": self.timing,
        }
        out.update(self.sections)
        return out


def slug(text: str, limit: int | None = None) -> str:
    """``text`` as a file-name part: runs of other characters become one ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-")[:limit] or "x"


def _slug(text: str) -> str:
    return slug(text, 60)


def run_dir_name(result: dict) -> str:
    """``<data slug>__<criteria slug>__<dtype>``: stable for the same data, criteria and dtype
    (a bf16 and an fp32 run of one model live side by side)."""
    d, c = result["data"], result["criteria"]
    dataset = _slug(str(d.get("dataset", "data")).rsplit("/", 1)[-1])
    data = (
        f"{dataset}-{d['num_sequences']}x{d['seq_len']}-s{d['stride']}-bos_{d.get('bos', 'none')}"
        f"-{str(d.get('windows_sha256', ''))[:8]}"
    )
    crit = f"{c['sites']}-m{c['magnitude']:g}-l{c['layer_fraction']:g}-q{c['seq_fraction']:g}"
    dtype = _slug(
        result.get("model", {}).get("activation_dtype") or result["model"].get("dtype", "")
    )
    return f"{data}__{crit}__{dtype}"


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
    if isinstance(result, AnalysisResult):
        stats = result.stats
        payload = result.to_dict()
    else:
        payload = dict(result)
    if stats is None:
        raise ValueError("write_result needs the captured statistics")
    if environment is not None:
        payload["environment"] = environment
    model_id = _slug(payload["model"]["id"])
    parent = Path(results_root) / model_id
    final = parent / run_dir_name(payload)
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


def read_result(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RESULT_FILE
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise HarnessError(f"cannot read {path} ({err}); rerun the model or delete it.") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise HarnessError(
            f"{path} has schema version {data.get('schema_version')}, this harness reads "
            f"{SCHEMA_VERSION}; rerun the model with this version."
        )
    return data


def read_stats(run_dir: str | Path) -> CapturedStats:
    path = Path(run_dir) / STATS_FILE
    try:
        return CapturedStats.load(path)
    except (OSError, KeyError, ValueError) as err:
        raise HarnessError(f"cannot read {path} ({err}); rerun the model.") from None
