"""Every real config shipped in models/configs, built at FULL scale on the meta device: sites found and
parameter counts equal to SOURCES.md (parsed here as the oracle) within 1%."""

import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from harness.engine.sites import find_sites
from harness.loading.params import count_model

CONFIGS = Path(__file__).resolve().parents[1] / "models" / "configs"


def sources_table() -> dict[str, dict]:
    """folder -> {total, active, layers, hidden} from the markdown table in SOURCES.md."""
    rows = {}
    for line in (CONFIGS / "SOURCES.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or not cells[2].endswith("B"):
            continue
        names = [n.strip() for n in cells[0].split(",")]
        base = names[0].rsplit("-", 1)[0]
        names = [names[0]] + [base + "-" + n.lstrip("-") for n in names[1:]]
        totals = [float(v.strip().rstrip("B")) for v in cells[2].split("/")]
        layers = [int(v) for v in cells[4].split("/")]
        hidden = [int(v) for v in cells[5].split("/")]
        active = None if cells[3] == "-" else float(cells[3].rstrip("B"))
        for i, name in enumerate(names):
            rows[name] = {
                "total": totals[i] * 1e9,
                "active": active * 1e9 if active else None,
                "layers": layers[i],
                "hidden": hidden[i],
            }
    return rows


FOLDERS = (
    sorted(p.name for p in CONFIGS.iterdir() if (p / "config.json").is_file())
    if CONFIGS.is_dir()
    else []
)


def close(ours: float, published: float) -> bool:
    # within 1%, or within the table's rounding to 0.01B for the smallest models
    return abs(ours - published) <= max(0.01 * published, 0.005e9)


@pytest.mark.parametrize("folder", FOLDERS)
def test_full_scale_sites_and_params(folder):
    table = sources_table()
    assert folder in table, f"{folder} missing from SOURCES.md"
    want = table[folder]
    config = AutoConfig.from_pretrained(CONFIGS / folder)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config)
    ln = find_sites(model, "ln")
    assert ln.num_layers == want["layers"]
    assert ln.hidden_size == want["hidden"]
    assert len(ln.sites) == 2 * want["layers"]
    assert len(find_sites(model, "all").sites) == 3 * want["layers"]
    counts = count_model(model)
    assert close(counts.total, want["total"]), (counts.total, want["total"])
    if want["active"] is not None:
        assert close(counts.active, want["active"]), (counts.active, want["active"])
        if counts.is_moe:
            assert len(ln.routers) == want["layers"] - getattr(config, "first_k_dense_replace", 0)
    else:
        assert counts.active == counts.total


def test_sources_table_parses_every_folder():
    assert set(FOLDERS) <= set(sources_table())


def test_published_active_counts_leave_out_the_embedding():
    # gpt-oss-20b: 3.6B published active = ours without the embedding table
    config = AutoConfig.from_pretrained(CONFIGS / "openai__gpt-oss-20b")
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        counts = count_model(AutoModelForCausalLM.from_config(config))
    assert abs(counts.active_no_embedding / 1e9 - 3.6) < 0.05
