"""The capture design, guarded (not its speed: that is benchmarks/, ``-m perf``).

- exactly ONE forward pass of the decoder stack per batch (and none of the LM head);
- no hook left behind on any module, also when a hook or an observer raises;
- no activation kept alive after a batch (the storage a hook saw is freed by the batch's end);
- the sparse and the dense strategies of the per-site reduction (whole chunk, gathered
  columns), chunk sizes and the thread setting of the hooks give identical statistics.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.modules.module as nn_module
from factories import ARCHITECTURES, random_ids, random_model
from paths import PATHS, TUNINGS, tuning
from torch.multiprocessing.reductions import StorageWeakRef

import harness.engine.capture as capture
import harness.engine.reductions as reductions
from harness.engine.capture import Capture
from harness.engine.observer import Batch, Observer
from harness.pipeline import analyze

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_hooks",
    "_backward_pre_hooks",
)
GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def hooks_left(model) -> list[str]:
    left = [
        f"{name or '<root>'}.{attr}"
        for name, module in model.named_modules()
        for attr in HOOK_DICTS
        if getattr(module, attr, None)
    ]
    return left + [attr for attr in GLOBAL_HOOKS if getattr(nn_module, attr)]


def decoder_layers(model):
    if hasattr(model, "model") and hasattr(model.model, "decoder"):  # OPT
        return model.model.decoder.layers
    return model.model.layers


@pytest.mark.parametrize("arch", ["qwen3", "olmoe", "opt"])
def test_one_forward_pass_per_batch_and_no_lm_head(arch):
    model = random_model(arch, seed=1)
    ids = random_ids(5, 16, seed=2)
    calls = {"base": [], "head": 0, "layers": [0] * len(decoder_layers(model))}

    def count(key, i=None):
        def hook(*_):
            if i is None:
                calls[key] += 1
            else:
                calls[key][i] += 1

        return hook

    def tokens(_m, args, kwargs):
        calls["base"].append((args[0] if args else kwargs["input_ids"]).numel())

    handles = [
        model.base_model.register_forward_pre_hook(tokens, with_kwargs=True),
        model.get_output_embeddings().register_forward_pre_hook(count("head")),
    ]
    handles += [
        layer.register_forward_pre_hook(count("layers", i))
        for i, layer in enumerate(decoder_layers(model))
    ]
    try:
        result = analyze(model, ids, batch_size=2)  # batches of 2, 2, 1
    finally:
        for h in handles:
            h.remove()
    # exactly one forward pass per batch: the site self-check rides the first batch
    # (harness.engine.selfcheck.SiteProbe), no pass of its own
    assert calls["base"] == [32, 32, 16]
    assert result.criteria["site_self_check"]["pass"] == "first batch"
    assert result.timing["forward_calls"] == result.timing["batches"] == 3
    assert calls["layers"] == [3] * len(calls["layers"])
    assert calls["head"] == 0, "the LM head must not run: it is no site and costs [B, T, vocab]"
    assert hooks_left(model) == []


class Raising(Observer):
    """Raises at the chosen point of the second site of the first batch."""

    def __init__(self, where: str):
        self.where, self.sites_seen = where, 0

    def attach(self, sitemap, register):
        if self.where == "own_hook":
            site = sitemap.sites[1]
            register(site.module, lambda *_: (_ for _ in ()).throw(RuntimeError("own hook")), "raw")

    def on_site(self, site, x, batch):
        self.sites_seen += 1
        if self.where == "on_site" and self.sites_seen == 2:
            raise RuntimeError("observer on_site")

    def end_batch(self, batch):
        if self.where == "end_batch":
            raise RuntimeError("observer end_batch")


@pytest.mark.parametrize("where", ["none", "on_site", "own_hook", "engine_hook", "end_batch"])
def test_no_hook_left_behind(where, monkeypatch):
    model = random_model("qwen3", seed=1)
    ids = random_ids(4, 16, seed=2)
    user = model.model.layers[0].register_forward_hook(lambda *_: None)  # not the engine's
    if where == "engine_hook":

        def broken(*_):
            raise RuntimeError("engine hook")

        monkeypatch.setattr(capture, "reduce_site", broken)
    try:
        if where == "none":
            analyze(model, ids, batch_size=2)
        else:
            with pytest.raises(RuntimeError):
                analyze(model, ids, batch_size=2, observers=[Raising(where)])
        assert hooks_left(model) == ["model.layers.0._forward_hooks"]  # only the user's own
    finally:
        user.remove()
    assert hooks_left(model) == []


class Watcher(Observer):
    """Weak references to the storage of every activation the hooks see; at the end of each
    batch (after the forward pass and the merge) none may be alive. ``keep`` = leak on purpose."""

    def __init__(self, keep: bool = False):
        self.keep, self.kept, self.refs, self.alive_at_end = keep, [], [], []

    def attach(self, sitemap, register):
        for site in sitemap.sites:  # the module's own output, before any engine reshape
            register(site.module, self._raw, "raw")

    def _raw(self, _module, _args, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        self.refs.append(StorageWeakRef(out.untyped_storage()))

    def on_site(self, site, x, batch):
        self.refs.append(StorageWeakRef(x.untyped_storage()))
        if self.keep:
            self.kept.append(x)

    def end_batch(self, batch):
        self.alive_at_end.append(sum(not r.expired() for r in self.refs))
        self.refs = []


@pytest.mark.parametrize("arch", ["qwen3", "olmoe", "opt"])
def test_no_activation_alive_after_a_batch(arch):
    model = random_model(arch, seed=1)
    watcher = Watcher()
    analyze(model, random_ids(5, 16, seed=2), batch_size=2, observers=[watcher])
    assert watcher.alive_at_end == [0, 0, 0]


def test_the_liveness_check_sees_a_leak():
    model = random_model("qwen3", seed=1)
    leaky = Watcher(keep=True)
    analyze(model, random_ids(4, 16, seed=2), batch_size=2, observers=[leaky])
    assert all(n > 0 for n in leaky.alive_at_end)


def stats_arrays(result) -> dict:
    return {
        f.name: getattr(result.stats, f.name)
        for f in dataclasses.fields(result.stats)
        if isinstance(getattr(result.stats, f.name), np.ndarray)
    }


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"]
)
def test_reduction_paths_and_threads_agree(dtype):
    # gain 3: some blocks of positions cross the grid, others do not; T = 24 -> blocks of 8;
    # a small chunk budget splits each batch into chunks of one sequence
    model = random_model("olmoe", dtype, seed=3)
    ids = random_ids(5, 24, seed=4)
    want = stats_arrays(analyze(model, ids, batch_size=3))  # the default tuning
    one_seq = {"cpu": 24 * 64}
    for path, changes in [
        ("dense", {}),  # always the dense pass over the whole chunk
        ("columns", {}),  # over gathered columns
        ("sparse", {}),  # always the gather of candidate blocks
        ("dense", {"chunk_elements": one_seq}),
        ("sparse", {"chunk_elements": one_seq}),
        ("default", {"hook_threads": 1}),  # one thread per hook (torch.set_num_threads)
        ("default", {"heap_slack": 0}),  # the heap trimmed at every site
        ("default", {"heap_slack": None}),  # never trimmed
        ("default", {"hook_threads": 2, "chunk_elements": one_seq}),
    ]:
        got = stats_arrays(analyze(model, ids, batch_size=3, tuning=tuning(path, **changes)))
        for key, value in want.items():
            assert np.array_equal(got[key], value, equal_nan=True), (path, changes, key)


def test_dense_and_sparse_hits_give_the_same_attribution():
    """The observers that read the engine's hits (tokens, positions) see the same hits from the
    dense path (level map) as from the sparse one (gathered blocks), chunks past the first
    included."""
    model = random_model("olmoe", torch.float32, seed=3, gain=2.5)
    ids = random_ids(5, 24, seed=4)
    sections = []
    H = model.config.hidden_size
    for path in PATHS:
        # chunks of one sequence: hits of a chunk past the first carry its offset
        t = tuning(path, chunk_elements={"cpu": 24 * H})
        result = analyze(model, ids, batch_size=3, attribution=True, tuning=t)
        sections.append(json.dumps(result.sections["attribution"], sort_keys=True, default=str))
    assert all(section == sections[0] for section in sections)
    assert json.loads(sections[0])["tokens"]["num_dims"] > 0  # there were hits to attribute


class HitRecorder(Observer):
    """The hits the engine hands to ``on_hits``, and the same hits found by brute force from
    the activation (every value compared with every magnitude in its own dtype)."""

    def __init__(self):
        self.got, self.want = {}, {}

    def on_site(self, site, x, batch):
        t = torch.tensor(self.grid, dtype=x.dtype)
        level = (x.abs().unsqueeze(-1) >= t).sum(dim=-1).flatten()
        pos = level.nonzero().squeeze(1)
        self.want[(batch.index, site.index)] = sorted(
            zip(pos.tolist(), level[pos].tolist(), strict=True)
        )

    def on_hits(self, site, pos, level, grid, batch):
        self.grid = grid
        hits = self.got.setdefault((batch.index, site.index), [])
        hits += zip(pos.tolist(), level.tolist(), strict=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_every_path_hands_observers_exactly_the_brute_force_hits(dtype):
    """Position and level of every value over the grid, chunks past the first included, from
    the candidate blocks, the whole chunk and the gathered columns."""
    model = random_model("qwen3", dtype, seed=3, gain=2.5)
    ids = random_ids(5, 24, seed=4)
    H = model.config.hidden_size
    for path in PATHS:
        recorder = HitRecorder()
        t = tuning(path, chunk_elements={"cpu": 24 * H})
        analyze(model, ids, batch_size=3, observers=[recorder], tuning=t)
        got = {key: sorted(hits) for key, hits in recorder.got.items()}
        assert got == recorder.want, path
        assert sum(map(len, got.values())) > 1000  # hits at many sites to compare


def test_a_chunk_with_exactly_one_candidate_block_is_read():
    """One sequence of one block (T = 16), one dim of one site planted: the gather path sees
    exactly one candidate block, and its values are counted as the brute force counts them."""
    from oracle import collect_activations, stats_from_activations

    model = random_model("qwen3", torch.float32, seed=1, gain=0.01)
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[5] = 1000.0
    ids = random_ids(1, 16, seed=2)
    got = analyze(model, ids, batch_size=1, tuning=TUNINGS["sparse"]).stats  # the gather path
    _, acts = collect_activations(model, ids, "ln")
    want = stats_from_activations(acts, grid=tuple(got.grid))
    assert set(got.hits_dim.tolist()) == {5}  # the one planted dim, nothing else
    for key in ("seq_pos_count", "seq_site_count", "seq_occ", "hits_dim", "hits_level"):
        assert np.array_equal(getattr(got, key), getattr(want, key)), key


def test_a_run_with_no_value_over_the_grid_has_no_hits():
    model = random_model("qwen3", torch.float32, seed=1, gain=0.01)
    stats = analyze(model, random_ids(2, 16, seed=2), batch_size=1).stats
    assert float(stats.site_max.max()) < stats.grid[0]
    assert stats.hits_dim.size == stats.hits_level.size == 0
    assert not stats.hits_indptr.any() and not stats.seq_pos_count.any()


def test_batches_committed_out_of_order_give_the_same_statistics():
    """The capture keeps each batch's hits in (position, dim) order and orders batches by their
    first position, without sorting the hits: a caller may run the batches in any order."""
    from harness.engine.forward import base_forward
    from harness.engine.sites import find_sites
    from harness.engine.statistics import DEFAULT_GRID

    model = random_model("qwen3", torch.float32, seed=3)
    ids = random_ids(6, 24, seed=8)
    sitemap = find_sites(model, "ln")
    forward = base_forward(model)

    def stats(starts, size):
        with torch.inference_mode(), Capture(sitemap, DEFAULT_GRID, 6, 24) as cap:
            for i, start in enumerate(starts):
                cap.run(forward, Batch(start, ids[start : start + size], i))
            return cap.stats()

    want = stats([0, 2, 4], 2)
    assert want.hits_dim.size > 0
    # in reverse, one sequence a batch: no other key of a batch's hits (their first level,
    # dim, ...) can put six batches back in order by chance
    for got in (stats([4, 0, 2], 2), stats([5, 4, 3, 2, 1, 0], 1)):
        for f in dataclasses.fields(want):
            a, b = getattr(want, f.name), getattr(got, f.name)
            assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b, f.name


def test_systematic_dims_and_scattered_hits_in_one_chunk_match_the_oracle(monkeypatch):
    """Two dims over the grid at every position of every site (the outlier dims of a dense
    model) beside scattered hits in the other dims: each chunk reads the first as a level map
    of those gathered columns and re-reads the other columns' candidate blocks, and every
    figure is the brute force's."""
    from oracle import collect_activations, stats_from_activations

    model = random_model("qwen3", torch.float32, seed=1, gain=0.5)
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[[3, 17]] = 60.0
    ids = random_ids(3, 128, seed=2)
    paths = []
    reduce_dense, values_over = reductions._reduce_dense, reductions._values_over

    def dense(part, s, xc, b0, thresholds, cols, on_hits):
        paths.append(("columns", None if cols is None else cols.tolist()))
        return reduce_dense(part, s, xc, b0, thresholds, cols, on_hits)

    def sparse(part, xc, cand, t0, K):
        paths.append(("blocks", int(cand.numel())))
        return values_over(part, xc, cand, t0, K)

    monkeypatch.setattr(reductions, "_reduce_dense", dense)
    monkeypatch.setattr(reductions, "_values_over", sparse)
    got = analyze(model, ids, batch_size=3).stats
    _, acts = collect_activations(model, ids, "ln", batch_size=3)
    want = stats_from_activations(acts, grid=tuple(got.grid))
    assert ("columns", [3, 17]) in paths, paths
    assert ("columns", None) not in paths, "not the whole chunk: 2 dims of 64 are dense"
    assert any(kind == "blocks" and n > 0 for kind, n in paths), "scattered hits were re-read"
    assert len(set(got.hits_dim.tolist())) > 2
    for f in dataclasses.fields(got):
        value = getattr(got, f.name)
        if isinstance(value, np.ndarray) and f.name != "token_ids":  # the oracle has no ids
            assert np.array_equal(value, getattr(want, f.name)), f.name


