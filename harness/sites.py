"""Site discovery: the one place that knows how each model family names its modules.

A *site* is a named capture point with a uniform name, e.g. ``layers.3.attn_in`` (the input of
attention = the output of the norm before it), ``layers.3.mlp_in`` (the input of the MLP / MoE
block) and ``layers.3.resid_out`` (the decoder layer's output, the residual stream). Hugging Face
module names appear only in ``FAMILIES`` below; everything downstream speaks the uniform names.

Adding an architecture = one ``Family`` row (plus a tiny-model test).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .errors import HarnessError, UnsupportedArchitecture

SITE_SETS = {
    "ln": ("attn_in", "mlp_in"),
    "residual": ("resid_out",),
    "all": ("attn_in", "mlp_in", "resid_out"),
}
SITE_KIND_ORDER = ("attn_in", "mlp_in", "resid_out")


@dataclass(frozen=True)
class Point:
    """Where one site kind lives inside a decoder layer.

    ``module`` is a dotted path relative to the decoder layer ("" = the layer itself).
    ``mode`` is "output" (forward hook, the module's output) or "input" (forward pre-hook, the
    module's first positional argument or its ``hidden_states`` keyword).
    """

    module: str
    mode: str = "output"


@dataclass(frozen=True)
class RouterOutput:
    """What a family's router module returns (transformers 5.x), checked in its modeling file."""

    logits: int  # tuple slot of the router logits [B*T, E]
    weights: int  # tuple slot of the top-k routing weights [B*T, k]
    indices: int  # tuple slot of the top-k expert ids [B*T, k] (int64)
    scoring: str
    sorted: bool  # are the k slots ordered by weight (torch.topk sorted=True)?


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    layers: str  # dotted path from the model root to the decoder-layer ModuleList
    attn_in: Point
    mlp_in: Point
    router: str | None = None  # path of the MoE router inside a layer (absent in dense layers)
    router_output: RouterOutput | None = None  # what that router returns
    experts: str | None = None  # path of the fused routed experts inside a layer
    shared_expert: str | None = None
    # Post-LN variants (OPT-350m): the norms sit after the sub-blocks, so the sub-block inputs
    # are taken directly. Selected by ``post_ln(config)``.
    post_ln_attn_in: Point | None = None
    post_ln_mlp_in: Point | None = None
    post_ln: object = None  # callable(config) -> bool

    def points(self, config) -> dict[str, Point]:
        attn, mlp = self.attn_in, self.mlp_in
        if self.post_ln is not None and self.post_ln(config):
            attn, mlp = self.post_ln_attn_in, self.post_ln_mlp_in
        return {"attn_in": attn, "mlp_in": mlp, "resid_out": Point("", "output")}


# Every router of transformers 5.x returns the 3-tuple (logits [B*T, E], top-k weights [B*T, k],
# top-k expert ids [B*T, k] int64) and flattens its input to [B*T, H] itself (GLM-4 MoE's router
# receives [B, T, H], the others [B*T, H]). Router classes in the comments of the rows below.
_SLOTS = dict(logits=0, weights=1, indices=2)
_SOFTMAX = "softmax over all E logits (fp32), top-k, renormalised when config.norm_topk_prob"

_LLAMA_NORMS = dict(
    attn_in=Point("input_layernorm"),
    mlp_in=Point("post_attention_layernorm"),
)

FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama", "mistral", "qwen2", "qwen3"), "model.layers", **_LLAMA_NORMS),
    Family(
        "qwen3_moe",
        ("qwen3_moe",),
        "model.layers",
        router="mlp.gate",  # Qwen3MoeTopKRouter
        router_output=RouterOutput(**_SLOTS, scoring=_SOFTMAX, sorted=True),
        experts="mlp.experts",
        **_LLAMA_NORMS,
    ),
    Family(
        "qwen3_next",
        ("qwen3_next",),
        "model.layers",
        router="mlp.gate",  # Qwen3NextTopKRouter
        router_output=RouterOutput(**_SLOTS, scoring=_SOFTMAX, sorted=True),
        experts="mlp.experts",
        shared_expert="mlp.shared_expert",
        **_LLAMA_NORMS,
    ),
    Family(
        "olmoe",
        ("olmoe",),
        "model.layers",
        router="mlp.gate",  # OlmoeTopKRouter
        router_output=RouterOutput(**_SLOTS, scoring=_SOFTMAX, sorted=True),
        experts="mlp.experts",
        **_LLAMA_NORMS,
    ),
    Family(
        "mixtral",
        ("mixtral",),
        "model.layers",
        router="mlp.gate",  # MixtralTopKRouter
        router_output=RouterOutput(
            **_SLOTS,
            scoring="softmax over all E logits (fp32), top-k, always renormalised",
            sorted=True,
        ),
        experts="mlp.experts",
        **_LLAMA_NORMS,
    ),
    Family(
        "glm4_moe",
        ("glm4_moe",),
        "model.layers",
        router="mlp.gate",  # Glm4MoeTopkRouter
        router_output=RouterOutput(
            **_SLOTS,
            scoring="sigmoid(logits) in fp32; choice by sigmoid + e_score_correction_bias within "
            "the topk_group best of n_group groups; weights = chosen sigmoid scores, "
            "renormalised when norm_topk_prob, x routed_scaling_factor",
            sorted=False,  # torch.topk(sorted=False): slot order carries no meaning
        ),
        experts="mlp.experts",
        shared_expert="mlp.shared_experts",
        **_LLAMA_NORMS,
    ),
    Family(
        "gpt_oss",
        ("gpt_oss",),
        "model.layers",
        router="mlp.router",  # GptOssTopKRouter
        router_output=RouterOutput(
            **_SLOTS,
            scoring="top-k over the logits (linear with bias), softmax over the k chosen logits",
            sorted=True,
        ),
        experts="mlp.experts",
        **_LLAMA_NORMS,
    ),
    Family(
        "opt",
        ("opt",),
        "model.decoder.layers",
        attn_in=Point("self_attn_layer_norm"),
        mlp_in=Point("final_layer_norm"),
        post_ln_attn_in=Point("self_attn", "input"),
        post_ln_mlp_in=Point("fc1", "input"),
        post_ln=lambda config: not getattr(config, "do_layer_norm_before", True),
    ),
    Family("gpt2", ("gpt2",), "transformer.h", attn_in=Point("ln_1"), mlp_in=Point("ln_2")),
    Family(
        "gpt_neox",
        ("gpt_neox",),
        "gpt_neox.layers",
        attn_in=Point("input_layernorm"),
        mlp_in=Point("post_attention_layernorm"),
    ),
)

