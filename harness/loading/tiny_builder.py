"""Tiny replicas of every studied architecture: the models of the offline default.

Each replica has the real model's class and layer pattern, shrunk (hidden 64, 4 layers, 4-8
experts), random weights from a fixed seed, and a byte-level BPE tokenizer (vocabulary 1024)
trained offline on the built-in corpus (``harness.data.corpus``). ``build_tiny(id)`` saves model and
tokenizer with ``save_pretrained`` into ``tiny_cache_dir()/<id>``; they load back through the
ordinary ``AutoModelForCausalLM.from_pretrained(dir)`` / ``AutoTokenizer.from_pretrained(dir)``.
A build is skipped when the directory's fingerprint (spec, seed, tokenizer, transformers and
torch versions, recipe version) matches, and written atomically (temporary directory, then
``os.replace``), so an interrupted build never leaves half a model.

Planted models (``planted_qwen3``, ``planted_olmoe``): known systematic outliers, by hand.

For a pre-norm model with RMSNorm, ``norm(x)_i = g_i * x_i / rms(x)`` and
``|x_i| / rms(x) <= sqrt(H)``. With H = 64:

1. every decoder norm gets gain ``g = 0.5`` on every dim, so no norm output can exceed
   ``0.5 * sqrt(64) = 4`` anywhere, whatever the weights do;
2. each planted dim d has its own *trigger* tokens (frequent ones: ".", " the", ...; disjoint
   between dims). The embedding row of a trigger gets ``x_d = 1000``; every other embedding row
   gets ``x_d = 0`` (other components keep their random ~0.02 values);
3. every module that writes to the residual stream (attention ``o_proj``, MLP ``down_proj``, the
   experts' fused ``down_proj`` [E, H, I]) gets zero rows at the planted dims, so the residual's
   component d equals the embedding's at every layer: 1000 at trigger positions, exactly 0
   elsewhere (a *massive activation* in Sun et al.'s sense, on the residual stream);
4. at the chosen sites of dim d the norm gain of dim d is raised to ``gain_d`` (1.0, 1.25 or
   1.5), so at trigger positions the site's output at d is ``gain_d * 1000 / rms ~= gain_d * 8``
   (just under 8, 10 or 12) >= 6; at the other sites it stays ~4, at other positions it is 0.

So for any magnitude m in (4, 7.99]: dim d reaches m exactly at its chosen sites and its trigger
positions, and nothing else reaches m. On the residual stream (``resid_out`` sites) a planted
dim is exactly 1000 at its trigger positions in every layer and every other value stays below 1.
Layer coverage of d in a window = (#chosen sites of d) / (2L) if the window holds a trigger of d
(else 0); sequence coverage = (#trigger positions of d) / T. ``planted_truth(id)`` returns the
dims, trigger ids and sites; ``planted_masks`` / ``planted_expectations`` turn token ids into
the expected mask and the figures of METHOD.md. The final norm (also set to 0.5) and the
attention's q_norm / k_norm are not sites. Every build checks the planted truth on one forward
pass before it is saved, so a transformers change that breaks the recipe fails the build.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from harness.fileio import replace_dir
from harness.loading.tiny_plant import (
    RESIDUAL_BOUND,
    _plant,
    _site_names,
    _trigger_ids,
    _truth_from,
)
from harness.models.tiny import MAX_POSITIONS, TINY_SPECS, Plant, TinySpec

RECIPE_VERSION = 1
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|unk|>", "<|pad|>")
TOKENIZER_DIR = "_tokenizer"
MANIFEST = "tiny_build.json"


# -- cache and fingerprints --------------------------------------------------------------------
def tiny_cache_dir() -> Path:
    """``$OUTLIERS_TINY_CACHE``, else ``~/.cache/outlier-harness/tiny``."""
    env = os.environ.get("OUTLIERS_TINY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "outlier-harness" / "tiny"


def _hash(obj) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_manifest(path: Path) -> dict | None:
    try:
        with open(path / MANIFEST) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _new_tmp_dir(cache_dir: Path, name: str) -> Path:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_dir))
    except OSError as err:
        from harness.errors import HarnessError

        raise HarnessError(
            f"cannot write the tiny-model cache at {cache_dir} ({err.strerror}); set "
            "OUTLIERS_TINY_CACHE to a writable folder."
        ) from None
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a shared cache should not be
    return tmp


@contextlib.contextmanager
def _quiet_progress():
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _publish(tmp: Path, final: Path, fingerprint: str) -> None:
    """Move the finished ``tmp`` to ``final`` atomically, replacing a stale ``final``."""
    manifest = _read_manifest(final)
    if manifest is not None and manifest.get("fingerprint") == fingerprint:  # built meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        return
    try:
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _tokenizer_fingerprint() -> str:
    import tokenizers

    from harness.data.corpus import corpus_fingerprint

    return _hash(
        {
            "corpus": corpus_fingerprint(),
            "tokenizers": tokenizers.__version__,
            "vocab_size": VOCAB_SIZE,
            "special": SPECIAL_TOKENS,
            "recipe": RECIPE_VERSION,
        }
    )


def _train_tokenizer_object():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from harness.data.corpus import builtin_documents

    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(builtin_documents(), trainer=trainer)
    return tok


def train_tokenizer(cache_dir: Path | None = None):
    """The tiny models' tokenizer: byte-level BPE, vocabulary 1024, trained on the built-in
    corpus; special tokens <|bos|> <|eos|> <|unk|> <|pad|>; adds no BOS by itself (as Qwen's).

    Trained once per corpus / ``tokenizers`` version and saved under ``cache_dir/_tokenizer``;
    deterministic. Returns a ``PreTrainedTokenizerFast``.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cache_dir = Path(cache_dir) if cache_dir is not None else tiny_cache_dir()
    final = cache_dir / TOKENIZER_DIR
    fingerprint = _tokenizer_fingerprint()
    manifest = _read_manifest(final)
    if manifest is None or manifest.get("fingerprint") != fingerprint:
        tmp = _new_tmp_dir(cache_dir, TOKENIZER_DIR)
        tok = PreTrainedTokenizerFast(
            tokenizer_object=_train_tokenizer_object(),
            bos_token="<|bos|>",
            eos_token="<|eos|>",
            unk_token="<|unk|>",
            pad_token="<|pad|>",
            model_max_length=1 << 30,
        )
        tok.save_pretrained(tmp)
        with open(tmp / MANIFEST, "w") as f:
            json.dump({"fingerprint": fingerprint, "vocab_size": len(tok)}, f, indent=1)
        _publish(tmp, final, fingerprint)
    return AutoTokenizer.from_pretrained(final)


# -- building ----------------------------------------------------------------------------------
def _versions() -> dict:
    import transformers

    return {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]}


