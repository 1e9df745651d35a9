"""Resume: whether a result already on disk answers the run about to happen.

A run is not repeated when a complete result directory (``<results>/<model id>/<run key>/``
holding ``result.json``) has the same model revision, data, criteria and dtype, and holds every
section the run asks for (attribution, perplexity); ``--rerun`` runs it anyway. The local pytest
session and the RunPod runner decide with the same functions.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.engine.result import AnalysisResult, upgrade
from harness.engine.result_files import RESULT_FILE, STATS_FILE, read_result
from harness.errors import HarnessError

_CORE_DATA = ("dataset", "num_seqs", "seq_len", "stride")
_CORE_CRITERIA = (
    "sites",
    "magnitude",
    "layer_frac",
    "seq_frac",
    "layer_unit",
    "skip_first_position",
)
# what a result written before a setting existed was made with
_CRITERIA_DEFAULTS = {"layer_unit": "sites", "skip_first_position": False}
_OPTIONAL_CRITERIA = ("site_names", "num_sites", "grid")


def same_run(a: dict, b: dict) -> bool:
    """True when two results (or a result and a planned run) have the same model revision, data
    and criteria: the condition for not running a model again.

    - model: same ``id``; same ``source.hub_id`` and ``source.revision`` when both give one (a
      plan without a pinned revision accepts the revision an existing result recorded);
    - data: the core spec (dataset, sequences, length, stride) equal, every other key present on
      both sides equal (the window hash included);
    - criteria: magnitude, fractions and site set equal; site names / grid when both have them;
    - dtype: the requested dtype equal when both give one.
    """
    a, b = _top(a), _top(b)
    ma, mb = a.get("model") or {}, b.get("model") or {}
    if ma.get("id") != mb.get("id"):
        return False
    if ma.get("requested_dtype") and mb.get("requested_dtype"):
        if ma["requested_dtype"] != mb["requested_dtype"]:
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
    d = _CRITERIA_DEFAULTS
    if any(_num(ca.get(k, d.get(k))) != _num(cb.get(k, d.get(k))) for k in _CORE_CRITERIA):
        return False
    return all(ca[k] == cb[k] for k in _OPTIONAL_CRITERIA if k in ca and k in cb)


def _top(x) -> dict:
    """The top-level sections of a typed result, a parsed result.json (older schemas in
    today's names) or a planned run (``expected_run``), as one mapping."""
    if isinstance(x, AnalysisResult):
        return {"model": x.model, "data": x.data, "criteria": x.criteria, **x.sections}
    return upgrade(dict(x)) if "schema_version" in x else x


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
    """The newest run directory under ``results_dir`` whose result ``covers`` ``expected``,
    or None."""
    model_id = (expected.get("model") or {}).get("id")
    candidates = []
    for d in result_dirs(results_dir):
        if not (d / STATS_FILE).is_file():
            continue
        try:
            result = read_result(d)  # older schemas in today's names; newer ones refused
        except HarnessError:
            continue
        if result.model.id == model_id and covers(result, expected):
            candidates.append(d)
    return max(candidates, key=lambda d: (d / RESULT_FILE).stat().st_mtime, default=None)


def covers(result: AnalysisResult | dict, expected: dict) -> bool:
    """``same_run`` and the result holds every section the planned run asks for
    (``expected["wants"]``)."""
    wants = expected.get("wants") or ()
    return same_run(result, expected) and all(_top(result).get(k) is not None for k in wants)


def expected_run(opts, entry) -> dict:
    """The part of a result that is known before running (see ``same_run``), and the sections the
    run will add (``wants``)."""
    data = {
        "dataset": opts.dataset,
        "num_seqs": opts.num_seqs,
        "seq_len": opts.seq_len,
        "stride": opts.stride or opts.seq_len,
    }
    if opts.dataset_config:
        data["config"] = opts.dataset_config
    if opts.dataset_revision:
        data["revision"] = opts.dataset_revision
    if opts.bos != "auto":
        data["bos"] = opts.bos
    wants = [] if opts.no_attribution else ["attribution"]
    if opts.perplexity:
        wants.append("perplexity")
    return {
        "wants": wants,
        "model": {
            "id": entry.id,
            # what --dtype auto loads for a registry entry (harness.loading.load.resolve_dtype)
            "requested_dtype": entry.dtype if opts.dtype == "auto" else opts.dtype,
            "source": {
                "hub_id": None if entry.is_tiny else entry.hub_id,
                "revision": entry.revision,
            },
        },
        "data": data,
        "criteria": {
            "sites": opts.sites_for(entry),
            "magnitude": opts.magnitude,
            "layer_frac": opts.layer_frac,
            "seq_frac": opts.seq_frac,
            "layer_unit": opts.layer_unit,
            "skip_first_position": opts.skip_first_position,
        },
    }
