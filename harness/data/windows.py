"""Token windows [N, T] from a text corpus, made the way METHOD.md (section 4) asks.

Sources (``DataSpec.dataset``):

- a Hugging Face hub dataset id (default ``HuggingFaceFW/fineweb-edu``, config ``sample-10BT``),
  streamed with ``datasets.load_dataset(..., streaming=True)``: only the first documents are read;
- a local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.txt`` / ``.csv`` file, or a folder of files of
  one such type (read recursively, in sorted path order), through ``datasets`` as well; a ``.txt``
  file is ONE document (``sample_by="document"``), the other types one document per row;
- ``"builtin"``: the offline corpus of ``harness.data.corpus`` (Python's own documentation).

How the windows are made:

1. documents are tokenized one by one, WITHOUT special tokens (empty documents are skipped);
2. their ids are joined with the tokenizer's EOS id BETWEEN documents (a separator, so no text
   of two documents merges into one token); ids are never decoded and re-encoded;
3. the stream is cut into N windows: window k holds the stream tokens
   ``[k * s, k * s + W)``, where W = T text tokens and s = stride, or, with a BOS policy of
   ``each``, W = T - 1 and s = stride - 1 (the BOS slot is one of the window's positions, so
   ``stride = seq_len`` still tiles the text without gaps or overlap). ``stride < seq_len`` makes
   windows overlap (``seq_len // 2`` reproduces the original study); ``stride > seq_len`` is
   allowed and skips ``stride - seq_len`` tokens between windows;
4. reading stops as soon as the stream holds ``(N - 1) * s + W`` tokens.

BOS policy: ``none`` (no BOS), ``each`` (every window starts with BOS), ``auto`` (``each`` when the
tokenizer adds a BOS by itself, as Llama's does, else ``none``); ``Windows.info["bos"]`` records
the resolved policy. Every failure a user can cause raises ``HarnessError`` with one sentence.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.errors import HarnessError

LOCAL_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".txt": "text",
    ".csv": "csv",
}
BOS_POLICIES = ("auto", "none", "each")
BUILTIN = "builtin"


@dataclass(frozen=True)
class DataSpec:
    dataset: str = "HuggingFaceFW/fineweb-edu"
    config: str | None = "sample-10BT"  # hub datasets only
    split: str = "train"  # hub datasets only; local files are read whole
    num_seqs: int = 16
    seq_len: int = 2048
    stride: int | None = None  # None = seq_len (no overlap); seq_len // 2 = the original study
    bos: str = "auto"  # auto | none | each
    text_field: str = "text"
    revision: str | None = None  # hub datasets only: a commit, tag or branch


@dataclass
class Windows:
    ids: torch.Tensor  # [N, T] int64
    info: dict


def tokenizer_sha256(tokenizer) -> str | None:
    """A hash of the tokenizer's vocabulary and rules: equal hashes, equal token ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    return hashlib.sha256(backend.to_str().encode()).hexdigest()[:16]


def windows_sha256(ids: torch.Tensor | np.ndarray) -> str:
    """First 16 hex digits of the SHA-256 of the ids as little-endian int64 bytes."""
    arr = ids.numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    return hashlib.sha256(np.ascontiguousarray(arr.astype("<i8")).tobytes()).hexdigest()[:16]


# -- spec checks --------------------------------------------------------------------------------
def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise HarnessError(f"--{name} must be a positive integer (got {value!r}).")


def _resolve_bos(tokenizer, policy: str) -> str:
    if policy not in BOS_POLICIES:
        raise HarnessError(f"--bos must be one of {', '.join(BOS_POLICIES)} (got {policy!r}).")
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if policy == "auto":
        if bos_id is None:
            return "none"
        ids = tokenizer("a")["input_ids"]
        return "each" if len(ids) > 0 and ids[0] == bos_id else "none"
    if policy == "each" and bos_id is None:
        raise HarnessError(
            "--bos each needs a BOS token but this tokenizer has none; use --bos none or auto."
        )
    return policy


