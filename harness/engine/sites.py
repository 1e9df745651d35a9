"""Site discovery by definition: what each block of a decoder layer reads, found by structure.

A *site* is a named capture point with a uniform name: ``layers.3.attn_in`` is the tensor the
layer's attention block reads (what its q/k/v projections multiply), ``layers.3.mlp_in`` the
tensor its MLP / MoE block reads (what its first projections and its router multiply),
``layers.3.resid_out`` the decoder layer's output (the residual stream). That is Dettmers'
definition (the inputs of the linear layers) for every layout: pre-LN, post-LN (OPT-350m,
BART-style decoders: the block reads the raw residual stream), sandwich norms (Gemma-2/3: the
MLP reads ``pre_feedforward_layernorm``, not ``post_attention_layernorm``) and parallel blocks
(GPT-J, Falcon, Phi, Cohere: one tensor feeds both blocks).

How a site is found, for any model (no norm names, no "looks like Llama" guess):

1. the decoder layers are the longest top-level ``ModuleList`` whose elements hold an attention
   block (vision and audio towers excluded);
2. in a layer, the attention block is the child that is an attention module (class or attribute
   name; cross-attention, which a causal LM does not run, excluded), the MLP block the child that
   is an MLP / MoE / feed-forward module; a layer without an MLP child (OPT, BART, XGLM) has its
   feed-forward projections (``fc1``, ``fc2``) as direct children: they are its MLP block;
3. the site is hooked at the block's first projection (the first module with a 2-D weight in
   registration order, fused experts and per-expert lists left out), at its input: that tensor
   is, by construction, what the projection multiplies.

The self-check (``harness.engine.selfcheck``) then proves it on the user's own model, on every
run: during ``analyze``'s first batch (before it is merged) it hooks every projection of every
block separately and checks that the site tensor equals what the first projection to execute
receives (``verify_sites`` does the same on a short pass of its own). Where both blocks of a layer
read the very same tensor (parallel blocks), the layer gets one site, not two: the layer-%
criterion is a fraction of sites, and a duplicated site would add the same observation to its
numerator and its denominator (docs/sites.md).

``ARCHITECTURES`` (``harness.engine.architectures``) holds only what structure cannot tell:
routers (and what they return), fused experts, shared experts, and architectures whose blocks
have no site by this definition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from harness.config_fields import config_field
from harness.engine.architectures import ARCHITECTURES, Architecture
from harness.engine.site_sets import SITE_KIND_ORDER, SITE_SETS
from harness.errors import HarnessError, UnsupportedArchitecture

# Attribute names and class-name patterns of blocks (structure, not architectures).
_ATTN_NAMES = {"self_attn", "attn", "attention", "self_attention", "linear_attn", "self_att"}
_MLP_NAMES = {"mlp", "feed_forward", "ffn", "ff", "block_sparse_moe", "moe", "intermediate"}
_ATTN_CLASS = re.compile(r"attention|attn", re.I)
_MLP_CLASS = re.compile(r"mlp|moe|feed_?forward|ffn|intermediate", re.I)
_CROSS = re.compile(r"encoder_attn|cross_?attn|cross_?attention", re.I)
# Towers a text forward pass does not run.
_OTHER_TOWER = re.compile(
    r"(^|\.)(vision\w*|visual\w*|audio\w*|image\w*|speech\w*|vq\w*|patch\w*)(\.|$)", re.I
)


@dataclass(frozen=True)
class Site:
    """One capture point. ``index`` is its position in the run's site list."""

    index: int
    name: str  # uniform name, e.g. "layers.3.mlp_in"
    layer: int
    kind: str  # attn_in | attn_out_in | mlp_in | resid_out
    module_name: str  # the hooked module, e.g. "model.layers.3.mlp.gate_proj"
    mode: str  # input (forward pre-hook: what the module reads) | output (the layer's output)
    module: nn.Module = field(compare=False, repr=False)
    block: str = ""  # the block whose input this is, e.g. "model.layers.3.mlp"


@dataclass(frozen=True)
class Router:
    layer: int
    module_name: str
    module: nn.Module = field(compare=False, repr=False)


@dataclass(frozen=True)
class SiteMap:
    architecture: str  # the ARCHITECTURES row's name, else the config's model_type
    model_type: str
    model_class: str  # the model's class, e.g. Qwen3ForCausalLM
    num_layers: int
    hidden_size: int
    site_set: str
    sites: tuple[Site, ...]
    routers: tuple[Router, ...]  # MoE layers only (dense layers of GLM-4 MoE are left out)
    experts: dict = field(default_factory=dict, compare=False, repr=False)  # layer -> module
    shared_experts: dict = field(default_factory=dict, compare=False, repr=False)
    layers: tuple = field(default=(), compare=False, repr=False)  # decoder-layer modules, in order
    layers_path: str = ""
    # per layer, its blocks: {"attn": (block path, [projection paths]), "mlp": (...)}
    blocks: tuple = field(default=(), compare=False, repr=False)
    shared_input_layers: tuple[int, ...] = ()  # layers whose two blocks read one tensor
    unmeasured: tuple[str, ...] = ()  # sites of the set left out, each with why
    self_check: dict | None = field(default=None, compare=False)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sites]

    @property
    def module_names(self) -> list[str]:
        return [s.module_name for s in self.sites]

    def sites_per_layer(self) -> dict[str, int]:
        """How many distinct sites each layer has, by count (e.g. {"2": 24} for 24 layers)."""
        counts: dict[int, int] = {}
        for s in self.sites:
            counts[s.layer] = counts.get(s.layer, 0) + 1
        out: dict[str, int] = {}
        for c in counts.values():
            out[str(c)] = out.get(str(c), 0) + 1
        return out


