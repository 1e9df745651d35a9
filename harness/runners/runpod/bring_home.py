"""Bringing a pod's results home: resume check, installing result directories, benchmark records.

Result directories are opaque here: ``<results>/<model id>/<run key>/`` holding ``result.json``
(+ ``stats.npz``), copied as whole folders and renamed into place (a reader never sees half).
"""

from __future__ import annotations

import copy
import json
import shutil
import uuid
from pathlib import Path

from harness.engine.result import AnalysisResult
from harness.engine.result_files import read_result
from harness.errors import HarnessError
from harness.fileio import replace_dir
from harness.runners.resume import RESULT_FILE, result_dirs


def install_run_dir(src: Path, results_dir: Path, rel: Path) -> Path:
    """Move the run folder ``src`` to ``results_dir/rel``, replacing an older one atomically."""
    final = Path(results_dir) / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(src, tmp)
    try:
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def install_results(fetched_results: Path, results_dir: Path) -> list[Path]:
    """Install every complete run folder of a fetched ``results`` tree; return their new paths."""
    installed = []
    for d in result_dirs(fetched_results):
        installed.append(install_run_dir(d, results_dir, d.relative_to(fetched_results)))
    return installed


def result_for(entry, dirs: list[Path]) -> tuple[Path, AnalysisResult] | None:
    """The run folder among ``dirs`` that belongs to ``entry`` (by model id, else folder name)."""
    best = None
    for d in dirs:
        try:
            data = read_result(d)
        except HarnessError:  # unreadable, or a newer schema: not this run's result
            continue
        mid, hub = data.model.id, data.model.source.get("hub_id")
        if mid == entry.id or d.parent.name == entry.id or (hub and hub == entry.hub_id):
            mtime = (d / RESULT_FILE).stat().st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, d, data)
    return None if best is None else (best[1], best[2])


def benchmark_records(bench_json: dict | None) -> list[dict]:
    return list((bench_json or {}).get("benchmarks") or [])


def pick_benchmark(records: list[dict], entry_id: str) -> dict | None:
    """The record of ``entry_id``'s test: one naming it, else the only record there is."""
    named = [
        r
        for r in records
        if entry_id in str(r.get("fullname", ""))
        or entry_id in str(r.get("name", ""))
        or entry_id in json.dumps(r.get("params") or {}, default=str)
    ]
    if named:
        return named[0]
    return records[0] if len(records) == 1 else None


def merge_benchmark_json(output_json: dict, remote_records: list[dict]) -> dict:
    """Merge pod-made pytest-benchmark records into the local session's JSON (in place).

    Call it from ``pytest_benchmark_update_json(config, benchmarks, output_json)``. A remote
    record replaces a local one of the same ``fullname`` (the local one timed only the wait for
    the pod); every merged record keeps ``extra_info["where"]`` = ``runpod:<pod id>``.
    """
    benches = output_json.setdefault("benchmarks", [])
    for rec in remote_records or []:
        if not rec:
            continue
        rec = copy.deepcopy(rec)
        name = rec.get("fullname")
        if name is not None:
            benches[:] = [b for b in benches if b.get("fullname") != name]
        benches.append(rec)
    return output_json
