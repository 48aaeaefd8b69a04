from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_bert, build_tiny_llama, build_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach a model hub
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# The default store (commands run without --db) lives in a fresh folder per test process, never in the
# user's own TUNESMITH_HOME, and two test workers never share one.
os.environ["TUNESMITH_HOME"] = tempfile.mkdtemp(prefix="tunesmith-test-home-")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each (the servers and trainers they start
    # inherit it), or the workers' thread pools fight over the cores and both slow down.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a tokenizer alone stands for a model in the data tests: one with a long context, as their max_length asks
    return build_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer"), model_max_length=8192)


@pytest.fixture(scope="session")
def tiny_chat_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tiny-chat-tokenizer"), chat=True, model_max_length=8192)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture()
def make_config(tmp_path: Path, tiny_tokenizer: Path):
    """Build a validated ProjectConfig for tmp_path data, with the tiny tokenizer as the model."""
    from tunesmith.config import parse_config

    def make(sources: list[dict], task: dict | None = None, model: str | Path | None = None, **data) -> object:
        raw = {
            "name": "t",
            "task": task or {},
            "data": {"sources": sources, "output_dir": str(tmp_path / "out"), **data},
            "model": {"name": str(model or tiny_tokenizer)},
        }
        return parse_config(raw).resolve_paths(tmp_path)

    return make


PG_URL = os.environ.get("TUNESMITH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")  # the machine's server


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path):
    """A fresh, empty database per test: an SQLite file, or a schema of its own on the real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    import uuid

    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as c:
        c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()
