"""The per-run site self-check: each site's tensor is what its block's projections read, measured on the run's own first batch."""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from torch import nn

from harness.engine.forward import base_forward  # the same forward the capture runs
from harness.engine.sites import Site, SiteMap, _output_of, input_of
from harness.errors import HarnessError


def _one_pass(model: nn.Module, sitemap: SiteMap, token_ids: torch.Tensor):
    """(site index -> tensors its module received or returned, block key -> (projection,
    input) of every projection call in execution order, layer -> its input) over one pass."""
    modules = dict(model.named_modules())
    seen: dict[int, list] = {}  # site index -> tensors its module received / returned
    # block key -> (projection, input) of every projection call, in execution order
    readers: dict[str, list[tuple[str, torch.Tensor]]] = {}
    layer_in: dict[int, torch.Tensor] = {}
    handles = []

    def site_hook(site):
        if site.mode == "output":
            return lambda _m, _a, out: seen.setdefault(site.index, []).append(_output_of(out))
        return lambda _m, a, k: seen.setdefault(site.index, []).append(input_of(a, k))

    def projection_hook(key, name):
        def hook(_m, a, k):
            x = input_of(a, k)
            if x is None:
                return
            readers.setdefault(key, []).append((name, x))

        return hook

    def layer_hook(i):
        def hook(_m, a, k):
            layer_in.setdefault(i, input_of(a, k))

        return hook

    try:
        for site in sitemap.sites:
            m = site.module
            if site.mode == "output":
                handles.append(m.register_forward_hook(site_hook(site)))
            else:
                handles.append(m.register_forward_pre_hook(site_hook(site), with_kwargs=True))
        for i, blocks in enumerate(sitemap.blocks):
            for kind, (_block, projections) in blocks.items():
                for name in projections:
                    hook = projection_hook(f"{i}.{kind}", name)
                    handles.append(modules[name].register_forward_pre_hook(hook, with_kwargs=True))
        for i, layer in enumerate(sitemap.layers):
            handles.append(layer.register_forward_pre_hook(layer_hook(i), with_kwargs=True))
        with torch.inference_mode():
            base_forward(model)(token_ids)
    finally:
        for h in handles:
            h.remove()
    return seen, readers, layer_in


def verify_sites(model: nn.Module, sitemap: SiteMap, token_ids: torch.Tensor) -> SiteMap:
    """Check every site on a short forward pass of ``token_ids`` ([1, t], a few tokens) and
    return the site map to measure with: parallel blocks merged to one site, ``self_check``
    filled in. A site that is not what its block's first-executed projection receives stops
    the run with one sentence naming both modules.

    Hooks here are separate from the site hooks of the capture: every projection of every
    block, each decoder layer's input and output; all are removed before returning.
    """
    t0 = time.perf_counter()
    seen, readers, layer_in = _one_pass(model, sitemap, token_ids)
    H = sitemap.hidden_size
    moved: dict[int, str] = {}
    for site in sitemap.sites:
        got = seen.get(site.index, [])
        if len(got) != 1 or got[0] is None:
            raise HarnessError(
                f"site {site.name} ({site.module_name}) ran {len(got)} times in one forward pass "
                "instead of once; the structural site discovery does not fit this model "
                f"({sitemap.model_type}): please report it with the model id."
            )
        x = got[0]
        if site.kind != "resid_out":
            name, want = (readers.get(_block_key(site)) or [(None, None)])[0]
            if name is not None and name != site.module_name:
                # registration order is not execution order (Phi-3 registers o_proj before
                # qkv_proj): the site moves to the projection that runs first
                runs = sum(1 for n, _ in readers[_block_key(site)] if n == name)
                if runs != 1:
                    raise HarnessError(
                        f"site {site.name}: the first projection of its block ({name}) ran "
                        f"{runs} times in one forward pass instead of once; the structural "
                        f"site discovery does not fit this model ({sitemap.model_type}): please "
                        "report it with the model id."
                    )
                moved[site.index] = name
                seen[site.index] = [want]
                x = want
        if x.shape[-1] != H or x.numel() != token_ids.numel() * H:
            raise HarnessError(
                f"site {site.name} ({site.module_name}) holds a tensor of shape "
                f"{tuple(x.shape)}, not {token_ids.numel()} positions x {H} dims (the model adds "
                "positions or residual streams of its own); this model's sites cannot be "
                "measured by the definition: please report it with the model id."
            )
        if site.kind == "resid_out":
            nxt = layer_in.get(site.layer + 1)
            if nxt is not None and not _equal(x, nxt, H):
                raise HarnessError(
                    f"site {site.name}: the output of {site.module_name} is not what the next "
                    "decoder layer reads; the structural site discovery does not fit this model "
                    f"({sitemap.model_type}): please report it with the model id."
                )
        elif want is None or not _equal(x, want, H):
            raise HarnessError(
                f"site {site.name} ({site.module_name}) is not what its block's first "
                f"projection to run ({name or 'none ran'}) receives; the structural site "
                f"discovery does not fit this model ({sitemap.model_type}): please report it "
                "with the model id."
            )
    sites = tuple(
        replace(s, module_name=moved[s.index], module=model.get_submodule(moved[s.index]))
        if s.index in moved
        else s
        for s in sitemap.sites
    )
    # parallel blocks: attention and MLP read the very same tensor -> one site per layer
    by_layer: dict[int, dict[str, Site]] = {}
    for s in sitemap.sites:
        by_layer.setdefault(s.layer, {})[s.kind] = s
    drop, shared = set(), []
    for layer, kinds in by_layer.items():
        a, m = kinds.get("attn_in"), kinds.get("mlp_in")
        if a is not None and m is not None and _same_tensor(seen[a.index][0], seen[m.index][0]):
            drop.add(m.index)
            shared.append(layer)
    kept = [s for s in sites if s.index not in drop]
    new_sites = tuple(replace(s, index=i) for i, s in enumerate(kept))
    check = {
        "ran": True,
        "passed": True,
        "tokens": int(token_ids.numel()),
        "seconds": round(time.perf_counter() - t0, 4),
        "sites_checked": len(sitemap.sites),
        "moved_to_first_run": len(moved),
        "what": "each attn_in / mlp_in site equals the input of its block's first projection "
        "to run (all projections hooked separately); each resid_out equals the next layer's "
        "input",
        # which projections read the site tensor (first layer, as a record of what was checked)
        "readers": {
            s.name: _readers(readers.get(_block_key(s), []), seen[s.index][0], H)
            for s in sitemap.sites
            if s.layer == 0 and s.kind != "resid_out"
        },
    }
    return replace(sitemap, sites=new_sites, shared_input_layers=tuple(shared), self_check=check)


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
    )


def _block_key(site: Site) -> str:
    return f"{site.layer}.{'attn' if site.kind == 'attn_in' else 'mlp'}"


def _equal(a: torch.Tensor, b: torch.Tensor, H: int) -> bool:
    """Same values, compared exactly (NaN equals NaN: a broken model is reported by the
    capture's NaN check, not here), up to [B, T, H] vs [B * T, H]."""
    if a.shape[-1] != H or b.shape[-1] != H or a.numel() != b.numel():
        return False
    a, b = a.reshape(-1, H), b.reshape(-1, H)
    return torch.equal(a, b) or bool(((a == b) | (a.isnan() & b.isnan())).all())


def _readers(calls: list, x: torch.Tensor, H: int) -> list[str]:
    return sorted({name for name, t in calls if _equal(t, x, H)})
