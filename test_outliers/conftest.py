# HF_HUB_OFFLINE is set by the test command (README), not here: this folder also holds the
# real-model tests, which must reach the hub on a GPU machine (`pytest -k qwen3_0.6b`).
import copy
import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests: in CI one fixed, derandomized set of examples (a run passes or fails by the
# code, never by luck; .ci/run selects it); elsewhere new random examples every run, remembered
# in the local example database when one fails. HYPOTHESIS_PROFILE picks one explicitly.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("random", deadline=None)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "random")
)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """Where the tiny models are built: $OUTLIERS_TINY_CACHE when set, else a fresh folder."""
    env = os.environ.get("OUTLIERS_TINY_CACHE")
    return Path(env).expanduser() if env else tmp_path_factory.mktemp("tiny-cache")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_cache):
    """The tiny models' byte-level BPE tokenizer (has BOS and EOS, adds no BOS by itself)."""
    from harness.loading.tiny_builder import train_tokenizer

    return train_tokenizer(tiny_cache)


@pytest.fixture(scope="session")
def bos_tokenizer(tiny_tokenizer):
    """The tiny tokenizer, changed to add BOS by itself (as Llama's does)."""
    from tokenizers import processors

    tok = copy.deepcopy(tiny_tokenizer)
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", bos)]
    )
    assert tok("a")["input_ids"][0] == bos
    return tok
