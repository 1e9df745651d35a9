"""The capture design, guarded (not its speed: that is benchmarks/, ``-m perf``).

- exactly ONE forward pass of the decoder stack per batch (and none of the LM head);
- no hook left behind on any module, also when a hook or an observer raises;
- no activation kept alive after a batch (the storage a hook saw is freed by the batch's end);
- the sparse and the dense paths of the per-site reduction (whole chunk, gathered columns), and
  the thread setting of the hooks, give identical statistics.
"""

import dataclasses
import json
import platform

import numpy as np
import pytest
import torch
import torch.nn.modules.module as nn_module
from factories import random_ids, random_model
from torch.multiprocessing.reductions import StorageWeakRef

import harness.engine.capture as capture
from harness.engine.capture import Capture, Observer
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

        def broken(self, site, x):
            raise RuntimeError("engine hook")

        monkeypatch.setattr(Capture, "_reduce", broken)
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
def test_reduction_paths_and_threads_agree(dtype, monkeypatch):
    # gain 3: some blocks of positions cross the grid, others do not; T = 24 -> blocks of 8;
    # a small chunk budget splits each batch into chunks of one sequence
    model = random_model("olmoe", dtype, seed=3)
    ids = random_ids(5, 24, seed=4)
    want = stats_arrays(analyze(model, ids, batch_size=3))  # the CPU's one-read site kernel
    for setting in [
        {"DENSE_FRACTION": -1.0},  # always the dense pass over the whole chunk
        {"DENSE_FRACTION": 0.0, "DENSE_COLUMNS": float("inf")},  # over gathered columns
        # the same two by PyTorch ops (the GPU's way) instead of the CPU's fused kernel
        {"DENSE_FRACTION": -1.0, "CPU_KERNEL": False},
        {"DENSE_FRACTION": 0.0, "DENSE_COLUMNS": float("inf"), "CPU_KERNEL": False},
        {"DENSE_FRACTION": float("inf")},  # always the gather of candidate blocks
        {"SITE_KERNEL": True, "HOOK_THREADS": None},  # the forward pass's thread count
        {"SITE_KERNEL": True, "CHUNK_ELEMENTS": {"cpu": 24 * 64}},
        {"HOOK_THREADS": None},
        {"CHUNK_ELEMENTS": {"cpu": 24 * 64}},
    ]:
        with monkeypatch.context() as m:
            m.setattr(capture, "SITE_KERNEL", False)  # the paths of the GPU and of hit lists
            for name, value in setting.items():
                m.setattr(capture, name, value)
            got = stats_arrays(analyze(model, ids, batch_size=3))
        for key, value in want.items():
            assert np.array_equal(got[key], value, equal_nan=True), (setting, key)


def test_dense_and_sparse_hits_give_the_same_attribution(monkeypatch):
    """The observers that read the engine's hits (tokens, positions) see the same hits from the
    dense path (level map) as from the sparse one (gathered blocks), chunks past the first
    included."""
    model = random_model("olmoe", torch.float32, seed=3, gain=2.5)
    ids = random_ids(5, 24, seed=4)
    sections = []
    H = model.config.hidden_size
    for fraction, columns, kernel in (
        (-1.0, 0.75, True),  # the whole chunk, by the CPU's kernel
        (0.0, float("inf"), True),  # gathered columns, by the kernel
        (-1.0, 0.75, False),  # the same two by PyTorch ops
        (0.0, float("inf"), False),
        (float("inf"), 0.75, True),  # candidate blocks
    ):
        with monkeypatch.context() as m:
            m.setattr(capture, "DENSE_FRACTION", fraction)
            m.setattr(capture, "DENSE_COLUMNS", columns)
            m.setattr(capture, "CPU_KERNEL", kernel)
            # chunks of one sequence: hits of a chunk past the first carry its offset
            m.setattr(capture, "CHUNK_ELEMENTS", {"cpu": 24 * H})
            result = analyze(model, ids, batch_size=3, attribution=True)
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
def test_every_path_hands_observers_exactly_the_brute_force_hits(dtype, monkeypatch):
    """Position and level of every value over the grid, chunks past the first included, from
    the candidate blocks, the whole chunk and the gathered columns, by the CPU's kernel and by
    PyTorch ops."""
    model = random_model("qwen3", dtype, seed=3, gain=2.5)
    ids = random_ids(5, 24, seed=4)
    H = model.config.hidden_size
    for fraction, columns, kernel in (
        (float("inf"), 0.75, True),
        (-1.0, 0.75, True),
        (0.0, float("inf"), True),
        (-1.0, 0.75, False),
        (0.0, float("inf"), False),
    ):
        recorder = HitRecorder()
        with monkeypatch.context() as m:
            m.setattr(capture, "DENSE_FRACTION", fraction)
            m.setattr(capture, "DENSE_COLUMNS", columns)
            m.setattr(capture, "CPU_KERNEL", kernel)
            m.setattr(capture, "CHUNK_ELEMENTS", {"cpu": 24 * H})
            analyze(model, ids, batch_size=3, observers=[recorder])
        got = {key: sorted(hits) for key, hits in recorder.got.items()}
        assert got == recorder.want, (fraction, columns, kernel)
        assert sum(map(len, got.values())) > 1000  # hits at many sites to compare


