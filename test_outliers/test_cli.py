"""The `outliers` command as a user runs it."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def outliers(*args, tiny_cache=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if tiny_cache:
        env["OUTLIERS_TINY_CACHE"] = str(tiny_cache)
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def test_analyze_writes_one_result_and_prints_a_summary(tmp_path, tiny_cache):
    p = outliers(
        "analyze",
        "planted_qwen3",
        "--num-seqs",
        "4",
        "--seq-len",
        "128",
        "--quiet",
        "--results-dir",
        str(tmp_path),
        tiny_cache=tiny_cache,
    )
    assert p.returncode == 0, p.stderr
    assert "it/s" not in p.stderr and "Loading weights" not in p.stderr  # --quiet: no bars at all
    runs = list(tmp_path.glob("planted_qwen3/*/result.json"))
    assert len(runs) == 1
    result = json.loads(runs[0].read_text())
    assert result["data"]["num_seqs"] == 4 and result["data"]["seq_len"] == 128
    assert result["criteria"]["num_sites"] == 8
    # the printed summary is the result's own figures
    rows = {line[:30].strip(): line[30:].strip() for line in p.stdout.splitlines()}
    assert rows["systematic (seq, dim) pairs"] == str(result["seed_compatible"]["num_outliers"])
    assert rows["pooled systematic dims"] == str(result["pooled"]["num_dims"])
    assert str(runs[0].parent) in p.stdout
    # then re-threshold it offline, attribution included, without the model
    q = outliers(
        "report",
        "--results-dir",
        str(tmp_path),
        "--magnitude",
        "8",
        "--reports-dir",
        str(tmp_path / "reports"),
        "--format",
        "csv",
        "--resamples",
        "50",
    )
    assert q.returncode == 0, q.stderr
    header, row = q.stdout.strip().splitlines()[:2]
    assert header.startswith("model_name,total_params_b,active_params_b,num_outliers,")
    assert row.startswith("planted_qwen3,")
    assert "## Where outliers live" in (tmp_path / "reports" / "summary.md").read_text()
    # a stdout format imports neither torch nor matplotlib (start-up in well under a second)
    # and writes nothing, also where it recomputes the figures (and the attribution section)
    # at other criteria
    files = sorted(tmp_path.rglob("*"))
    for fmt, more in itertools.product(("csv", "table", "json", "md"), ([], ["--magnitude", "8"])):
        args = ["report", "--results-dir", str(tmp_path), "--format", fmt, *more]
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, contextlib, io; from harness.cli import main\n"
                "with contextlib.redirect_stdout(io.StringIO()):\n"
                f"    rc = main({args!r})\n"
                "print(rc, 'torch' in sys.modules, 'matplotlib' in sys.modules)",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT)),
            timeout=120,
        )
        assert probe.stdout.split() == ["0", "False", "False"], probe.stdout + probe.stderr
        assert sorted(tmp_path.rglob("*")) == files


def test_models_lists_the_registry_with_params_from_configs():
    p = outliers("models", "--group", "moe")  # the configs shipped in models/configs
    assert p.returncode == 0, p.stderr
    lines = {line.split()[0]: line for line in p.stdout.splitlines()[2:] if line.strip()}
    assert set(lines) >= {
        "olmoe_1b_7b",
        "gpt_oss_20b",
        "qwen3_30b_a3b",
        "mixtral_8x7b",
        "qwen3_next_80b",
        "glm_4.5_air",
        "gpt_oss_120b",
    }
    # parameter counts come from the configs (SOURCES.md: 30.53B total, 3.04B active w/o emb.)
    assert "30.53" in lines["qwen3_30b_a3b"] and "3.04" in lines["qwen3_30b_a3b"]
    assert "no config" in lines["glm_4.5_air"]  # no config at hand: not invented


def test_preflight_refusal_exits_2_with_one_sentence():
    # 14.8B parameters in bf16 (~27.5 GiB) cannot fit one 8 GB card
    p = outliers("preflight", "qwen3_14b", "--gpus", "RTX:8")
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1
    assert "memory" in p.stderr.lower() or "GiB" in p.stderr
