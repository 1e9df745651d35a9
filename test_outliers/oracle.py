"""A deliberately simple brute-force reference for the engine (tests and the `naive` benchmark).

It keeps EVERY site activation of every sequence (float64 copies), then applies the definitions
of METHOD.md sections 2-3 with plain loops. It shares no code with the engine: its own table of
module names per model type, its own hooks, its own arithmetic (Python fractions).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

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


def oracle_figures(acts: np.ndarray, magnitude: float, layer_frac: float, seq_frac: float) -> dict:
    """The figures of METHOD.md by the letter, from full activations [S, N, T, H]."""
    S, N, T, H = acts.shape
    A, B = _frac(layer_frac), _frac(seq_frac)
    big = np.abs(acts) >= magnitude  # exact: acts hold the activation values in float64
    pairs = {}
    for n in range(N):
        for d in range(H):
            sites_hit = sum(1 for s in range(S) if big[s, n, :, d].any())
            positions = sum(1 for t in range(T) if big[:, n, t, d].any())
            if sites_hit >= 1 and Fraction(sites_hit, S) >= A and Fraction(positions, T) >= B:
                pairs[(n, d)] = {
                    "layer_pct": 100.0 * sites_hit / S,
                    "seq_pct": 100.0 * positions / T,
                    "max_magnitude": float(np.abs(acts[:, n, :, d]).max()),
                    "occurrences": int(big[:, n, :, d].sum()),
                }
    dims = {}
    for d in range(H):
        sites_hit = sum(1 for s in range(S) if big[s, :, :, d].any())
        positions = int(big[:, :, :, d].any(axis=0).sum())
        if sites_hit >= 1 and Fraction(sites_hit, S) >= A and Fraction(positions, N * T) >= B:
            dims[d] = {
                "layer_pct": 100.0 * sites_hit / S,
                "seq_pct": 100.0 * positions / (N * T),
                "max_magnitude": float(np.abs(acts[:, :, :, d]).max()),
                "occurrences": int(big[:, :, :, d].sum()),
            }
    sys_dims = sorted(dims)
    if sys_dims:
        sites_affected = sum(1 for s in range(S) if big[s][..., sys_dims].any())
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
        "sites_affected_pct": 100.0 * sites_affected / S,
        "positions_affected_pct": 100.0 * positions_affected / (N * T),
        "per_site": per_site,
    }
