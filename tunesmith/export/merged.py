"""`--format merged`: the adapter (if any) merged into the base weights, a plain transformers folder."""

from __future__ import annotations

from pathlib import Path

from tunesmith.artifacts import MODEL_DIR, Run
from tunesmith.config import GENERATIVE_TASKS, TaskType
from tunesmith.export.check import CHAT_CHECK_ROWS, SequenceCheck, test_split
from tunesmith.export.folder import (
    POOLING_MODULE,
    ExportResult,
    finish,
    merged_sequence_model,
    save_transformers_folder,
    write_run_folder,
)


def export_merged(run: Run, target: Path, check: bool) -> ExportResult:
    task = TaskType(run.manifest.task)
    if task in GENERATIVE_TASKS:
        return export_merged_chat(run, target, check)
    checker = SequenceCheck(run, check)
    model, tokenizer = merged_sequence_model(run, checker.predictor)
    save_transformers_folder(model, tokenizer, target / MODEL_DIR)
    del model
    info = {"mean_pooling_remote_code": (target / MODEL_DIR / f"{POOLING_MODULE}.py").is_file()}
    write_run_folder(run, target, "merged", info)
    from tunesmith.inference.predictor import Predictor

    result, found = checker.against(Predictor(target, device="cpu").predict)
    return finish(target, "merged", result, found)


def export_merged_chat(run: Run, target: Path, check: bool) -> ExportResult:
    from tunesmith.inference.generation import ChatModel
    from tunesmith.models.loading import load_run

    loaded = load_run(run, merge=True)
    model, tokenizer, stops = loaded.model, loaded.tokenizer, loaded.stop_token_ids
    model.generation_config.eos_token_id = list(stops)  # plain `generate` stops at the end of a turn too
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    reference = None
    table, skipped = test_split(run) if check else (None, "self-check skipped (--no-check)")
    if table is not None:
        rows = table.slice(0, CHAT_CHECK_ROWS).to_pylist()
        conversations = [r["messages"] + ([{"role": "assistant", "content": r["chosen"]}] if "chosen" in r else [])
                         for r in rows]
        reference = ChatModel.from_run(run.path).score(conversations)
    save_transformers_folder(model, tokenizer, target / MODEL_DIR)
    del model
    write_run_folder(run, target, "merged", {})
    if reference is None:
        return finish(target, "merged", {"skipped": skipped}, [])
    exported = ChatModel.from_run(target).score(conversations)
    result = {"split": "test", "n": len(conversations), "tokens": reference.tokens, "loss_run": reference.loss,
              "loss_export": exported.loss, "loss_diff": exported.loss - reference.loss,
              "token_accuracy_run": reference.mean_token_accuracy, "token_accuracy_export": exported.mean_token_accuracy}
    found = []
    if abs(result["loss_diff"]) > 1e-3:
        found.append(f"the merged model's test loss differs from the run's by {result['loss_diff']:+.4f}")
    return finish(target, "merged", result, found)
