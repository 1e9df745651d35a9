"""The engine equals a brute-force reference EXACTLY, on every architecture, fp32 and bf16."""

import json

import pytest
import torch
from factories import ARCHITECTURES, random_ids, random_model
from oracle import collect_activations, oracle_figures
from paths import PATHS, TUNINGS, tuning

from harness.engine.criteria import Criteria, evaluate
from harness.engine.reductions import Thresholds
from harness.pipeline import analyze

THRESHOLDS = [(3.0, 0.25, 0.06), (4.0, 0.5, 0.1), (6.0, 0.25, 0.06), (5.0, 0.0, 0.0)]


DEFINITIONS = [("sites", False), ("layers", False), ("sites", True), ("layers", True)]


def assert_matches_oracle(result_stats, acts, thresholds, definitions=(("sites", False),)):
    """``definitions``: (layer unit, first position left out) pairs; the oracle counts layers by
    the site names' layer index and leaves the first position out by slicing the activations."""
    layer_of = [int(n.split(".")[1]) for n in result_stats.site_names]
    for (m, a, b), (unit, skip) in ((t, d) for t in thresholds for d in definitions):
        got = evaluate(result_stats, Criteria(m, a, b, unit, skip))
        want = oracle_figures(
            acts[:, :, 1:] if skip else acts, m, a, b, layer_of if unit == "layers" else None
        )
        pairs = {(p["seq"], p["dim"]): p for p in got["seed_compatible"]["pairs"]}
        assert set(pairs) == set(want["pairs"]), (m, a, b)
        for key, w in want["pairs"].items():
            for field, value in w.items():
                assert pairs[key][field] == value, (m, a, b, key, field)
        assert got["seed_compatible"]["num_outliers"] == len(want["pairs"])
        dims = {d["dim"]: d for d in got["pooled"]["dims"]}
        assert set(dims) == set(want["dims"]), (m, a, b)
        for key, w in want["dims"].items():
            for field, value in w.items():
                assert dims[key][field] == value, (m, a, b, key, field)
        assert got["pooled"]["sites_affected_pct"] == want["sites_affected_pct"]
        assert got["pooled"]["positions_affected_pct"] == want["positions_affected_pct"]
        for g, w in zip(got["per_site"], want["per_site"], strict=True):
            assert g["num_over_magnitude"] == w["num_over_magnitude"]
            assert g["max_magnitude"] == w["max_magnitude"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_engine_equals_oracle(arch, dtype):
    model = random_model(arch, dtype, seed=3)
    ids = random_ids(5, 24, seed=4)
    # batch size 2 splits 5 sequences unevenly (2, 2, 1); the oracle sees the same batches
    result = analyze(model, ids, batch_size=2)
    names, acts = collect_activations(model, ids, "ln", batch_size=2)
    assert result.criteria["site_names"] == names
    assert result.seed_compatible["num_outliers"] > 0, "the test model must produce outliers"
    assert_matches_oracle(result.stats, acts, THRESHOLDS, DEFINITIONS)


@pytest.mark.parametrize("sites", ["residual", "all"])
@pytest.mark.parametrize("arch", ["qwen3", "olmoe", "opt", "gpt2"])
def test_engine_equals_oracle_other_site_sets(arch, sites):
    model = random_model(arch, torch.float32, seed=5)
    ids = random_ids(4, 20, seed=6)
    result = analyze(model, ids, sites=sites, batch_size=3, magnitude=4.0)
    names, acts = collect_activations(model, ids, sites, batch_size=3)
    assert result.criteria["site_names"] == names
    assert_matches_oracle(result.stats, acts, [(4.0, 0.25, 0.06), (3.0, 0.1, 0.2)], DEFINITIONS)


def test_run_at_off_grid_magnitude_is_exact():
    # 6.1 is not representable in bf16: the threshold must not round down into a pass
    model = random_model("qwen3", torch.bfloat16, seed=7)
    ids = random_ids(3, 16, seed=8)
    result = analyze(model, ids, magnitude=6.1, batch_size=3)
    _, acts = collect_activations(model, ids, "ln", batch_size=3)
    assert_matches_oracle(result.stats, acts, [(6.1, 0.25, 0.06)])


def test_per_sequence_site_levels_match_oracle():
    model = random_model("olmoe", torch.float32, seed=9)
    ids = random_ids(5, 16, seed=10)
    result = analyze(model, ids, batch_size=2)
    _, acts = collect_activations(model, ids, "ln", batch_size=2)
    grid = result.stats.grid
    seq_site_max = abs(acts).max(axis=2)  # [S, N, H]
    want = (seq_site_max[..., None] >= grid).sum(axis=-1)
    assert (result.stats.site_seq_level == want).all()
    assert (
        result.stats.seq_site_count
        == (want[None] >= (1 + np_arange(len(grid)))[:, None, None, None]).sum(1)
    ).all()


def np_arange(n):
    import numpy as np

    return np.arange(n)


def test_sites_all_reports_each_site_kind_apart(tmp_path, tiny_cache, monkeypatch):
    """``--sites all`` measures every site in one pass but reports the block inputs and the
    residual stream apart: each part equals a run of that site set alone and the oracle, and a
    run writes one result per kind, never the pooled one."""
    model = random_model("qwen3", torch.float32, seed=8)
    ids = random_ids(4, 20, seed=9)
    both = analyze(model, ids, sites="all", batch_size=3, magnitude=4.0)
    assert set(both.parts) == {"ln", "residual"}
    for kind, part in both.parts.items():
        alone = analyze(model, ids, sites=kind, batch_size=3, magnitude=4.0)
        assert part.criteria["site_names"] == alone.criteria["site_names"]
        assert part.seed_compatible == alone.seed_compatible and part.pooled == alone.pooled
        names, acts = collect_activations(model, ids, kind, batch_size=3)
        assert part.criteria["site_names"] == names
        assert_matches_oracle(part.stats, acts, [(4.0, 0.25, 0.06), (3.0, 0.1, 0.2)])
        summary = both.sections["by_site_kind"][kind]
        assert summary["pooled"]["num_dims"] == alone.pooled["num_dims"]

    from harness.options import AnalysisOptions
    from harness.runners.local import run_model

    monkeypatch.setenv("OUTLIERS_TINY_CACHE", str(tiny_cache))
    opts = AnalysisOptions(sites="all", num_seqs=2, seq_len=32, results_dir=str(tmp_path))
    result, _ = run_model("tiny_qwen3", opts)
    written = sorted(
        p.parent.name.split("__")[1].split("-")[0] for p in tmp_path.rglob("result.json")
    )
    assert written == ["ln", "residual"]


@pytest.mark.parametrize("path", PATHS)
def test_several_sequences_per_chunk_with_uneven_batches(path):
    """The normal case at GPU sizes: a chunk holds several whole sequences and neither the batch
    nor the run divides evenly: 7 windows in batches of 5 and 2, chunks of 2 sequences (2, 2, 1
    and 2). Every sequence has pairs, so a dropped partial chunk cannot hide."""
    model = random_model("qwen3", torch.float32, seed=3)
    ids = random_ids(7, 24, seed=8)
    H = model.config.hidden_size
    result = analyze(
        model, ids, batch_size=5, tuning=tuning(path, chunk_elements={"cpu": 2 * 24 * H})
    )
    names, acts = collect_activations(model, ids, "ln", batch_size=5)
    want = oracle_figures(acts, 3.0, 0.25, 0.06)
    assert {seq for seq, _ in want["pairs"]} == set(range(7)), "every window needs pairs"
    assert_matches_oracle(result.stats, acts, THRESHOLDS)


@pytest.mark.parametrize("path", PATHS)
def test_a_grid_off_the_level_table_matches_the_oracle(path):
    """Magnitudes such as 6.1 are not small dyadic numbers: the capture then finds levels by one
    compare per magnitude instead of its lookup table, with the same exact figures."""
    grid = (3.0, 4.0, 5.0, 6.0, 6.1, 7.3)
    assert Thresholds(grid).table(torch.device("cpu"), torch.float32) is None
    model = random_model("qwen3", torch.float32, seed=3)
    ids = random_ids(5, 24, seed=8)
    result = analyze(model, ids, batch_size=3, grid=grid, magnitude=6.1, tuning=TUNINGS[path])
    _, acts = collect_activations(model, ids, "ln", batch_size=3)
    assert_matches_oracle(result.stats, acts, THRESHOLDS + [(6.1, 0.25, 0.06), (7.3, 0.0, 0.0)])


def test_sites_all_keeps_every_section_of_each_site_kind(tmp_path, tiny_cache, monkeypatch):
    """Each part of ``--sites all`` carries the sections a run of that site kind alone writes:
    the attribution (tokens, massive activations on the residual stream, MoE experts) and the
    perplexity, equal to that run's, in the result and in the files written."""
    model = random_model("olmoe", torch.float32, seed=3, gain=2.5)
    with torch.no_grad():  # a residual-stream outlier dim too, from the embedding
        model.model.embed_tokens.weight[:, 7] = 8.0
    ids = random_ids(5, 24, seed=4)
    run = {"batch_size": 3, "magnitude": 3.0, "layer_frac": 0.1, "seq_frac": 0.02}
    run |= {"attribution": True, "perplexity": True}
    both = analyze(model, ids, sites="all", **run)
    for kind, part in both.parts.items():
        alone = analyze(model, ids, sites=kind, **run)
        assert set(part.sections) == set(alone.sections), kind
        for name in ("attribution", "perplexity", "by_definition"):
            got = json.dumps(part.sections[name], sort_keys=True, default=str)
            assert got == json.dumps(alone.sections[name], sort_keys=True, default=str), name
        attribution = part.sections["attribution"]
        assert attribution["tokens"]["num_dims"] > 0, "hits to attribute"
        assert attribution["massive"] is not None and attribution["experts"] is not None

    from harness.options import AnalysisOptions
    from harness.runners.local import run_model

    monkeypatch.setenv("OUTLIERS_TINY_CACHE", str(tiny_cache))
    opts = AnalysisOptions(sites="all", num_seqs=2, seq_len=32, results_dir=str(tmp_path))
    run_model("tiny_olmoe", opts)
    written = sorted(tmp_path.rglob("result.json"))
    assert len(written) == 2
    for path in written:
        attribution = json.loads(path.read_text())["attribution"]  # sections are top-level keys
        assert {"tokens", "massive", "experts"} <= set(attribution), path.parent.name
        assert attribution["experts"] is not None, path.parent.name
