"""`tunesmith train`: a prepared dataset + a base model -> a run folder (artifacts.py describes it).

    run.py       what every recipe shares: the run folder, resume, Trainer arguments, the files a run writes
    dataset.py   the dataset a run trains on (prepared again, or refused, when it was made with other settings)
    methods.py   full, head-only and PEFT methods applied to the loaded model
    sequence.py  classification and regression (a head, the Trainer)
    chat.py      chat (TRL SFT) and preference (TRL DPO) tuning of causal LMs

The recipes import run.py; nothing below imports this dispatcher.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tunesmith.config import GENERATIVE_TASKS, ProjectConfig
from tunesmith.errors import ConfigError


class RunBusy(ConfigError):
    """Another training holds the run folder's lock: for a jobs worker, a stalled one it took a job over from,
    so the job waits for it rather than failing."""


def train(cfg: ProjectConfig, *, dataset_dir: Path | None = None, resume: Path | None = None,
          overwrite: bool = False, callbacks: Sequence[Any] = ()) -> Path:
    """Train the config's task into a run folder; `callbacks`: extra TrainerCallbacks (a job's reporter)."""
    from tunesmith.training.run import run_lock

    with ExitStack() as held:
        try:
            held.enter_context(run_lock(Path(resume or cfg.run_dir)))
        except ConfigError as err:  # the one error taking the lock raises: the folder is busy
            raise RunBusy(str(err)) from None
        if cfg.task.type in GENERATIVE_TASKS:
            from tunesmith.training.chat import train_chat

            return train_chat(cfg, dataset_dir=dataset_dir, resume=resume, overwrite=overwrite, callbacks=callbacks)
        from tunesmith.training.sequence import train_sequence

        return train_sequence(cfg, dataset_dir=dataset_dir, resume=resume, overwrite=overwrite, callbacks=callbacks)
