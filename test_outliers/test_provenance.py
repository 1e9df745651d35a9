"""Every result says how it was made (issue 8): versions, hardware, model, weights, kernels,
data and windows; and nothing secret."""

import json

import pytest

from harness.options import AnalysisOptions
from harness.runners.local import run_model

SECRET = "hf_provenanceTestToken0123456789"
FIELDS = {
    "harness_version",
    "git_sha",
    "torch",
    "transformers",
    "cuda",
    "gpu_name",
    "gpu_count",
    "model_commit",
    "weight_format",
    "model_dtype",
    "activation_dtype",
    "attn_implementation",
    "experts_implementation",
    "kernel_path",
    "fallback",
    "dataset",
    "dataset_config",
    "dataset_revision",
    "bos",
    "windows_sha256",
}


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory, tiny_cache):
    import os

    os.environ["OUTLIERS_TINY_CACHE"] = str(tiny_cache)
    out = tmp_path_factory.mktemp("results")
    opts = AnalysisOptions(results_dir=str(out), num_seqs=4, seq_len=64, device="cpu")
    saved = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = SECRET
    try:
        result, run_dir = run_model("tiny_olmoe", opts)
    finally:
        if saved is None:
            os.environ.pop("HF_TOKEN")
        else:
            os.environ["HF_TOKEN"] = saved
    return json.loads((run_dir / "result.json").read_text()), run_dir


def test_result_json_carries_every_provenance_field(tiny_result):
    result, _ = tiny_result
    prov = result["provenance"]
    assert FIELDS <= set(prov), FIELDS - set(prov)
    assert prov["torch"] and prov["transformers"] and prov["harness_version"]
    assert prov["model_dtype"] == "float32" and prov["activation_dtype"] == "float32"
    assert prov["weight_format"] == "dense" and prov["attn_implementation"] == "sdpa"
    assert prov["experts_implementation"]  # MoE: grouped_mm / eager, as transformers chose
    assert prov["dataset"] == "builtin" and prov["dataset_revision"].startswith("python-")
    assert prov["bos"] in ("none", "each")
    assert prov["windows_sha256"] == result["data"]["windows_sha256"]
    assert len(prov["windows_sha256"]) == 16
    env = result["environment"]
    assert env["gpu_count"] == 0 and "packages" in env and env["python"]


def test_no_secret_in_a_result(tiny_result):
    _, run_dir = tiny_result
    for path in run_dir.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path
