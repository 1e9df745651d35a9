"""The pytest surface as a user meets it: selection by mark and id, and clear skips."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MOE = [
    "olmoe_1b_7b",
    "gpt_oss_20b",
    "qwen3_30b_a3b",
    "mixtral_8x7b",
    "qwen3_next_80b",
    "glm_4.5_air",
    "gpt_oss_120b",
]
DENSE = ["qwen3_0.6b", "qwen3_1.7b", "qwen3_4b", "qwen3_8b", "qwen3_14b"]
REFERENCE = [  # Dettmers' table 4 row by row, then the extra series
    "gpt2_small",
    "gpt2_medium",
    "gpt2_large",
    "gpt2_xl",
    "fairseq_dense_125m",
    "fairseq_dense_1.3b",
    "fairseq_dense_2.7b",
    "fairseq_dense_6.7b",
    "fairseq_dense_13b",
    "gpt_j_6b",
    "opt_125m",
    "opt_350m",
    "opt_1.3b",
    "opt_2.7b",
    "opt_6.7b",
    "opt_13b",
    "opt_30b",
    "opt_66b",
    "pythia_160m",
    "pythia_410m",
    "pythia_1.4b",
    "pythia_2.8b",
    "pythia_6.9b",
    "pythia_12b",
]


def pytest_run(*args, env=None):
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=full_env,
        timeout=300,
    )


def collected_ids(*args):
    p = pytest_run("--collect-only", "-q", "test_outliers/test_models.py", *args)
    assert p.returncode == 0, p.stdout + p.stderr
    return [line.split("[", 1)[1].rstrip("]") for line in p.stdout.splitlines() if "::" in line]


@pytest.mark.parametrize(
    "args,expected",
    [
        (("-m", "moe"), MOE),
        (("-m", "dense"), DENSE),
        (("-m", "reference"), REFERENCE),
        (("-k", "qwen3_0.6b"), ["qwen3_0.6b"]),
    ],
    ids=["moe", "dense", "reference", "one"],
)
def test_selection_by_mark_and_id(args, expected):
    assert collected_ids(*args) == expected


def run_qwen3_0_6b(tmp_path, *extra):
    """`pytest -k qwen3_0.6b` here (no GPU), results and reports in tmp_path."""
    return pytest_run(
        "-k",
        "qwen3_0.6b",
        *extra,
        "--results-dir",
        str(tmp_path / "r"),
        "--reports-dir",
        str(tmp_path / "rep"),
        "test_outliers/test_models.py",
    )


def test_real_model_without_gpu_is_skipped_with_one_sentence(tmp_path):
    p = run_qwen3_0_6b(tmp_path, "-rs")
    assert p.returncode == 0, p.stdout
    assert "1 skipped" in p.stdout
    assert (
        "no usable GPU for qwen3_0.6b; run it with --runpod, with --device cpu if it is small "
        "enough for this machine's memory, or on a GPU machine."
    ) in p.stdout
    assert "Traceback" not in p.stdout + p.stderr


def test_real_model_offline_without_weights_is_skipped_with_one_sentence(tmp_path):
    p = pytest_run(
        "-k",
        "qwen3_0.6b",
        "--device",
        "cpu",
        "-rs",
        "--results-dir",
        str(tmp_path / "r"),
        "test_outliers/test_models.py",
        env={"HF_HOME": str(tmp_path / "hf")},
    )
    assert p.returncode == 0, p.stdout
    assert "1 skipped" in p.stdout
    assert (
        "Qwen/Qwen3-0.6B is not in the local Hugging Face cache and the hub cannot be reached "
        "(offline)"
    ) in p.stdout
    assert "hf download Qwen/Qwen3-0.6B" in p.stdout and "--runpod" in p.stdout
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("--seq-len", "0"),
        ("--magnitude", "nan"),
        ("--sites", "bogus"),
        ("-o", "outliers_magnitude=abc"),
    ],
    ids=["seq-len", "magnitude-nan", "sites", "ini"],
)
def test_a_bad_option_value_is_a_usage_error_with_one_sentence(args):
    p = pytest_run("--collect-only", "-q", "test_outliers/test_models.py", *args)
    out = p.stdout + p.stderr
    assert p.returncode == 4, out
    assert "INTERNALERROR" not in out and "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1 and errors[0].endswith(".") and "--" in errors[0], out


def test_skip_reasons_are_printed_without_rs(tmp_path):
    p = run_qwen3_0_6b(tmp_path)
    assert p.returncode == 0, p.stdout
    assert "1 model(s) skipped" in p.stdout
    assert "qwen3_0.6b: no usable GPU for qwen3_0.6b; run it with --runpod" in p.stdout


def test_unwritable_reports_dir_is_a_usage_error_before_any_model(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    p = pytest_run("-m", "tiny", "--reports-dir", str(blocker / "reports"), "-q")
    out = p.stdout + p.stderr
    assert p.returncode == 4, out
    assert "ERROR: --reports-dir" in out and "is not writable" in out and "Traceback" not in out


def test_an_error_inside_a_model_test_is_printed_once(tmp_path):
    p = pytest_run(
        "-m",
        "tiny",
        "-k",
        "tiny_opt",
        "--seq-len",
        "4096",
        "--results-dir",
        str(tmp_path / "r"),
        "--reports-dir",
        str(tmp_path / "rep"),
    )
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "--seq-len 4096 is above this model's maximum of 2048 positions" in out
    assert "During handling of the above exception" not in out and "Traceback" not in out


def test_a_local_result_is_reused_unless_rerun(tmp_path):
    """Local runs resume as RunPod runs do: same revision, data, criteria and dtype -> the result
    is kept and named in the output; ``--rerun`` runs it."""

    def run(*extra):
        p = pytest_run(
            "-m",
            "tiny",
            "-k",
            "tiny_llama",
            "--results-dir",
            str(tmp_path / "r"),
            "--reports-dir",
            str(tmp_path / "rep"),
            *extra,
            "test_outliers/test_models.py",
        )
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout

    def written():
        return {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("result.json")}

    assert "model(s) reused" not in run()
    (first,) = written()
    before = written()
    out = run()
    assert "1 model(s) reused" in out and f"tiny_llama: kept {first.parent}" in out
    assert written() == before
    out = run("--rerun")
    assert "model(s) reused" not in out and written()[first] > before[first]
    # another dtype is another run: harness.runners.resume.same_run (test_runpod_unit) decides it
