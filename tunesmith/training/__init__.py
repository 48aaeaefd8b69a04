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
from pathlib import Path
from typing import Any

from tunesmith.config import GENERATIVE_TASKS, ProjectConfig


def train(cfg: ProjectConfig, *, dataset_dir: Path | None = None, resume: Path | None = None,
          overwrite: bool = False, callbacks: Sequence[Any] = ()) -> Path:
    """Train the config's task into a run folder; `callbacks`: extra TrainerCallbacks (a job's reporter)."""
    from tunesmith.training.run import run_lock

    with run_lock(Path(resume or cfg.run_dir)):
        if cfg.task.type in GENERATIVE_TASKS:
            from tunesmith.training.chat import train_chat

            return train_chat(cfg, dataset_dir=dataset_dir, resume=resume, overwrite=overwrite, callbacks=callbacks)
        from tunesmith.training.sequence import train_sequence

        return train_sequence(cfg, dataset_dir=dataset_dir, resume=resume, overwrite=overwrite, callbacks=callbacks)
