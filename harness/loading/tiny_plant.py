"""Planted outliers in the tiny replicas: the recipe applied to the weights (see
``harness.loading.tiny_builder``'s docstring) and the truth it plants, as data."""

from __future__ import annotations

import torch

from harness.models.tiny import Plant


# -- planting ----------------------------------------------------------------------------------
def _trigger_ids(tokenizer, texts) -> list[int]:
    ids = []
    for text in texts:
        enc = tokenizer.encode(text, add_special_tokens=False)
        if len(enc) != 1:
            raise RuntimeError(f"trigger {text!r} is {len(enc)} tokens, not one")
        ids.append(int(enc[0]))
    return ids


_NORM_OF_KIND = {"attn_in": "input_layernorm", "mlp_in": "post_attention_layernorm"}


_WRITERS_2D = ("self_attn.o_proj", "mlp.down_proj", "mlp.shared_expert.down_proj")


@torch.no_grad()
def _plant(model, plant: Plant, tokenizer) -> None:
    H = model.config.hidden_size
    layers = model.model.layers
    dims = [p.dim for p in plant.dims]
    emb = model.get_input_embeddings().weight
    emb[:, dims] = 0.0
    for p in plant.dims:
        emb[_trigger_ids(tokenizer, p.triggers), p.dim] = plant.amplitude
    for layer in layers:
        for name, param in layer.named_parameters():
            if name.endswith(tuple(f"{w}.weight" for w in _WRITERS_2D)):
                param[dims, :] = 0.0
            elif name.endswith(tuple(f"{w}.bias" for w in _WRITERS_2D)):
                param[dims] = 0.0
            elif name.endswith("experts.down_proj"):
                if param.dim() != 3 or param.shape[1] != H:
                    raise RuntimeError(f"unexpected expert layout {name} {tuple(param.shape)}")
                param[:, dims, :] = 0.0
            elif "down_proj" in name or "o_proj" in name:
                raise RuntimeError(f"planting does not know the writer {name}")
        for norm in _NORM_OF_KIND.values():
            getattr(layer, norm).weight.fill_(plant.base_gain)
    model.model.norm.weight.fill_(plant.base_gain)  # not a site; kept small for tidiness
    for p in plant.dims:
        for site in p.sites:
            _, i, kind = site.split(".")
            getattr(layers[int(i)], _NORM_OF_KIND[kind]).weight[p.dim] = p.gain


# -- planted truth -----------------------------------------------------------------------------
RESIDUAL_BOUND = 1.0  # every non-planted residual value stays below this (checked at build)


def _site_names(num_layers: int, sites: str = "ln") -> list[str]:
    kinds = {"ln": ("attn_in", "mlp_in"), "residual": ("resid_out",)}.get(
        sites, ("attn_in", "mlp_in", "resid_out")
    )
    return [f"layers.{i}.{k}" for i in range(num_layers) for k in kinds]


def _truth_from(plant: Plant, tokenizer, config) -> dict:
    H, L = config.hidden_size, config.num_hidden_layers
    dims = {}
    for p in plant.dims:
        dims[p.dim] = {
            "trigger_tokens": list(p.triggers),
            "trigger_ids": _trigger_ids(tokenizer, p.triggers),
            "sites": list(p.sites),
            "gain": p.gain,
            "approx_value": p.gain * H**0.5,
        }
    return {
        "hidden_size": H,
        "num_layers": L,
        "site_names": _site_names(L),
        "amplitude": plant.amplitude,
        "base_gain": plant.base_gain,
        "bound_elsewhere": plant.base_gain * H**0.5,
        "min_planted_value": round(0.999 * min(p.gain for p in plant.dims) * H**0.5, 3),
        "residual_bound": RESIDUAL_BOUND,
        "dims": dims,
    }