def test_a_site_that_runs_twice_in_a_batch_stops_the_capture_in_one_sentence():
    """The capture's own guard (a batch after the self-checked first one can loop where the first
    did not): nothing of the batch is merged, and the sentence names the site and the model
    type."""
    from harness.engine.sites import find_sites
    from harness.engine.statistics import make_grid
    from harness.errors import HarnessError

    model = random_model("qwen3", seed=3)
    sitemap = find_sites(model, "ln")
    ids = random_ids(2, 16, seed=4)
    cap = Capture(sitemap, make_grid(6.0), 2, 16)

    def twice(token_ids):
        model.model(token_ids)
        model.model(token_ids)

    with cap, torch.inference_mode(), pytest.raises(HarnessError) as err:
        cap.run(twice, Batch(0, ids))
    assert str(err.value) == (
        "site layers.0.attn_in (model.layers.0.self_attn.q_proj) ran 2 times in one forward "
        "pass instead of once; the structural site discovery does not fit this model (qwen3): "
        "please report it with the model id."
    )
    assert not cap.done.any() and cap.site_max.max() == 0


def _scratch(part) -> dict:
    """What a batch's scratch is made of: each buffer's memory and size, the cached offsets."""
    bufs = {k: (t.data_ptr(), t.numel(), t.dtype) for k, t in vars(part).items() if k in SCRATCH}
    return {**bufs, "offsets": set(part._offsets)}


