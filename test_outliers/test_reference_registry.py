"""The 2022 reference families in the registry (models/reference.py) and Dettmers' table 4 as
data (models/dettmers.py): ids, hub ids, parameter counts against the shipped configs, GPU
plans, and the table against METHOD.md."""

import math
import os
import re
import warnings
from pathlib import Path

import pytest
from harness.models.dettmers import (
    DETTMERS_TABLE4,
    GPT2_SIZES,
    beside_ours,
    nominal_params,
    parse_size,
    reference_point,
    reference_series,
)
from harness.models.reference import REFERENCE
from harness.models.registry import DTYPE_BYTES

ROOT = Path(__file__).resolve().parents[1]
TABLE4 = Path(__file__).parent / "data" / "dettmers_table4.md"  # transcribed from the paper
CONFIGS = Path(os.environ.get("OUTLIERS_CONFIGS_DIR") or ROOT / "models" / "configs")

EXPECTED = {
    **{
        f"opt_{s}": f"facebook/opt-{s}"
        for s in ("125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b", "66b")
    },
    "gpt2_small": "openai-community/gpt2",
    "gpt2_medium": "openai-community/gpt2-medium",
    "gpt2_large": "openai-community/gpt2-large",
    "gpt2_xl": "openai-community/gpt2-xl",
    **{
        f"pythia_{s}": f"EleutherAI/pythia-{s}"
        for s in ("160m", "410m", "1.4b", "2.8b", "6.9b", "12b")
    },
    **{
        f"fairseq_dense_{s.lower()}": f"KoboldAI/fairseq-dense-{s}"
        for s in ("125M", "1.3B", "2.7B", "6.7B", "13B")
    },
    "gpt_j_6b": "EleutherAI/gpt-j-6b",
}
# Dettmers' table 4, row by row: the entries that carry its figures
TABLE4_ROWS = {
    "gpt2_small": "GPT-2 117M",
    "gpt2_medium": "GPT-2 345M",
    "gpt2_large": "GPT-2 762M",
    "gpt2_xl": "GPT-2 1.5B",
    "fairseq_dense_125m": "fairseq 125M",
    "fairseq_dense_1.3b": "fairseq 1.3B",
    "fairseq_dense_2.7b": "fairseq 2.7B",
    "fairseq_dense_6.7b": "fairseq 6.7B",
    "fairseq_dense_13b": "fairseq 13B",
    "gpt_j_6b": "GPT-J 6.0B",
}
BY_ID = {e.id: e for e in REFERENCE}


# --- the registry entries ----------------------------------------------------------------------


def test_all_24_reference_ids_with_their_hub_ids_and_group():
    assert len(REFERENCE) == 24 and len(BY_ID) == 24
    assert {e.id: e.hub_id for e in REFERENCE} == EXPECTED
    assert all(e.group == "reference" for e in REFERENCE)


def test_reference_entries_are_in_the_registry_once_registered():
    from harness import models

    present = [i for i in EXPECTED if i in models.REGISTRY]
    if not present:
        pytest.skip("models/__init__.py does not include models.reference.REFERENCE yet")
    assert sorted(present) == sorted(EXPECTED)
    assert all(models.REGISTRY[i] is BY_ID[i] for i in EXPECTED)
    assert {e.id for e in models.select("reference")} >= set(EXPECTED)


def test_dtypes_are_the_shipped_ones():
    for e in REFERENCE:
        want = "float32" if e.id.startswith("gpt2_") else "float16"
        assert e.dtype == want, e.id


def test_every_table4_row_is_an_entry_with_its_figures_and_c4_and_dettmers_settings():
    assert sorted(reference_point(r).label for r in TABLE4_ROWS.values()) == sorted(
        p.label for p in DETTMERS_TABLE4
    )
    for e in REFERENCE:
        if e.id not in TABLE4_ROWS:
            assert e.published is None, e.id
            continue
        point = reference_point(TABLE4_ROWS[e.id])
        pub = e.published
        assert pub.num_outliers is None
        assert (pub.mean_layer_pct, pub.mean_seq_pct) == (point.layer_pct, point.seq_pct)
        assert getattr(pub, "outlier_dims", point.outlier_dims) == point.outlier_dims
        assert pub.source.startswith("Dettmers et al. 2022 table 4")
        settings = dict(pub.settings)
        # Dettmers' sites (q/k/v, output projection, FFN expansion inputs), counted per site
        assert settings["dataset"] == "allenai/c4" and settings["sites"] == "dettmers"
        assert settings["layer_unit"] == "sites" and e.sites == "dettmers"
        assert (settings["magnitude"], settings["layer_frac"], settings["seq_frac"]) == (
            6.0,
            0.25,
            0.06,
        )


