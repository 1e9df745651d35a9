"""Preflight: every refusal ends in its sentence before any download; fallbacks run labelled.

Configs are small ones built here (or the real ones shipped in models/configs for the study
table); the hub is never asked (HF_HUB_OFFLINE, ``hub=False``). Missing kernels are simulated by
blocking imports (``sys.modules[name] = None``), present ones by stand-in modules.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import transformers
from harness.models.registry import H100_80, GpuPlan, ModelEntry
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from harness import models
from harness.errors import HarnessError
from harness.loading.kernel_path import kernel_path_of
from harness.preflight.checks import preflight
from harness.preflight.command import preflight_table
from harness.preflight.packages import _kernels_range
from harness.preflight.targets import parse_gpus
from harness.preflight.verdict import OK, REFUSE, WARN, PreflightRefused

# Import the modeling code now: transformers decides at import time which packages it has (and an
# import blocked later must only be seen by the preflight's own probe, as on a machine without it).
for _name in ("gpt_oss", "qwen3_next", "qwen3"):
    importlib.import_module(f"transformers.models.{_name}.modeling_{_name}")

ROOT = Path(__file__).resolve().parent.parent
HF_CONFIGS = ROOT / "models" / "configs"  # shipped with the registry
TF = transformers.__version__

SMALL = dict(
    vocab_size=1000,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=4096,
)
# Stand-ins for the optional kernel packages: module name -> attributes transformers looks up.
FAKE = {
    "triton": {"__version__": "3.4.0"},
    "kernels": {"__version__": _kernels_range()[0]},  # the lowest this transformers accepts
    "fla": {"__version__": "0.3.0"},
    "fla.ops": {},
    "fla.ops.gated_delta_rule": {
        "chunk_gated_delta_rule": len,
        "fused_recurrent_gated_delta_rule": len,
    },
    "causal_conv1d": {"__version__": "1.5.0", "causal_conv1d_fn": len, "causal_conv1d_update": len},
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def entry(name="probe", hub_id="org/probe", **kw) -> ModelEntry:
    return ModelEntry(name, hub_id, "moe", gpu=GpuPlan(H100_80, 1, 100), **kw)


def config(model_type: str, **overrides) -> dict:
    return CONFIG_MAPPING[model_type](**{**SMALL, **overrides}).to_dict()


def gpt_oss(**extra) -> dict:
    d = config(
        "gpt_oss",
        num_local_experts=4,
        num_experts_per_tok=2,
        layer_types=["sliding_attention", "full_attention"] * 2,
        **extra,
    )
    d["quantization_config"] = {"quant_method": "mxfp4"}
    return d


def qwen3_next() -> dict:
    return config(
        "qwen3_next",
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=64,
        shared_expert_intermediate_size=64,
        linear_num_value_heads=4,
        linear_num_key_heads=2,
        linear_key_head_dim=32,
        linear_value_head_dim=32,
        layer_types=["linear_attention"] * 3 + ["full_attention"],
    )


def install(monkeypatch, *names):
    """Make ``names`` importable as stand-in modules (with their parents)."""
    for name in names:
        for mod in [m for m in FAKE if name == m or m.startswith(name + ".")] + [name]:
            if mod in FAKE:
                module = types.ModuleType(mod)
                module.__spec__ = importlib.machinery.ModuleSpec(mod, None)
                module.__dict__.update(FAKE[mod])
                monkeypatch.setitem(sys.modules, mod, module)


def block(monkeypatch, *names):
    """An import of any of ``names`` fails as if the package were not installed."""
    for name in names:
        for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")] + [name]:
            monkeypatch.setitem(sys.modules, mod, None)


def row(report, check):
    return next(r for r in report.rows if r.check == check)


# -- model_type ---------------------------------------------------------------------------------
def test_unknown_model_type_is_refused_with_the_upgrade_sentence():
    raw = {"model_type": "gpt_oss_v9", "transformers_version": "9.1.0"}
    report = preflight(entry(), config=raw, gpus="H100:80", hub=False)
    assert report.refused
    assert report.sentence() == (
        f"transformers {TF} does not know model_type 'gpt_oss_v9'; upgrade to >= 9.1.0 "
        "(the config was written by transformers 9.1.0)."
    )
    with pytest.raises(PreflightRefused, match="does not know model_type 'gpt_oss_v9'"):
        report.raise_if_refused()


def test_old_transformers_without_gpt_oss_is_refused(monkeypatch):
    # what transformers < 4.55 sees: no gpt_oss in its config mapping
    monkeypatch.delitem(CONFIG_MAPPING._mapping, "gpt_oss")
    raw = {"model_type": "gpt_oss", "transformers_version": "4.55.0.dev0"}
    report = preflight(entry(), config=raw, gpus="H100:80", hub=False)
    msg = row(report, "model_type").message
    assert row(report, "model_type").status == REFUSE
    assert msg.startswith(
        f"transformers {TF} does not know model_type 'gpt_oss'; upgrade to >= 5.0"
    )


def test_cli_exits_2_with_the_sentence(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_oss_v9"}))
    from harness.cli import main

    assert main(["preflight", str(tmp_path), "--gpus", "H100:80"]) == 2
    err = capsys.readouterr().err
    assert "does not know model_type 'gpt_oss_v9'" in err and err.startswith("error: ")


def test_the_outliers_preflight_command_in_a_fresh_process(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_oss_v9"}))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "preflight", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "does not know model_type 'gpt_oss_v9'" in proc.stderr


# -- weight format and kernel path --------------------------------------------------------------
@pytest.mark.parametrize("missing", ["kernels", "triton"])
def test_mxfp4_without_kernels_is_refused(monkeypatch, missing):
    install(monkeypatch, "triton", "kernels")
    block(monkeypatch, missing)
    report = preflight(entry(), config=gpt_oss(), gpus="H100:80", hub=False)
    weights = row(report, "weights")
    assert weights.status == REFUSE
    assert "would be dequantized from MXFP4 to bfloat16" in weights.message
    assert missing in weights.message and "--allow-fallback" in weights.message
    assert report.facts["weight_format"] == "mxfp4->bfloat16 (dequantized)"


def test_mxfp4_with_kernels_runs_packed(monkeypatch):
    install(monkeypatch, "triton", "kernels")
    report = preflight(entry(), config=gpt_oss(), gpus="H100:80", hub=False)
    assert row(report, "weights").status == OK, report.table()
    assert report.facts["weight_format"] == "mxfp4"
    assert report.facts["experts_implementation"] == "mxfp4 triton (matmul_ogs)"
    assert report.facts["loaded_dtype"] == "mxfp4 + bfloat16"
    assert not report.labels and not report.load_kwargs


def test_mxfp4_on_an_old_gpu_or_the_cpu_is_dequantized(monkeypatch):
    install(monkeypatch, "triton", "kernels")
    old = preflight(entry(), config=gpt_oss(), gpus="Tesla V100:32", hub=False)
    assert "compute capability 7.0" in row(old, "weights").message
    cpu = preflight(entry(), config=gpt_oss(), device="cpu", hub=False)
    assert "use_kernels=True" in row(cpu, "weights").message


def test_mxfp4_fallback_is_labelled_in_the_report_and_provenance(monkeypatch):
    block(monkeypatch, "kernels")
    report = preflight(entry(), config=gpt_oss(), gpus="H100:80", hub=False, allow_fallback=True)
    assert report.ok
    weights = row(report, "weights")
    assert weights.status == WARN and weights.message.startswith(
        "dequantized to bfloat16 (labelled)"
    )
    assert report.labels == {"weight_format": "mxfp4->bfloat16 (dequantized)"}
    prov = report.provenance()
    assert prov["preflight"] == "fallback"
    assert prov["fallback"] == {"weight_format": "mxfp4->bfloat16 (dequantized)"}
    assert prov["weight_format"] == "mxfp4->bfloat16 (dequantized)"
    assert report.load_kwargs["quantization_config"].dequantize is True
    # dequantized weights are counted in bf16: more memory than the packed path
    assert report.facts["alternative"]["path"] == "mxfp4 kernels"
    assert report.facts["alternative"]["weights_gib"] < report.facts["weights_gib"]


def test_qwen3_next_without_fla_is_refused(monkeypatch):
    block(monkeypatch, "fla", "causal_conv1d")
    report = preflight(entry(), config=qwen3_next(), gpus="H100:80", hub=False)
    kernels = row(report, "kernels")
    assert kernels.status == REFUSE
    assert "flash-linear-attention and causal-conv1d cannot be imported" in kernels.message
    assert report.facts["kernel_path"] == "reference (slow)"


def test_qwen3_next_with_one_kernel_missing_names_it(monkeypatch):
    install(monkeypatch, "fla")
    block(monkeypatch, "causal_conv1d")
    report = preflight(entry(), config=qwen3_next(), gpus="H100:80", hub=False)
    assert "because causal-conv1d cannot be imported" in row(report, "kernels").message


def test_qwen3_next_with_kernels_and_the_labelled_fallback(monkeypatch):
    install(monkeypatch, "fla", "causal_conv1d")
    fast = preflight(entry(), config=qwen3_next(), gpus="H100:80", hub=False)
    assert row(fast, "kernels").status == OK and fast.facts["kernel_path"] == "fla + causal-conv1d"
    block(monkeypatch, "fla")
    slow = preflight(entry(), config=qwen3_next(), gpus="H100:80", hub=False, allow_fallback=True)
    assert slow.ok and row(slow, "kernels").status == WARN
    assert slow.labels == {"kernel_path": "reference (slow)"}
    assert slow.provenance()["kernel_path"] == "reference (slow)"
    assert slow.provenance()["fallback"] == {"kernel_path": "reference (slow)"}


def test_attention_and_experts_implementation_are_recorded():
    report = preflight(
        entry(),
        config=qwen3_next(),
        gpus="H100:80",
        hub=False,
        packages={"fla": "x", "causal_conv1d": "x"},
    )
    assert report.facts["attn_implementation"] == "sdpa"
    assert report.facts["experts_implementation"] in ("grouped_mm", "eager")
    gpt = preflight(
        entry(),
        config=gpt_oss(),
        gpus="H100:80",
        hub=False,
        allow_fallback=True,
        packages={"triton": None},
    )
    assert gpt.facts["attn_implementation"] == "eager"  # gpt-oss has no sdpa in transformers 5


# -- memory -------------------------------------------------------------------------------------
def test_memory_too_small_for_the_plan_is_refused_with_what_would_fit():
    big = config(
        "qwen3",
        hidden_size=5120,
        num_hidden_layers=48,
        intermediate_size=17408,
        num_attention_heads=40,
        num_key_value_heads=8,
        head_dim=128,
    )
    report = preflight(entry(), config=big, gpus=GpuPlan(("NVIDIA L4",), 1), hub=False)
    mem = row(report, "memory")
    assert report.facts["weights_gib"] > 24 and mem.status == REFUSE
    assert (
        "offers 23.6" in mem.message
        and "it would fit on 1x NVIDIA RTX A6000 (48 GB)" in mem.message
    )
    assert report.resource_only
    assert not preflight(entry(), config=big, gpus=GpuPlan(H100_80, 1), hub=False).refused


def test_memory_checks_the_gpus_present(monkeypatch):
    props = types.SimpleNamespace(name="NVIDIA GeForce RTX 4090", major=8, minor=9)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (2 * 2**30, 24 * 2**30))
    big = config(
        "qwen3",
        hidden_size=2048,
        num_hidden_layers=24,
        intermediate_size=8192,
        num_attention_heads=16,
    )
    report = preflight(entry(), config=big, hub=False)
    assert (
        report.target.kind == "cuda" and report.target.label == "1x NVIDIA GeForce RTX 4090 (here)"
    )
    assert row(report, "memory").status == REFUSE
    assert "offers 2.0" in row(report, "memory").message


def test_activations_that_only_fit_at_a_smaller_batch_warn():
    # eager attention (gpt-oss) materializes [B, heads, T, T]: 3 x 4 x 64 x 8192^2 x 2 bytes
    cfg = gpt_oss(num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=131072)
    report = preflight(
        entry(),
        config=cfg,
        gpus="H100:80",
        hub=False,
        allow_fallback=True,
        seq_len=8192,
        packages={"triton": None},
    )
    mem = row(report, "memory")
    assert mem.status == WARN and "it fits at batch" in mem.message, report.table()
    assert report.ok and report.facts["batch"] < 4


def test_seq_len_above_max_positions_is_refused():
    report = preflight(entry(), config=config("qwen3"), gpus="H100:80", hub=False, seq_len=8192)
    assert row(report, "seq_len").message == (
        "--seq-len 8192 is above probe's maximum of 4096 positions; use --seq-len 4096 or less."
    )


def test_disk_too_small_is_refused():
    big = config(
        "qwen3",
        hidden_size=8192,
        intermediate_size=32768,
        num_attention_heads=64,
        num_hidden_layers=64,
        head_dim=128,
        dtype="bfloat16",
    )
    report = preflight(entry(), config=big, gpus=GpuPlan(H100_80, 8, 20), hub=False)
    assert row(report, "disk").status == REFUSE
    assert "is free on the plan" in row(report, "disk").message


def test_gpus_argument_is_parsed():
    t = parse_gpus("2xH100:80, A6000:48")
    assert [g.name for g in t.gpus] == ["H100", "H100", "A6000"]
    assert t.gpus[0].capability == (9, 0)
    with pytest.raises(HarnessError, match="NAME:GB"):
        parse_gpus("H100")


# -- access -------------------------------------------------------------------------------------
@pytest.fixture
def no_token(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def test_gated_model_without_token_is_refused(no_token):
    report = preflight(
        entry(hub_id="org/gated", gated=True), config=config("qwen3"), gpus="H100:80", hub=False
    )
    assert row(report, "access").status == REFUSE
    assert report.sentence() == (
        "org/gated is gated (the registry) and HF_TOKEN is not set; accept its conditions on "
        "huggingface.co and set HF_TOKEN (or .env)."
    )
    assert not report.resource_only


def test_gated_model_with_token_passes_and_never_shows_it(no_token, monkeypatch):
    secret = "hf_" + "x" * 30
    monkeypatch.setenv("HF_TOKEN", secret)
    report = preflight(
        entry(hub_id="org/gated", gated=True), config=config("qwen3"), gpus="H100:80", hub=False
    )
    assert row(report, "access").status == OK
    assert secret not in json.dumps(report.to_dict(), default=str) + report.table()


# -- after loading ------------------------------------------------------------------------------
def test_kernel_path_of_reads_what_transformers_bound():
    from transformers import AutoModelForCausalLM

    cfg = CONFIG_MAPPING["qwen3_next"].from_dict(qwen3_next())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    try:
        import causal_conv1d  # noqa: F401
        import fla.ops.gated_delta_rule  # noqa: F401

        expected = "fla + causal-conv1d"
    except ImportError:
        expected = "reference (slow)"
    assert kernel_path_of(model)["kernel_path"] == expected
    gpt = CONFIG_MAPPING["gpt_oss"].from_dict(gpt_oss())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(gpt)  # from_config never quantizes
    assert kernel_path_of(model)["weight_format"].startswith("mxfp4->")


def test_tiny_models_pass_on_the_cpu():
    report = preflight("tiny_qwen3", device="cpu", hub=False)
    assert report.ok, report.table()
    assert (report.facts["weight_format"], report.facts["kernel_path"]) == ("dense", "torch")


# -- the 12 study models, offline ---------------------------------------------------------------
POD_WITH_KERNELS = {
    "triton": "3.4.0",
    "kernels": _kernels_range()[0],  # the lowest this transformers accepts (5.25: 0.19.1)
    "fla": "0.3.0",
    "causal_conv1d": "1.5.0",
}


def study_reports(packages=None):
    from transformers import Glm4MoeConfig

    reports = []
    for e in models.study.STUDY:
        kw = {}
        if e.id == "glm_4.5_air":  # transformers' Glm4MoeConfig defaults are these shapes
            kw = dict(
                config=Glm4MoeConfig(), config_note="shapes from SOURCES.md, not the official file"
            )
        # no GPU here: each model is checked against its registry plan
        reports.append(preflight(e, configs=HF_CONFIGS, hub=False, packages=packages, **kw))
    return reports


def test_study_table_registry_plans_fit_with_kernels(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # plan for the registry GPUs
    reports = study_reports(POD_WITH_KERNELS)
    print("\n" + preflight_table(reports))
    assert len(reports) == 12
    with_config = [r for r in reports if r.facts.get("total_params")]
    missing = {r.model for r in reports} - {r.model for r in with_config}
    assert missing == {"qwen3_1.7b", "qwen3_4b"}  # no trustworthy config (SOURCES.md)
    for r in with_config:
        assert r.facts["needed_gib"] > r.facts["weights_gib"] > 0
        assert r.facts["implied_plan"]
        assert r.facts["fits"], f"{r.model}: registry plan does not fit\n{r.table()}"
        assert not [c for c in r.refusals if c.check == "memory"], r.table()
    by = {r.model: r for r in reports}
    assert by["gpt_oss_20b"].facts["weight_format"] == "mxfp4"
    assert by["olmoe_1b_7b"].facts["loaded_dtype"] == "float32"
    # published totals (SOURCES.md) within 3%
    for model, billions in [
        ("olmoe_1b_7b", 6.92),
        ("gpt_oss_120b", 116.83),
        ("qwen3_next_80b", 79.67),
        ("mixtral_8x7b", 46.70),
    ]:
        assert abs(by[model].facts["total_params"] / 1e9 - billions) / billions < 0.03


def test_study_table_without_kernels_labels_every_fallback(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    none = dict.fromkeys(POD_WITH_KERNELS)
    reports = {r.model: r for r in study_reports(none)}
    print("\n" + preflight_table(list(reports.values())))
    for model in ("gpt_oss_20b", "gpt_oss_120b"):
        assert row(reports[model], "weights").status == REFUSE
        assert reports[model].facts["loaded_dtype"] == "bfloat16 (dequantized)"
    assert row(reports["qwen3_next_80b"], "kernels").status == REFUSE
