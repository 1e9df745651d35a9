"""Which rows were made alike (dtype, data, sites, criteria): the reference configuration, and a reason for every other row."""

from __future__ import annotations

from harness.engine.criteria import Criteria
from harness.options import STUDY_DATASET
from harness.reports.rows import Row

# -- comparability ------------------------------------------------------------------------------
_SPEC_NAMES = {
    "dataset": "dataset",
    "config": "dataset config",
    "revision": "dataset revision",
    "num_seqs": "windows",
    "seq_len": "window length",
    "stride": "stride",
    "bos": "BOS policy",
}


def _same_tokens_known(a: Row, b: Row) -> bool:
    """Whether the window hashes of ``a`` and ``b`` can be compared: same tokenizer recorded,
    or raw token ids given directly (no tokenizer: the ids are the data)."""
    if a.tokenizer is not None and a.tokenizer == b.tokenizer:
        return True
    return a.tokenizer is None and b.tokenizer is None


def differences(row: Row, ref: Row) -> list[str]:
    """Why ``row`` was not made the same way as ``ref`` (empty: comparable)."""
    out = []
    if row.activation_dtype != ref.activation_dtype:
        out.append(f"activations {row.activation_dtype} vs {ref.activation_dtype}")
    spec = [
        f"{name} {row.data.get(k)} vs {ref.data.get(k)}"
        for k, name in _SPEC_NAMES.items()
        if row.data.get(k) != ref.data.get(k)
    ]
    out.extend(spec)
    if (
        not spec
        and _same_tokens_known(row, ref)
        and row.data.get("windows_sha256") != ref.data.get("windows_sha256")
    ):
        out.append(
            f"different token windows (hash {str(row.data.get('windows_sha256'))[:8]} vs "
            f"{str(ref.data.get('windows_sha256'))[:8]})"
        )
    if row.sites != ref.sites:
        out.append(f"sites {row.sites} vs {ref.sites}")
    if row.criteria != ref.criteria:
        out.append(f"criteria {_criteria_text(row.criteria)} vs {_criteria_text(ref.criteria)}")
    return out


def _criteria_text(c: Criteria) -> str:
    first = ", first position left out" if c.skip_first_position else ""
    return f"|x|>={c.magnitude:g}, {c.layer_frac:g} {c.layer_unit}, {c.seq_frac:g} positions{first}"


def is_study_default(row: Row) -> bool:
    """Whether ``row`` was made at the study's settings: FineWeb-Edu, 16 windows of 2048 tokens,
    the norm-output sites, Dettmers' criteria (any stride, dtype or BOS policy)."""
    d = row.data
    return (
        d.get("dataset") == STUDY_DATASET
        and (d.get("num_seqs"), d.get("seq_len")) == (16, 2048)
        and row.sites == "ln"
        and row.criteria == Criteria(6.0, 0.25, 0.06)
    )


def mark_comparability(rows: list[Row]) -> Row | None:
    """Pick the reference configuration and mark every row made differently
    ``comparable=False`` with its reasons. Returns the reference row.

    The reference is the configuration of the study's settings (``is_study_default``) when a
    row has them, else the one most rows share; ties go to Dettmers' sites and criteria, then
    to the run in the bf16 the study used, then to the first row in report order."""
    if not rows:
        return None
    support = [sum(not differences(other, r) for other in rows) for r in rows]

    def rank(i):
        r = rows[i]
        dettmers = r.sites == "ln" and r.criteria == Criteria(6.0, 0.25, 0.06)
        return (is_study_default(r), support[i], dettmers, r.activation_dtype == "bfloat16", -i)

    ref = rows[max(range(len(rows)), key=rank)]
    for r in rows:
        reasons = differences(r, ref)
        r.comparable = not reasons
        r.comparability = (
            "reference configuration" if not reasons else "not comparable: " + "; ".join(reasons)
        )
    return ref


_LABEL_PARTS = {
    "dataset": "{}",
    "config": "config {}",
    "revision": "revision {}",
    "num_seqs": "{} windows",
    "seq_len": "length {}",
    "stride": "stride {}",
    "bos": "BOS {}",
}


def _label_parts(r: Row) -> list[tuple[str, str]]:
    c = r.criteria
    return [
        ("dtype", r.activation_dtype),
        *((k, fmt.format(r.data.get(k))) for k, fmt in _LABEL_PARTS.items()),
        ("sites", f"sites {r.sites}"),
        (
            "criteria",
            f"|x|>={c.magnitude:g} {c.layer_frac:g}"
            + (" layers" if c.layer_unit == "layers" else "")
            + f"/{c.seq_frac:g}"
            + (" no first position" if c.skip_first_position else ""),
        ),
        ("windows", f"windows {str(r.data.get('windows_sha256'))[:8]}"),
    ]


def label_runs(rows: list[Row]) -> None:
    """Give each row a label unique in ``rows``: the model id, and when the model has several
    runs, what tells them apart (e.g. ``tiny_llama (bfloat16, stride 128)``)."""
    by_model: dict[str, list[Row]] = {}
    for r in rows:
        by_model.setdefault(r.model_name, []).append(r)
    for name, group in by_model.items():
        if len(group) == 1:
            group[0].label = name
            continue
        parts = [_label_parts(r) for r in group]
        varying = [i for i in range(len(parts[0])) if len({p[i][1] for p in parts}) > 1]
        keys = [parts[0][i][0] for i in varying]
        if "windows" in keys and set(keys) & set(_LABEL_PARTS):  # other data: other windows
            varying = [i for i in varying if parts[0][i][0] != "windows"]
        for r, p in zip(group, parts, strict=True):
            r.label = f"{name} ({', '.join(p[i][1] for i in varying) or 'same settings'})"
        seen: dict[str, int] = {}
        for r in group:  # same settings twice (results copied side by side): number them
            seen[r.label] = seen.get(r.label, 0) + 1
            if seen[r.label] > 1:
                r.label += f" #{seen[r.label]}"


def reference_configuration(rows: list[Row]) -> str:
    """One line describing the configuration the comparable rows share."""
    ref = next((r for r in rows if r.comparable), None)
    if ref is None:
        return "no rows"
    d = ref.data
    return (
        f"activations {ref.activation_dtype}; data {d.get('dataset')} "
        f"{d.get('num_seqs')} x {d.get('seq_len')} tokens, stride {d.get('stride')}, "
        f"BOS {d.get('bos')}; sites {ref.sites}; criteria {_criteria_text(ref.criteria)}"
    )
