"""The "model test" the fake pods run: writes a result folder like the harness does.

``--fake-mode`` is a comma-separated program: ``sleep:S`` (print a progress line every 0.1 s for
S seconds), ``fail`` (the test fails), ``crash`` (the pytest process dies hard), ``ok`` (write the
result). Not collected locally (its name does not match test_*.py); the pods get it by path.
"""

import json
import os
import shutil
import time
import uuid
from pathlib import Path


def write_result(results_dir: str, model: str) -> Path:
    from harness.engine.result_files import run_dir_name

    result = {
        "schema_version": 1,
        "model": {"id": model, "source": {"hub_id": f"tiny:{model}", "revision": "rev1"}},
        "data": {
            "dataset": "fake/corpus",
            "num_sequences": 2,
            "seq_len": 8,
            "stride": 8,
            "bos": "none",
            "windows_sha256": "0123456789abcdef",
        },
        "criteria": {"sites": "ln", "magnitude": 6.0, "layer_fraction": 0.25, "seq_fraction": 0.06},
        "seed_compatible": {"num_outliers": 3},
        "pooled": {},
        "per_site": [],
        "timing": {},
        "environment": {"host": os.uname().nodename},
    }
    parent = Path(results_dir) / model
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / run_dir_name(result)
    tmp = parent / f".tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    (tmp / "result.json").write_text(json.dumps(result, indent=1))
    (tmp / "stats.npz").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip archive
    if final.exists():  # a rerun replaces the older folder
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


def test_fake_model(request, benchmark):
    cfg = request.config
    model = cfg.getoption("fake_model")
    mode = cfg.getoption("fake_mode")
    results = cfg.getoption("results_dir")

    def work():
        for part in mode.split(","):
            if part.startswith("sleep:"):
                until = time.monotonic() + float(part[6:])
                i = 0
                while time.monotonic() < until:
                    i += 1
                    print(f"{model}: capturing batch {i}", flush=True)
                    time.sleep(0.1)
            elif part == "fail":
                raise AssertionError(f"{model}: simulated failure")
            elif part == "crash":
                print(f"{model}: simulated hard crash", flush=True)
                os._exit(137)
        print(f"{model}: wrote {write_result(results, model)}", flush=True)

    benchmark.pedantic(work, rounds=1, iterations=1)