def _sources_totals(text: str) -> dict[str, tuple[float, int]]:
    """folder -> (total params in B, decimals printed), from SOURCES.md's table; rows like
    '| facebook__opt-350m, -1.3b, -66b | ... | 0.33B / 1.32B / 65.72B | ...' expand."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or "__" not in cells[0]:
            continue
        names = [n.strip() for n in cells[0].split(",")]
        base = names[0].rsplit("-", 1)[0]
        folders = [names[0]] + [base + n if n.startswith("-") else n for n in names[1:]]
        totals = [t.strip() for t in cells[2].split("/")]
        assert len(totals) == len(folders), line
        for folder, total in zip(folders, totals, strict=True):
            m = re.fullmatch(r"(\d+)\.(\d+)B", total)
            out[folder] = (float(total[:-1]), len(m.group(2)))
    return out


@pytest.fixture(scope="module")
def counted():
    """entry id -> (counted params, SOURCES.md total in B, decimals) for entries with a config."""
    from transformers import AutoConfig

    from harness.loading.params import count_from_config

    oracle = _sources_totals((CONFIGS / "SOURCES.md").read_text())
    out = {}
    for e in REFERENCE:
        if e.config_dir and (CONFIGS / e.config_dir / "config.json").is_file():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config = AutoConfig.from_pretrained(CONFIGS / e.config_dir)
            out[e.id] = (count_from_config(config).total, *oracle[e.config_dir])
    return out


def test_config_dirs_name_existing_shared_configs(counted):
    with_dir = {e.id for e in REFERENCE if e.config_dir}
    assert with_dir == {f"opt_{s}" for s in ("125m", "350m", "1.3b", "6.7b", "13b", "66b")}
    assert set(counted) == with_dir


# The id's size is the count rounded to the digits the id prints (opt_1.3b: 1.316B -> 1.3B,
# opt_13b: 12.85B -> 13B), except where the name is not the size: OPT-350m has 331M.
MISNAMED = {"opt_350m": "331M"}


def test_meta_param_counts_match_sources_md_and_the_id(counted):
    for model_id, (count, oracle_b, decimals) in counted.items():
        # SOURCES.md prints 2 decimals in billions: within 1%, or within its rounding (0.13B).
        tol = max(0.01 * oracle_b, 0.5 * 10.0**-decimals)
        assert abs(count / 1e9 - oracle_b) <= tol, (model_id, count, oracle_b)
        size = MISNAMED.get(model_id, model_id.split("_", 1)[1])
        m = re.fullmatch(r"(\d+)(?:\.(\d+))?([mb])", size.lower())
        unit = 1e6 if m.group(3) == "m" else 1e9
        assert round(count / unit, len(m.group(2) or "")) == float(size[:-1]), (model_id, count)


def test_sized_gpu_plans_hold_the_weights_with_headroom(counted):
    """Preflight's memory model sizes every reference entry whose config is at hand: the plan
    holds the counted weights with 20% to spare and the disk holds the checkpoint; entries
    without a config get no plan (and say why), never a guess."""
    from harness.preflight.sizing import size

    for e in REFERENCE:
        sized = size(e)
        assert e.gpu is None
        if e.id not in counted:
            assert sized.plan is None and "config" in sized.why, (e.id, sized)
            continue
        params = counted[e.id][0]
        plan = sized.plan
        assert sized.total_params == params, e.id
        assert plan.memory_gb * 1e9 >= params * DTYPE_BYTES[e.dtype] * 1.2, (e.id, plan)
        assert plan.disk_gb * 1e9 >= params * DTYPE_BYTES[e.dtype], (e.id, plan)


def test_checked_configs_agree_with_the_entry_dtype(counted):
    import json

    for model_id in counted:
        e = BY_ID[model_id]
        shipped = json.loads((CONFIGS / e.config_dir / "config.json").read_text()).get(
            "torch_dtype"
        )
        assert shipped in (None, e.dtype), model_id  # partial copies have no torch_dtype


# --- Dettmers' table 4 as data ------------------------------------------------------------------


def _method_table() -> list[list[str]]:
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in TABLE4.read_text().splitlines()
        if line.startswith("|")
    ]
    assert rows[0][:3] == ["model", "params", "C4 ppl"]
    return [r for r in rows[2:]]  # header, separator


def test_table4_matches_the_published_table_exactly():
    rows = _method_table()
    assert len(rows) == len(DETTMERS_TABLE4) == 10
    for row, p in zip(rows, DETTMERS_TABLE4, strict=True):
        family, size, ppl, dims, layers, seq = row
        assert (p.family, p.size) == (family, size)
        assert p.params == parse_size(size)
        assert (p.c4_ppl, p.outlier_dims, p.layer_pct, p.seq_pct) == (
            float(ppl),
            int(dims),
            float(layers),
            float(seq),
        )


def test_phase_transition_holds_in_the_data():
    below = [p for p in DETTMERS_TABLE4 if p.params <= 6.0e9]
    above = [p for p in DETTMERS_TABLE4 if p.params >= 6.7e9]
    assert len(below) + len(above) == 10 and above
    assert max(p.layer_pct for p in below) <= 65
    assert all(p.layer_pct == 100 for p in above)
    assert max(p.seq_pct for p in below) <= 47 and min(p.seq_pct for p in above) >= 73


def test_parse_size():
    assert parse_size("117M") == 117_000_000
    assert parse_size("1.5B") == 1_500_000_000
    assert parse_size("6.7b") == 6_700_000_000
    with pytest.raises(ValueError):
        parse_size("large")


def test_reference_series_is_sorted_and_complete():
    s = reference_series()
    n = len(DETTMERS_TABLE4)
    for key in ("params", "layer_pct", "seq_pct", "dims", "labels"):
        assert len(s[key]) == n, key
    assert s["params"] == sorted(s["params"])
    i = s["labels"].index("fairseq 6.7B")
    assert (s["layer_pct"][i], s["seq_pct"][i], s["dims"][i]) == (100, 75, 6)
    assert "2208.07339" in s["source"]


def test_nominal_params_of_reference_ids():
    assert nominal_params("opt_1.3b") == 1_300_000_000
    assert nominal_params("pythia_160m") == 160_000_000
    assert nominal_params("gpt2_xl") == GPT2_SIZES["xl"]
    assert nominal_params("qwen3_8b") is None


def test_beside_ours_pairs_each_family_with_its_nearest_published_point():
    rows = [
        {
            "id": "opt_6.7b",
            "total_params": 6_658_473_984,
            "num_dims": 9,
            "sites_affected_pct": 97.0,
            "positions_affected_pct": 70.0,
        },
        {"id": "opt_30b", "total_params_b": 29.97},
        {"id": "opt_350m"},
        {"id": "gpt2_small", "total_params": GPT2_SIZES["small"], "num_dims": 1},
        {"id": "pythia_1.4b", "total_params": 1_414_647_808},
        {"id": "qwen3_8b", "total_params": 8_190_000_000},
    ]
    out = {r["id"]: r for r in beside_ours(rows)}
    assert set(out) == {"opt_6.7b", "opt_30b", "opt_350m", "gpt2_small", "pythia_1.4b"}
    assert [r["id"] for r in beside_ours(rows)] == [
        "opt_350m",
        "opt_6.7b",
        "opt_30b",
        "gpt2_small",
        "pythia_1.4b",
    ]
    o = out["opt_6.7b"]
    assert o["dettmers"] == "fairseq 6.7B" and o["same_size"]
    assert (o["ours_dims"], o["ours_layer_pct"], o["ours_seq_pct"]) == (9, 97.0, 70.0)
    assert (o["dettmers_dims"], o["dettmers_layer_pct"], o["dettmers_seq_pct"]) == (6, 100, 75)
    assert "not OPT" in o["note"]
    assert out["opt_30b"]["dettmers"] == "fairseq 13B" and not out["opt_30b"]["same_size"]
    assert "nearest published size 13B" in out["opt_30b"]["note"]
    assert out["opt_350m"]["params"] == 350e6 and out["opt_350m"]["ours_dims"] is None
    g = out["gpt2_small"]
    assert g["dettmers"] == "GPT-2 117M" and g["same_size"] and g["ours_dims"] == 1
    p = out["pythia_1.4b"]
    assert p["dettmers"] is None and "no Pythia" in p["note"]


def test_beside_ours_pairs_every_registry_size_within_the_family():
    rows = [{"id": e.id} for e in REFERENCE]
    for r in beside_ours(rows):
        if r["id"].startswith("pythia_"):
            assert r["dettmers"] is None
        else:
            family = {"gpt2": "GPT-2", "gpt": "GPT-J"}.get(r["id"].split("_")[0], "fairseq")
            assert r["dettmers"].split()[0] == family
            assert math.isfinite(r["params"])
    gpt2 = {r["id"]: r["dettmers"] for r in beside_ours(rows) if r["id"].startswith("gpt2_")}
    assert gpt2 == {
        "gpt2_small": "GPT-2 117M",
        "gpt2_medium": "GPT-2 345M",
        "gpt2_large": "GPT-2 762M",
        "gpt2_xl": "GPT-2 1.5B",
    }
