from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tunesmith.config import ProjectConfig, TaskType, TrainSpec, load_config, parse_config
from tunesmith.errors import ConfigError

EXAMPLES = sorted(p for p in (Path(__file__).parent.parent / "examples").rglob("*.yaml") if not p.name.endswith(".generated.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_shipped_example_parses(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.data.sources


def test_defaults_are_filled_and_visible() -> None:
    cfg = parse_config({"name": "x", "data": {"sources": [{"path": "a.csv"}]}})
    assert cfg.task.type == TaskType.single_label
    assert (cfg.data.split.train, cfg.data.split.validation, cfg.data.split.test) == (0.8, 0.1, 0.1)
    assert cfg.model.name == "minilm"
    assert cfg.data.dedup.conflicts == "majority"
    assert cfg.data.sources[0].kind == "csv"
    chat = parse_config({"name": "x", "task": {"type": "chat"}, "data": {"sources": [{"path": "a.jsonl"}]}})
    assert chat.model.name == "smollm2-135m"
    reg = parse_config({"name": "x", "task": {"type": "regression"}, "data": {"sources": [{"path": "a.csv"}]}})
    assert reg.data.dedup.conflicts == "mean"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_error_names_file_line_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ndata:\n  sources:\n    - path: a.csv\n  split:\n    train: 0.5\n    validation: 0.25\n    test: 0.25\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert f"{path}:5" in msg and "data.split" in msg and "train=0.5 (expected 0.7-0.8)" in msg
    assert "allow_unusual_ratios" in msg


def test_unusual_ratios_need_explicit_override(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ndata:\n  sources: [{path: a.csv}]\n  split: {train: 0.6, validation: 0.2, test: 0.2}\n")
    with pytest.raises(ConfigError):
        load_config(path)
    cfg = load_config(path, ["data.split.allow_unusual_ratios=true"])
    assert cfg.data.split.train == 0.6


def test_ratios_must_sum_to_one() -> None:
    with pytest.raises(ConfigError, match="must be 1"):
        parse_config({"name": "x", "data": {"sources": [{"path": "a.csv"}], "split": {"train": 0.8, "validation": 0.1, "test": 0.2}}})


def test_misspelt_key_is_an_error_with_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ntask:\n  lables: [a, b]\ndata:\n  sources: [{path: a.csv}]\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: task.lables: unknown setting; did you mean labels"):
        load_config(path)


def test_yaml_booleans_in_a_text_setting_say_to_quote_them(tmp_path: Path) -> None:
    # YAML 1.1 reads `no` as False: "Input should be a valid string (got False)" named neither why nor the fix.
    path = _write(tmp_path, "name: x\ntask:\n  labels: [no, yes]\ndata:\n  sources: [{path: a.csv}]\n"
                            "  annotate:\n    label_map: {on: yes}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    lines = str(e.value).splitlines()[1:]
    assert len(lines) == 4 and all("as booleans: quote it ('no')" in line for line in lines), lines
    assert lines[0].startswith(f"  {path}:3: task.labels.0: Input should be a valid string;") and "(got False)" in lines[0]
    cfg = load_config(_write(tmp_path, "name: x\ntask:\n  labels: ['no', 'yes']\ndata:\n  sources: [{path: a.csv}]\n"))
    assert cfg.task.labels == ["no", "yes"]


def test_unknown_extension_asks_for_kind() -> None:
    with pytest.raises(ConfigError, match="cannot tell the format of 'data.xyz'"):
        parse_config({"name": "x", "data": {"sources": [{"path": "data.xyz"}]}})


def test_overrides_keep_types_and_reach_lists(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ndata:\n  sources: [{path: a.csv}]\n")
    cfg = load_config(path, ["data.split.seed=7", "data.sources.0.delimiter=;", "task.labels=[a, b]"])
    assert cfg.data.split.seed == 7
    assert cfg.data.sources[0].delimiter == ";"
    assert cfg.task.labels == ["a", "b"]
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(path, ["data.split.seed"])


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    sub = tmp_path / "proj"
    sub.mkdir()
    path = _write(sub, "name: x\ndata:\n  sources: [{path: data/a.csv}]\n  annotate: {corrections: fix.csv}\n")
    cfg = load_config(path)
    assert cfg.data.sources[0].path == sub / "data" / "a.csv"
    assert cfg.data.annotate.corrections == sub / "fix.csv"


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ndata:\n  sources: [\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: not valid YAML"):
        load_config(path)


def test_fill_policy_needs_a_value() -> None:
    with pytest.raises(ConfigError, match="needs a value in missing.fill"):
        parse_config({"name": "x", "data": {"sources": [{"path": "a.csv"}], "missing": {"fields": {"label": "fill"}}}})



@pytest.mark.parametrize(("missing", "error"), [
    ({"fill": {"label": "neg"}}, r"missing.fill gives a value for \['label'\], whose policy is not `fill`; add label: fill"),
    ({"fields": {"label": "fill"}, "fill": {"label": "neg", "lable": "x"}}, r"unknown field\(s\) \['lable'\] in missing.fill"),
])
def test_a_fill_value_that_nothing_uses_is_refused(missing: dict, error: str) -> None:
    """Both were accepted and ignored: the rows they were meant for still went to quarantine."""
    with pytest.raises(ConfigError, match=error):
        parse_config({"name": "x", "data": {"sources": [{"path": "a.csv"}], "missing": missing}})
    ok = parse_config({"name": "x", "data": {"sources": [{"path": "a.csv"}],
                                             "missing": {"fields": {"label": "fill"}, "fill": {"label": "neg"}}}})
    assert ok.data.missing.fill == {"label": "neg"}


def test_config_round_trips_through_json() -> None:
    cfg = parse_config({"name": "x", "data": {"sources": [{"path": "/d/a.csv"}]}})
    again = ProjectConfig.model_validate(cfg.model_dump(mode="json"))
    assert again == cfg


def test_generative_tasks_default_to_lora_with_chat_learning_rates() -> None:
    chat = parse_config({"name": "x", "task": {"type": "chat"}, "data": {"sources": [{"path": "a.jsonl"}]}})
    assert chat.train.method == "lora" and chat.train.lr(chat.task.type) == 2e-4
    cls = parse_config({"name": "x", "data": {"sources": [{"path": "a.csv"}]}})
    assert cls.train.method == "full" and cls.train.lr(cls.task.type) == 5e-5
    dpo = parse_config({"name": "x", "task": {"type": "preference"}, "data": {"sources": [{"path": "a.jsonl"}]}})
    assert dpo.model.name == "smollm2-135m" and dpo.train.lr(dpo.task.type) == 5e-5
    with pytest.raises(ConfigError, match="train.method: 'head' needs a classification head"):
        parse_config({"name": "x", "task": {"type": "chat"}, "data": {"sources": [{"path": "a.jsonl"}]},
                      "train": {"method": "head"}})


@pytest.mark.parametrize(("n_train", "expected"), [
    (10, (10, 1, 0.25)),        # tiny data: enough epochs to see ~100 examples
    (700, (3, 1, 0.25)),        # the usual 3 epochs; batch ~0.2% of the data
    (20_000, (1, 40, 1.581)),   # big data: at most ~25,000 examples seen; larger batch, larger rate
    (500_000, (1, 256, 4.0)),   # batch capped at 256
])
def test_openai_auto_hyperparameters_follow_the_data_size(n_train: int, expected: tuple) -> None:
    from tunesmith.config import OpenAIHyperparameters

    assert OpenAIHyperparameters().resolve(n_train) == expected
    assert OpenAIHyperparameters(n_epochs=5, batch_size=4, learning_rate_multiplier=0.5).resolve(n_train) == (5, 4, 0.5)


def test_openai_hyperparameters_are_checked() -> None:
    base = {"name": "x", "task": {"type": "chat"}, "data": {"sources": [{"path": "a.jsonl"}]}}
    with pytest.raises(ConfigError, match=r"train.hyperparameters.n_epochs: .*between 1 and 256"):
        parse_config({**base, "train": {"hyperparameters": {"n_epochs": 0}}})
    with pytest.raises(ConfigError, match="learning_rate_multiplier"):
        parse_config({**base, "train": {"hyperparameters": {"learning_rate_multiplier": "fast"}}})
    with pytest.raises(ConfigError, match=r"replaces \['epochs'\]"):
        parse_config({**base, "train": {"epochs": 5, "hyperparameters": {"n_epochs": 2}}})


def test_settings_the_task_would_ignore_are_refused_with_file_line_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ntask:\n  type: chat\ndata:\n  sources:\n    - path: a.jsonl\n"
                            "train:\n  head_learning_rate: 0.001\n  class_weights: balanced\nmodel:\n  pooling: mean\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "3 problems" in msg
    assert f"{path}:8: train.head_learning_rate: does not apply here" in msg
    assert f"{path}:9: train.class_weights" in msg and f"{path}:11: model.pooling" in msg


@pytest.mark.parametrize(("task", "setting", "field"), [
    ("regression", {"train": {"class_weights": "balanced"}}, "train.class_weights"),
    ("single_label_classification", {"train": {"packing": False}}, "train.packing"),
    ("single_label_classification", {"train": {"dpo_beta": 0.2}}, "train.dpo_beta"),
    ("single_label_classification", {"train": {"merge_adapter": True, "method": "lora"}}, "train.merge_adapter"),
    ("chat", {"train": {"group_by_length": False}}, "train.group_by_length"),
    ("chat", {"train": {"metric": "accuracy"}}, "train.metric"),
    ("chat", {"train": {"method": "full"}, "peft": {"r": 8}}, "peft.r"),
    ("chat", {"train": {"method": "lora"}, "peft": {"num_virtual_tokens": 8}}, "peft.num_virtual_tokens"),
    ("single_label_classification", {"model": {"chat_template": "{{ x }}"}}, "model.chat_template"),
    ("single_label_classification", {"eval": {"max_new_tokens": 10}}, "eval.max_new_tokens"),
    ("regression", {"train": {"metric": "accuracy"}}, "train.metric"),
    # read by no chat code: they looked as if they took effect
    ("chat", {"train": {"attention_dropout": 0.1}}, "train.attention_dropout"),
    ("chat", {"train": {"hidden_dropout": 0.1}}, "train.hidden_dropout"),
    ("chat", {"train": {"train_embeddings": True}}, "train.train_embeddings"),
    ("single_label_classification", {"train": {"train_embeddings": True, "method": "lora"}}, "train.train_embeddings"),
    # prompt tuning: merging crashed after training; packing let packed conversations see each other
    ("chat", {"train": {"method": "prompt_tuning", "merge_adapter": True}}, "train.merge_adapter"),
    ("chat", {"train": {"method": "prompt_tuning", "packing": True}}, "train.packing"),
    ("single_label_classification", {"train": {"lr_scheduler": "cosine_decay"}}, "train.lr_scheduler"),
    # "food|price" became a class of its own; labels of a regression were ignored
    ("single_label_classification", {"task": {"type": "single_label_classification", "label_separator": "|"}},
     "task.label_separator"),
    ("regression", {"task": {"type": "regression", "labels": ["a", "b"]}}, "task.labels"),
])
def test_each_inapplicable_setting_is_named(task: str, setting: dict, field: str) -> None:
    raw = {"name": "x", "task": {"type": task}, "data": {"sources": [{"path": "a.jsonl"}]}, **setting}
    with pytest.raises(ConfigError, match=rf"{field}: "):
        parse_config(raw)


def test_settings_that_apply_pass_and_saved_resolved_configs_parse_again() -> None:
    chat = parse_config({"name": "x", "task": {"type": "chat"}, "data": {"sources": [{"path": "a.jsonl"}]},
                         "train": {"packing": False, "merge_adapter": True}, "peft": {"r": 8}})
    seq = parse_config({"name": "x", "data": {"sources": [{"path": "a.csv"}]},
                        "train": {"head_learning_rate": 1e-3, "class_weights": "balanced", "metric": "accuracy",
                                  "group_by_length": False}})
    dpo = parse_config({"name": "x", "task": {"type": "preference"}, "data": {"sources": [{"path": "a.jsonl"}]},
                        "train": {"dpo_beta": 0.3}})
    for cfg in (chat, seq, dpo):  # what a run folder's config.json holds, and resume re-reads
        assert parse_config(cfg.model_dump(mode="json")) == cfg


def test_prompt_tuning_does_not_pack_unless_told_and_other_chat_methods_do() -> None:
    def chat(**train: object) -> object:
        return parse_config({"name": "x", "task": {"type": "chat"}, "data": {"sources": [{"path": "a.jsonl"}]},
                             "train": train})

    assert not chat(method="prompt_tuning").packs() and chat(method="lora").packs() and chat().packs()
    assert not chat(method="lora", packing=False).packs()


def test_one_length_rule() -> None:
    seq = parse_config({"name": "x", "data": {"sources": [{"path": "a.csv"}]}})
    chat = parse_config({"name": "x", "task": {"type": "chat"}, "data": {"sources": [{"path": "a.jsonl"}]}})
    assert seq.model.token_budget(seq.task.type, 128) == 128  # the model's context when it is short
    assert seq.model.token_budget(seq.task.type, 8192) == 512  # capped for classification
    assert chat.model.token_budget(chat.task.type, 8192) == 2048  # capped for chat
    assert chat.model.token_budget(chat.task.type, None) == 2048  # a tokenizer that states no context
    chat.model.max_length = 4096
    assert chat.model.token_budget(chat.task.type, 8192) == 4096  # the config's own value wins


def test_a_key_given_twice_is_an_error_with_both_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ndata:\n  sources: [{path: a.csv}]\ntrain:\n  epochs: 3\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=rf"{path}:6: train.epochs: given twice \(first on line 5\)"):
        load_config(path)


def test_a_section_left_empty_is_its_defaults(tmp_path: Path) -> None:
    """`train:` with every key commented out is null in YAML: refused as "not a valid dictionary", and `--set` into it
    as "not a section"."""
    path = _write(tmp_path, "name: x\ndata:\n  sources: [{path: a.csv}]\n  dedup:\ntrain:\n#  epochs: 3\npeft:\n")
    cfg = load_config(path)
    assert cfg.train.epochs == TrainSpec().epochs and cfg.data.dedup.exact and cfg.train.hyperparameters is None
    assert load_config(path, ["train.epochs=2"]).train.epochs == 2


@pytest.mark.parametrize(("text", "expected"), [
    (b"name: x\ndata:\n\tsources: [{path: a.csv}]\n", r"cfg.yaml:3: not valid YAML: .*indent with spaces"),
    (b"", r"cfg.yaml: the file is empty"),
    # found only at the end of the file: the line it was opened on is what to fix
    (b'name: x\ntask:\n  description: "Route a ticket.\n  text: body\ndata:\n  sources: [{path: a.csv}]\n',
     r"cfg.yaml:7: not valid YAML: found unexpected end of stream; a quoted value opened on line 3 never closes"),
    (b"name: x\ndata:\n  sources: [{path: a.csv}\ntrain:\n  epochs: 3\n",
     r"cfg.yaml:4: not valid YAML: .*; a \[ list opened on line 3 is not closed before this line"),
    (b"name: x\xff\xfe\n", r"cfg.yaml: not a UTF-8 text file"),
])
def test_unreadable_files_are_config_errors(tmp_path: Path, text: bytes, expected: str) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_override_values_keep_the_text_yaml_would_lose(tmp_path: Path) -> None:
    """--set values are YAML, which read `|` as an empty block scalar, `#` as a comment (None) and cut
    `Food reviews #2 batch` at its `#`: the separator '' then rejected every multi-label row at preparation."""
    path = _write(tmp_path, "name: x\ntask:\n  type: multi_label_classification\ndata:\n  sources: [{path: a.csv}]\n")
    cfg = load_config(path, ["task.label_separator=|", "task.description=Food reviews #2 batch", "task.id=#",
                             "data.sources.0.delimiter=|", "data.split.seed=7"])
    assert (cfg.task.label_separator, cfg.task.description, cfg.task.id) == ("|", "Food reviews #2 batch", "#")
    assert cfg.data.sources[0].delimiter == "|" and cfg.data.split.seed == 7
    # written null and quoted values keep their YAML meaning
    cfg = load_config(path, ["task.id=~", "task.description='#'", 'task.label_separator="; "'])
    assert (cfg.task.id, cfg.task.description, cfg.task.label_separator) == (None, "#", "; ")
    assert load_config(path, ["task.id=sku", "task.id=null"]).task.id is None
    with pytest.raises(ConfigError, match=r"--set task.label_separator='': task.label_separator: must be at least one "):
        load_config(path, ["task.label_separator=''"])


def test_task_wide_checks_name_the_fields_line_or_its_override(tmp_path: Path) -> None:
    """Checks that look at the task and another section were reported at "cfg.yaml:1: (top level)", even for
    a value a --set gave."""
    chat = "name: x\ntask:\n  type: chat\ndata:\n  sources:\n    - path: a.jsonl\n"
    head = "'head' needs a classification head; chat tasks train the language model itself"
    path = _write(tmp_path, chat + "train:\n  epochs: 2\n  method: head\n")
    with pytest.raises(ConfigError, match=rf"\n  {path}:9: train.method: {head}"):
        load_config(path)
    path = _write(tmp_path, chat)
    with pytest.raises(ConfigError, match=rf"\n  --set train.method=head: train.method: {head}"):
        load_config(path, ["train.method=head"])
    path = _write(tmp_path, "name: x\ntask:\n  type: regression\ndata:\n  sources:\n    - path: a.csv\n"
                            "  dedup:\n    conflicts: majority\n")
    with pytest.raises(ConfigError, match=rf"\n  {path}:8: data.dedup.conflicts: 'majority' does not apply to regression"):
        load_config(path)


def test_a_value_no_branch_of_a_union_takes_is_one_problem_at_the_field(tmp_path: Path) -> None:
    """`n_epochs: many` was 2 problems, at `n_epochs.int` and `n_epochs.literal['auto']` (pydantic's union branches)."""
    path = _write(tmp_path, "name: x\ndata:\n  sources:\n    - path: a.csv\ntrain:\n  hyperparameters:\n"
                            "    n_epochs: many\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).splitlines() == [f"{path}: invalid configuration (1 problem)",
                                         f"  {path}:7: train.hyperparameters.n_epochs: Input should be an integer or "
                                         "'auto' (got 'many')"]
    rest = {"path": "a", "kind": "rest", "rest": {"url": "https://x.org/api", "params": {"int": [1]}}}
    with pytest.raises(ConfigError, match=r"\(1 problem\)\n  <config>: data.sources.0.rest.params.int: Input should be "
                                          r"a string, an integer or a number \(got \[1\]\)$"):
        parse_config({"name": "x", "data": {"sources": [rest]}})  # a key named like a branch is the user's own


def test_paths_under_the_home_folder_are_not_read_from_the_configs_folder(tmp_path: Path, monkeypatch) -> None:
    """`~/models/m` became <config folder>/~/models/m (model.name, data.sources[].path, train.init_from, chat_template)."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    path = _write(tmp_path, "name: x\ntask: {type: chat}\ndata:\n  sources: [{path: ~/data/a.jsonl}]\n"
                            "model:\n  name: ~/models/m\n  chat_template: ~/t.jinja\n")
    cfg = load_config(path)
    assert cfg.model.name == str(home / "models" / "m") and cfg.model.chat_template == str(home / "t.jinja")
    assert cfg.data.sources[0].path == home / "data" / "a.jsonl"
    path = _write(tmp_path, "name: x\ndata:\n  sources: [{path: a.csv}]\ntrain:\n  init_from: ~/runs/r\n")
    assert load_config(path).train.init_from == home / "runs" / "r"


def test_every_accepted_scheduler_builds_as_the_trainer_builds_it() -> None:
    """cosine_with_min_lr, cosine_warmup_with_min_lr and warmup_stable_decay were accepted, and every run with one
    crashed at its start: they need lr_scheduler_kwargs that no setting gives."""
    from typing import get_args

    import torch
    from transformers import get_scheduler

    from tunesmith.config import LrScheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for name in get_args(LrScheduler):
        get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=10)
    for name in ("cosine_with_min_lr", "warmup_stable_decay"):
        with pytest.raises(ConfigError, match=rf"train.lr_scheduler: Input should be .*\(got '{name}'\)"):
            parse_config({"name": "x", "data": {"sources": [{"path": "a.csv"}]}, "train": {"lr_scheduler": name}})


@pytest.mark.parametrize(("override", "expected"), [
    ("data.split.seed=[1", r"override 'data.split.seed=\[1': the value is not valid YAML"),
    ("data.sources.5=x", r"override 'data.sources.5=x': 'data.sources.5' is not a list index"),
    ("data.sources.x=x", r"override 'data.sources.x=x': 'data.sources.x' is not a list index"),
])
def test_bad_overrides_are_config_errors(tmp_path: Path, override: str, expected: str) -> None:
    path = _write(tmp_path, "name: x\ndata:\n  sources: [{path: a.csv}]\n")
    with pytest.raises(ConfigError, match=expected):
        load_config(path, [override])


def test_an_invalid_override_is_named_not_a_line_of_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ndata:\n  sources: [{path: a.csv}]\ntrain:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, ["train.batch_size=0", "data.splt.seed=3"])
    msg = str(e.value)
    assert "--set train.batch_size=0: train.batch_size: Input should be greater than or equal to 1" in msg
    assert "--set data.splt.seed=3: data.splt: unknown setting; did you mean split?" in msg
    assert f"{path}:" not in msg.split("\n", 1)[1]  # no line of the file is blamed
    with pytest.raises(ConfigError, match=r"--set train.class_weights=balanced: train.class_weights: does not apply"):
        load_config(path, ["train.class_weights=balanced", "task.type=chat"])


def test_annotated_yaml_gives_every_default_its_reason_and_parses_back() -> None:
    from tunesmith.config import annotated_yaml

    cfg = parse_config({"name": "x", "task": {"description": "multi\nline: 'text' # not a comment"},
                        "data": {"sources": [{"path": "/d/a.csv"}, {"path": "/d/b.jsonl", "split": "test"}]},
                        "model": {"chat_template": None}})
    text = annotated_yaml(cfg)
    assert yaml.safe_load(text) == cfg.model_dump(mode="json")
    lines = text.splitlines()
    assert any(line.startswith("    near_threshold: 0.8  # estimated Jaccard similarity") for line in lines)
    assert any(line.startswith("    train: 0.8  # the usual 80/10/10") for line in lines)
    # every field that has a default (the resolved config's values) carries its reason
    missing = [line for line in lines if "  # " not in line]
    assert missing == []


@pytest.mark.parametrize("value", [None, ["query", "value"], 0.003, 8, True, "cosine", "null", "1e-3", "a: b", ""])
def test_an_override_printed_for_a_value_reads_back_as_that_value(value: object) -> None:
    # `tune` prints the best trial as --set flags: a null printed as None came back as the text 'None'
    from tunesmith.config import apply_override, override_of

    data: dict = {}
    apply_override(data, override_of("peft.target_modules", value))
    assert data == {"peft": {"target_modules": value}}


def test_a_csv_delimiter_is_one_character_and_a_written_tab_reads_as_one(tmp_path: Path) -> None:
    # delimiter: '\t' (single quotes keep the backslash) crashed preparation as an internal TypeError
    def source(delimiter: str) -> dict:
        text = f"name: t\ndata:\n  sources:\n    - {{path: d.tsv, kind: csv, delimiter: {delimiter}}}\n"
        (tmp_path / "c.yaml").write_text(text)
        return load_config(tmp_path / "c.yaml").data.sources[0].delimiter

    assert source("'\\t'") == source('"\\t"') == source("tab") == "\t"
    assert source("';'") == ";"
    with pytest.raises(ConfigError, match=r"delimiter: .*must be one character.*got ';;'"):
        source("';;'")


def test_star_ratings_as_numbers_are_labels() -> None:
    """`labels: [1, 2, 3]` was refused ("Input should be a valid string") while the data's 1..3 read as "1".."3"."""
    cfg = parse_config({"name": "x", "task": {"labels": [1, 2, 3]}, "data": {"sources": [{"path": "a.csv"}]}})
    assert cfg.task.labels == ["1", "2", "3"]
    with pytest.raises(ConfigError, match="quote it"):
        parse_config({"name": "x", "task": {"labels": [True, False]}, "data": {"sources": [{"path": "a.csv"}]}})


def test_a_tune_storage_password_stays_out_of_written_configs() -> None:
    """`--storage postgresql://user:PW@...` was written in clear into the dataset's manifest.json, every trial's
    config.json and a Docker export, which are moved and shared."""
    cfg = parse_config({"name": "x", "data": {"sources": [{"path": "a.csv"}]},
                        "tune": {"storage": "postgresql://bob:S3cret@db/ts?sslmode=require&password=S3cret"}}, "test")
    assert cfg.tune.storage == "postgresql://bob:S3cret@db/ts?sslmode=require&password=S3cret"  # what the study opens
    assert "S3cret" not in cfg.model_dump_json() and "S3cret" not in json.dumps(cfg.model_dump(mode="json"))
    assert cfg.model_dump(mode="json")["tune"]["storage"] == "postgresql://bob:***@db/ts?sslmode=require&password=***"


def test_a_bare_model_folder_name_is_read_beside_the_config_not_in_the_cwd(tmp_path: Path, monkeypatch) -> None:
    """`model: {name: tinybert}` was looked up in the cwd (a same-named folder there used silently), unlike data paths."""
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tinybert").mkdir()  # the cwd's same-named folder must not be used
    path = _write(tmp_path / "proj", "name: x\ndata:\n  sources: [{path: a.csv}]\nmodel: {name: tinybert}\n")
    assert load_config(path).model.name == str(tmp_path / "proj" / "tinybert")
    packaged = _write(tmp_path / "proj", "name: x\ndata:\n  sources: [{path: a.csv}]\nmodel: {name: minilm}\n")
    assert load_config(packaged).model.name == "minilm"  # a packaged alias is no path


def test_a_bare_synthetic_model_folder_name_is_read_beside_the_config(tmp_path: Path, monkeypatch) -> None:
    """A synthetic source's local model named without `./` was looked up in the cwd, unlike model.name."""
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path)
    source = "{synthetic: {method: generate, per_label: 2, model: %s}}"
    path = _write(tmp_path / "proj", f"name: x\ntask: {{labels: [a, b]}}\ndata:\n  sources: [{source % 'teacher'}]\n")
    assert load_config(path).data.sources[0].synthetic.model == str(tmp_path / "proj" / "teacher")
    packaged = _write(tmp_path / "proj", f"name: x\ntask: {{labels: [a, b]}}\ndata:\n  sources: [{source % 'smollm2-135m'}]\n")
    assert load_config(packaged).data.sources[0].synthetic.model == "smollm2-135m"


@pytest.mark.parametrize(("tune", "field"), [
    ({"pruner": "successive_halving", "startup_trials": 10}, "tune.startup_trials"),
    ({"pruner": "hyperband", "startup_trials": 10}, "tune.startup_trials"),
    ({"pruner": "none", "startup_trials": 0}, "tune.startup_trials"),
    ({"pruner": "median", "reduction_factor": 4}, "tune.reduction_factor"),
    ({"pruner": "none", "reduction_factor": 3}, "tune.reduction_factor"),
])
def test_a_tune_setting_the_pruner_never_reads_is_refused(tune: dict, field: str) -> None:
    """startup_trials with successive halving, reduction_factor with the median pruner: accepted and ignored."""
    raw = {"name": "x", "data": {"sources": [{"path": "a.csv"}]}, "tune": tune}
    with pytest.raises(ConfigError, match=rf"{field}: does not apply here .*tune\.pruner is {tune['pruner']}"):
        parse_config(raw)


def test_tune_settings_the_pruner_reads_pass() -> None:
    for tune in ({"pruner": "median", "startup_trials": 10}, {"pruner": "successive_halving", "reduction_factor": 4},
                 {"pruner": "hyperband", "reduction_factor": 3}, {"pruner": "none"}, {"pruner": "median"}):
        parse_config({"name": "x", "data": {"sources": [{"path": "a.csv"}]}, "tune": tune})


def test_a_relative_sqlite_tune_storage_is_beside_the_config_not_in_the_cwd(tmp_path: Path, monkeypatch) -> None:
    """Workers started from other folders with one config opened two SQLite files: two studies, each unaware."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    base = "name: x\ndata:\n  sources: [{path: a.csv}]\ntune:\n  storage: '%s'\n"
    for written, expected in [
        ("sqlite:///studies/tune.db", f"sqlite:///{tmp_path / 'proj' / 'studies' / 'tune.db'}"),
        ("sqlite+pysqlite:///tune.db?timeout=5", f"sqlite+pysqlite:///{tmp_path / 'proj' / 'tune.db'}?timeout=5"),
        (f"sqlite:///{tmp_path / 'abs.db'}", f"sqlite:///{tmp_path / 'abs.db'}"),
        ("sqlite:///~/tune.db", "sqlite:///~/tune.db"),  # the store expands ~ where it opens the file
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("postgresql://bob@db/ts", "postgresql://bob@db/ts"),
    ]:
        assert load_config(_write(tmp_path / "proj", base % written)).tune.storage == expected, written
    flag = load_config(_write(tmp_path / "proj", "name: x\ndata:\n  sources: [{path: a.csv}]\n"), ["tune.storage=sqlite:///tune.db"])
    assert flag.tune.storage == f"sqlite:///{tmp_path / 'proj' / 'tune.db'}"  # --storage too, as --set paths


def test_a_refused_storage_url_is_quoted_without_its_password() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"name": "x", "data": {"sources": [{"path": "a.csv"}]},
                      "tune": {"storage": ["postgresql://u:hunter2@h/db?password=hunter3"]}})
    assert "tune.storage: Input should be a valid string" in str(err.value)
    assert "(got ['postgresql://u:***@h/db?password=***'])" in str(err.value)
    assert "hunter" not in str(err.value)


def test_output_folders_expand_the_home_tilde(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`~/ds` made a folder named ~ in the cwd, and pyarrow (which expands ~) then did not find the dataset."""
    monkeypatch.setenv("HOME", str(tmp_path))
    path = _write(tmp_path, "name: x\ndata:\n  sources: [{path: a.csv}]\n  output_dir: ~/ds\n  collect_dir: ~/col\n"
                            "train: {output_dir: ~/runs/x}\n")
    cfg = load_config(path)
    assert (cfg.dataset_dir, cfg.data.collect_dir, cfg.run_dir) == (tmp_path / "ds", tmp_path / "col", tmp_path / "runs/x")
    assert load_config(path, ["data.output_dir=~/other"]).dataset_dir == tmp_path / "other"


def test_a_dotted_source_folder_is_found_beside_the_config_from_any_cwd(tmp_path: Path, monkeypatch) -> None:
    """`reviews.v2/` beside the config was looked for in the cwd: refused as "cannot tell the format" elsewhere."""
    (tmp_path / "proj" / "reviews.v2").mkdir(parents=True)
    path = _write(tmp_path / "proj", "name: x\ndata:\n  sources:\n    - path: reviews.v2\n    - path: gone.v3\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"cfg.yaml:5: data.sources.1: cannot tell the format of 'gone.v3'"):
        load_config(path)
    cfg = load_config(path, ["data.sources=[{path: reviews.v2}]"])
    assert (cfg.data.sources[0].kind, cfg.data.sources[0].path) == ("text_folder", tmp_path / "proj" / "reviews.v2")


def test_label_map_takes_numbers_as_class_names() -> None:
    """`{1: negative, 5: positive}` (merging star ratings) was refused as "Input should be a valid string"."""
    cfg = parse_config({"name": "x", "task": {"labels": ["negative", "positive"]},
                        "data": {"sources": [{"path": "a.csv"}], "annotate": {"label_map": {1: "negative", 5: "positive", "4.5": 2}}}})
    assert cfg.data.annotate.label_map == {"1": "negative", "5": "positive", "4.5": "2"}
    with pytest.raises(ConfigError, match="label_map"):
        parse_config({"name": "x", "data": {"sources": [{"path": "a.csv"}], "annotate": {"label_map": {True: "yes"}}}})


def test_text_overrides_keep_colons_and_braces(tmp_path: Path) -> None:
    """YAML read `Subject: {subject}` and `{review}` as mappings: refused as "Input should be a valid string"."""
    path = _write(tmp_path, "name: x\ndata:\n  sources: [{path: a.csv}]\n")
    cfg = load_config(path, ["task.description=Route a ticket: billing or tech", "task.text=Subject: {subject}",
                             "task.label={rating}", "data.sources.0.fields.text={review}", "data.split.seed=7"])
    assert (cfg.task.description, cfg.task.text, cfg.task.label) == ("Route a ticket: billing or tech",
                                                                     "Subject: {subject}", "{rating}")
    assert cfg.data.sources[0].fields == {"text": "{review}"} and cfg.data.split.seed == 7
    assert load_config(path, ["task.labels=[a, b]"]).task.labels == ["a", "b"]  # a list where a list is meant
    with pytest.raises(ConfigError, match=r"task.text: Input should be a valid string; YAML read a mapping"):
        load_config(_write(tmp_path, "name: x\ntask: {text: {review}}\ndata:\n  sources: [{path: a.csv}]\n"))


def test_an_override_reaches_into_a_section_written_as_null(tmp_path: Path) -> None:
    """config show, best.yaml and a run's config.json write `hyperparameters: null`: a --set into it was "not a section"."""
    path = _write(tmp_path, "name: x\ndata:\n  sources: [{path: a.csv}]\ntrain:\n  hyperparameters: null\n")
    assert load_config(path, ["train.hyperparameters.n_epochs=2"]).train.hyperparameters.n_epochs == 2


@pytest.mark.parametrize("name", ["TUNESMITH_HOME", "TUNESMITH_CACHE"])
def test_a_folder_variable_set_but_empty_is_refused(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`export TUNESMITH_HOME=$SHARED` with SHARED unset had put the store in the cwd, silently."""
    from tunesmith.config import cache_dir, data_home

    monkeypatch.setenv(name, " ")
    with pytest.raises(ConfigError, match=f"{name} is set but empty; unset it or give a folder"):
        (data_home if name == "TUNESMITH_HOME" else cache_dir)()


def test_a_blank_model_name_is_refused_not_taken_for_the_cwd(tmp_path: Path) -> None:
    """`model.name: ""` had been Path(""), the cwd: run from inside a model folder, that model was used silently."""
    path = tmp_path / "cfg.yaml"
    path.write_text("name: x\ndata:\n  sources: [{path: a.csv}]\nmodel: {name: ''}\n")
    with pytest.raises(ConfigError, match=r"model.name is blank; .*or leave it out \(null\) for the task's default"):
        load_config(path)


def test_a_folder_named_like_a_packaged_model_beside_the_config_is_warned_about(tmp_path: Path, capsys) -> None:
    """The packaged name wins; the folder beside the config had been ignored without a word."""
    (tmp_path / "minilm").mkdir()
    path = tmp_path / "cfg.yaml"
    path.write_text("name: x\ndata:\n  sources: [{path: a.csv}]\nmodel: {name: minilm}\n")
    assert load_config(path).model.name == "minilm"
    assert (f"model.name 'minilm' is the packaged model; the folder {tmp_path / 'minilm'} beside the config is not "
            "used (set model.name: ./minilm to use it)") in capsys.readouterr().err
    path.write_text("name: x\ndata:\n  sources: [{path: a.csv}]\nmodel: {name: ./minilm}\n")
    assert load_config(path).model.name == str(tmp_path / "minilm") and not capsys.readouterr().err