def parse_site_set(value: str) -> str:
    if value not in SITE_SETS:
        raise HarnessError(
            f"unknown site set {value!r}; choose one of {', '.join(SITE_SETS)} "
            "(ln = the inputs of each layer's attention and MLP blocks, dettmers = those and the "
            "input of the attention output projection, residual = each layer's output, all = ln "
            "and residual)."
        )
    return value


def _get(root: nn.Module, path: str) -> nn.Module | None:
    module = root
    for part in path.split(".") if path else ():
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _tree_summary(model: nn.Module, depth: int = 3, limit: int = 12) -> str:
    names = []
    for name, _ in model.named_modules():
        if name and name.count(".") < depth and not any(c.isdigit() for c in name.split(".")[-1]):
            names.append(name)
        if len(names) >= limit:
            names.append("...")
            break
    return ", ".join(names) or "(no submodules)"


def architecture_of(model: nn.Module) -> Architecture | None:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return next((a for a in ARCHITECTURES if model_type in a.model_types), None)


def text_config(config):
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def hidden_size_of(config) -> int:
    value = config_field(text_config(config), "hidden_size")
    if value is not None:
        return value
    raise HarnessError(f"the model config ({type(config).__name__}) has no hidden size field.")


def is_projection(module: nn.Module) -> bool:
    """A module that multiplies its input by a matrix it owns (Linear, GPT-2's Conv1D, a
    router's weight, a quantized linear)."""
    if isinstance(module, nn.Embedding):
        return False
    weight = module._parameters.get("weight")
    if weight is not None and weight.dim() == 2:
        return True
    return "qweight" in module._buffers or "qweight" in module._parameters


def _features(module: nn.Module, names: tuple[str, str], axis: int) -> int | None:
    for name in names:  # nn.Linear's in/out_features, GPT-2's Conv1D nx / nf
        value = getattr(module, name, None)
        if isinstance(value, int):
            return value
    weight = module._parameters.get("weight")
    return int(weight.shape[axis]) if weight is not None and weight.dim() == 2 else None


def out_features(module: nn.Module) -> int | None:
    """How many features a projection returns."""
    return _features(module, ("out_features", "nf"), 0)


def in_features(module: nn.Module) -> int | None:
    """How many features a projection multiplies."""
    return _features(module, ("in_features", "nx"), 1)


def _output_projection(modules: dict, projections: list[str], hidden: int) -> str | None:
    """The attention block's output projection, by structure: its last projection (in
    registration order) that returns hidden-size features; the self-check moves the site to
    the last one that runs."""
    out = [n for n in projections if out_features(modules[n]) == hidden]
    return out[-1] if len(out) > 0 and len(projections) > 1 else None


def _projections(block: nn.Module, prefix: str) -> list[str]:
    """Paths of the projections inside ``block`` in registration order; routed experts
    (``experts...``) are left out: they read a routed subset of the positions."""
    out = []
    for name, module in block.named_modules(prefix=prefix):
        if "experts" in name[len(prefix) :].split("."):
            continue
        if is_projection(module):
            out.append(name)
    return out


def _has_projection(module: nn.Module) -> bool:
    return any(is_projection(m) for m in module.modules())


def _blocks(layer: nn.Module, prefix: str) -> dict[str, tuple[str, list[str]]]:
    """The layer's attention and MLP blocks: kind -> (block path, projection paths)."""
    attn = mlp = None
    loose = []  # projections that are direct children (OPT's fc1 / fc2)
    for name, child in layer.named_children():
        cls = type(child).__name__
        path = f"{prefix}.{name}"
        if is_projection(child):
            loose.append(path)
            continue
        if _CROSS.search(name) or _CROSS.search(cls) or not _has_projection(child):
            continue
        if name in _MLP_NAMES or (name not in _ATTN_NAMES and _MLP_CLASS.search(cls)):
            kind = "mlp"
        elif name in _ATTN_NAMES or _ATTN_CLASS.search(cls):
            kind = "attn"
        else:
            continue
        if kind == "attn" and attn is None:
            attn = (path, _projections(child, path))
        elif kind == "mlp" and mlp is None:
            mlp = (path, _projections(child, path))
    if mlp is None and loose:
        mlp = (prefix, loose)
    out = {}
    if attn and attn[1]:
        out["attn"] = attn
    if mlp and mlp[1]:
        out["mlp"] = mlp
    return out