# family name -> what its router returns; stored results name the family, so reports read it here
ROUTER_OUTPUTS: dict[str, RouterOutput] = {
    f.name: f.router_output for f in FAMILIES if f.router_output is not None
}


@dataclass(frozen=True)
class Site:
    """One capture point. ``index`` is its position in the run's site list."""

    index: int
    name: str  # uniform name, e.g. "layers.3.mlp_in"
    layer: int
    kind: str  # attn_in | mlp_in | resid_out
    module_name: str  # Hugging Face module path, e.g. "model.layers.3.post_attention_layernorm"
    mode: str  # output | input
    module: nn.Module = field(compare=False, repr=False)


@dataclass(frozen=True)
class Router:
    layer: int
    module_name: str
    module: nn.Module = field(compare=False, repr=False)


@dataclass(frozen=True)
class SiteMap:
    family: str
    model_type: str
    architecture: str
    num_layers: int
    hidden_size: int
    site_set: str
    sites: tuple[Site, ...]
    routers: tuple[Router, ...]  # MoE layers only (dense layers of GLM-4 MoE are left out)
    experts: dict = field(default_factory=dict, compare=False, repr=False)  # layer -> module
    shared_experts: dict = field(default_factory=dict, compare=False, repr=False)
    layers: tuple = field(default=(), compare=False, repr=False)  # decoder-layer modules, in order

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sites]


def parse_site_set(value: str) -> str:
    if value not in SITE_SETS:
        raise HarnessError(
            f"unknown site set {value!r}; choose one of {', '.join(SITE_SETS)} "
            "(ln = the two norm outputs per layer, residual = each layer's output, all = both)."
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


def _family_for(model: nn.Module) -> Family | None:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    # Unknown model_type: accept a layout that a known family describes exactly, so that
    # Llama-shaped fine-tunes with their own model_type still work.
    for fam in FAMILIES:
        layers = _get(model, fam.layers)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            points = fam.points(model.config)
            if all(_get(layers[0], p.module) is not None for p in points.values()):
                return fam
    return None


def hidden_size_of(config) -> int:
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise HarnessError(f"the model config ({type(config).__name__}) has no hidden size field.")


def find_sites(model: nn.Module, sites: str = "ln") -> SiteMap:
    """Return the model's capture points for the site set ``sites`` ("ln", "residual", "all").

    Guarantees: sites are ordered by layer, then attn_in, mlp_in, resid_out; ``ln`` gives exactly
    2 sites per decoder layer. Raises ``UnsupportedArchitecture`` naming the class and the module
    tree it looked at when no family matches.
    """
    parse_site_set(sites)
    fam = _family_for(model)
    cls = type(model).__name__
    if fam is None:
        looked = ", ".join(sorted({f.layers for f in FAMILIES}))
        raise UnsupportedArchitecture(
            f"unsupported architecture {cls} (model_type "
            f"{getattr(model.config, 'model_type', '?')!r}): no decoder layers at {looked}; "
            f"its module tree starts with {_tree_summary(model)}; add a row to FAMILIES in "
            "harness/sites.py."
        )
    layers = _get(model, fam.layers)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise UnsupportedArchitecture(
            f"unsupported architecture {cls}: expected decoder layers at {fam.layers} "
            f"(family {fam.name}) but its module tree starts with {_tree_summary(model)}."
        )
    points = fam.points(model.config)
    kinds = [k for k in SITE_KIND_ORDER if k in SITE_SETS[sites]]
    out: list[Site] = []
    for i, layer in enumerate(layers):
        for kind in kinds:
            point = points[kind]
            module = _get(layer, point.module)
            if module is None:
                raise UnsupportedArchitecture(
                    f"unsupported architecture {cls}: layer {i} has no module {point.module!r} "
                    f"for site {kind} (family {fam.name}); its children are "
                    f"{', '.join(n for n, _ in layer.named_children())}."
                )
            hf_name = f"{fam.layers}.{i}" + (f".{point.module}" if point.module else "")
            out.append(Site(len(out), f"layers.{i}.{kind}", i, kind, hf_name, point.mode, module))
    routers, experts, shared = [], {}, {}
    for i, layer in enumerate(layers):
        if fam.router and (router := _get(layer, fam.router)) is not None:
            routers.append(Router(i, f"{fam.layers}.{i}.{fam.router}", router))
            if fam.experts and (ex := _get(layer, fam.experts)) is not None:
                experts[i] = ex
            if fam.shared_expert and (sh := _get(layer, fam.shared_expert)) is not None:
                shared[i] = sh
    return SiteMap(
        family=fam.name,
        model_type=getattr(model.config, "model_type", "?"),
        architecture=cls,
        num_layers=len(layers),
        hidden_size=hidden_size_of(model.config),
        site_set=sites,
        sites=tuple(out),
        routers=tuple(routers),
        experts=experts,
        shared_experts=shared,
        layers=tuple(layers),
    )
