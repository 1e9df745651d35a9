"""The RunPod pieces that need no pod: options, plan, resume check, benchmark merge, error
classification, credentials, the shipped file list, the pod-side environment parsing."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from harness.models import REGISTRY, select
from harness.models.registry import ModelEntry
from runpod import error as rp_error

from harness.errors import HarnessError
from harness.runners.resume import same_run
from harness.runners.runpod.api import classify
from harness.runners.runpod.bring_home import merge_benchmark_json, pick_benchmark
from harness.runners.runpod.credentials import Redactor, load_credentials
from harness.runners.runpod.options import (
    RunpodOptions,
    add_runpod_options,
    options_from_config,
    strip_forwarded_args,
)
from harness.runners.runpod.plan import make_plans, plan_rows, plan_table
from harness.runners.runpod.podside import _parse_exports, _parse_nul
from harness.runners.runpod.ship import tree_files

REPO = Path(__file__).resolve().parents[1]


def test_our_options_and_pod_owned_paths_are_not_forwarded():
    args = [
        "-k",
        "qwen3_0.6b",
        "--runpod",
        "--runpod-gpu",
        "NVIDIA L4",
        "--runpod-cloud=ALL",
        "--rerun",
        "-m",
        "moe",
        "--results-dir",
        "out",
        "--benchmark-json=b.json",
        "--runpod-max-minutes",
        "30",
        "--num-seqs",
        "16",
        "--runpod-keep",
    ]
    assert strip_forwarded_args(args) == ["-k", "qwen3_0.6b", "-m", "moe", "--num-seqs", "16"]


def test_options_are_declared_once_for_pytest_and_argparse():
    parser = argparse.ArgumentParser()
    add_runpod_options(parser)
    ns = parser.parse_args(
        [
            "--runpod",
            "--runpod-gpu",
            "A,B",
            "--runpod-cloud",
            "ALL",
            "--runpod-max-minutes",
            "90",
            "--runpod-parallel",
            "2",
            "--rerun",
        ]
    )
    opts = options_from_config(ns)
    assert opts.enabled and opts.gpu == ("A", "B") and opts.cloud == "ALL"
    assert opts.max_minutes == 90 and opts.parallel == 2 and opts.rerun
    assert opts.image.startswith("runpod/pytorch:")


RESULT = {
    "model": {
        "id": "m",
        "source": {"hub_id": "org/m", "revision": "abc"},
        "requested_dtype": "bfloat16",
    },
    "data": {
        "dataset": "d",
        "num_seqs": 16,
        "seq_len": 2048,
        "stride": 2048,
        "bos": "none",
        "windows_sha256": "1234",
    },
    "criteria": {
        "sites": "ln",
        "magnitude": 6.0,
        "layer_frac": 0.25,
        "seq_frac": 0.06,
        "site_names": ["a", "b"],
    },
}


def _changed(path: str, value):
    out = json.loads(json.dumps(RESULT))
    *parents, last = path.split(".")
    d = out
    for p in parents:
        d = d[p]
    if value is None:
        del d[last]
    else:
        d[last] = value
    return out


@pytest.mark.parametrize(
    ("path", "value", "same"),
    [
        ("model.source.revision", "def", False),
        ("model.source.revision", None, True),  # an unpinned plan accepts the recorded revision
        ("model.id", "other", False),
        ("data.stride", 1024, False),
        ("data.windows_sha256", "9999", False),
        ("data.windows_sha256", None, True),  # a plan does not know its hash yet
        ("data.bos", "added", False),
        ("criteria.magnitude", 4.0, False),
        ("criteria.magnitude", 6, True),
        ("criteria.sites", "all", False),
        ("criteria.site_names", None, True),
        ("model.requested_dtype", "float32", False),
        ("model.requested_dtype", None, True),
    ],
)
def test_same_run_compares_revision_data_and_criteria(path, value, same):
    assert same_run(RESULT, _changed(path, value)) is same
    assert same_run(_changed(path, value), RESULT) is same


@pytest.mark.parametrize(
    ("wants", "has", "reused"),
    [
        ([], [], True),
        (["attribution"], ["attribution"], True),
        (["attribution"], [], False),  # a --no-attribution result does not answer a full run
        ([], ["attribution", "perplexity"], True),  # extra sections do no harm
        (["attribution", "perplexity"], ["attribution"], False),
    ],
)
def test_a_kept_result_holds_every_section_the_run_asks_for(tmp_path, wants, has, reused):
    from harness.engine.result import SCHEMA_VERSION
    from harness.runners.resume import covers, find_existing

    result = json.loads(json.dumps(RESULT)) | {k: {"x": 1} for k in has}
    expected = _changed("data.windows_sha256", None) | {"wants": wants}
    assert covers(result, expected) is reused
    run = tmp_path / "m" / "run"
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps(result | {"schema_version": SCHEMA_VERSION}))
    assert find_existing(tmp_path, expected) is None  # no stats.npz: not a complete result
    (run / "stats.npz").write_bytes(b"")
    assert find_existing(tmp_path, expected) == (run if reused else None)
    (run / "result.json").write_text(json.dumps(result | {"schema_version": SCHEMA_VERSION + 1}))
    assert find_existing(tmp_path, expected) is None  # another schema is never kept


def test_remote_benchmark_records_replace_local_ones_of_the_same_test():
    out = {
        "benchmarks": [
            {"fullname": "t.py::test[m1]", "stats": {"mean": 1}},
            {"fullname": "t.py::test[m2]", "stats": {"mean": 2}},
        ]
    }
    remote = {
        "fullname": "t.py::test[m1]",
        "stats": {"mean": 100},
        "extra_info": {"where": "runpod:p1"},
    }
    merge_benchmark_json(out, [remote, None])
    names = [(b["fullname"], b["stats"]["mean"]) for b in out["benchmarks"]]
    assert names == [("t.py::test[m2]", 2), ("t.py::test[m1]", 100)]
    remote["stats"]["mean"] = 0
    assert out["benchmarks"][1]["stats"]["mean"] == 100  # a copy was merged
    recs = [{"fullname": "t.py::test[qwen3_0.6b]"}, {"fullname": "t.py::test[qwen3_8b]"}]
    assert pick_benchmark(recs, "qwen3_8b") is recs[1]
    assert pick_benchmark(recs[:1], "other") is recs[0]
    assert pick_benchmark(recs, "other") is None


def test_the_plan_follows_the_registry_gpu_plans():
    moe = select("moe")
    plans = make_plans(moe, RunpodOptions(enabled=True))
    by = {p.label: p for p in plans}
    assert set(by) == {e.id for e in moe}
    assert by["gpt_oss_120b"].gpu_types[0] == "NVIDIA H100 80GB HBM3"
    assert (by["gpt_oss_120b"].count, by["gpt_oss_120b"].disk_gb) == (2, 250)
    assert by["glm_4.5_air"].count >= 3  # 106B in bf16
    for p in plans:  # default deadline: twice the estimate
        assert p.max_minutes >= 2 * p.estimate.total_s / 60
    fixed = make_plans(moe[:1], RunpodOptions(enabled=True, max_minutes=30, gpu=("X", "Y")))
    assert fixed[0].max_minutes == 30 and fixed[0].gpu_types == ("X", "Y")


def test_pack_puts_small_dense_models_on_one_pod():
    dense = [REGISTRY[i] for i in ("qwen3_0.6b", "qwen3_8b", "opt_125m", "qwen3_14b")]
    plans = make_plans(dense, RunpodOptions(enabled=True, pack=True))
    packed = [p for p in plans if len(p.entries) > 1]
    assert len(packed) == 1 and {e.id for e in packed[0].entries} >= {"qwen3_0.6b", "opt_125m"}
    assert all(len(p.entries) == 1 for p in make_plans(dense, RunpodOptions(enabled=True)))


def test_the_rented_plan_is_preflights_memory_model():
    """One sizing model: the plan a sweep rents for Qwen3-30B-A3B (no plan in the registry) is
    the smallest of the GPU menu on which preflight's memory check passes, and preflight refuses
    the menu's next smaller plan."""
    from harness.models.registry import GpuPlan

    from harness.preflight.checks import preflight
    from harness.preflight.targets import plan_target

    entry = REGISTRY["qwen3_30b_a3b"]
    assert entry.gpu is None
    (plan,) = make_plans([entry], RunpodOptions(enabled=True))
    rented = plan_target(GpuPlan(plan.gpu_types, plan.count, plan.disk_gb))
    assert preflight(entry, gpus=rented, hub=False).row("memory").status == "ok"
    smaller = (
        GpuPlan(("NVIDIA RTX A6000",), 1)
        if plan.count == 1
        else GpuPlan(plan.gpu_types, plan.count - 1)
    )
    assert preflight(entry, gpus=plan_target(smaller), hub=False).row("memory").status != "ok"