def _decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList, list[dict]] | None:
    """The longest top-level ModuleList of layers that hold an attention block."""
    best = None
    accepted: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if _OTHER_TOWER.search(name) or any(name.startswith(a + ".") for a in accepted):
            continue
        blocks = [_blocks(layer, f"{name}.{i}") for i, layer in enumerate(module)]
        if not any("attn" in b for b in blocks) or not any("mlp" in b for b in blocks):
            continue
        accepted.append(name)
        if best is None or len(module) > len(best[1]):
            best = (name, module, blocks)
    return best


def find_sites(model: nn.Module, sites: str = "ln") -> SiteMap:
    """Return the model's capture points for the site set ``sites`` ("ln", "residual", "all"),
    found by structure (module docstring); the self-check (``harness.engine.selfcheck``)
    checks them on a forward pass.

    Sites are ordered by layer, then attn_in, attn_out_in, mlp_in, resid_out. A layer without an attention
    block (the state-space or convolution layers of hybrid models) has no attn_in site. Raises
    ``UnsupportedArchitecture`` with one sentence when the model has no decoder layers with an
    attention and an MLP block.
    """
    parse_site_set(sites)
    cls = type(model).__name__
    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    fam = architecture_of(model)
    if fam is not None and fam.unsupported:
        raise UnsupportedArchitecture(
            f"unsupported architecture {cls} (model_type {model_type!r}): {fam.unsupported}."
        )
    found = _decoder_layers(model)
    if found is None:
        raise UnsupportedArchitecture(
            f"unsupported architecture {cls} (model_type {model_type!r}): it has no decoder "
            "layers whose attention and MLP blocks have projection modules (state-space and "
            "recurrent models have no such sites); its module tree starts with "
            f"{_tree_summary(model)}."
        )
    path, layers, blocks = found
    kinds = [k for k in SITE_KIND_ORDER if k in SITE_SETS[sites]]
    modules = dict(model.named_modules())
    hidden = hidden_size_of(model.config)
    out: list[Site] = []
    unmeasured: list[str] = []
    for i in range(len(layers)):
        for kind in kinds:
            if kind == "resid_out":
                name, mode, block = f"{path}.{i}", "output", f"{path}.{i}"
            elif kind == "attn_out_in":
                b = blocks[i].get("attn")
                name = b and _output_projection(modules, b[1], hidden)
                if name is None:
                    continue
                width = in_features(modules[name])
                if width is not None and width != hidden:
                    # its features are the heads' channels, not the hidden dims the criteria
                    # count (where they are as many, as in Dettmers' models, they share indices)
                    unmeasured.append(
                        f"layers.{i}.attn_out_in ({name}): it multiplies {width} features, not "
                        f"the {hidden} hidden dims"
                    )
                    continue
                block, mode = b[0], "input"
            else:
                b = blocks[i].get(kind[:-3] if kind == "attn_in" else "mlp")
                if b is None:
                    continue
                block, name, mode = b[0], b[1][0], "input"
            out.append(
                Site(len(out), f"layers.{i}.{kind}", i, kind, name, mode, modules[name], block)
            )
    routers, experts, shared = [], {}, {}
    for i, layer in enumerate(layers):
        if fam and fam.router and (router := _get(layer, fam.router)) is not None:
            routers.append(Router(i, f"{path}.{i}.{fam.router}", router))
            if fam.experts and (ex := _get(layer, fam.experts)) is not None:
                experts[i] = ex
            if fam.shared_expert and (sh := _get(layer, fam.shared_expert)) is not None:
                shared[i] = sh
    return SiteMap(
        architecture=fam.name if fam else model_type,
        model_type=model_type,
        model_class=cls,
        num_layers=len(layers),
        hidden_size=hidden,
        site_set=sites,
        sites=tuple(out),
        routers=tuple(routers),
        experts=experts,
        shared_experts=shared,
        layers=tuple(layers),
        layers_path=path,
        blocks=tuple(blocks),
        unmeasured=tuple(unmeasured),
    )


def input_of(args, kwargs):
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    for key in ("hidden_states", "hidden_state", "input", "x", "inputs"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    return None


def _output_of(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def hook_tensor(module: nn.Module, fn, mode: str):
    """Register ``fn(x)`` on ``module``: x = what it reads (``mode`` "input", a forward
    pre-hook) or what it returns (``mode`` "output"); returns the handle."""
    if mode == "output":
        return module.register_forward_hook(lambda _m, _a, out: fn(_output_of(out)))
    if mode == "input":
        return module.register_forward_pre_hook(
            lambda _m, args, kwargs: fn(input_of(args, kwargs)), with_kwargs=True
        )
    raise ValueError(mode)