# -- document sources ---------------------------------------------------------------------------
def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", "\\"))
        or name.count("/") > 1
        or Path(name).suffix.lower() in LOCAL_BUILDERS
    )


def _local_files(path: Path) -> tuple[str, list[str]]:
    """(datasets builder name, sorted files) for a local file or folder."""
    if path.is_file():
        ext = path.suffix.lower()
        if ext not in LOCAL_BUILDERS:
            raise HarnessError(
                f"unsupported file type {ext or '(none)'!r} for {path}; use a .jsonl, .json, "
                ".parquet, .txt or .csv file, or a folder of them."
            )
        return LOCAL_BUILDERS[ext], [str(path)]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in LOCAL_BUILDERS)
    if not files:
        raise HarnessError(
            f"the folder {path} holds no .jsonl, .json, .parquet, .txt or .csv files; put the "
            "text there or pass a file."
        )
    builders = {LOCAL_BUILDERS[p.suffix.lower()] for p in files}
    if len(builders) > 1:
        exts = ", ".join(sorted({p.suffix.lower() for p in files}))
        raise HarnessError(
            f"the folder {path} mixes file types ({exts}); keep one type per folder or pass a file."
        )
    return builders.pop(), [str(p) for p in files]


def _hub_error(spec: DataSpec, err: BaseException) -> HarnessError:
    """Translate a datasets / huggingface_hub exception into one sentence."""
    name = type(err).__name__
    text = " ".join(str(err).split())
    not_found = "doesn't exist on the hub" in text.lower() or (
        "not found" in text.lower() and "config" not in text.lower()
    )
    if name in ("DatasetNotFoundError", "RepositoryNotFoundError", "GatedRepoError") or not_found:
        return HarnessError(
            f"dataset {spec.dataset!r} was not found on the Hugging Face hub (or is gated and you "
            "are not logged in) and no local file or folder has that name; check the id, run "
            "`hf auth login` for gated data, or use --dataset builtin or a local file."
        )
    if isinstance(err, ValueError) and ("config" in text.lower() or "split" in text.lower()):
        detail = text[:300].rstrip(".")
        return HarnessError(
            f"dataset {spec.dataset!r} rejected config {spec.config!r} / split {spec.split!r} "
            f"({detail}); pass a valid --dataset-config and --split."
        )
    origin = type(err).__module__.split(".")[0]
    network = isinstance(err, (ConnectionError, TimeoutError)) or origin in (
        "huggingface_hub",
        "httpx",
        "requests",
        "urllib3",
    )
    if network:
        return HarnessError(
            f"cannot read dataset {spec.dataset!r} from the Hugging Face hub (offline or hub "
            f"unreachable: {name}); use --dataset builtin or a local file (.jsonl, .parquet, "
            ".txt, .csv), or download its files while online and pass their folder."
        )
    return HarnessError(
        f"reading dataset {spec.dataset!r} from the Hugging Face hub failed ({name}: "
        f"{text[:200].rstrip('.')}); check --dataset, --dataset-config, --split and "
        "--dataset-revision, or use --dataset builtin or a local file."
    )


def _hub_exceptions() -> tuple[type[BaseException], ...]:
    excs: list[type[BaseException]] = [ConnectionError, OSError, TimeoutError, ValueError]
    try:
        from huggingface_hub import errors as hf_errors

        excs.append(hf_errors.HfHubHTTPError)
        excs.append(hf_errors.OfflineModeIsEnabled)
    except (ImportError, AttributeError):
        pass
    try:
        from datasets import exceptions as ds_errors

        excs.append(ds_errors.DatasetNotFoundError)
    except (ImportError, AttributeError):
        pass
    try:
        import requests

        excs.append(requests.exceptions.RequestException)
    except ImportError:
        pass
    try:
        import httpx

        excs.append(httpx.HTTPError)
    except ImportError:
        pass
    return tuple(excs)


def _resolved_hub_revision(spec: DataSpec) -> str | None:
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(spec.dataset, revision=spec.revision, timeout=10).sha
    except Exception:
        return spec.revision