def test_a_model_without_a_config_at_hand_gets_no_guessed_plan(monkeypatch):
    monkeypatch.delenv("OUTLIERS_CONFIGS_DIR", raising=False)
    with pytest.raises(
        HarnessError, match=r"cannot size the GPUs of qwen3_4b .*OUTLIERS_CONFIGS_DIR"
    ):
        make_plans([REGISTRY["qwen3_4b"]], RunpodOptions(enabled=True))


def test_plan_table_has_prices_estimates_and_a_total():
    plans = make_plans(select("moe")[:2], RunpodOptions(enabled=True))
    rows = plan_rows(plans)
    rows[0]["usd_per_hour"], rows[0]["est_usd"] = 1.5, 3.0
    text = plan_table(rows)
    assert "$/h" in text and "est. $" in text and "1.50" in text
    total = next(line for line in text.splitlines() if line.startswith("| total"))
    assert "1.50 (partial)" in total and "3.00 (partial)" in total
    # no API key: no price at all, so the totals are unknown, not 0.00
    total = next(line for line in plan_table(plan_rows(plans)).splitlines() if "| total" in line)
    cells = [c.strip() for c in total.strip("|").split("|")]
    assert cells[3] == cells[5] == "n/a" and "0.00" not in total


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (
            rp_error.QueryError(
                "There are no longer any instances available with the requested "
                "specifications. Please refresh and try again.",
                "q",
            ),
            "capacity",
        ),
        (rp_error.QueryError("Something went wrong. Please try again later.", "q"), "retry"),
        (rp_error.QueryError("Too Many Requests", "q"), "retry"),
        (requests.exceptions.JSONDecodeError("x", "<html>", 0), "retry"),
        (requests.exceptions.ConnectionError("refused"), "retry"),
        (KeyError("data"), "shape"),  # the SDK met an answer it does not know: not retried
        (TypeError("'NoneType' object is not subscriptable"), "shape"),
        (rp_error.AuthenticationError("Unauthorized"), "auth"),
        (rp_error.QueryError("pod not found", "q"), "notfound"),
        (rp_error.QueryError("Invalid image name", "q"), "fatal"),
        (ValueError("No GPU found with the specified ID"), "capacity"),
    ],
)
def test_api_errors_are_classified(err, kind):
    assert classify(err) == kind