def test_a_chunk_with_exactly_one_candidate_block_is_read(monkeypatch):
    """One sequence of one block (T = 16), one dim of one site planted: the gather path sees
    exactly one candidate block, and its values are counted as the brute force counts them."""
    from oracle import collect_activations, stats_from_activations

    model = random_model("qwen3", torch.float32, seed=1, gain=0.01)
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[5] = 1000.0
    ids = random_ids(1, 16, seed=2)
    monkeypatch.setattr(capture, "SITE_KERNEL", False)
    monkeypatch.setattr(capture, "DENSE_FRACTION", float("inf"))  # the gather path
    got = analyze(model, ids, batch_size=1).stats
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
    from harness.engine.capture import Batch
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
    reduce_dense, values_over = Capture._reduce_dense, Capture._values_over

    def dense(self, site, part, xc, b0, cols=None):
        paths.append(("columns", None if cols is None else cols.tolist()))
        return reduce_dense(self, site, part, xc, b0, cols)

    def sparse(self, part, xc, cand, t0, K):
        paths.append(("blocks", int(cand.numel())))
        return values_over(self, part, xc, cand, t0, K)

    monkeypatch.setattr(Capture, "_reduce_dense", dense)
    monkeypatch.setattr(Capture, "_values_over", sparse)
    monkeypatch.setattr(capture, "SITE_KERNEL", False)  # the paths of the GPU and of hit lists
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
        cap.run(twice, capture.Batch(0, ids))
    assert str(err.value) == (
        "site layers.0.attn_in (model.layers.0.self_attn.q_proj) ran 2 times in one forward "
        "pass instead of once; the structural site discovery does not fit this model (qwen3): "
        "please report it with the model id."
    )
    assert not cap.done.any() and cap.site_max.max() == 0


def test_the_cpu_kernels_are_built_and_are_the_ones_used(monkeypatch):
    """The tests above compare the C kernels with the PyTorch ops; without the extension (no C
    compiler at install time) both settings would run the ops and compare them with
    themselves."""
    from harness.engine import kernels
    from harness.engine.sites import find_sites

    assert None not in (kernels.dense_scan(), kernels.site_scan(), kernels.rows_reaching()), (
        "harness/engine/_scan.c was not built: reinstall with a C compiler (pip install -e .)"
    )
    from harness.engine import _scan

    model, ids = random_model("qwen3", torch.float32, seed=3), random_ids(2, 16, seed=4)
    dense = kernels.dense_scan()
    calls = []

    def site(*args):  # the C function, as the wrapper calls it: its last argument is the isa
        calls.append(("site", args[-1]))
        return _scan.site_scan(*args)

    monkeypatch.setattr(
        kernels,
        "_SCAN",
        [
            lambda *a: calls.append("dense") or dense(*a),
            kernels._wrap_site(site, _scan.isa()),
            *kernels.union_kernels(),
            kernels.rows_reaching(),
        ],
    )
    analyze(model, ids)
    sites = len(find_sites(model, "ln").sites)
    # the default: one call per site (one chunk each), on the fastest kernel of this CPU (on
    # x86-64 the compares: SSE2 everywhere, AVX2 where the CPU has it)
    assert calls == [("site", max(kernels.SITE_ISAS))] * sites
    if platform.machine() in ("x86_64", "AMD64"):
        assert max(kernels.SITE_ISAS) >= 1
    calls.clear()
    monkeypatch.setattr(capture, "SITE_KERNEL", False)
    monkeypatch.setattr(capture, "DENSE_FRACTION", -1.0)
    analyze(model, ids)
    assert calls == ["dense"] * sites  # every chunk took the dense path, on its kernel