def _open_source(spec: DataSpec) -> tuple[Iterable[dict] | Iterable[str], dict, tuple]:
    """(rows, info, exceptions to translate while iterating).

    Rows are dicts (datasets) or plain strings (the built-in corpus)."""
    if spec.dataset == BUILTIN:
        from harness.data.corpus import builtin_documents, corpus_info

        corpus = corpus_info()
        info = {
            "dataset": BUILTIN,
            "config": None,
            "split": None,
            "revision": f"python-{corpus['python']}-{corpus['fingerprint']}",
            "source": "builtin",
            "corpus": corpus,
        }
        return builtin_documents(), info, ()
    path = Path(os.path.expanduser(spec.dataset))
    if path.exists():
        builder, files = _local_files(path)
        import datasets

        kwargs = {"sample_by": "document"} if builder == "text" else {}
        try:
            rows = datasets.load_dataset(
                builder, data_files=files, split="train", streaming=True, **kwargs
            )
        except Exception as err:  # pragma: no cover - depends on the file's content
            raise HarnessError(
                f"cannot read {path} as {builder} ({type(err).__name__}: "
                f"{' '.join(str(err).split())[:200]}); check the file's format."
            ) from None
        info = {
            "dataset": str(path.resolve()),
            "config": None,
            "split": None,
            "revision": None,
            "source": "local",
            "format": builder,
            "num_files": len(files),
        }
        return rows, info, (Exception,)
    if _looks_like_path(spec.dataset):
        raise HarnessError(
            f"the local path {spec.dataset} does not exist; check it, or use --dataset builtin."
        )
    from harness.hub import hub_reachable

    if not hub_reachable():  # fail in a second, not after the hub client's retries
        raise HarnessError(
            f"cannot read dataset {spec.dataset!r} from the Hugging Face hub (offline or hub "
            "unreachable); use --dataset builtin or a local file (.jsonl, .parquet, .txt, .csv), "
            "or download its files while online and pass their folder."
        )
    import datasets

    excs = _hub_exceptions()
    try:
        rows = datasets.load_dataset(
            spec.dataset,
            spec.config,
            split=spec.split,
            streaming=True,
            revision=spec.revision,
        )
    except excs as err:
        raise _hub_error(spec, err) from None
    info = {
        "dataset": spec.dataset,
        "config": spec.config,
        "split": spec.split,
        "revision": None,  # resolved after reading, when the hub answers
        "source": "hub",
    }
    return rows, info, excs


def _texts(rows, spec: DataSpec, excs: tuple) -> Iterator[str]:
    """Texts of the rows, with missing fields and read errors as one-sentence errors."""
    iterator = iter(rows)
    first = True
    while True:
        try:
            row = next(iterator)
        except StopIteration:
            return
        except HarnessError:
            raise
        except excs as err:
            if spec.dataset == BUILTIN or Path(os.path.expanduser(spec.dataset)).exists():
                raise HarnessError(
                    f"reading {spec.dataset} failed ({type(err).__name__}: "
                    f"{' '.join(str(err).split())[:200]}); check the file's format."
                ) from None
            raise _hub_error(spec, err) from None
        if isinstance(row, str):
            yield row
            continue
        if spec.text_field not in row:
            fields = ", ".join(map(str, row)) or "(none)"
            raise HarnessError(
                f"the dataset has no field {spec.text_field!r}; its fields are {fields}; pass "
                "--text-field with one of them."
            )
        text = row[spec.text_field]
        if text is None:
            continue
        if not isinstance(text, str):
            if first:
                raise HarnessError(
                    f"the field {spec.text_field!r} holds {type(text).__name__} values, not "
                    "text; pass --text-field with a text field."
                )
            continue
        first = False
        yield text


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)[
        "input_ids"
    ]


