"""The command line: verbs, help, exit codes, and what a user sees."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.cli import run


def _config(tmp_path: Path, tokenizer: Path, rows: int = 40, extra: str = "") -> Path:
    lines = ["review,rating"] + [f"review number {i} says the snack was {'good' if i % 2 else 'bad'} and item {i * 7919}"
                                 f",{'good' if i % 2 else 'bad'}" for i in range(rows)]
    (tmp_path / "reviews.csv").write_text("\n".join(lines) + "\n")
    path = tmp_path / "project.yaml"
    path.write_text(
        "name: cli-test\n"
        "task: {text: review, label: rating}\n"
        f"data:\n  sources: [{{path: reviews.csv}}]\n  output_dir: {tmp_path / 'ds'}\n  dedup: {{near: false}}\n{extra}"
        f"model: {{name: {tokenizer}}}\n"
    )
    return path


def test_prepare_show_report(tmp_path: Path, tiny_tokenizer: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, tiny_tokenizer)
    described = "Food reviews from the shop's site, labelled by two people in the team; " * 3  # longer than 80 columns
    assert run(["data", "prepare", str(config), "--set", f"task.description={described}"]) == 0
    shown = capsys.readouterr().out
    assert "train 32  validation 4  test 4  quarantine 0  (of 40 input rows)" in shown
    assert run(["data", "show", str(tmp_path / "ds"), "--split", "test", "--n", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and {"id", "text", "label", "label_id", "n_tokens"} <= set(rows[0])
    assert run(["data", "report", str(tmp_path / "ds"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["input"] == 40
    # a partly copied folder: internal FileNotFoundError (exit 1) rather than a data error naming the file
    shutil.copytree(tmp_path / "ds", tmp_path / "copy", ignore=shutil.ignore_patterns("test.parquet", "report.json"))
    for args in (["data", "report", str(tmp_path / "copy"), "--format", "json"],
                 ["data", "show", str(tmp_path / "copy"), "--split", "test"]):
        assert run(args) == 3
        assert "missing; the dataset folder is damaged or partly copied" in " ".join(capsys.readouterr().err.split())
    # piped output came cut at 80 columns: the JSON did not parse, and the Markdown lines were split
    assert run(["data", "report", str(tmp_path / "ds"), "--format", "md"]) == 0
    assert capsys.readouterr().out == (tmp_path / "ds" / "report.md").read_text() + "\n"
    assert described.strip() in (tmp_path / "ds" / "report.md").read_text()


def test_set_overrides_reach_the_pipeline(tmp_path: Path, tiny_tokenizer: Path, capsys) -> None:
    config = _config(tmp_path, tiny_tokenizer)
    code = run(["data", "prepare", str(config), "-q", "--set", "data.split.train=0.7", "--set", "data.split.test=0.2"])
    assert code == 2  # test=0.2 is outside 10-15% without the override
    assert "test=0.2 (expected 0.1-0.15)" in capsys.readouterr().err
    code = run(["data", "prepare", str(config), "-q", "-s", "data.split.train=0.7", "-s", "data.split.test=0.2",
                "-s", "data.split.allow_unusual_ratios=true"])
    assert code == 0


def test_exit_codes(tmp_path: Path, tiny_tokenizer: Path, capsys) -> None:
    assert run(["data", "prepare", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    config = _config(tmp_path, tiny_tokenizer, extra="  strict: true\n")
    with (tmp_path / "reviews.csv").open("a") as f:
        f.write('"unterminated,good,extra\n')
    assert run(["data", "prepare", str(config), "-q"]) == 3
    err = capsys.readouterr().err
    assert "strict mode" in err and "reviews.csv:42" in err
    assert run(["data", "show", str(tmp_path / "nowhere")]) == 3
    assert run(["data", "show", str(tmp_path), "--split", "bogus"]) == 3  # not a dataset folder comes first
    assert run(["export", str(tmp_path), "--format", "gguf", "--output", "x"]) == 2  # a usage error, not an internal one
    err = capsys.readouterr().err
    assert "No such option: --output" in err and "internal error" not in err


def test_help_documents_every_option() -> None:
    result = subprocess.run([sys.executable, "-m", "tunesmith", "data", "prepare", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--set", "--out", "--strict", "--quiet", "Exit codes"):
        assert option in result.stdout


def test_config_show_prints_every_default(tmp_path: Path, tiny_tokenizer: Path, capsys) -> None:
    assert run(["config", "show", str(_config(tmp_path, tiny_tokenizer))]) == 0
    shown = capsys.readouterr().out
    assert "near_threshold: 0.8" in shown and "seed: 42" in shown and "unicode_form: NFKC" in shown


def test_packaged_list(capsys) -> None:
    assert run(["data", "packaged"]) == 0
    shown = capsys.readouterr().out
    assert "food-reviews" in shown and "vader-sentiment" in shown and "chatterbot-corpus" in shown


def test_version_needs_no_command(capsys) -> None:
    from tunesmith import __version__

    assert run(["--version"]) == 0
    assert f"tunesmith {__version__}" in capsys.readouterr().out


def test_config_show_gives_each_value_its_reason(tmp_path: Path, tiny_tokenizer: Path, capsys) -> None:
    import yaml

    assert run(["config", "show", str(_config(tmp_path, tiny_tokenizer))]) == 0
    shown = capsys.readouterr().out
    assert "    near_threshold: 0.8  # estimated Jaccard similarity of byte 5-grams" in shown
    assert "    allow_unusual_ratios: false  # explicit override for ratios outside 70-80 / 10-15 / 10-15" in shown
    assert yaml.safe_load(shown)["data"]["dedup"]["near"] is False  # still YAML: the file's value, not the default


def test_internal_error_is_short_and_says_where_the_traceback_is(monkeypatch, capsys) -> None:
    import tunesmith.config

    def boom(*args, **kwargs):
        raise RuntimeError("first line\n" + "frame\n" * 200)

    monkeypatch.setattr(tunesmith.config, "load_config", boom)
    assert run(["config", "show", "x.yaml"]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: first line ..." in err and len(err.splitlines()) == 2
    saved = Path(err.split("traceback in ")[1].split(";")[0])
    assert "Traceback (most recent call last)" in saved.read_text() and "boom" in saved.read_text()
    saved.unlink()


def test_ctrl_c_says_aborted_and_how_to_resume_a_started_run(tmp_path: Path, tiny_tokenizer: Path, monkeypatch,
                                                             capsys) -> None:
    """typer turns Ctrl-C into Exit(130) before run() sees it: every command ended with exit 130 and not a word."""
    import tunesmith.config
    import tunesmith.training

    config = _config(tmp_path, tiny_tokenizer, extra=f"train: {{output_dir: {tmp_path / 'run'}}}\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tunesmith.training, "train", interrupted)  # Ctrl-C while loading: nothing to resume
    assert run(["train", str(config)]) == 130
    assert capsys.readouterr().err.strip() == "aborted"

    def training_interrupted(cfg, **kwargs):
        cfg.run_dir.mkdir(parents=True)
        (cfg.run_dir / "config.json").write_text(cfg.model_dump_json())  # what a run that started training has
        raise KeyboardInterrupt

    monkeypatch.setattr(tunesmith.training, "train", training_interrupted)
    assert run(["train", str(config)]) == 130
    assert f"aborted; the run goes on from its last checkpoint with `tunesmith train --resume {tmp_path / 'run'}`" in \
        " ".join(capsys.readouterr().err.split())
    monkeypatch.setattr(tunesmith.config, "load_config", interrupted)  # any other command
    assert run(["config", "show", str(config)]) == 130
    assert capsys.readouterr().err.strip() == "aborted"


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path: Path, capsys) -> None:
    """--debug re-raised a user error: exit 1 for every one, where scripts test 2 (config) and 3 (data)."""
    assert run(["--debug", "config", "show", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "error: config file not found" in err
    assert run(["--debug", "data", "show", str(tmp_path / "nowhere")]) == 3


def test_resume_applies_overrides_instead_of_dropping_them(tmp_path: Path, tiny_tokenizer: Path, capsys) -> None:
    from tunesmith.config import load_config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = load_config(_config(tmp_path, tiny_tokenizer))
    (run_dir / "config.json").write_text(cfg.model_dump_json())
    assert run(["train", "--resume", str(run_dir), "--set", "train.batch_size=0"]) == 2
    assert "--set train.batch_size=0: train.batch_size" in capsys.readouterr().err
    # another number of processes changes the effective batch: the saved step fell elsewhere in the data
    assert run(["train", "--resume", str(run_dir), "--nproc", "2"]) == 2
    assert "trained with 1 process(es) (train.nproc in its config.json), not 2; resume it with --nproc 1" \
        in " ".join(capsys.readouterr().err.split())


def test_resume_takes_the_process_count_from_the_run_not_from_config(tmp_path: Path, tiny_tokenizer: Path, capsys,
                                                                     monkeypatch) -> None:
    """A run trained with 2 processes, CONFIG saying 1: the run's config.json decides. A torchrun started by hand
    (LOCAL_RANK and WORLD_SIZE set, no launcher checking first) gets the same check."""
    from tunesmith.config import load_config

    config = _config(tmp_path, tiny_tokenizer)
    cfg = load_config(config)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(cfg.model_copy(update={"train": cfg.train.model_copy(update={"nproc": 2})})
                                         .model_dump_json())
    assert run(["train", str(config), "--resume", str(run_dir), "--nproc", "1"]) == 2
    assert "trained with 2 process(es) (train.nproc in its config.json), not 1; resume it with --nproc 2" \
        in " ".join(capsys.readouterr().err.split())
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert run(["train", "--resume", str(run_dir)]) == 2
    assert "trained with 2 process(es) (train.nproc in its config.json), not 1; resume it with torchrun " \
           "--nproc_per_node 2" in " ".join(capsys.readouterr().err.split())


def _fake_run(tmp_path: Path, tiny_tokenizer: Path, **manifest) -> Path:
    """A run folder with the files the model card reads, without training one."""
    from tunesmith.artifacts import DatasetManifest, RunManifest
    from tunesmith.config import load_config

    cfg = load_config(_config(tmp_path, tiny_tokenizer))
    described = {"name": "cli-test", "task": cfg.task.type.value, "description": "Sort <script>alert(1)</script> reviews",
                 "created_at": "2026-01-01T00:00:00+00:00", "tunesmith_version": "0.1.0"}
    ds = tmp_path / "ds"
    ds.mkdir(exist_ok=True)
    (ds / "manifest.json").write_text(DatasetManifest(
        **described, fingerprint="f" * 64, counts={"train": 32, "validation": 4, "test": 4, "quarantine": 0, "input": 40},
        labels=["bad", "good"], tokenizer="t", context_length=512, config=cfg.model_dump(mode="json")).model_dump_json())
    run_dir = tmp_path / "run"
    (run_dir / "eval" / "test").mkdir(parents=True)
    (run_dir / "config.json").write_text(cfg.model_dump_json())
    (run_dir / "run.json").write_text(RunManifest(
        **described, base_model="tiny", base_model_path="/m", method="full", adapter=False, labels=["bad", "good"],
        max_length=128, dataset=str(ds), dataset_fingerprint="f" * 64, parameters={"trainable": 10, "total": 20},
        metrics={"f1_macro": 0.5}, hyperparameters={"precision": "bf16 autocast"}, **manifest).model_dump_json())
    return run_dir


def test_model_card_states_use_numerics_data_and_test_size(tmp_path: Path, tiny_tokenizer: Path) -> None:
    import markdown

    from tunesmith.model_card import write_model_card

    run_dir = _fake_run(tmp_path, tiny_tokenizer)
    card = write_model_card(run_dir).read_text()
    assert "## Intended use" in card and "Out of scope" in card
    assert "- Numerics: bf16 autocast; matrix products in bfloat16" in card
    assert f"- Fingerprint: `{'f' * 64}`" in card and "32 train / 4 validation / 4 test" in card
    assert "Validation (best checkpoint, 4 examples): f1_macro 0.5000" in card
    assert "Not scored on the held-out test split yet" in card
    (run_dir / "eval" / "test" / "report.json").write_text(json.dumps({"split": "test", "n": 4, "metrics": {"accuracy": 0.75}}))
    (run_dir / "export.json").write_text(json.dumps({"format": "onnx-int8", "quantization": "dynamic int8 weights"}))
    card = write_model_card(run_dir).read_text()
    assert "Test (4 examples): accuracy 0.7500" in card and "Not scored" not in card
    assert "- Exported as onnx-int8: weights quantised, dynamic int8 weights" in card
    html = markdown.markdown(card)
    assert "## Export\n\nExported as `onnx-int8`" in card  # where it came from, written with the card
    assert html.count("<h2>") == 7 and "<li>Numerics: bf16 autocast" in html


def test_html_report_shows_user_text_as_text(tmp_path: Path) -> None:
    from tunesmith.html_report import markdown_table, markdown_to_html

    md = ("# Data report: x\n\n> <script>alert(1)</script>\n\n- ⚠ label <img src=x onerror=alert(2)> is rare\n\n"
          + markdown_table(["label", "<b>n</b>"], [["[tap](javascript:alert(3))", "<script>alert(4)</script> | a & b"]])
          + "\n\n[web](https://example.org) [figure](figures/a.png) [click](javascript:alert(5))\n")
    page = markdown_to_html(md, tmp_path, "t")
    assert "<script>" not in page and "<img src=x" not in page and "<b>n" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;script&gt;alert(4)&lt;/script&gt; | a &amp; b" in page
    assert "<td>[tap](javascript:alert(3))</td>" in page  # a table cell is data: text, no link at all
    assert 'href="javascript' not in page and '<a href="#">click</a>' in page
    assert '<a href="https://example.org">web</a>' in page and '<a href="figures/a.png">figure</a>' in page


def test_damaged_or_newer_folders_are_named(tmp_path: Path, tiny_tokenizer: Path, capsys) -> None:
    run_dir = _fake_run(tmp_path, tiny_tokenizer)
    manifest = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**manifest, "format": 99, "parameters": "renamed in format 99"}))
    assert run(["evaluate", str(run_dir)]) == 3
    assert "run format 99 is newer than this tunesmith supports" in capsys.readouterr().err
    (run_dir / "run.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "max_length"}))
    assert run(["evaluate", str(run_dir)]) == 3
    assert f"{run_dir / 'run.json'} is not a valid run manifest (max_length: Field required)" in capsys.readouterr().err
    (run_dir / "run.json").write_text(json.dumps(manifest))
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "train": {**config["train"], "old_setting": 1}}))
    assert run(["evaluate", str(run_dir)]) == 3
    assert "config.json: its saved config does not validate" in capsys.readouterr().err
    ds = tmp_path / "ds" / "manifest.json"
    ds.write_text(json.dumps({**json.loads(ds.read_text()), "format": 2, "counts": None}))
    assert run(["data", "show", str(tmp_path / "ds")]) == 3
    assert "dataset format 2 is newer than this tunesmith supports" in capsys.readouterr().err


def test_the_users_names_and_paths_print_as_written(tmp_path: Path, capsys) -> None:
    """Rich read brackets as markup: the export path "out/[draft].jsonl" printed as "out/.jsonl", a task
    "reviews [draft]" as "reviews ", and a label "[/b] bad" crashed the command with a MarkupError."""
    from tunesmith.collect.annotate import NewItem, Queue, add_items, create_task
    from tunesmith.store.db import Store

    db = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(db)
    create_task(store, "reviews [draft]", ["ok", "[/b] bad"])
    add_items(store, "reviews [draft]", [NewItem("a", "lovely soup")])
    Queue(store, "reviews [draft]").label("ann", "a", "[/b] bad")
    out = tmp_path / "[draft].jsonl"
    assert run(["annotate", "export", "reviews [draft]", "--out", str(out), "--db", db]) == 0
    assert f"-> {out} (" in capsys.readouterr().out.replace("\n", "")  # unwrapped from the terminal's width


@pytest.mark.parametrize(("args", "message"), [
    (["serve", "--timeout", "0"], "serve: --timeout: Input should be greater than 0 (got 0.0)"),
    (["serve", "--max-file-mb", "0"], "serve: --max-file-mb: must be above 0 (got 0)"),  # it read 0 as unset: 512 MB
    (["serve", "--max-file-mb", "-1"], "serve: --max-file-mb: must be above 0 (got -1)"),
    (["worker", "--poll", "0"], "jobs: --poll: Input should be greater than 0 (got 0.0)"),
])
def test_serve_and_worker_flag_errors_name_the_flag(args: list[str], message: str, capsys, tmp_path: Path) -> None:
    """pydantic's dump named timeout_s and max_file_bytes (in bytes), with its type code and a URL."""
    # --prepare without runs: should the flag pass, the command stops with another error rather than serve
    assert run([*args, "--db", f"sqlite:///{tmp_path / 's.db'}", *(["--prepare"] if args[0] == "serve" else [])]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"error: {message}" in err and "errors.pydantic.dev" not in err


def test_registry_list_marks_versions_whose_run_folder_is_gone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.registry.test_service import fake_run

    db = f"sqlite:///{tmp_path / 'store.db'}"
    for name in ("r1", "r2"):
        assert run(["registry", "add", str(fake_run(tmp_path / name, 0.8)), "--model", "m", "--db", db]) == 0
    (tmp_path / "r2").rename(tmp_path / "elsewhere")
    capsys.readouterr()
    assert run(["registry", "list", "--db", db]) == 0
    table = "".join(c for c in capsys.readouterr().out if not c.isspace() and c != "│")  # the run column folds
    first, second = table.split("m1candidate")[1].split("m2candidate")
    assert "(missing)" not in first and "r2(missing)" in second


def test_a_bad_serve_key_is_named_by_position_never_printed(monkeypatch, capsys, tmp_path: Path) -> None:
    """A typo in --api-key had printed every key, those from TUNESMITH_API_KEYS too."""
    monkeypatch.setenv("TUNESMITH_API_KEYS", "sk-prod-secret-1,sk-prod-secret-2")
    assert run(["serve", "--api-key", "sk-typo ", "--prepare"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--api-key (or TUNESMITH_API_KEYS): key 1 (of 3) must not be empty or start or end with blanks" in err
    assert "secret" not in err and "sk-typo" not in err
    monkeypatch.delenv("TUNESMITH_API_KEYS")
    monkeypatch.setenv("TUNESMITH_ADMIN_KEY", "adm-secret ")
    assert run(["serve", "--prepare"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--admin-key (or TUNESMITH_ADMIN_KEY): the key must not be empty" in err and "secret" not in err


def test_out_expands_the_home_tilde(tmp_path: Path, tiny_tokenizer: Path, monkeypatch, capsys) -> None:
    config = _config(tmp_path, tiny_tokenizer)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert run(["data", "prepare", str(config), "-q", "--out", "~/ds"]) == 0
    assert (tmp_path / "home" / "ds" / "train.parquet").is_file() and not (tmp_path / "~").exists()


def test_emoji_codes_print_as_written(tmp_path: Path, tiny_tokenizer: Path, capsys) -> None:
    """rich turned `:joy:` into an emoji (markup off or not): config show, data show --json differed from the data."""
    config = _config(tmp_path, tiny_tokenizer)
    assert run(["config", "show", str(config), "--set", "task.description=Slack reactions like :joy:, kept as text"]) == 0
    assert "Slack reactions like :joy:, kept as text" in capsys.readouterr().out


def test_an_empty_tunesmith_home_is_an_error_not_the_cwd(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TUNESMITH_HOME", "")
    monkeypatch.chdir(tmp_path)
    assert run(["registry", "list"]) == 2
    assert "TUNESMITH_HOME is set but empty" in capsys.readouterr().err and not list(tmp_path.iterdir())


@pytest.mark.parametrize(("args", "message"), [
    (["--sampler", "bogus"], "tune: --sampler (tune.sampler): Input should be 'tpe', 'random', 'cmaes', 'qmc' or 'nsga2' (got 'bogus')"),
    (["--timeout", "0"], "tune: --timeout (tune.timeout_s): Input should be greater than 0 (got 0.0)"),
])
def test_tune_flag_errors_name_the_flag(args: list[str], message: str, tmp_path: Path, tiny_tokenizer: Path,
                                        capsys) -> None:
    """tune's flags became overrides, and the error named a `--set tune.sampler="bogus"` never typed."""
    assert run(["tune", str(_config(tmp_path, tiny_tokenizer)), *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"error: {message}" in err and "--set" not in err


def test_a_damaged_run_config_and_a_folder_for_config_are_user_errors(tmp_path: Path, capsys) -> None:
    """train --resume on an unparseable config.json was an internal JSONDecodeError; `config show .` "not found"."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{bad")
    assert run(["train", "--resume", str(tmp_path / "run")]) == 2
    assert f"error: {tmp_path / 'run' / 'config.json'}: not valid JSON" in " ".join(capsys.readouterr().err.split())
    (tmp_path / "project.yaml").write_text("name: x\n")
    assert run(["config", "show", str(tmp_path)]) == 2
    assert f"{tmp_path} is a folder, not a config file: give the config's YAML file (project.yaml here)" in \
        " ".join(capsys.readouterr().err.split())