def test_missing_credentials_are_one_sentence_before_any_pod(tmp_path):
    with pytest.raises(HarnessError, match="RUNPOD_API_KEY is not set") as e:
        load_credentials(environ={}, dotenv_path=tmp_path / "none")
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith(".")
    with pytest.raises(HarnessError, match="SSH key .* not found"):
        load_credentials(
            environ={"RUNPOD_API_KEY": "k" * 8, "SSH_KEY_PATH": str(tmp_path / "nokey")},
            dotenv_path=tmp_path / "none",
        )
    with pytest.raises(HarnessError, match="gated and HF_TOKEN is not set"):
        load_credentials(
            environ={"RUNPOD_API_KEY": "k" * 8},
            need_ssh=False,
            need_hf_for=["llama"],
            dotenv_path=tmp_path / "none",
        )


def test_credentials_come_from_dotenv_and_never_show(tmp_path):
    dot = tmp_path / ".env"
    dot.write_text("RUNPOD_API_KEY=rpa_secret_from_dotenv\nHF_TOKEN=hf_secret_dotenv\n")
    creds = load_credentials(environ={}, need_ssh=False, dotenv_path=dot)
    assert creds.api_key == "rpa_secret_from_dotenv" and creds.hf_token == "hf_secret_dotenv"
    assert "secret" not in repr(creds)
    env_wins = load_credentials(
        environ={"RUNPOD_API_KEY": "rpa_from_env"}, need_ssh=False, dotenv_path=dot
    )
    assert env_wins.api_key == "rpa_from_env"
    red = Redactor(*creds.secrets())
    assert red("key rpa_secret_from_dotenv tok hf_secret_dotenv") == "key *** tok ***"


