from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.errors import ConfigError
from tunesmith.models.catalog import context_length, load_tokenizer, resolve_tokenizer_dir


def test_unknown_model_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"neither a packaged model \(\['minilm', 'smollm2-135m'\]\) nor a local folder \(looked for /"):
        resolve_tokenizer_dir("no-such-model")


def test_folder_without_tokenizer_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has no tokenizer files"):
        resolve_tokenizer_dir(str(tmp_path))


def test_local_folder_tokenizer(tiny_tokenizer: Path, tiny_bert: Path) -> None:
    tok = load_tokenizer(str(tiny_tokenizer))
    assert context_length(tok) == 8192  # what a tokenizer alone claims
    assert context_length(load_tokenizer(str(tiny_bert))) == 128  # beside a model: its positions bound it
    assert tok("great coffee")["input_ids"][0] == tok.cls_token_id


def test_packaged_minilm_tokenizer_loads_offline() -> None:
    tok = load_tokenizer("minilm")
    assert context_length(tok) == 512
    assert tok.tokenize("Great coffee") == ["great", "coffee"]