@pytest.mark.parametrize("int_dtype", [np.int32, np.int16])
def test_the_cpu_kernel_on_strided_views_equals_brute_force(int_dtype):
    """Levels, counts, union and level map of the kernel against the definition, on a
    transposed (non-contiguous) activation and union, every column and a column subset."""
    from harness.engine import kernels

    scan = kernels.dense_scan()
    rng = np.random.default_rng(0)
    grid = [3.0, 4.0, 6.0, 8.0]
    if int_dtype == np.int32:
        x = torch.tensor(rng.standard_normal((3, 24, 40)) * 4, dtype=torch.float32)
        mask, shift = 0x7FFFFFFF, 15
        lut = np.zeros(1 << 16, np.uint8)
        for g in grid:  # thresholds with zero low 15 bits: exact at 16-bit resolution
            lut[int(np.float32(g).view(np.int32)) >> 15 :] += 1
    else:
        x = (torch.tensor(rng.standard_normal((3, 24, 40)) * 4)).to(torch.bfloat16)
        mask, shift = 0x7FFF, 0
        lut = np.zeros(1 << 15, np.uint8)
        for g in grid:
            lut[int(torch.tensor(g, dtype=torch.bfloat16).view(torch.int16)) :] += 1
    xt = x.transpose(1, 2)  # [3, 40, 24], strides (960, 1, 40)
    want = (xt.float().abs().unsqueeze(-1) >= torch.tensor(grid)).sum(-1).numpy()
    bits = xt.view(torch.int32 if int_dtype == np.int32 else torch.int16).numpy()
    G1 = len(grid) + 1
    for cols in (None, np.array([0, 5, 23, 7], dtype=np.int64)):
        c = np.arange(24) if cols is None else cols
        counts = np.zeros((3, 24, G1), np.int64)
        union = np.zeros((3, 24, 40), np.uint8).transpose(0, 2, 1)  # strided too
        lev = np.zeros((3, 40, len(c)), np.uint8)
        scan(bits, mask, shift, lut, cols, cols is None, counts, union, lev, True)
        for lv in range(G1):
            assert np.array_equal(counts[:, c, lv], (want[:, :, c] == lv).sum(1)), lv
        assert not counts[:, np.setdiff1d(np.arange(24), c)].any()
        assert np.array_equal(union[:, :, c], want[:, :, c])
        assert np.array_equal(lev, want[:, :, c])
        # a raised union is kept where the level is lower
        union[...] = 5
        scan(bits, mask, shift, lut, cols, cols is None, counts, union, lev, False)
        assert np.array_equal(union[:, :, c], np.maximum(want[:, :, c], 5))


def test_the_cpu_kernel_refuses_arrays_it_would_write_outside_of():
    from harness.engine import kernels

    scan = kernels.dense_scan()
    bits = np.zeros((2, 4, 8), np.int32)
    lut = np.zeros(1 << 16, np.uint8)
    union = np.zeros((2, 4, 8), np.uint8)
    good = dict(counts=np.zeros((2, 8, 3), np.int64), cols=np.array([1, 2], np.int64))
    for bad in (
        {"counts": np.zeros((2, 7, 3), np.int64)},  # too few dims
        {"counts": np.zeros((2, 8, 3), np.int32)},
        {"cols": np.array([1, 8], np.int64)},  # a column outside the chunk
        {"cols": np.array([-1], np.int64)},
    ):
        args = {**good, **bad}
        with pytest.raises(ValueError, match="dense scan"):
            scan(
                bits,
                0x7FFFFFFF,
                15,
                lut,
                args["cols"],
                False,
                args["counts"],
                union,
                kernels.NO_LEVELS,
                False,
            )
    lut[-1] = 3  # a level past the counts' last
    with pytest.raises(ValueError, match="beyond"):
        scan(bits, 0x7FFFFFFF, 15, lut, None, True, good["counts"], union, kernels.NO_LEVELS, False)