def test_the_shipped_tree_is_tracked_files_plus_what_the_user_lists(tmp_path):
    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("ignored.txt\n.venv/\n")
    for name in (
        "tracked.py",
        "ignored.txt",
        "untracked.py",
        ".venv/lib.py",
        ".env",
        "results/m/r/result.json",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    git("add", ".gitignore", "tracked.py")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-m", "x")
    (tmp_path / "extra" / "data.json").parent.mkdir()
    (tmp_path / "extra" / "data.json").write_text("{}")
    files = tree_files(tmp_path, exclude=[tmp_path / "results"])
    assert files == [".gitignore", "tracked.py"]  # a stray untracked file stays here
    files = tree_files(tmp_path, exclude=[tmp_path / "results"], include=("untracked.py", "extra"))
    assert files == [".gitignore", "extra/data.json", "tracked.py", "untracked.py"]
    # what is asked for still never ships credentials, ignored files or results
    assert tree_files(tmp_path, include=(".env", "ignored.txt")) == [".gitignore", "tracked.py"]


def test_the_pod_environment_is_read_from_the_container_files():
    assert _parse_nul(b"RUNPOD_POD_ID=abc\0HF_TOKEN=x=y\0\0") == {
        "RUNPOD_POD_ID": "abc",
        "HF_TOKEN": "x=y",
    }
    text = 'export RUNPOD_POD_ID="abc"\nexport RUNPOD_API_KEY="k1"\nexport PATH="/bin"\n'
    assert _parse_exports(text) == {"RUNPOD_POD_ID": "abc", "RUNPOD_API_KEY": "k1", "PATH": "/bin"}


def test_podside_uses_only_the_standard_library():
    import ast

    src = Path(__file__).parents[1] / "harness" / "runners" / "runpod" / "podside.py"
    tree = ast.parse(src.read_text())
    mods = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    mods |= {
        n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
    }
    import sys

    assert mods <= set(sys.stdlib_module_names) | {"__future__"}, mods


def test_pods_install_only_the_extras_their_models_need():
    import tomllib

    from harness.runners.runpod.lifecycle import pod_build_with_torch, pod_extras

    assert pod_extras([REGISTRY["gpt_oss_20b"]]) == "mxfp4"
    assert pod_build_with_torch("mxfp4") == []  # gpt-oss pods never build causal-conv1d
    assert pod_extras([REGISTRY["qwen3_next_80b"]]) == "linear-attention"
    assert pod_build_with_torch("linear-attention") == ["causal-conv1d"]
    assert pod_extras([REGISTRY["olmoe_1b_7b"], REGISTRY["qwen3_8b"]]) == ""
    # the extras exist in pyproject.toml, and none holds a package built against torch
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for name in ("mxfp4", "linear-attention"):
        assert extras[name] and not any("causal-conv1d" in r for r in extras[name])
    # the MXFP4 kernels' range comes with transformers (it moved from 0.18 to 0.19 in 5.25)
    for name in ("mxfp4", "gpu"):
        assert "transformers[kernels]" in extras[name]
        assert not [r for r in extras[name] if r.startswith("kernels")]


def test_the_install_constraints_keep_the_image_torch_triton_and_cuda_libraries(tmp_path):
    from harness.runners.runpod import podside

    freeze = "\n".join(
        [
            "torch==2.8.0+cu128",
            "triton==3.4.0",
            "nvidia-cublas-cu12==12.8.4.1",
            "nvidia_cudnn_cu12==9.10.2.21",
            "numpy==2.1.2",
            "torchvision==0.23.0+cu128",
            "-e git+https://x/y.git@abc#egg=thing",
            "mypkg @ file:///tmp/mypkg",
        ]
    )
    assert podside.constraints(freeze) == [
        "torch==2.8.0+cu128",
        "triton==3.4.0",
        "nvidia-cublas-cu12==12.8.4.1",
        "nvidia_cudnn_cu12==9.10.2.21",
        "torchvision==0.23.0+cu128",
    ]
    spec = {"extras": "linear-attention", "build_with_torch": ["causal-conv1d"]}
    cmds = podside.install_commands(str(tmp_path), spec, dict(os.environ))
    pinned = (tmp_path / "constraints.txt").read_text()
    assert f"torch=={importlib.metadata.version('torch')}" in pinned  # this python's own torch
    first, second = cmds
    assert first[-2:] == ["-e", ".[linear-attention]"] and "-c" in first
    assert "causal-conv1d" not in first  # never built in an isolated environment
    assert second[-1] == "causal-conv1d" and "--no-build-isolation" in second and "-c" in second


def test_the_kill_switch_survives_the_sdk_and_ends_the_pod_at_an_absolute_time():
    import base64
    import re

    from runpod.api.mutations.pods import generate_pod_deployment_mutation

    from harness.runners.runpod import killswitch

    args = killswitch.docker_args(1_900_000_000, "terminate")
    # the SDK pastes docker_args between double quotes, unescaped
    assert not set(args) & set('"\\\n')
    q = generate_pod_deployment_mutation("n", "img", "NVIDIA L4", docker_args=args)
    pasted = re.search(r'dockerArgs: "([^"]*)"', q).group(1)
    assert pasted == args and killswitch.deadline_of(pasted) == 1_900_000_000
    script = base64.b64decode(re.search(r"echo (\S+) \|", args).group(1)).decode()
    assert "DEADLINE=1900000000" in script and "podTerminate" in script
    assert "exec /start.sh" in script  # then the image's own start (sshd)
    with pytest.raises(ValueError):
        killswitch.script(1.0, "pause")


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404", ["12.8", "12.9", "13.0"]),
        ("runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04", ["12.4", "12.5"]),
        ("runpod/pytorch:0.7.0-dev-cu1241-torch240-ubuntu2004", ["12.4", "12.5"]),
        ("myorg/custom:latest", None),
    ],
)
def test_pods_ask_for_hosts_whose_cuda_driver_runs_the_image(image, allowed):
    from harness.runners.runpod.plan import allowed_cuda_versions

    got = allowed_cuda_versions(image)
    if allowed is None:
        assert got is None
    else:
        assert got[: len(allowed)] == allowed and "12.3" not in got and "11.8" not in got