SCRATCH = ("ints", "lev", "cols", "_one")


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("path", PATHS)
def test_the_reductions_scratch_is_made_before_the_pass(arch, path, monkeypatch):
    """No scratch of the reductions is allocated or grown by a hook (on the CPU it would sit in
    the heap between the activations the pass frees: docs/performance.md, "The CPU heap"): what
    each batch's device part holds when its pass begins is what it holds after the merge, on
    every architecture of the zoo and every strategy, with a last chunk shorter than the others
    (5 sequences, batches of 3, chunks of 2)."""
    model = random_model(arch, seed=7)
    H = model.config.hidden_size
    ids = random_ids(5, 16, seed=8)
    seen = []
    begin, merged = Capture._begin, Capture._merged_parts

    def at_begin(self, batch):
        begin(self, batch)
        seen.append({d: _scratch(p) for d, p in self._parts.items()})

    def at_merge(self, batch):
        commit = merged(self, batch)
        seen.append({d: _scratch(p) for d, p in self._parts.items()})
        return commit

    monkeypatch.setattr(Capture, "_begin", at_begin)
    monkeypatch.setattr(Capture, "_merged_parts", at_merge)
    chunks = {"cpu": 2 * 16 * H}
    analyze(model, ids, batch_size=3, tuning=tuning(path, chunk_elements=chunks))
    assert len(seen) == 4 and all(seen), seen  # two batches, each begun and merged
    assert seen[0] == seen[1] and seen[2] == seen[3]
