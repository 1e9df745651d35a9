"""The grid level of a value (how many grid magnitudes its |x| reaches) as the capture computes
it, against the definition over the real numbers: every bfloat16 and float16 value (both signs,
infinities, subnormals), float32 values around every threshold, and grids that the table of
bit patterns cannot serve (then compares)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.engine.reductions import Thresholds
from harness.engine.statistics import DEFAULT_GRID

AS_ORIGINAL = 5.984375  # the fp32 value that bf16 rounds up to 6 (the original study's test)
GRIDS = {
    "default+original": (*DEFAULT_GRID, AS_ORIGINAL),  # every float32 run
    "wide": (2.0**-12, 6.5, 1000.0, 2.0**127),
    "not dyadic": (3.0, 6.1, 7.3),  # float32: 6.1 has more than 8 significant bits
    "nine bits": (3.0, 6.0078125),  # float32: 6 + 2^-7 has 9 significant bits
}


def definition(values: np.ndarray, grid) -> np.ndarray:
    """#{m in grid: |v| >= m}, with v and m as exact binary numbers (float64 holds both)."""
    v = np.abs(values.astype(np.float64))
    return (v[:, None] >= np.asarray(grid, dtype=np.float64)[None, :]).sum(axis=1)


def every_value(dtype: torch.dtype) -> torch.Tensor:
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    x = bits.view(dtype)
    return x[~torch.isnan(x)]


def around_thresholds(grid) -> torch.Tensor:
    """float32 values a few ulps either side of every threshold, and the extremes."""
    out = [0.0, 1e-45, 1e-38, 3.4e38, float("inf")]
    for m in grid:
        t = np.float32(m)
        for _ in range(4):
            t = np.nextafter(t, np.float32(0))
        for _ in range(9):
            out += [float(t), -float(t)]
            t = np.nextafter(t, np.float32(np.inf))
    g = torch.Generator().manual_seed(0)
    rand = torch.randn(20000, generator=g) * torch.logspace(-3, 3, 20000)
    return torch.cat([torch.tensor(out, dtype=torch.float32), rand])


def path(grid, dtype) -> str:
    return "compares" if Thresholds(grid).table(torch.device("cpu"), dtype) is None else "table"


def levels(grid, x: torch.Tensor) -> np.ndarray:
    return Thresholds(grid).levels(x).numpy()


@pytest.mark.parametrize("name", list(GRIDS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_every_16_bit_value_gets_the_level_of_the_definition(name, dtype):
    x = every_value(dtype)
    got = levels(GRIDS[name], x)
    want = definition(x.float().numpy(), GRIDS[name])
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (name, x[bad[:5]].tolist(), got[bad[:5]], want[bad[:5]])


@pytest.mark.parametrize("name", list(GRIDS))
def test_float32_values_around_every_threshold_get_the_level_of_the_definition(name):
    x = around_thresholds(GRIDS[name])
    got = levels(GRIDS[name], x)
    want = definition(x.numpy(), GRIDS[name])
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (name, x[bad[:5]].tolist(), got[bad[:5]], want[bad[:5]])


def test_the_table_serves_the_usual_grids_and_compares_serve_the_others():
    """Both ways of computing a level are exercised above: the table of bit patterns where the
    float32 thresholds have at most 8 significant bits (and always in 16-bit dtypes), one
    compare per magnitude elsewhere."""
    kinds = {name: path(grid, torch.float32) for name, grid in GRIDS.items()}
    assert kinds == {
        "default+original": "table",
        "wide": "table",
        "not dyadic": "compares",
        "nine bits": "compares",
    }
    for dtype in (torch.bfloat16, torch.float16):
        assert {path(grid, dtype) for grid in GRIDS.values()} == {"table"}