def test_the_default_deadline_has_a_floor_and_a_volume_does_not_size_the_disk():
    from harness.models.registry import SMALL_24, GpuPlan

    from harness.runners.runpod.plan import MIN_DEADLINE_MINUTES, make_plans

    tiny = ModelEntry(
        "fake_a", "tiny:fake_a", "tiny", dtype="float32", gpu=GpuPlan(SMALL_24, 1, 50)
    )
    (p,) = make_plans([tiny], RunpodOptions(enabled=True))
    assert p.max_minutes == MIN_DEADLINE_MINUTES == 30  # the estimate alone gives 16
    (p,) = make_plans([tiny], RunpodOptions(enabled=True, max_minutes=7))
    assert p.max_minutes == 7  # the user's own value is taken as it is
    big = REGISTRY["qwen3_30b_a3b"]
    (plain,) = make_plans([big], RunpodOptions(enabled=True))
    (vol,) = make_plans([big], RunpodOptions(enabled=True, volume="vol1"))
    assert plain.disk_gb > 60 and vol.disk_gb <= 40
    # vCPUs and RAM asked for each GPU (the SDK's defaults are 1 vCPU, 1 GB)
    assert plain.vcpus >= 4 * plain.count and plain.memory_gb >= 16 * plain.count


@pytest.mark.parametrize(
    ("files", "kwargs", "reason", "action"),
    [
        ({}, {"start_grace": 0.2}, "no job was started", "terminate"),
        (
            {"job.pid": "999999999", "state.json": '{"phase": "done"}', "fetched": ""},
            {},
            "results were fetched",
            "terminate",
        ),
        (
            {"job.pid": "999999999", "state.json": '{"phase": "done"}'},
            {"grace": 0.2},
            "not fetched within the grace",
            "terminate",
        ),
        (
            {"job.pid": str(os.getpid()), "state.json": '{"phase": "run m"}'},
            {"deadline_in": 0.3, "on_deadline": "stop"},
            "deadline passed",
            "stop",
        ),
    ],
)
def test_the_pod_watchdog_stops_its_pod_for_the_right_reason(
    tmp_path, monkeypatch, files, kwargs, reason, action
):
    from harness.runners.runpod import podside

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    calls = []
    monkeypatch.setattr(
        podside, "stop_self", lambda act, log, last_resort=False: calls.append(act) or True
    )
    args = {
        "deadline_in": 60.0,
        "grace": 60.0,
        "poll": 0.02,
        "on_end": "terminate",
        "on_deadline": "terminate",
        "start_grace": 60.0,
        **kwargs,
    }
    assert podside.watchdog(str(tmp_path), **args) == 0
    assert calls == [action]
    assert reason in (tmp_path / "watchdog.log").read_text()


def test_the_pod_python_is_the_one_that_imports_torch(tmp_path):
    """Newer images put a system python3 without torch first on PATH."""
    from harness.runners.runpod.lifecycle import FIND_PYTHON, _remote

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "python3").write_text("#!/bin/sh\nexit 1\n")  # a python3 that cannot import torch
    (bin_ / "python3").chmod(0o755)
    (bin_ / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # has torch
    (bin_ / "python").chmod(0o755)
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "OUTLIERS_POD_ROOT": str(tmp_path / "ws")}
    first = _remote("run1") + FIND_PYTHON + 'echo "$PY"'
    got = subprocess.run(["bash", "-c", first], env=env, capture_output=True, text=True)
    assert got.stdout.strip() == "python", got.stderr
    # later commands read it back without probing again
    later = subprocess.run(
        ["bash", "-c", _remote("run1") + 'echo "$PY"'], env=env, capture_output=True, text=True
    )
    assert later.stdout.strip() == "python"