def _fingerprint(model_id: str, spec: TinySpec) -> str:
    return _hash(
        {
            "id": model_id,
            "spec": spec.as_dict(),
            "tokenizer": _tokenizer_fingerprint(),
            "recipe": RECIPE_VERSION,
            **_versions(),
        }
    )


def _spec(model_id: str) -> TinySpec:
    from harness.errors import HarnessError

    try:
        return TINY_SPECS[model_id]
    except KeyError:
        raise HarnessError(
            f"unknown tiny model {model_id!r}; choose one of {', '.join(TINY_SPECS)}."
        ) from None


def _config(spec: TinySpec, tokenizer):
    from transformers import CONFIG_MAPPING

    kwargs = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if spec.model_type != "gpt2":
        kwargs["max_position_embeddings"] = MAX_POSITIONS
    kwargs.update(spec.config)
    return CONFIG_MAPPING[spec.model_type](**kwargs)


def _make_model(spec: TinySpec, tokenizer):
    from transformers import AutoModelForCausalLM

    config = _config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if getattr(model.config, "quantization_config", None) is not None:  # gpt-oss: never MXFP4
        del model.config.quantization_config
    model.eval()
    if spec.plant is not None:
        _plant(model, spec.plant, tokenizer)
        _verify_plant(model, spec.plant, tokenizer)
    return model


