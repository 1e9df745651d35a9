"""Bringing a pod's results home: resume check, installing result directories, benchmark records.

Result directories are opaque here: ``<results>/<model id>/<run key>/`` holding ``result.json``
(+ ``stats.npz``), copied as whole folders and renamed into place (a reader never sees half).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import uuid
from pathlib import Path

RESULT_FILE = "result.json"
# Compared only when both sides have them (a planned run knows its data spec, not its hash).
_DERIVED_DATA = ("windows_sha256", "tokens")
_CORE_DATA = ("dataset", "num_sequences", "seq_len", "stride")
_CORE_CRITERIA = ("sites", "magnitude", "layer_fraction", "seq_fraction")
_OPTIONAL_CRITERIA = ("site_names", "num_sites", "grid")


def same_run(a: dict, b: dict) -> bool:
    """True when two results (or a result and a planned run) have the same model revision, data
    and criteria: the condition for not running a model again.

    - model: same ``id``; same ``source.hub_id`` and ``source.revision`` when both give one (a
      plan without a pinned revision accepts the revision an existing result recorded);
    - data: the core spec (dataset, sequences, length, stride) equal, every other key present on
      both sides equal (the window hash included);
    - criteria: magnitude, fractions and site set equal; site names / grid when both have them.
    """
    ma, mb = a.get("model") or {}, b.get("model") or {}
    if ma.get("id") != mb.get("id"):
        return False
    sa, sb = ma.get("source") or {}, mb.get("source") or {}
    for key in ("hub_id", "revision"):
        if sa.get(key) and sb.get(key) and sa[key] != sb[key]:
            return False
    da, db = a.get("data") or {}, b.get("data") or {}
    if any(da.get(k) != db.get(k) for k in _CORE_DATA):
        return False
    for key in set(da) & set(db):
        if da[key] != db[key]:
            return False
    ca, cb = a.get("criteria") or {}, b.get("criteria") or {}
    if any(_num(ca.get(k)) != _num(cb.get(k)) for k in _CORE_CRITERIA):
        return False
    return all(ca[k] == cb[k] for k in _OPTIONAL_CRITERIA if k in ca and k in cb)


def _num(x):
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x


def read_json(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def result_dirs(root: Path) -> list[Path]:
    """Complete run directories under ``root`` (hidden folders skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.rglob(RESULT_FILE)):
        rel = p.parent.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        found.append(p.parent)
    return found


def find_existing(results_dir: Path, expected: dict) -> Path | None:
    """The newest run directory under ``results_dir`` whose result is ``same_run`` as
    ``expected``, or None."""
    model_id = (expected.get("model") or {}).get("id")
    candidates = []
    for d in result_dirs(results_dir):
        data = read_json(d / RESULT_FILE)
        if data and (data.get("model") or {}).get("id") == model_id and same_run(data, expected):
            candidates.append(d)
    return max(candidates, key=lambda d: (d / RESULT_FILE).stat().st_mtime, default=None)


def install_run_dir(src: Path, results_dir: Path, rel: Path) -> Path:
    """Move the run folder ``src`` to ``results_dir/rel``, replacing an older one atomically."""
    final = Path(results_dir) / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(src, tmp)
    if final.exists():
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    return final


def install_results(fetched_results: Path, results_dir: Path) -> list[Path]:
    """Install every complete run folder of a fetched ``results`` tree; return their new paths."""
    installed = []
    for d in result_dirs(fetched_results):
        installed.append(install_run_dir(d, results_dir, d.relative_to(fetched_results)))
    return installed


def result_for(entry, dirs: list[Path]) -> tuple[Path, dict] | None:
    """The run folder among ``dirs`` that belongs to ``entry`` (by model id, else folder name)."""
    best = None
    for d in dirs:
        data = read_json(d / RESULT_FILE)
        if not data:
            continue
        mid = (data.get("model") or {}).get("id")
        hub = ((data.get("model") or {}).get("source") or {}).get("hub_id")
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
