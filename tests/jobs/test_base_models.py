"""`--base-model` targets are checked when the server and a worker start: a typo had been accepted, and every job
naming it failed in the worker as a server_error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.config import JobsSpec, ServeSpec
from tunesmith.errors import ConfigError
from tunesmith.jobs.worker import Worker
from tunesmith.models.catalog import check_base_models
from tunesmith.store.db import Store


def test_a_mistyped_base_model_stops_the_server_and_the_worker_at_start(tmp_path: Path, tiny_llama: Path) -> None:
    from tunesmith.serve.server import serve

    typo = JobsSpec(db=f"sqlite:///{tmp_path / 'db.sqlite'}", base_models=[str(tiny_llama), "gpt-4o-mini=smolm2-135m"])
    said = (r"--base-model gpt-4o-mini=smolm2-135m: model 'smolm2-135m' is neither a packaged model .*; did you mean "
            r"the packaged model 'smollm2-135m'\? Set --base-model to it")
    with pytest.raises(ConfigError, match=said):
        check_base_models(typo)
    with pytest.raises(ConfigError, match=said):
        serve([], ServeSpec(port=0), log=False, jobs=typo)
    with pytest.raises(ConfigError, match=said):
        Worker(Store(typo.db), typo).run(once=True)
    not_a_model = JobsSpec(base_models=[f"base={tmp_path}"])  # a folder, but no model in it
    with pytest.raises(ConfigError, match=rf"--base-model base={tmp_path}: model folder {tmp_path} has no config.json"):
        check_base_models(not_a_model)
    check_base_models(JobsSpec(base_models=[str(tiny_llama), f"gpt-4o-mini={tiny_llama}", "smollm2-135m"]))
