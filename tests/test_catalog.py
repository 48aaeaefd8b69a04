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


def test_a_conversion_finished_by_another_process_is_kept_and_ours_let_go(tmp_path: Path) -> None:
    # Two processes converting a packaged GGUF at once shared one fixed ".tmp" folder and moved it under each other.
    from tunesmith.models.catalog import _publish, _staging

    target = tmp_path / "models" / "smollm2"
    mine, theirs = _staging(target), _staging(target)
    assert mine != theirs and mine.parent == target.parent
    for folder, weights in ((theirs, b"theirs"), (mine, b"mine")):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(weights)
    _publish(theirs, target, "model.safetensors")
    _publish(mine, target, "model.safetensors")
    assert (target / "model.safetensors").read_bytes() == b"theirs" and not mine.exists() and not theirs.exists()
    (target / "model.safetensors").unlink()  # an incomplete one (killed halfway) is replaced
    again = _staging(target)
    again.mkdir()
    (again / "model.safetensors").write_bytes(b"again")
    _publish(again, target, "model.safetensors")
    assert (target / "model.safetensors").read_bytes() == b"again"
