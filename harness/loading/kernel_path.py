"""After loading: the path transformers really took (MXFP4 kernels or dequantised weights, linear-attention kernels or the torch fallback), recorded in the result."""

from __future__ import annotations

import sys


# -- after loading: the path transformers really took -------------------------------------------
def _closure_var(fn, name: str):
    code = getattr(fn, "__code__", None)
    if code is None or name not in code.co_freevars:
        return None
    return fn.__closure__[code.co_freevars.index(name)].cell_contents


def _uses_package(fn) -> bool | None:
    """For a function wrapped by transformers' ``use_kernel_func_from_hub_with_fallback``: whether
    the package (not the PyTorch fallback) was bound when the modeling module was imported."""
    for _ in range(4):  # where `kernels` is installed, its hub wrapper holds the function
        inner = getattr(fn, "__wrapped__", None) or _closure_var(
            getattr(type(fn), "forward", None), "func"
        )
        if inner is None or _closure_var(fn, "is_new_implementation") is not None:
            break
        fn = inner  # kernels >= 0.19: an nn.Module whose forward calls the decorated function
    flag = _closure_var(fn, "is_new_implementation")
    return None if flag is None else bool(flag)


def kernel_path_of(model) -> dict:
    """Weight format, kernel path and experts implementation of a loaded model, read from the
    modules transformers installed, not from what was asked for."""
    cfg = model.config
    q = getattr(cfg, "quantization_config", None)
    q = q.to_dict() if hasattr(q, "to_dict") else dict(q or {})
    dtype = _dtype_name(next(model.parameters()).dtype)
    experts = getattr(cfg, "_experts_implementation", None)
    out = {"weight_format": "dense", "kernel_path": "torch", "experts_implementation": experts}
    if q.get("quant_method") == "mxfp4":
        if any(type(m).__name__ == "Mxfp4GptOssExperts" for m in model.modules()):
            out.update(
                weight_format="mxfp4",
                experts_implementation="mxfp4 triton (matmul_ogs)",
                kernel_path=f"mxfp4 triton kernels ({MXFP4_KERNEL_REPO})",
            )
        else:
            out.update(
                weight_format=f"mxfp4->{dtype} (dequantized)", kernel_path="dequantized experts"
            )
    elif q.get("quant_method"):
        out["weight_format"] = str(q["quant_method"])
    if getattr(cfg, "model_type", None) == "qwen3_next":
        module = sys.modules.get(type(model).__module__)
        names = ("causal_conv1d_fn", "torch_chunk_gated_delta_rule")
        flags = [_uses_package(getattr(module, n, None)) for n in names]
        if all(f is True for f in flags):
            out["kernel_path"] = "fla + causal-conv1d"
        elif any(f is False for f in flags):
            out["kernel_path"] = "reference (slow)"
    return out


MXFP4_KERNEL_REPO = "kernels-community/gpt-oss-triton-kernels"


def _dtype_name(dt) -> str:
    return str(dt).replace("torch.", "")
