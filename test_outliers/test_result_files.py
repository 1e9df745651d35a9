"""Result files under faults: a killed writer's leftovers are cleaned, an interrupted replace
puts the previous result back, a full disk and a racing writer end in one sentence."""

import errno
import os
import subprocess
import time

import pytest
import torch
from factories import random_ids, random_model

import harness.engine.result_files as result_mod
from harness.engine.result_files import clean_stale, find_run_dirs, read_result, write_result
from harness.errors import HarnessError
from harness.pipeline import analyze


@pytest.fixture(scope="module")
def result():
    return analyze(random_model("qwen3", torch.float32, seed=1), random_ids(2, 8, seed=2))


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_dead_writers_tmp_dir_is_removed_and_a_live_ones_kept(result, tmp_path):
    final = write_result(result, tmp_path)
    parent = final.parent
    dead = parent / f".tmp-{final.name}-{dead_pid()}-deadbeef"
    live = parent / f".tmp-{final.name}-{os.getpid()}-cafebabe"
    for d in (dead, live):
        d.mkdir()
        (d / "stats.npz").write_bytes(b"half")
        os.utime(d, (os.path.getmtime(d) - 3600,) * 2)  # killed an hour ago
    write_result(result, tmp_path)
    assert not dead.exists() and live.exists()
    assert find_run_dirs(tmp_path) == [final]


def test_an_interrupted_replace_puts_the_previous_result_back(result, tmp_path):
    final = write_result(result, tmp_path)
    want = read_result(final)
    # killed between "final -> .old" and ".tmp -> final": only .old holds the result
    old = final.parent / f".old-{final.name}-{dead_pid()}-0123abcd"
    os.rename(final, old)
    os.utime(old, (os.path.getmtime(old) - 3600,) * 2)
    assert find_run_dirs(tmp_path) == []
    clean_stale(final.parent)
    assert not old.exists() and read_result(final) == want


