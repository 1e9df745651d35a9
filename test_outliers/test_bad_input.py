"""Errors a user can cause end in one clear sentence, and no result directory is left behind."""

import subprocess
import sys

import pytest
import torch
from factories import random_ids, random_model
from paths import PATHS, TUNINGS
from torch import nn

from harness.engine.result_files import find_run_dirs
from harness.errors import HarnessError, NonFiniteActivations, UnsupportedArchitecture
from harness.pipeline import analyze


def one_sentence(msg: str) -> bool:
    return "\n" not in msg and msg.rstrip().endswith((".", ")")) and "Traceback" not in msg


def run_cli(*args, cwd=None):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(cwd or "/tmp")}
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def test_unknown_hub_id_offline(tmp_path):
    p = run_cli(
        "analyze", "no-such-org/no-such-model", "--results-dir", str(tmp_path / "r"), "--quiet"
    )
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "not in the local Hugging Face cache" in err[0] and "offline" in err[0]
    assert "Traceback" not in p.stderr
    assert find_run_dirs(tmp_path / "r") == []


def test_missing_local_path(tmp_path):
    p = run_cli(
        "analyze", str(tmp_path / "missing" / "model"), "--results-dir", str(tmp_path / "r")
    )
    assert p.returncode == 2
    assert (
        p.stderr.strip()
        == f"error: no model directory at {tmp_path / 'missing' / 'model'}; check the path."
    )
    assert not (tmp_path / "r").exists()


def test_unknown_registry_like_name(tmp_path):
    p = run_cli("analyze", "qwen9_99b", "--results-dir", str(tmp_path / "r"))
    assert p.returncode == 2
    assert "unknown model 'qwen9_99b'" in p.stderr and "outliers models" in p.stderr


def test_seq_len_above_the_model_maximum():
    model = random_model("gpt2", seed=1)  # n_positions = 256
    with pytest.raises(HarnessError) as err:
        analyze(model, random_ids(2, 300))
    assert str(err.value) == (
        "--seq-len 300 is above this model's maximum of 256 positions; use --seq-len 256 or less."
    )


@pytest.mark.parametrize("path", PATHS)
def test_nan_activations_name_the_site(path):
    """On every path, also where the whole chunk is read (dense hits): a NaN has no grid level,
    the batch ends in the sentence, not in an index error of the level table."""
    model = random_model("qwen3", seed=2)
    with torch.no_grad():
        model.model.layers[1].post_attention_layernorm.weight[5] = float("nan")
    with pytest.raises(NonFiniteActivations) as err:
        analyze(model, random_ids(2, 8), tuning=TUNINGS[path])
    msg = str(err.value)
    assert "NaN or inf" in msg and "layers.1.mlp_in" in msg and one_sentence(msg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_nan_weights_under_the_default_options_end_in_the_nan_sentence(dtype):
    """With attribution on (the default), as without; the dtype advice only where it helps."""
    model = random_model("qwen3", dtype, seed=2)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteActivations) as err:
        analyze(model, random_ids(2, 8), attribution=True)
    msg = str(err.value)
    assert "NaN or inf" in msg and "layers.2." in msg and one_sentence(msg)
    if dtype == torch.float32:
        assert "--dtype" not in msg and "checkpoint" in msg
    else:
        assert "--dtype bfloat16 or float32" in msg


def test_inf_activations():
    model = random_model("gpt2", seed=3)
    with torch.no_grad():
        model.transformer.h[0].ln_1.weight[0] = float("inf")
    with pytest.raises(NonFiniteActivations, match="layers.0.attn_in"):
        analyze(model, random_ids(2, 8))


class WeirdConfig:
    model_type = "weird"
    vocab_size = 10
    hidden_size = 8
    max_position_embeddings = 64


class WeirdModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = WeirdConfig()
        self.trunk = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8))

    def forward(self, input_ids, **kw):
        return self.trunk(input_ids)


