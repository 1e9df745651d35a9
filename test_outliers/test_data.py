"""harness.data.windows: token windows from local files, the built-in corpus and the hub, against a
brute-force oracle (tokenize each document, join with EOS, slice)."""

import copy
import csv
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from harness.data.corpus import builtin_documents, corpus_fingerprint
from harness.data.windows import DataSpec, load_windows
from harness.errors import HarnessError

N, T = 4, 128

# A document whose text would merge with its neighbour's if documents were joined as text, and
# one with odd whitespace and spaces before punctuation (which "clean-up" decoding changes).
MERGE_A = "The value is set in the"
MERGE_B = "re are three  cases , see below ."
ODD = "x  =  f( a , b ) .\n\n\n\tIndented   text\u00a0with  NBSP , and 'quotes' ."


def _docs() -> list[str]:
    docs = [d for d in builtin_documents() if len(d) < 700][:24]  # ~100-250 tokens each
    return [*docs[:2], MERGE_A, MERGE_B, ODD, "", *docs[2:]]  # "" is skipped by both


def _oracle(tok, docs, num_seqs, seq_len, stride, bos):
    """Windows by the letter: each document tokenized alone, EOS between, windows sliced."""
    stream, used = [], 0
    b = 1 if bos == "each" else 0
    need = (num_seqs - 1) * (stride - b) + seq_len - b
    for doc in docs:
        ids = tok(doc, add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        if stream:
            stream.append(tok.eos_token_id)
        stream.extend(ids)
        used += 1
        if len(stream) >= need:
            break
    out = []
    for k in range(num_seqs):
        start = k * (stride - b)
        out.append([tok.bos_token_id] * b + stream[start : start + seq_len - b])
    return np.array(out, dtype=np.int64), stream, used


def _write(tmp_path, fmt: str, docs, field: str = "text"):
    if fmt == "jsonl":
        path = tmp_path / "docs.jsonl"
        with open(path, "w") as f:
            for d in docs:
                f.write(json.dumps({field: d, "meta": 1}) + "\n")
    elif fmt == "json":
        path = tmp_path / "docs.json"
        with open(path, "w") as f:
            json.dump([{field: d} for d in docs], f)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "docs.parquet"
        pq.write_table(pa.table({field: docs, "n": list(range(len(docs)))}), path)
    elif fmt == "csv":
        path = tmp_path / "docs.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([field, "n"])
            w.writerows([d, i] for i, d in enumerate(docs))
    elif fmt == "txt":  # a folder: one document per file, read in sorted path order
        path = tmp_path / "txt"
        path.mkdir()
        for i, d in enumerate(docs):
            (path / f"{i:03d}.txt").write_text(d)
    else:
        raise ValueError(fmt)
    return path


@pytest.fixture(scope="module")
def docs():
    return _docs()


@pytest.mark.parametrize("stride", [T, T // 2])
@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "txt", "csv", "json"])
def test_windows_equal_the_bruteforce_oracle(tmp_path, tiny_tokenizer, docs, fmt, stride):
    path = _write(tmp_path, fmt, docs)
    spec = DataSpec(dataset=str(path), num_seqs=N, seq_len=T, stride=stride, bos="none")
    w = load_windows(tiny_tokenizer, spec)
    want, _, used = _oracle(tiny_tokenizer, docs, N, T, stride, "none")
    assert w.ids.dtype.is_floating_point is False and tuple(w.ids.shape) == (N, T)
    np.testing.assert_array_equal(w.ids.numpy(), want)
    info = w.info
    assert info["source"] == "local" and info["config"] is None
    assert info["num_seqs"] == N and info["seq_len"] == T and info["stride"] == stride
    assert info["tokens"] == N * T
    assert info["distinct_positions"] == (N * T if stride == T else (N - 1) * stride + T)
    assert info["num_documents"] == used  # reading stopped as soon as enough tokens were there
    assert info["bos"] == "none" and info["separator"] == "eos"


def test_eos_sits_exactly_between_documents(tmp_path, tiny_tokenizer, docs):
    path = _write(tmp_path, "jsonl", docs)
    w = load_windows(tiny_tokenizer, DataSpec(dataset=str(path), num_seqs=N, seq_len=T))
    flat = w.ids.numpy().reshape(-1)  # stride T: the windows tile the stream
    lengths = [len(tiny_tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs]
    lengths = [n for n in lengths if n]
    boundaries = np.cumsum(np.array(lengths) + 1)[:-1] - 1  # index of each EOS in the stream
    boundaries = boundaries[boundaries < len(flat)]
    np.testing.assert_array_equal(np.flatnonzero(flat == tiny_tokenizer.eos_token_id), boundaries)
    assert len(boundaries) >= 3


def test_windows_overlap_by_half_at_stride_half(tmp_path, tiny_tokenizer, docs):
    path = _write(tmp_path, "jsonl", docs)
    w = load_windows(
        tiny_tokenizer, DataSpec(dataset=str(path), num_seqs=N, seq_len=T, stride=T // 2)
    )
    ids = w.ids.numpy()
    for k in range(N - 1):
        np.testing.assert_array_equal(ids[k, T // 2 :], ids[k + 1, : T // 2])


def test_stride_above_seq_len_skips_text(tmp_path, tiny_tokenizer, docs):
    path = _write(tmp_path, "jsonl", docs)
    stride = T + 37
    w = load_windows(
        tiny_tokenizer, DataSpec(dataset=str(path), num_seqs=N, seq_len=T, stride=stride)
    )
    want, stream, _ = _oracle(tiny_tokenizer, docs, N, T, stride, "none")
    np.testing.assert_array_equal(w.ids.numpy(), want)
    assert w.info["distinct_positions"] == N * T
    # distinct token ids, by the definition, from the oracle's own windows
    assert w.info["distinct_token_ids"] == len(set(want.reshape(-1).tolist()))
    np.testing.assert_array_equal(w.ids.numpy()[1], stream[stride : stride + T])


@pytest.mark.parametrize("stride", [T, T // 2])
def test_bos_each_starts_every_window_and_tiles_the_text(tmp_path, tiny_tokenizer, docs, stride):
    path = _write(tmp_path, "jsonl", docs)
    spec = DataSpec(dataset=str(path), num_seqs=N, seq_len=T, stride=stride, bos="each")
    w = load_windows(tiny_tokenizer, spec)
    ids = w.ids.numpy()
    want, stream, _ = _oracle(tiny_tokenizer, docs, N, T, stride, "each")
    np.testing.assert_array_equal(ids, want)
    assert (ids[:, 0] == tiny_tokenizer.bos_token_id).all()
    assert (ids[:, 1:] != tiny_tokenizer.bos_token_id).all()
    assert w.info["bos"] == "each"
    if stride == T:  # no gap, no overlap: the text parts are the stream's first N * (T - 1)
        np.testing.assert_array_equal(ids[:, 1:].reshape(-1), stream[: N * (T - 1)])
        assert w.info["distinct_positions"] == N * (T - 1)


def test_bos_auto_follows_the_tokenizer(tmp_path, tiny_tokenizer, bos_tokenizer, docs):
    path = _write(tmp_path, "jsonl", docs)
    spec = DataSpec(dataset=str(path), num_seqs=N, seq_len=T, bos="auto")
    plain = load_windows(tiny_tokenizer, spec)
    with_bos = load_windows(bos_tokenizer, spec)
    assert plain.info["bos"] == "none"
    assert (plain.ids != tiny_tokenizer.bos_token_id).all()
    assert with_bos.info["bos"] == "each"
    np.testing.assert_array_equal(
        with_bos.ids.numpy(), _oracle(tiny_tokenizer, docs, N, T, T, "each")[0]
    )
    # documents are tokenized without special tokens: no BOS inside the text
    assert (with_bos.ids[:, 1:] != bos_tokenizer.bos_token_id).all()
    none = load_windows(
        bos_tokenizer, DataSpec(dataset=str(path), num_seqs=N, seq_len=T, bos="none")
    )
    assert none.info["bos"] == "none" and (none.ids != bos_tokenizer.bos_token_id).all()


def test_ids_are_never_decoded_and_reencoded(tmp_path, tiny_tokenizer):
    docs = [MERGE_A, MERGE_B, ODD] * 4
    path = _write(tmp_path, "jsonl", docs)
    w = load_windows(tiny_tokenizer, DataSpec(dataset=str(path), num_seqs=2, seq_len=32))
    want, stream, _ = _oracle(tiny_tokenizer, docs, 2, 32, 32, "none")
    np.testing.assert_array_equal(w.ids.numpy(), want)
    # the original study's way (text joined by a space, re-encoded) gives other ids
    joined = " ".join(docs)
    assert tiny_tokenizer(joined, add_special_tokens=False)["input_ids"][:64] != stream[:64]
    # and so does decoding our own stream and encoding it again (documents merge at "the|re")
    text = tiny_tokenizer.decode(stream, skip_special_tokens=True)
    assert tiny_tokenizer(text, add_special_tokens=False)["input_ids"] != [
        i for i in stream if i != tiny_tokenizer.eos_token_id
    ]


def test_windows_sha256_is_stable_and_sensitive(tmp_path, tiny_tokenizer, docs):
    path = _write(tmp_path, "jsonl", docs)
    spec = DataSpec(dataset=str(path), num_seqs=N, seq_len=T)
    a, b = load_windows(tiny_tokenizer, spec), load_windows(tiny_tokenizer, spec)
    digest = hashlib.sha256(a.ids.numpy().astype("<i8").tobytes()).hexdigest()[:16]
    assert a.info["windows_sha256"] == b.info["windows_sha256"] == digest
    changed = list(docs)
    changed[1] = changed[1].replace("e", "E", 1)
    (tmp_path / "changed").mkdir()
    changed_path = _write(tmp_path / "changed", "jsonl", changed)
    other = load_windows(tiny_tokenizer, DataSpec(dataset=str(changed_path), num_seqs=N, seq_len=T))
    assert other.info["windows_sha256"] != digest
    strided = load_windows(
        tiny_tokenizer, DataSpec(dataset=str(path), num_seqs=N, seq_len=T, stride=T // 2)
    )
    assert strided.info["windows_sha256"] != digest


def test_builtin_corpus_fills_the_default_run(tiny_tokenizer):
    t0 = time.perf_counter()
    w = load_windows(
        tiny_tokenizer, DataSpec(dataset="builtin", num_seqs=16, seq_len=2048), progress=True
    )
    assert tuple(w.ids.shape) == (16, 2048)
    assert w.info["dataset"] == "builtin" and w.info["source"] == "builtin"
    assert w.info["distinct_positions"] == 16 * 2048
    assert w.info["revision"].endswith(corpus_fingerprint())
    assert w.info["corpus"]["chars"] >= 1_000_000
    assert time.perf_counter() - t0 < 10
    docs = builtin_documents()
    assert len(docs) == len(set(docs)) and min(map(len, docs)) >= 200
    # the whole corpus holds far more than the default run needs
    total = sum(len(x) for x in tiny_tokenizer(docs, add_special_tokens=False)["input_ids"])
    assert total >= 4 * 16 * 2048


def test_builtin_corpus_does_not_depend_on_what_is_imported():
    # this process has torch, transformers, datasets and pytest loaded (transformers patches
    # logging.Logger); a bare interpreter must see the same corpus
    code = "from harness.data.corpus import corpus_fingerprint; print(corpus_fingerprint())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    import transformers  # noqa: F401

    assert out.stdout.strip() == corpus_fingerprint()


# -- errors: one sentence each --------------------------------------------------------------------
def _error(tok, spec) -> str:
    with pytest.raises(HarnessError) as exc:
        load_windows(tok, spec)
    message = str(exc.value)
    assert "\n" not in message and message.endswith(".")
    return message


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        (dict(num_seqs=0), "--num-seqs"),
        (dict(num_seqs=-3), "--num-seqs"),
        (dict(seq_len=0), "--seq-len"),
        (dict(stride=0), "--stride"),
        (dict(stride=-5), "--stride"),
    ],
)
def test_non_positive_sizes_are_refused(tiny_tokenizer, kwargs, flag):
    message = _error(tiny_tokenizer, DataSpec(dataset="builtin", **kwargs))
    assert message.startswith(f"{flag} must be a positive integer")


def test_unknown_bos_policy_is_refused(tiny_tokenizer):
    assert "--bos must be one of auto, none, each" in _error(
        tiny_tokenizer, DataSpec(dataset="builtin", bos="first")
    )


def test_bos_each_needs_room_and_a_bos_token(tiny_tokenizer):
    message = _error(tiny_tokenizer, DataSpec(dataset="builtin", seq_len=1, bos="each"))
    assert "at least 2" in message
    # each of the two sizes alone: a window of no text, a step of no text
    for seq_len, stride in ((1, 3), (3, 1)):
        spec = DataSpec(dataset="builtin", seq_len=seq_len, stride=stride, bos="each")
        assert "at least 2" in _error(tiny_tokenizer, spec)
    # the smallest that works: one BOS and one text token per window, one token apart
    w = load_windows(
        tiny_tokenizer, DataSpec(dataset="builtin", num_seqs=3, seq_len=2, stride=2, bos="each")
    )
    assert w.ids.shape == (3, 2) and (w.ids[:, 0] == tiny_tokenizer.bos_token_id).all()
    # provenance names the tokenizer: its path when it has one, else its class
    assert w.info["tokenizer"] == (tiny_tokenizer.name_or_path or type(tiny_tokenizer).__name__)
    nameless = copy.deepcopy(tiny_tokenizer)
    nameless.name_or_path = ""
    spec = DataSpec(dataset="builtin", num_seqs=1, seq_len=8)
    assert load_windows(nameless, spec).info["tokenizer"] == type(tiny_tokenizer).__name__
    no_bos = copy.deepcopy(tiny_tokenizer)
    no_bos.bos_token = None
    assert "has none; use --bos none" in _error(no_bos, DataSpec(dataset="builtin", bos="each"))
    assert (
        load_windows(no_bos, DataSpec(dataset="builtin", num_seqs=1, seq_len=8)).info["bos"]
        == "none"
    )


def test_tokenizer_without_eos_is_refused(tiny_tokenizer):
    no_eos = copy.deepcopy(tiny_tokenizer)
    no_eos.eos_token = None
    assert "has no EOS token" in _error(no_eos, DataSpec(dataset="builtin"))


def test_missing_local_path_is_refused(tmp_path, tiny_tokenizer):
    message = _error(tiny_tokenizer, DataSpec(dataset=str(tmp_path / "nope" / "docs.jsonl")))
    assert "does not exist" in message and "--dataset builtin" in message
    assert "does not exist" in _error(tiny_tokenizer, DataSpec(dataset="./no/such/folder"))


def test_unsupported_file_type_is_refused(tmp_path, tiny_tokenizer):
    path = tmp_path / "docs.xml"
    path.write_text("<doc>text</doc>")
    message = _error(tiny_tokenizer, DataSpec(dataset=str(path)))
    assert "unsupported file type '.xml'" in message and ".jsonl" in message


def test_folder_without_text_files_or_with_mixed_types_is_refused(tmp_path, tiny_tokenizer, docs):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.md").write_text("hello")
    assert "holds no .jsonl" in _error(tiny_tokenizer, DataSpec(dataset=str(empty)))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _write(mixed, "jsonl", docs)
    _write(mixed, "csv", docs)
    assert "mixes file types (.csv, .jsonl)" in _error(tiny_tokenizer, DataSpec(dataset=str(mixed)))


def test_missing_text_field_names_the_fields(tmp_path, tiny_tokenizer, docs):
    path = _write(tmp_path, "jsonl", docs, field="content")
    message = _error(tiny_tokenizer, DataSpec(dataset=str(path)))
    assert "no field 'text'" in message and "content, meta" in message and "--text-field" in message
    w = load_windows(
        tiny_tokenizer, DataSpec(dataset=str(path), num_seqs=2, seq_len=16, text_field="content")
    )
    assert tuple(w.ids.shape) == (2, 16)


def test_non_text_field_is_refused(tmp_path, tiny_tokenizer):
    message = _error(
        tiny_tokenizer,
        DataSpec(dataset=str(_write(tmp_path, "parquet", ["a", "b"])), text_field="n"),
    )
    assert "holds int values, not text" in message


def test_too_little_data_says_how_much_there_is(tmp_path, tiny_tokenizer):
    docs = ["A short document.", "Another one."]
    path = _write(tmp_path, "jsonl", docs)
    have = len(_oracle(tiny_tokenizer, docs, 1, 10_000, 10_000, "none")[1])
    message = _error(tiny_tokenizer, DataSpec(dataset=str(path), num_seqs=4, seq_len=64, stride=32))
    assert message == (
        f"the dataset yields only {have} tokens, fewer than the {3 * 32 + 64} needed for 4 "
        "windows of 64 at stride 32; lower --num-seqs or --seq-len."
    )


def test_hub_dataset_offline_fails_fast_with_advice(tiny_tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    message = _error(tiny_tokenizer, DataSpec(dataset="HuggingFaceFW/fineweb-edu"))
    assert time.perf_counter() - t0 < 10
    assert "offline" in message and "--dataset builtin" in message
    assert "HuggingFaceFW/fineweb-edu" in message


def _hub_failure(monkeypatch, err, lazy=False):
    import datasets

    import harness.hub

    # the hub "answers" the quick reachability probe, then the dataset call fails
    monkeypatch.setattr(harness.hub, "hub_reachable", lambda timeout=3.0: True)

    def fake_load_dataset(*args, **kwargs):
        if not lazy:
            raise err

        def rows():
            raise err
            yield  # pragma: no cover

        return rows()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(
    "err, expected",
    [
        ("not_found", "was not found on the Hugging Face hub"),
        (
            ValueError("BuilderConfig 'sample-1XT' not found. Available: ['default']"),
            "rejected config 'sample-1XT'",
        ),
        (
            ConnectionError("Couldn't reach 'x' on the Hub (LocalEntryNotFoundError)"),
            "offline or hub unreachable",
        ),
        (TimeoutError("read timed out"), "offline or hub unreachable"),
        (ValueError("Invalid pattern: '**' can only be an entire path component"), "failed"),
    ],
)
def test_hub_exceptions_become_one_sentence(tiny_tokenizer, monkeypatch, err, expected, lazy):
    if err == "not_found":
        from datasets.exceptions import DatasetNotFoundError

        err = DatasetNotFoundError(
            "Dataset 'org/nope' doesn't exist on the Hub or cannot be accessed."
        )
    _hub_failure(monkeypatch, err, lazy)
    spec = DataSpec(dataset="org/nope", config="sample-1XT", num_seqs=1, seq_len=8)
    message = _error(tiny_tokenizer, spec)
    assert expected in message and "'org/nope'" in message


def test_malformed_local_file_is_one_sentence(tmp_path, tiny_tokenizer):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "unterminated\n')
    message = _error(tiny_tokenizer, DataSpec(dataset=str(path), num_seqs=1, seq_len=8))
    assert message.startswith(f"reading {path} failed") and "check the file's format" in message