def test_disk_full_is_one_sentence_and_leaves_nothing(result, tmp_path, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(result_mod, "fsync_write", full)
    with pytest.raises(HarnessError, match="no space left on the device") as err:
        write_result(result, tmp_path)
    assert "Traceback" not in str(err.value) and str(err.value).endswith("--results-dir.")
    assert [p for p in tmp_path.rglob("*") if p.is_dir() and p.name.startswith(".")] == []


def test_a_writer_racing_on_the_final_rename_is_retried(result, tmp_path, monkeypatch):
    write_result(result, tmp_path)
    real, calls = os.rename, {"n": 0}

    def racing(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # the other writer put its own result in place first
            raise OSError(errno.ENOTEMPTY, "Directory not empty")
        return real(src, dst)

    monkeypatch.setattr(result_mod.os, "rename", racing)
    final = write_result(result, tmp_path)
    monkeypatch.setattr(result_mod.os, "rename", real)
    assert read_result(final).seed_compatible == result.seed_compatible
    assert [p.name for p in final.parent.iterdir()] == [final.name]


@pytest.mark.parametrize("crash_at", ["stats.npz", "result.json", "rename"])
@pytest.mark.parametrize("first", [True, False], ids=["first-write", "rewrite"])
def test_a_crash_mid_write_leaves_the_previous_result_or_nothing(
    result, tmp_path, monkeypatch, crash_at, first
):
    """Killed halfway through writing a file (half its bytes on disk) or at the final rename,
    on a first write and on a rewrite: the listing shows the previous result, complete and
    readable, or nothing; never a directory that cannot be read."""
    want = None
    if not first:
        final = write_result(result, tmp_path)
        want = read_result(final)
    real_write, real_rename = result_mod.fsync_write, os.rename

    def half_then_die(path, data):
        if path.name == crash_at:
            path.write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt
        real_write(path, data)

    def die_on_rename(src, dst):
        if ".tmp-" in str(src):
            raise KeyboardInterrupt
        real_rename(src, dst)

    if crash_at == "rename":
        monkeypatch.setattr(result_mod.os, "rename", die_on_rename)
    else:
        monkeypatch.setattr(result_mod, "fsync_write", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_result(result, tmp_path)
    monkeypatch.undo()
    listed = find_run_dirs(tmp_path)
    if first:
        assert listed == []
    else:
        assert len(listed) == 1 and read_result(listed[0]) == want
    for run in listed:
        read_result(run)  # every listed directory reads


def test_stale_means_older_than_a_day_and_only_our_own_folders(result, tmp_path):
    """A live writer's .tmp-* is removed only past one day (24 h - 10 s kept, 24 h + 10 s
    removed); a hidden folder that is not ours (.cache-*) is never touched, however old."""
    final = write_result(result, tmp_path)
    parent = final.parent
    young = parent / f".tmp-{final.name}-{os.getpid()}-aaaaaaaa"
    old = parent / f".tmp-{final.name}-{os.getpid()}-bbbbbbbb"
    other = parent / ".cache-1-cccccccc"
    now = time.time()
    for d, age in ((young, 24 * 3600 - 10), (old, 24 * 3600 + 10), (other, 30 * 24 * 3600)):
        d.mkdir()
        os.utime(d, (now - age, now - age))
    clean_stale(parent)
    assert young.exists() and not old.exists() and other.exists()


# -- schema versions ------------------------------------------------------------------------
def _as_schema_1(d: dict) -> dict:
    """A schema 2 result.json written back the way schema 1 spelled it (the renames typed
    here by hand, not read from result.py)."""
    import copy

    old = copy.deepcopy(d)
    old["schema_version"] = 1
    old["data"]["num_sequences"] = old["data"].pop("num_seqs")
    old["criteria"]["layer_fraction"] = old["criteria"].pop("layer_frac")
    old["criteria"]["seq_fraction"] = old["criteria"].pop("seq_frac")
    old["model"]["architecture"] = old["model"].pop("model_class")
    return old


def test_a_schema_1_result_is_read_with_todays_names_and_reported(result, tmp_path):
    import json

    from harness.engine.result import SCHEMA_VERSION
    from harness.reports.collect import collect

    final = write_result(result, tmp_path)
    written = json.loads((final / "result.json").read_text())
    assert written["schema_version"] == SCHEMA_VERSION == 2
    assert "num_seqs" in written["data"] and "layer_frac" in written["criteria"]
    (final / "result.json").write_text(json.dumps(_as_schema_1(written)))
    back = read_result(final)
    assert back.schema_version == 1
    assert (back.data.num_seqs, back.data.seq_len) == (2, 8)
    assert (back.criteria.layer_frac, back.criteria.seq_frac) == (0.25, 0.06)
    assert back.model.model_class == "Qwen3ForCausalLM"
    assert back.seed_compatible == result.seed_compatible and back.pooled == result.pooled
    (row,) = collect(tmp_path, resamples=0)
    assert row.num_outliers == result.seed_compatible.num_outliers and row.data["num_seqs"] == 2


def test_a_newer_schema_is_refused_in_one_sentence(result, tmp_path):
    import json

    final = write_result(result, tmp_path)
    d = json.loads((final / "result.json").read_text())
    d["schema_version"] = 99
    (final / "result.json").write_text(json.dumps(d))
    with pytest.raises(HarnessError, match="schema version 99; this harness reads 1 to 2") as e:
        read_result(final)
    assert "\n" not in str(e.value) and "upgrade the harness" in str(e.value)


def test_result_records_read_as_fields_and_as_the_json_they_are(result):
    d = result.to_dict()
    assert result.data.num_seqs == d["data"]["num_seqs"] == result.data["num_seqs"] == 2
    assert result.pooled.num_dims == d["pooled"]["num_dims"]
    # what a section holds beyond its fields survives the round trip, in place
    assert result.criteria["site_names"] == d["criteria"]["site_names"]
    assert list(d["criteria"]) == list(result.criteria)


def test_every_key_analyze_always_writes_is_a_field(result):
    """The record sections hold nothing beyond their fields for a run of ``analyze`` (what a
    loader or a data source adds is model / data detail, kept in ``extra``), and ``evaluate``
    returns the same records."""
    from harness.engine.criteria import evaluate
    from harness.engine.result import Pooled, SeedCompatible

    for name in ("criteria", "seed_compatible", "pooled", "timing"):
        record = getattr(result, name)
        assert record.extra == {}, (name, sorted(record.extra))
        assert record.absent == frozenset(), name
    figures = evaluate(result.stats, result.criteria_tuple)
    assert isinstance(figures.seed_compatible, SeedCompatible)
    assert isinstance(figures.pooled, Pooled)
    assert figures.seed_compatible == result.seed_compatible and figures.pooled == result.pooled
    assert figures["per_site"] == result.per_site == figures.per_site


def test_a_field_a_file_did_not_hold_is_not_written_back(result):
    """A result read from a file older than a field keeps its keys as they were."""
    from harness.engine.result import AnalysisResult

    d = result.to_dict()
    del d["criteria"]["site_self_check"], d["timing"]["oom_retries"]
    back = AnalysisResult.from_json(d)
    assert back.to_dict() == d
    assert "site_self_check" not in back.criteria and back.criteria.site_self_check == {}