def build_tiny(model_id: str, cache_dir: Path | None = None) -> Path:
    """Build (or reuse) the tiny model ``model_id``; returns its directory.

    Idempotent: an existing directory whose fingerprint matches is returned untouched. A build
    is written to a temporary directory and moved into place atomically.
    """
    spec = _spec(model_id)
    cache_dir = Path(cache_dir) if cache_dir is not None else tiny_cache_dir()
    final = cache_dir / model_id
    tokenizer = train_tokenizer(cache_dir)
    fingerprint = _fingerprint(model_id, spec)
    manifest = _read_manifest(final)
    if manifest is not None and manifest.get("fingerprint") == fingerprint:
        return final
    model = _make_model(spec, tokenizer)
    tmp = _new_tmp_dir(cache_dir, model_id)
    try:
        with _quiet_progress():
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "id": model_id,
            "fingerprint": fingerprint,
            "mirrors": spec.mirrors,
            "model_type": spec.model_type,
            "model_class": type(model).__name__,
            "seed": spec.seed,
            "recipe": RECIPE_VERSION,
            **_versions(),
        }
        if spec.plant is not None:
            manifest["planted"] = _truth(model_id, spec, tokenizer)
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1, default=str)
        _publish(tmp, final, fingerprint)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def planted_truth(model_id: str, cache_dir: Path | None = None) -> dict:
    """What was planted in ``model_id`` (a ``planted_*`` id).

    Keys: ``hidden_size``, ``num_layers``, ``site_names`` (the ``ln`` sites in order),
    ``amplitude`` (the residual value of a planted dim at its triggers), ``bound_elsewhere`` (4:
    no other norm output reaches it), ``min_planted_value`` (7.992: every planted norm output
    reaches it), ``residual_bound`` and ``dims``: {dim: {trigger_tokens, trigger_ids, sites,
    gain, approx_value}}.

    Guarantee (checked at every build): for a magnitude m with bound_elsewhere < m <=
    min_planted_value, |x| >= m holds on the ``ln`` sites exactly at (site, position, dim) with
    dim planted, site among the dim's ``sites`` and the position's token among its
    ``trigger_ids``; on the ``resid_out`` sites exactly at every layer, planted dims, trigger
    positions (for residual_bound < m <= amplitude). ``planted_masks`` spells this out.
    """
    spec = _spec(model_id)
    if spec.plant is None:
        from harness.errors import HarnessError

        planted = ", ".join(k for k, v in TINY_SPECS.items() if v.plant)
        raise HarnessError(f"{model_id} has nothing planted; the planted models are {planted}.")
    return _truth(model_id, spec, train_tokenizer(cache_dir))


def _check_magnitude(truth: dict, sites: str, magnitude: float) -> None:
    lo, hi = -np.inf, np.inf
    if sites in ("ln", "all"):
        lo, hi = truth["bound_elsewhere"], truth["min_planted_value"]
    if sites in ("residual", "all"):
        lo, hi = max(lo, truth["residual_bound"]), min(hi, truth["amplitude"])
    if not lo < magnitude <= hi:
        raise ValueError(f"the planted truth holds for {lo:g} < magnitude <= {hi:g} ({sites})")


def planted_masks(
    truth: dict, ids: np.ndarray, sites: str = "ln", magnitude: float = 6.0
) -> np.ndarray:
    """Boolean [S, N, T, H] (sites in ``harness.engine.sites`` order for the site set ``sites``):
    where |x| >= ``magnitude`` holds for token ids [N, T]."""
    _check_magnitude(truth, sites, magnitude)
    ids = np.asarray(ids)
    names = _site_names(truth["num_layers"], sites)
    out = np.zeros((len(names), *ids.shape, truth["hidden_size"]), dtype=bool)
    for d, info in truth["dims"].items():
        hit = np.isin(ids, info["trigger_ids"])
        chosen = set(info["sites"]) | {n for n in names if n.endswith(".resid_out")}
        for s, name in enumerate(names):
            if name in chosen:
                out[s, :, :, int(d)] = hit
    return out


