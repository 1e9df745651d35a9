"""Kernel rules: whether gpt-oss's MXFP4 weights and Qwen3-Next's linear attention get their fast kernels on the target."""

from __future__ import annotations

from pathlib import Path

from harness.loading.kernel_path import MXFP4_KERNEL_REPO
from harness.preflight.packages import _kernels_range, _vtuple
from harness.preflight.targets import Target
from harness.preflight.verdict import OK, REFUSE, WARN

MXFP4_BYTES_PER_PARAM = 4.25 / 8  # 4-bit values + one 8-bit scale per block of 32


TRITON_MIN_CUDA = (3, 4, 0)  # transformers' Mxfp4HfQuantizer: CUDA needs triton >= 3.4.0


MXFP4_MIN_CAPABILITY = (7, 5)


def _mxfp4_params(model) -> int:
    """Parameters MXFP4 stores packed: the fused expert weights (not their biases)."""
    return sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.rpartition(".")[0].endswith("experts") and p.dim() >= 3 and "bias" not in n
    )


def _mxfp4_path(target: Target, qcfg: dict, pkg, hub) -> tuple[bool, str]:
    """(the kernels are used, why not), as transformers' ``Mxfp4HfQuantizer`` decides."""
    if qcfg.get("dequantize"):
        return False, "its quantization_config asks for dequantization"
    if target.device == "cpu":
        return False, "on the CPU transformers dequantizes MXFP4 unless use_kernels=True"
    for g in target.gpus:
        if g.capability is not None and g.capability < MXFP4_MIN_CAPABILITY:
            return False, f"{g.name} has compute capability {g.capability[0]}.{g.capability[1]}"
    triton = pkg("triton")
    if triton is None or _vtuple(triton) < TRITON_MIN_CUDA:
        has = f"triton {triton}" if triton else "no triton"
        return False, f"MXFP4 kernels need triton >= 3.4.0 and this environment has {has}"
    lo, hi = _kernels_range()
    kernels = pkg("kernels")
    if kernels is None or not _vtuple(lo) <= _vtuple(kernels) < _vtuple(hi):
        has = f"kernels {kernels}" if kernels else "no `kernels` package"
        return False, f"MXFP4 kernels need `kernels` >={lo},<{hi} and this environment has {has}"
    if target.local and hub is not False and not _kernel_repo_cached():
        from harness.hub import hub_reachable

        if not hub_reachable():
            return False, f"{MXFP4_KERNEL_REPO} is not cached and the hub cannot be reached"
    return True, ""


def _kernel_repo_cached() -> bool:
    from huggingface_hub import constants

    folder = "models--" + MXFP4_KERNEL_REPO.replace("/", "--")
    return (Path(constants.HF_HUB_CACHE) / folder / "snapshots").is_dir()


def _mxfp4_row(report, packed: bool, why: str, dt: str) -> None:
    if packed:
        kernel_path = f"mxfp4 triton kernels ({MXFP4_KERNEL_REPO})"
        report.facts.update(weight_format="mxfp4", kernel_path=kernel_path)
        report.facts["loaded_dtype"] = f"mxfp4 + {dt}"
        report.add("weights", OK, "runs on its MXFP4 weights with the triton kernels.")
        return
    label = f"mxfp4->{dt} (dequantized)"
    report.facts.update(weight_format=label, kernel_path="dequantized experts")
    report.facts["loaded_dtype"] = f"{dt} (dequantized)"
    if report.allow_fallback:
        from transformers import Mxfp4Config

        report.labels["weight_format"] = label
        report.load_kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
        report.add(
            "weights",
            WARN,
            f"dequantized to {dt} (labelled): {why}; the experts take ~4x "
            "their MXFP4 memory and numerics differ from the kernel path.",
        )
    else:
        lo, hi = _kernels_range()  # what this transformers accepts
        report.add(
            "weights",
            REFUSE,
            f"{report.model} would be dequantized from MXFP4 to {dt} "
            f"(~4x expert memory, different numerics) because {why}; install triton>=3.4 "
            f"and kernels>={lo},<{hi} on a GPU of compute capability >= 7.5, or pass "
            "--allow-fallback to run it dequantized (labelled).",
        )


def _qwen3_next_row(report, pkg) -> bool:
    """The ``kernels`` row of Qwen3-Next; True when the slow reference path will be used."""
    dists = (("fla", "flash-linear-attention"), ("causal_conv1d", "causal-conv1d"))
    missing = [d for key, d in dists if pkg(key) is None]
    if not missing:
        report.facts["kernel_path"] = "fla + causal-conv1d"
        report.add(
            "kernels", OK, "linear attention runs on flash-linear-attention and causal-conv1d."
        )
        return False
    report.facts["kernel_path"] = "reference (slow)"
    what = " and ".join(missing)
    if report.allow_fallback:
        report.labels["kernel_path"] = "reference (slow)"
        report.add(
            "kernels",
            WARN,
            f"linear attention on the reference PyTorch path (labelled): "
            f"{what} not importable; much slower, numerics differ from the kernels.",
        )
    else:
        report.add(
            "kernels",
            REFUSE,
            f"{report.model} would run its linear attention on the slow "
            f"reference path because {what} cannot be imported; install them (pip install "
            f"{' '.join(missing)}) or pass --allow-fallback to run it labelled.",
        )
    return True
