"""Evaluation of chat and preference runs on a held-out split, the untuned base model beside them.

Chat: loss, perplexity and mean token accuracy on the assistant tokens (those training scores),
then each test conversation's last answer is generated and compared with the reference (exact
match, token F1, ROUGE-L, and answer accuracy when the answers are a small label set).
Preference (DPO): how often each model prefers the chosen answer (higher log-likelihood per token), the
DPO implicit-reward accuracy against the base, and generated answers against the chosen ones.
"""

from __future__ import annotations

import math
import time
from typing import Any

from tunesmith.artifacts import DatasetVersion, Run
from tunesmith.config import TaskType
from tunesmith.errors import DataError
from tunesmith.evaluation.answers import answer_metrics
from tunesmith.inference.generation import ChatModel, Conversation


def _base(run: Run, tuned: ChatModel) -> tuple[ChatModel | None, str]:
    """The model the run started from: the adapter switched off, or the base loaded once more."""
    if tuned.has_adapter:
        return None, "base model = the same weights with the adapter switched off"
    return ChatModel.base_of(run), f"base model = {run.manifest.base_model}, the model the run started from"


def _prompts_and_references(rows: list[dict[str, Any]], task: TaskType) -> tuple[list[Conversation], list[str]]:
    """Each test conversation up to its last trained answer, and that answer."""
    prompts, references = [], []
    for row in rows:
        if task == TaskType.preference:
            prompts.append(row["messages"])
            references.append(row["chosen"])
            continue
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight") != 0)
        prompts.append(messages[:last])
        references.append(messages[last]["content"])
    return prompts, references


def _token_metrics(model: ChatModel, conversations: list[Conversation]) -> dict[str, float]:
    s = model.score(conversations)
    return {"loss": s.loss, "perplexity": s.perplexity, "mean_token_accuracy": s.mean_token_accuracy}


def _preference_metrics(model: ChatModel, prompts: list[Conversation], rows: list[dict[str, Any]]) -> tuple[dict[str, float], list[float]]:
    chosen = model.token_stats([[*p, {"role": "assistant", "content": r["chosen"]}] for p, r in zip(prompts, rows, strict=True)])
    rejected = model.token_stats([[*p, {"role": "assistant", "content": r["rejected"]}] for p, r in zip(prompts, rows, strict=True)])
    # Per token, so a longer chosen answer is not penalised for its length; the summed margins feed
    # DPO's implicit reward, which compares against the reference model and cancels length out.
    per_token = [c[0] / max(c[1], 1) - r[0] / max(r[1], 1) for c, r in zip(chosen, rejected, strict=True)]
    n = max(len(per_token), 1)
    metrics = {"preference_accuracy": sum(m > 0 for m in per_token) / n, "logp_margin": sum(per_token) / n}
    return metrics, [c[0] - r[0] for c, r in zip(chosen, rejected, strict=True)]


def evaluate_chat(run: Run, version: DatasetVersion, split: str, notes: list[str], base_model: bool,
                  table: Any = None) -> dict[str, Any]:
    """Score `split` (`table`: its rows to score, when not all of them)."""
    cfg = run.config
    task = TaskType(run.manifest.task)
    rows = (version.table(split) if table is None else table).to_pylist()
    if not rows:
        raise DataError(f"{version.path}: split '{split}' is empty")
    tuned = ChatModel.from_run(run.path)
    base, base_note = _base(run, tuned) if base_model else (None, "")
    prompts, references = _prompts_and_references(rows, task)
    # A conversation whose only trained answer opens it has nothing to answer: its tokens are scored, it is not asked.
    answerable = [(p, r) for p, r in zip(prompts, references, strict=True) if p]
    if len(answerable) < len(prompts):
        notes.append(f"{len(prompts) - len(answerable)} of {len(prompts)} conversations open with the answer they are "
                     "scored on (no message before it): in the token metrics, not asked for generated answers")
    limit = cfg.eval.max_generations
    if limit and len(answerable) > limit:
        notes.append(f"answers generated for the first {limit} of {len(answerable)} conversations "
                     "(eval.max_generations)")
    asked = answerable[:limit] if limit else answerable
    gen_prompts, gen_refs = [p for p, _ in asked], [r for _, r in asked]

    def measure(model: ChatModel) -> tuple[dict[str, Any], list[str], list[float]]:
        started = time.perf_counter()
        margins: list[float] = []
        if task == TaskType.preference:
            metrics, margins = _preference_metrics(model, prompts, rows)
        else:
            metrics = _token_metrics(model, [row["messages"] for row in rows])
        # No conversation to answer: the answer scores are undefined ("–"), not 0.0 for answers never generated
        answers = model.generate(gen_prompts, max_new_tokens=cfg.eval.max_new_tokens) if gen_prompts else []
        texts = [a.text for a in answers]
        metrics.update(answer_metrics(texts, gen_refs))
        metrics["stopped"] = sum(a.finish_reason == "stop" for a in answers) / len(answers) if answers else None
        metrics["answer_tokens"] = sum(a.completion_tokens for a in answers) / len(answers) if answers else None
        metrics["seconds"] = round(time.perf_counter() - started, 1)
        return metrics, texts, margins

    metrics, tuned_answers, tuned_margins = measure(tuned)
    base_metrics, base_answers = None, None
    if base_model:
        if base is None:
            with tuned.base_model():
                base_metrics, base_answers, base_margins = measure(tuned)
        else:
            base_metrics, base_answers, base_margins = measure(base)
        notes.append(base_note)
        if task == TaskType.preference:
            # DPO's implicit reward: beta * (log pi - log pi_ref); it ranks chosen above rejected how often?
            wins = [t > b for t, b in zip(tuned_margins, base_margins, strict=True)]
            metrics["reward_accuracy"] = sum(wins) / max(len(wins), 1)
    samples = [{"prompt": _last_user(p), "reference": r, "tuned": t, **({"base": base_answers[i]} if base_answers else {})}
               for i, (p, r, t) in enumerate(zip(gen_prompts, gen_refs, tuned_answers, strict=True)) if i < cfg.eval.samples]
    notes.append("loss, perplexity and token accuracy are over the assistant tokens training scores; answers are greedy, "
                 f"at most {cfg.eval.max_new_tokens} new tokens; 'stopped' = share of answers that ended by themselves")
    m = run.manifest
    return {
        "run": str(run.path), "model": m.base_model, "method": m.method, "task": task.value,
        "dataset": str(version.path), "dataset_fingerprint": version.manifest.fingerprint, "split": split,
        "n": len(rows), "metrics": _finite(metrics), "baselines": {}, "base_model": _finite(base_metrics),
        "samples": samples, "notes": notes,
    }


def _last_user(messages: Conversation) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def _finite(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if metrics is None else {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