def planted_expectations(
    truth: dict,
    ids: np.ndarray,
    sites: str = "ln",
    magnitude: float = 6.0,
    layer_frac: float = 0.25,
    seq_frac: float = 0.06,
) -> dict:
    """The figures of METHOD.md for a planted model on token ids [N, T], by hand.

    Returns ``{"pairs": {(seq, dim): {"layer_pct", "seq_pct"}}, "dims": {dim: {"layer_pct",
    "seq_pct"}}}``: the per-sequence systematic pairs (seed-compatible) and the pooled
    systematic dims.
    """
    _check_magnitude(truth, sites, magnitude)
    ids = np.asarray(ids)
    N, T = ids.shape
    names = _site_names(truth["num_layers"], sites)
    S = len(names)
    A, B = Fraction(repr(float(layer_frac))), Fraction(repr(float(seq_frac)))
    pairs, dims = {}, {}
    for d, info in truth["dims"].items():
        d = int(d)
        hit = np.isin(ids, info["trigger_ids"])
        k = sum(1 for n in names if n in info["sites"] or n.endswith(".resid_out"))
        for n in range(N):
            positions = int(hit[n].sum())
            if positions and k and Fraction(k, S) >= A and Fraction(positions, T) >= B:
                pairs[(n, d)] = {"layer_pct": 100.0 * k / S, "seq_pct": 100.0 * positions / T}
        total = int(hit.sum())
        if total and k and Fraction(k, S) >= A and Fraction(total, N * T) >= B:
            dims[d] = {"layer_pct": 100.0 * k / S, "seq_pct": 100.0 * total / (N * T)}
    return {"pairs": pairs, "dims": dims}


@torch.no_grad()
def _verify_plant(model, plant: Plant, tokenizer) -> None:
    """One forward pass over every trigger and random tokens: the planted truth must hold."""
    g = torch.Generator().manual_seed(0)
    triggers = [i for p in plant.dims for i in _trigger_ids(tokenizer, p.triggers)]
    ids = torch.randint(len(SPECIAL_TOKENS), len(tokenizer), (2, 128), generator=g)
    ids[0, : len(triggers)] = torch.tensor(triggers)
    truth = _truth_from(plant, tokenizer, model.config)
    acts = np.abs(_site_outputs(model, ids))  # [3L, N, T, H], sites.py order for "all"
    ln, resid = acts[np.arange(len(acts)) % 3 != 2], acts[2::3]
    checks = [("ln", ln, m) for m in (4.001, 6.0, truth["min_planted_value"])]
    checks += [("residual", resid, m) for m in (RESIDUAL_BOUND + 1e-3, plant.amplitude)]
    for sites, a, m in checks:
        if not np.array_equal(a >= m, planted_masks(truth, ids.numpy(), sites, m)):
            raise RuntimeError(
                f"the planted outliers do not hold on the {sites} sites at magnitude {m}; the "
                "recipe in harness/loading/tiny_builder.py does not fit this transformers version"
            )


def _site_outputs(model, ids: torch.Tensor) -> np.ndarray:
    """float32 [3L, N, T, H]: per layer the two norm outputs and the layer output."""
    store: list = []
    handles = []
    for layer in model.model.layers:
        for module in (layer.input_layernorm, layer.post_attention_layernorm, layer):
            slot = len(store)
            store.append(None)

            def hook(_m, _a, out, slot=slot):
                out = out[0] if isinstance(out, (tuple, list)) else out
                store[slot] = out.detach().float().cpu().numpy()

            handles.append(module.register_forward_hook(hook))
    try:
        model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return np.stack(store)


def _truth(model_id: str, spec: TinySpec, tokenizer) -> dict:
    return {"model_id": model_id, **_truth_from(spec.plant, tokenizer, _config(spec, tokenizer))}
