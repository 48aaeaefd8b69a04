"""Loading a finished run's model: the one place that knows how a run folder becomes a model.

A run's model/ holds either full weights or a PEFT adapter over the base model named in run.json.
The base is found at `base_model_path`, or, when that folder is gone (another machine, a cleared
cache), by resolving `base_model` again (a packaged model is converted anew). A base that is itself
a run (DPO after SFT) is loaded with its own adapter merged in. Inference, evaluation, serving and
training that continues from a run all come through here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.artifacts import Run, RunManifest, is_run
from tunesmith.config import GENERATIVE_TASKS, TaskType
from tunesmith.errors import ConfigError, DataError


@dataclass
class LoadedRun:
    model: Any
    tokenizer: Any
    stop_token_ids: list[int]  # chat runs: the tokens that end an answer; [] for sequence runs
    base_dir: Path | None  # the base model folder an adapter sits on (None: model/ holds full weights)


def base_model_dir(manifest: RunManifest) -> Path:
    """The folder of the model a run was trained from (a model folder, or a run folder)."""
    path = Path(manifest.base_model_path)
    if path.is_dir():
        return path
    from tunesmith.models.catalog import resolve_model_dir

    try:
        return resolve_model_dir(manifest.base_model)
    except ConfigError as err:
        raise DataError(f"the base model of run '{manifest.name}' is gone from {path}, and '{manifest.base_model}' "
                        f"cannot be found again: {err}") from None


def load_run(run: Run | str | Path, *, merge: bool = False, device: str | None = None,
             shared: dict[str, Any] | None = None, adapter_name: str = "default") -> LoadedRun:
    """The model and tokenizer of a run (classification, regression or chat), in eval mode.

    merge: fold an adapter into the weights (to train on from it, or to export it).
    shared: chat adapters over the same base share one PEFT model: {base folder: PeftModel}; the
        adapter is loaded into it under `adapter_name` (the caller switches adapters per call).
    """
    from transformers import AutoTokenizer

    run = run if isinstance(run, Run) else Run(run)
    m = run.manifest
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    task = TaskType(m.task)
    base_dir = base_model_dir(m) if m.adapter and not m.merged else None
    stops: list[int] = []
    if task in GENERATIVE_TASKS:
        from tunesmith.tasks.chat import stop_token_ids

        stops = list(m.stop_token_ids or stop_token_ids(tokenizer))
        model = _causal(run, base_dir, merge, shared, adapter_name)
    else:
        model = _sequence(run, base_dir, merge)
    if device is not None:
        model = model.to(device)
    return LoadedRun(model.eval(), tokenizer, stops, base_dir)


def _sequence(run: Run, base_dir: Path | None, merge: bool) -> Any:
    from safetensors import SafetensorError

    from tunesmith.models.sequence import (
        damaged_weights,
        load_for_sequence_task,
        load_trained_sequence_model,
        pools_last_token,
    )

    if base_dir is None:
        return load_trained_sequence_model(run.model_dir)
    from peft import PeftModel

    m = run.manifest
    if run.prompt_tuned and pools_last_token(base_dir, run.config.model.pooling):  # trained before training refused it
        raise DataError(f"{run.path}: a prompt-tuning run on the decoder {m.base_model}, whose classifier reads the last "
                        "position, padding for all but a batch's longest text, so its predictions depend on the batch "
                        "(training refuses this now); train it again with train.method lora or ia3")
    try:
        base = load_for_sequence_task(base_dir, TaskType(m.task), m.labels, pooling=run.config.model.pooling)
    except (SafetensorError, OSError) as err:  # a cut base model: name its file, not "internal error: SafetensorError"
        raise damaged_weights(base_dir, err) from err
    with _adapter_loading(run.model_dir):
        model = PeftModel.from_pretrained(base, run.model_dir)
    return model.merge_and_unload() if merge else model


def _causal(run: Run, base_dir: Path | None, merge: bool, shared: dict[str, Any] | None, adapter_name: str) -> Any:
    if base_dir is None:
        return load_causal_lm(run.model_dir)
    if is_run(base_dir):  # trained on from another run (DPO after SFT): that run, its adapter merged in
        base, key = load_run(base_dir, merge=True).model, None
    else:
        key = str(base_dir.resolve()) if shared is not None and not merge else None  # a merged model is its own
        if key in (shared or {}):
            with _adapter_loading(run.model_dir):
                shared[key].load_adapter(str(run.model_dir), adapter_name=adapter_name)  # type: ignore[index]
            return shared[key]  # type: ignore[index]
        base = load_causal_lm(base_dir)
    from peft import PeftModel

    with _adapter_loading(run.model_dir):
        model = PeftModel.from_pretrained(base, run.model_dir, adapter_name=adapter_name)
    if merge:
        return model.merge_and_unload()
    if key is not None and shared is not None:
        shared[key] = model
    return model


def load_causal_lm(model_dir: Path) -> Any:
    """A causal LM folder in fp32 (CPU training and inference; GPU callers cast as they need)."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    from tunesmith.models.catalog import model_config
    from tunesmith.models.sequence import damaged_weights

    config = model_config(model_dir)  # outside the try: a config that does not load is no weights file
    try:
        return AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=torch.float32)
    except (SafetensorError, OSError) as err:  # a cut copy surfaced as "internal error: SafetensorError: ..."
        raise damaged_weights(model_dir, err) from err


@contextmanager
def _adapter_loading(adapter_dir: Path) -> Iterator[None]:
    """A PEFT adapter's weights that do not load (a cut adapter_model.safetensors) as a DataError naming the file,
    worded as models/sequence.py's damaged_weights() words a full model's."""
    from peft.utils.constants import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, OSError) as err:
        name = next((f for f in (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME) if (adapter_dir / f).is_file()),
                    SAFETENSORS_WEIGHTS_NAME)
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise DataError(f"{adapter_dir / name}: damaged or partly copied ({reason}); "
                        "re-copy the run or train again") from err