# -- the windows --------------------------------------------------------------------------------
def _fill_stream(stream: np.ndarray, texts, tokenizer, eos_id: int, progress: bool):
    """Documents' token ids into ``stream``, one EOS between documents, read only as far as the
    stream is long; returns (ids written, documents used)."""
    needed, filled, num_docs = len(stream), 0, 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=needed, unit="tok", desc="tokenize", leave=False)
    try:
        for text in texts:
            doc = _encode(tokenizer, text)
            if not doc:
                continue
            piece = doc if num_docs == 0 else [eos_id, *doc]
            take = min(len(piece), needed - filled)
            stream[filled : filled + take] = piece[:take]
            filled += take
            num_docs += 1
            if bar is not None:
                bar.update(take)
            if filled >= needed:
                break
    finally:
        if bar is not None:
            bar.close()
    return filled, num_docs


def load_windows(tokenizer, spec: DataSpec, *, progress: bool = False) -> Windows:
    """Cut ``spec.num_seqs`` windows of ``spec.seq_len`` token ids from ``spec.dataset``.

    Guarantees: ``ids`` is int64 [N, T]; documents are separated by exactly one EOS id; text ids
    are the tokenizer's direct encoding of each document (no decode / re-encode); window k starts
    at stream token k * (stride - b) with b = 1 under BOS ``each`` (else 0); the stream is read
    only as far as needed. Raises ``HarnessError`` (one sentence) for every user error.
    """
    _check_positive("num-seqs", spec.num_seqs)
    _check_positive("seq-len", spec.seq_len)
    stride = spec.seq_len if spec.stride is None else spec.stride
    _check_positive("stride", stride)
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is None:
        raise HarnessError(
            "the tokenizer has no EOS token to separate documents; use a tokenizer that defines "
            "one (set tokenizer.eos_token)."
        )
    bos = _resolve_bos(tokenizer, spec.bos)
    b = 1 if bos == "each" else 0
    N, T = spec.num_seqs, spec.seq_len
    W, step = T - b, stride - b
    if W < 1 or step < 1:
        raise HarnessError(
            f"with --bos each, --seq-len and --stride must be at least 2 (got {T} and {stride})."
        )
    needed = (N - 1) * step + W

    rows, info, excs = _open_source(spec)
    try:
        stream = np.empty(needed, dtype=np.int64)
    except MemoryError:
        raise HarnessError(
            f"{N} windows x {T} tokens ({needed:,} token ids) do not fit in this machine's "
            "memory; use a smaller --seq-len or --num-seqs."
        ) from None
    filled, num_docs = _fill_stream(stream, _texts(rows, spec, excs), tokenizer, eos_id, progress)
    if filled < needed:
        raise HarnessError(
            f"the dataset yields only {filled} tokens, fewer than the {needed} needed for {N} "
            f"windows of {T} at stride {stride}; lower --num-seqs or --seq-len."
        )

    starts = np.arange(N, dtype=np.int64) * step
    text_ids = stream[starts[:, None] + np.arange(W, dtype=np.int64)[None, :]]
    if b:
        text_ids = np.concatenate(
            [np.full((N, 1), tokenizer.bos_token_id, dtype=np.int64), text_ids], axis=1
        )
    ids = torch.from_numpy(np.ascontiguousarray(text_ids))
    distinct = N * W if step >= W else (N - 1) * step + W
    if info["source"] == "hub":
        info["revision"] = _resolved_hub_revision(spec)
    info.update(
        {
            "num_seqs": N,
            "seq_len": T,
            "stride": stride,
            "tokens": N * T,
            # stream positions the windows cover (fewer than N * T when they overlap) and the
            # distinct token ids among them
            "distinct_positions": int(distinct),
            "distinct_token_ids": int(torch.unique(ids).numel()),
            "num_documents": num_docs,
            "bos": bos,
            "bos_requested": spec.bos,
            "bos_token_id": getattr(tokenizer, "bos_token_id", None),
            "separator": "eos",
            "tokenizer": getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__,
            "tokenizer_sha256": tokenizer_sha256(tokenizer),
            "windows_sha256": windows_sha256(ids),
        }
    )
    return Windows(ids=ids, info=info)


__all__ = ["BUILTIN", "DataSpec", "Windows", "load_windows", "windows_sha256"]