@pytest.fixture(scope="module")
def portable_scan(tmp_path_factory):
    """The extension built from the same file without its SSE2 code (-DSCAN_PORTABLE): the
    code that ARM hosts (e.g. GH200) compile."""
    import importlib.util
    from pathlib import Path

    from setuptools import Distribution, Extension
    from setuptools.command.build_ext import build_ext

    from harness.engine import kernels

    src = Path(kernels.__file__).with_name("_scan.c")
    out = tmp_path_factory.mktemp("portable")
    ext = Extension("_scan", [str(src)], define_macros=[("SCAN_PORTABLE", "1")])
    cmd = build_ext(Distribution({"ext_modules": [ext]}))
    cmd.build_lib, cmd.build_temp = str(out), str(out / "tmp")
    cmd.ensure_finalized()
    cmd.run()
    path = next(out.glob("_scan*.so"))
    spec = importlib.util.spec_from_file_location("_scan", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.isa() == 0  # the table look-ups only
    return module


@pytest.fixture(scope="module")
def portable_site_scan(portable_scan):
    from harness.engine import kernels

    return kernels._wrap_site(portable_scan.site_scan, portable_scan.isa())


SITE_BUILDS = [
    "table",
    "sse2",
    "avx2",
    "portable",
]  # kernels.site_scan's isa 0, 1, 2; -DSCAN_PORTABLE


def site_kernel(build, request):
    """kernels.site_scan as ``build`` (skipped where this CPU lacks it), with its isa bound."""
    from harness.engine import kernels

    if build == "portable":
        return request.getfixturevalue("portable_site_scan")
    isa = SITE_BUILDS.index(build)
    if kernels.site_scan() is None or isa not in kernels.SITE_ISAS:
        pytest.skip(f"this CPU does not run the {build} site kernel")
    scan = kernels.site_scan()
    return lambda *args: scan(*args, isa=isa)


@pytest.mark.parametrize("build", SITE_BUILDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_site_kernel_equals_brute_force_at_every_density(dtype, build, request):
    """The one-read kernel against the definition: per-(sequence, dim) max |x|, counts per
    (sequence, dim, level) and the raised union, on rows without hits, with some (their
    positions gathered first) and with mostly hits (branch-free), dims past the last vector,
    positions past the last tile of 8, values exactly at each threshold, -0, inf and NaN."""
    from harness.engine.capture import _Thresholds

    scan = site_kernel(build, request)
    grid = (3.0, 4.0, 6.0, 8.0)
    th = _Thresholds(grid)
    lut, shift = th.table(torch.device("cpu"), dtype)
    thr = th.get(torch.device("cpu"), dtype)[0]
    ints, mask = (torch.int16, 0x7FFF) if dtype.itemsize == 2 else (torch.int32, 0x7FFFFFFF)
    rng = np.random.default_rng(1)
    b, T, H = 3, 43, 70  # 4 blocks (vectors) of 16 and 6 dims after them; 5 tiles and 3 rows
    x = torch.tensor(rng.standard_normal((b, T, H)), dtype=torch.float32)
    x[0, :5] *= 0.1  # rows without hits
    x[1] *= 2.0  # some hits a row
    x[2] *= 20  # mostly hits
    x[2, :, ::5] *= 0.01
    x[1, 3, :4] = torch.tensor(grid) * torch.tensor([1, -1, 1, -1])  # at the thresholds
    x[1, 4, -4:] = torch.tensor(grid)  # in the tail
    x[0, 7, 9], x[1, 8, 10], x[2, 9, 11], x[1, 9, 68] = -0.0, float("inf"), -float("inf"), 7.0
    x = x.to(dtype)
    a = x.float().abs()
    want_level = (a.unsqueeze(-1) >= thr.float()).sum(-1)  # in the dtype's own values
    G1 = len(grid) + 1
    hits_per_row = (want_level > 0).sum(-1)  # [b, T]
    assert (hits_per_row[0] == 0).any()  # the three kinds of rows are all there
    assert ((hits_per_row[1] > 0) & (hits_per_row[1] * 2 <= H)).all()
    assert (hits_per_row[2] * 2 > H).all()

    def run(x, union):
        smax = torch.zeros((b, H), dtype=ints)
        counts = torch.zeros((b, H, G1), dtype=torch.int32)
        keys = thr.view(ints).numpy()
        arrays = (smax.numpy(), counts.numpy(), union.numpy())
        scan(x.view(ints).numpy(), mask, shift, lut.numpy(), keys, *arrays)
        return smax.view(dtype), counts

    union = torch.zeros((b, T, H), dtype=torch.uint8)
    union[0, 0, 0] = 4  # a higher level kept
    smax, counts = run(x, union)
    assert torch.equal(smax.float(), a.amax(dim=1))
    for lv in range(1, G1):
        assert torch.equal(counts[..., lv], (want_level == lv).sum(1).int()), lv
    assert not counts[..., 0].any()  # level 0 is not counted
    want_union = want_level.to(torch.uint8)
    want_union[0, 0, 0] = max(4, int(want_union[0, 0, 0]))
    assert torch.equal(union, want_union)
    # a NaN: its max is NaN (the merge's finiteness check names the site), its level the top
    x[1, 5, 6] = x[2, 5, 69] = float("nan")
    union.zero_()
    smax, _ = run(x, union)
    assert torch.isnan(smax[1, 6]) and int(union[1, 5, 6]) == len(grid)
    assert torch.isnan(smax[2, 69]) and int(union[2, 5, 69]) == len(grid)


def _site_scan_against_the_definition(scan, x, grid, dtype):
    """Runs ``scan`` on x (float32 [b, T, H], cast to dtype) and checks smax, counts, union."""
    from harness.engine.capture import _Thresholds

    th = _Thresholds(grid)
    lut, shift = th.table(torch.device("cpu"), dtype)
    thr = th.get(torch.device("cpu"), dtype)[0]
    ints, mask = (torch.int16, 0x7FFF) if dtype.itemsize == 2 else (torch.int32, 0x7FFFFFFF)
    x = x.to(dtype)
    b, T, H = x.shape
    level = (x.float().abs().unsqueeze(-1) >= thr.float()).sum(-1)
    smax = torch.zeros((b, H), dtype=ints)
    counts = torch.zeros((b, H, len(grid) + 1), dtype=torch.int32)
    union = torch.zeros((b, T, H), dtype=torch.uint8)
    keys = thr.view(ints).numpy()
    scan(
        x.view(ints).numpy(),
        mask,
        shift,
        lut.numpy(),
        keys,
        smax.numpy(),
        counts.numpy(),
        union.numpy(),
    )
    assert torch.equal(smax.view(dtype).float(), x.float().abs().amax(dim=1))
    for lv in range(1, len(grid) + 1):
        assert torch.equal(counts[..., lv], (level == lv).sum(1).int()), lv
    assert not counts[..., 0].any()
    assert torch.equal(union, level.to(torch.uint8))
    return counts


@pytest.mark.parametrize("build", ["sse2", "avx2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_compare_kernels_count_past_the_range_of_their_16_bit_lanes(dtype, build, request):
    """The compare kernels count each tile in 16-bit lanes and add them up in 32 bits every
    16,384 positions: a sequence of 33,000 positions whose dims hit at every one (or never)
    counts 33,000 (an int16 count would have wrapped)."""
    scan = site_kernel(build, request)
    T, H = 33_000, 20  # a vector of 16 and 4 dims after it
    x = torch.full((1, T, H), 0.5)
    x[0, :, ::2] = 9.0  # every other dim at the top level at every position
    x[0, :, 3] = -3.5  # level 1 everywhere
    x[0, T // 2, 5] = 4.5  # one hit
    counts = _site_scan_against_the_definition(scan, x, (3.0, 4.0, 6.0, 8.0), dtype)
    assert int(counts[0, 0, 4]) == T and int(counts[0, 3, 1]) == T


@pytest.mark.parametrize("build", SITE_BUILDS)
def test_the_site_kernel_on_16_thresholds_and_on_17(build, request):
    """The compare kernels hold up to 16 thresholds (the default grid has 9 or 10); with 17
    they refuse, and the default takes the table look-ups. Every level is present."""
    from harness.engine import kernels

    rng = np.random.default_rng(5)
    x = torch.tensor(rng.uniform(-21, 21, (2, 21, 37)), dtype=torch.float32)
    grid16 = tuple(float(g) for g in range(3, 19))
    counts = _site_scan_against_the_definition(
        site_kernel(build, request), x, grid16, torch.float32
    )
    assert (counts[..., 1:].sum(dim=(0, 1)) > 0).all()  # every level occurs
    grid17 = (*grid16, 19.0)
    if build == "portable":
        return
    if build != "table":
        with pytest.raises(ValueError, match="at most 16"):
            _site_scan_against_the_definition(site_kernel(build, request), x, grid17, torch.float32)
    counts = _site_scan_against_the_definition(kernels.site_scan(), x, grid17, torch.float32)
    assert (counts[..., 1:].sum(dim=(0, 1)) > 0).all()


@pytest.mark.parametrize("build", ["sse2", "portable"])
@pytest.mark.parametrize("G", [10, 254])
def test_the_union_kernels_equal_brute_force(G, build, request):
    """The merge's reads of a batch's union against numpy: positions per (sequence, dim) at
    each level or above, nonzero levels per position, and the hits' dims and levels in
    (position, dim) order, with uint16 and int32 dims; 300 positions (past the 255 that 8-bit
    lanes count), 2 blocks of 16 dims and 5 after them, rows and blocks without hits."""
    from harness.engine import kernels

    if build == "portable":
        module = request.getfixturevalue("portable_scan")
        counts, hits = kernels._wrap_union(module.union_counts, module.union_hits)
    else:
        counts, hits = kernels.union_kernels()
    rng = np.random.default_rng(G)
    B, T, H = 3, 300, 37
    union = rng.integers(0, G + 1, (B, T, H), dtype=np.uint8)
    union[rng.random((B, T, H)) < 0.6] = 0
    union[0, 10:20] = 0  # rows without hits
    union[1, :, :16] = 0  # a block without hits
    union[2, :, 20] = G  # the top level everywhere
    ge = np.zeros((B, H, G), np.int32)
    rows = np.zeros(B * T, np.int64)
    counts(union, G, ge, rows)
    want_ge = (union[..., None] > np.arange(G)).sum(axis=1)  # [B, H, G]
    assert np.array_equal(ge, want_ge)
    assert np.array_equal(rows, (union != 0).sum(axis=2).reshape(-1))
    flat = np.flatnonzero(union)
    for dim_dtype in (np.uint16, np.int32):
        dims, levels = hits(union.reshape(B * T, H), int(rows.sum()), dim_dtype)
        assert dims.dtype == dim_dtype and np.array_equal(dims, flat % H)
        assert np.array_equal(levels, union.reshape(-1)[flat])
    for wrong in (int(rows.sum()) - 20, int(rows.sum()) - 1, int(rows.sum()) + 1):
        with pytest.raises(ValueError, match="not the"):  # stops at its arrays' end
            hits(union.reshape(B * T, H), wrong, np.uint16)
    with pytest.raises(ValueError, match="union counts"):
        counts(union, G, np.zeros((B, H - 1, G), np.int32), rows)


def test_the_rows_reaching_kernel_equals_brute_force():
    """The count behind "% of positions affected" against a loop over every hit: rows without
    hits, rows whose only kept hit is their last, a dim asked for at a level it misses, uint16
    and int32 dims; refusals of row bounds outside the hits and of a dim outside the table."""
    from harness.engine import kernels

    count = kernels.rows_reaching()
    rng = np.random.default_rng(7)
    n, H, G = 400, 50, 10
    per_row = rng.integers(0, 12, n)
    per_row[::9] = 0
    indptr = np.concatenate(([0], np.cumsum(per_row))).astype(np.int64)
    dims = np.concatenate([np.sort(rng.choice(H, k, replace=False)) for k in per_row])
    levels = rng.integers(1, G + 1, len(dims)).astype(np.uint8)
    need = np.full(H, 255, np.uint8)
    need[rng.choice(H, 6, replace=False)] = rng.integers(1, G + 1, 6)
    last = indptr[2] - 1  # row 1: only its last hit is kept
    levels[indptr[1] : last] = 1
    need[dims[indptr[1] : last]] = np.maximum(need[dims[indptr[1] : last]], 2)
    need[dims[last]], levels[last] = 3, 3
    want = sum(
        any(levels[k] >= need[dims[k]] for k in range(indptr[r], indptr[r + 1])) for r in range(n)
    )
    assert 0 < want < n - n // 9
    for dim_dtype in (np.uint16, np.int32):
        assert count(indptr, dims.astype(dim_dtype), levels, need) == want
    d16 = dims.astype(np.uint16)
    for bad in (indptr[::-1], indptr + 1, indptr[:1] - 1):  # not ascending, past the end
        with pytest.raises(ValueError, match="rows reaching"):
            count(bad, d16, levels, need)
    with pytest.raises(ValueError, match="rows reaching"):
        count(indptr, dims.astype(np.int64), levels, need)
    with pytest.raises(ValueError, match="outside"):
        count(indptr, d16, levels, need[: H // 2])


def test_the_site_kernel_refuses_arrays_it_would_write_outside_of():
    from harness.engine import kernels

    scan = kernels.site_scan()
    lut = np.zeros(1 << 16, np.uint8)
    keys = np.array([1 << 15, 2 << 15], np.int32)  # the patterns of two thresholds: G + 1 = 3
    good = dict(
        bits=np.zeros((2, 4, 8), np.int32),
        smax=np.zeros((2, 8), np.int32),
        counts=np.zeros((2, 8, 3), np.int32),
        union=np.zeros((2, 4, 8), np.uint8),
    )
    for bad in (
        {"bits": np.zeros((2, 8, 4), np.int32).transpose(0, 2, 1)},  # not contiguous
        {"smax": np.zeros((2, 8), np.int16)},  # not the bits' dtype
        {"smax": np.zeros((2, 7), np.int32)},
        {"counts": np.zeros((2, 7, 3), np.int32)},  # too few dims
        {"counts": np.zeros((2, 8, 3), np.int64)},
        {"union": np.zeros((2, 4, 7), np.uint8)},
        {"union": np.zeros((2, 8, 4), np.uint8).transpose(0, 2, 1)},
    ):
        args = {**good, **bad}
        with pytest.raises(ValueError, match="site scan"):
            scan(
                args["bits"], 0x7FFFFFFF, 15, lut, keys, args["smax"], args["counts"], args["union"]
            )
    arrays = (good["smax"], good["counts"], good["union"])
    for bad_keys in ([1 << 15], [1 << 15, 2 << 15, 3 << 15], [0, 1 << 15]):  # G != 2, a key 0
        with pytest.raises(ValueError, match="site scan"):
            scan(good["bits"], 0x7FFFFFFF, 15, lut, np.array(bad_keys, np.int32), *arrays)
    with pytest.raises(ValueError, match="not exact"):  # a key the 16-bit table cannot tell
        scan(good["bits"], 0x7FFFFFFF, 15, lut, np.array([1 << 15, (2 << 15) + 1]), *arrays)
    with pytest.raises(ValueError, match="ascending"):  # compares asked for, keys unsorted
        scan(good["bits"], 0x7FFFFFFF, 15, lut, keys[::-1], *arrays, isa=1)
    lut[-1] = 3  # a level past the counts' last
    with pytest.raises(ValueError, match="beyond"):
        scan(good["bits"], 0x7FFFFFFF, 15, lut, keys, *arrays)
