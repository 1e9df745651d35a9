"""A deliberately simple brute-force reference for the engine (tests and the `naive` benchmark).

It keeps EVERY site activation of every sequence (float64 copies), then applies the definitions
of METHOD.md sections 2-3 with plain loops. It shares no code with the engine: its own table of
module names per model type, its own hooks, its own arithmetic (Python fractions).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from harness.engine.statistics import DEFAULT_GRID, CapturedStats, FirstPosition

# model_type -> (decoder layers path, attention-input norm, MLP-input norm)
ORACLE_LAYOUT = {
    "opt": ("model.decoder.layers", "self_attn_layer_norm", "final_layer_norm"),
    "gpt2": ("transformer.h", "ln_1", "ln_2"),
    "gpt_neox": ("gpt_neox.layers", "input_layernorm", "post_attention_layernorm"),
}
DEFAULT_LAYOUT = ("model.layers", "input_layernorm", "post_attention_layernorm")


def _get(root, path):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def collect_activations(model, ids: torch.Tensor, sites: str = "ln", batch_size: int = 4):
    """Return (site_names, acts) with acts[s] a float64 array [N, T, H] of site s."""
    layers_path, attn, mlp = ORACLE_LAYOUT.get(model.config.model_type, DEFAULT_LAYOUT)
    layers = _get(model, layers_path)
    post_ln = getattr(model.config, "do_layer_norm_before", True) is False
    plan = []
    for i, layer in enumerate(layers):
        if sites in ("ln", "all") and post_ln:
            # Post-LN OPT: attention reads the layer input, the FFN reads the first norm's output
            plan.append((f"layers.{i}.attn_in", ("input", layer)))
            plan.append((f"layers.{i}.mlp_in", getattr(layer, attn)))
        elif sites in ("ln", "all"):
            plan.append((f"layers.{i}.attn_in", getattr(layer, attn)))
            plan.append((f"layers.{i}.mlp_in", getattr(layer, mlp)))
        if sites in ("residual", "all"):
            plan.append((f"layers.{i}.resid_out", layer))
    store = {name: [] for name, _ in plan}
    handles = []
    for name, module in plan:

        def hook(_m, _a, out, name=name):
            out = out[0] if isinstance(out, tuple) else out
            store[name].append(out.detach().to(torch.float64).cpu().clone())

        if isinstance(module, tuple):  # the module's input, not its output

            def pre_hook(_m, args, kwargs, name=name):
                x = args[0] if args else kwargs["hidden_states"]
                store[name].append(x.detach().to(torch.float64).cpu().clone())

            handles.append(module[1].register_forward_pre_hook(pre_hook, with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for b0 in range(0, ids.shape[0], batch_size):
                chunk = ids[b0 : b0 + batch_size]
                model(input_ids=chunk, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    N, T = ids.shape
    acts = []
    for name, _ in plan:
        a = torch.cat([x.reshape(-1, T, x.shape[-1]) for x in store[name]], dim=0)
        acts.append(a.numpy())
    return [n for n, _ in plan], np.stack(acts)  # [S, N, T, H]


def _frac(x: float) -> Fraction:
    return Fraction(repr(float(x)))


def oracle_figures(
    acts: np.ndarray,
    magnitude: float,
    layer_frac: float,
    seq_frac: float,
    layer_of: list[int] | None = None,
) -> dict:
    """The figures of METHOD.md by the letter, from full activations [S, N, T, H]. With
    ``layer_of`` (the layer of each site), the layer criterion counts transformer layers: a layer
    is hit when any of its sites is (Dettmers' wording)."""
    S, N, T, H = acts.shape
    A, B = _frac(layer_frac), _frac(seq_frac)
    big = np.abs(acts) >= magnitude  # exact: acts hold the activation values in float64
    units = (
        [[s] for s in range(S)]
        if layer_of is None
        else [[s for s in range(S) if layer_of[s] == k] for k in sorted(set(layer_of))]
    )
    U = len(units)
    pairs = {}
    for n in range(N):
        for d in range(H):
            sites_hit = sum(1 for u in units if any(big[s, n, :, d].any() for s in u))
            positions = sum(1 for t in range(T) if big[:, n, t, d].any())
            if sites_hit >= 1 and Fraction(sites_hit, U) >= A and Fraction(positions, T) >= B:
                pairs[(n, d)] = {
                    "layer_pct": 100.0 * sites_hit / U,
                    "seq_pct": 100.0 * positions / T,
                    "max_magnitude": float(np.abs(acts[:, n, :, d]).max()),
                    "occurrences": int(big[:, n, :, d].sum()),
                }
    dims = {}
    for d in range(H):
        sites_hit = sum(1 for u in units if any(big[s, :, :, d].any() for s in u))
        positions = int(big[:, :, :, d].any(axis=0).sum())
        if sites_hit >= 1 and Fraction(sites_hit, U) >= A and Fraction(positions, N * T) >= B:
            dims[d] = {
                "layer_pct": 100.0 * sites_hit / U,
                "seq_pct": 100.0 * positions / (N * T),
                "max_magnitude": float(np.abs(acts[:, :, :, d]).max()),
                "occurrences": int(big[:, :, :, d].sum()),
            }
    sys_dims = sorted(dims)
    if sys_dims:
        sites_affected = sum(1 for u in units if any(big[s][..., sys_dims].any() for s in u))
        positions_affected = int(big[..., sys_dims].any(axis=(0, 3)).sum())
    else:
        sites_affected = positions_affected = 0
    per_site = [
        {"num_over_magnitude": int(big[s].sum()), "max_magnitude": float(np.abs(acts[s]).max())}
        for s in range(S)
    ]
    return {
        "pairs": pairs,
        "dims": dims,
        "sites_affected_pct": 100.0 * sites_affected / U,
        "positions_affected_pct": 100.0 * positions_affected / (N * T),
        "per_site": per_site,
    }


def stats_from_activations(acts: np.ndarray, grid=DEFAULT_GRID) -> CapturedStats:
    """CapturedStats by the definitions of harness.engine.statistics, from activations [S, N, T, H]."""
    S, N, T, H = acts.shape
    grid = np.asarray(grid, dtype=np.float64)
    a = np.abs(acts)
    ge = a[..., None] >= grid  # [S, N, T, H, G]
    site_seq_max = a.max(axis=2)  # [S, N, H]
    site_seq_level = (site_seq_max[..., None] >= grid).sum(-1).astype(np.uint8)
    union = a.max(axis=0)  # [N, T, H]: max over sites per position
    union_level = (union[..., None] >= grid).sum(-1)  # [N, T, H]
    pos, dim = np.nonzero(union_level.reshape(N * T, H) >= 1)
    counts = np.bincount(pos, minlength=N * T)
    indptr = np.zeros(N * T + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return CapturedStats(
        grid=grid,
        site_names=[f"layers.{s // 2}.{'attn' if s % 2 == 0 else 'mlp'}_in" for s in range(S)],
        num_seqs=N,
        seq_len=T,
        hidden_size=H,
        site_max=a.max(axis=(1, 2)).astype(np.float32),
        site_counts=ge.sum(axis=(1, 2, 3)).astype(np.int64),
        seq_max=a.max(axis=(0, 2)).astype(np.float32),
        seq_site_count=(site_seq_max[None] >= grid[:, None, None, None]).sum(1).astype(np.int32),
        site_seq_level=site_seq_level,
        seq_pos_count=(union[None] >= grid[:, None, None, None]).sum(2).astype(np.int32),
        seq_occ=ge.sum(axis=(0, 2)).transpose(2, 0, 1).astype(np.int64),
        hits_indptr=indptr,
        hits_dim=dim.astype(np.uint16),
        hits_level=union_level.reshape(N * T, H)[pos, dim].astype(np.uint8),
        token_ids=np.zeros((N, T), np.int32),
        first_position=None
        if T < 2
        else FirstPosition(
            site_max_rest=a[:, :, 1:].max(axis=(1, 2)).astype(np.float32),
            seq_max_rest=a[:, :, 1:].max(axis=(0, 2)).astype(np.float32),
            site_seq_level_rest=(a[:, :, 1:].max(axis=2)[..., None] >= grid)
            .sum(-1)
            .astype(np.uint8),
            site_seq_level_first=(a[:, :, 0][..., None] >= grid).sum(-1).astype(np.uint8),
        ),
    )