def test_unsupported_architecture_names_class_and_tree():
    with pytest.raises(UnsupportedArchitecture) as err:
        analyze(WeirdModel(), torch.zeros(1, 4, dtype=torch.long))
    msg = str(err.value)
    assert "WeirdModel" in msg and "'weird'" in msg
    assert "attention" in msg and "MLP" in msg  # what it looked for
    assert "trunk" in msg  # what it found
    assert one_sentence(msg)


def test_bad_threshold_values():
    model = random_model("qwen3", seed=4)
    for kwargs, flag in (
        (dict(magnitude=-1), "--magnitude"),
        (dict(layer_frac=1.5), "--layer-frac"),
        (dict(seq_frac=-0.1), "--seq-frac"),
    ):
        with pytest.raises(HarnessError, match=flag):
            analyze(model, random_ids(1, 4), **kwargs)


def test_windows_from_another_tokenizer():
    model = random_model("qwen3", seed=5)
    with pytest.raises(HarnessError, match="outside the model's vocabulary"):
        analyze(model, torch.full((1, 4), 10_000))


def test_interrupted_write_leaves_no_complete_looking_directory(tmp_path, monkeypatch):
    from harness.engine import result_files as result_mod

    model = random_model("qwen3", seed=6)
    r = analyze(model, random_ids(2, 8))
    calls = {"n": 0}
    real = result_mod.fsync_write

    def crash_on_second(path, data):
        calls["n"] += 1
        if calls["n"] == 2:  # after stats.npz, while writing result.json
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(result_mod, "fsync_write", crash_on_second)
    with pytest.raises(HarnessError, match="no space left on the device"):  # one sentence
        result_mod.write_result(r, tmp_path)
    assert find_run_dirs(tmp_path) == []
    assert not any(p.name.startswith(".tmp") for p in tmp_path.rglob("*"))


def test_unwritable_results_dir_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    import harness.runners.local as run
    from harness.options import AnalysisOptions

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(run, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    opts = AnalysisOptions(results_dir=str(blocker / "results"), num_seqs=2, seq_len=16)
    with pytest.raises(HarnessError, match="--results-dir .* is not writable") as err:
        run.run_model("tiny_qwen3", opts)
    assert one_sentence(str(err.value))


def test_a_garbage_config_json_is_one_sentence(tmp_path):
    from harness.preflight.checks import preflight

    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(HarnessError, match="config.json is not valid JSON") as err:
        preflight(str(tmp_path), device="cpu")
    assert one_sentence(str(err.value))


def test_a_config_without_weights_is_one_sentence(tmp_path):
    from transformers import AutoConfig

    from harness.loading.load import load

    AutoConfig.for_model(
        "llama", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=50
    ).save_pretrained(tmp_path)
    with pytest.raises(HarnessError, match="has a config.json but no weights") as err:
        load(str(tmp_path), device="cpu")
    assert one_sentence(str(err.value))


def test_an_absurd_seq_len_names_the_models_limit(tmp_path, tiny_cache, monkeypatch):
    from harness.options import AnalysisOptions
    from harness.runners.local import run_model

    monkeypatch.setenv("OUTLIERS_TINY_CACHE", str(tiny_cache))
    opts = AnalysisOptions(seq_len=10**14, num_seqs=16, results_dir=str(tmp_path / "r"))
    with pytest.raises(HarnessError, match=r"--seq-len 100000000000000 is above this model's") as e:
        run_model("tiny_qwen3", opts)
    assert one_sentence(str(e.value))


def test_windows_that_cannot_fit_in_memory_are_one_sentence(tiny_tokenizer):
    from harness.data.windows import DataSpec, load_windows

    with pytest.raises(HarnessError, match="do not fit in this machine's memory"):
        load_windows(tiny_tokenizer, DataSpec(dataset="builtin", num_seqs=16, seq_len=10**14))
