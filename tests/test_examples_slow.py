"""The shipped example configs prepare their real packaged data (minutes, so marked slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.config import load_config
from tunesmith.data.prepare import prepare

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["food_reviews", "vader_regression", "chatterbot_chat", "chatterbot_topics"])
def test_example_prepares(name: str, tmp_path: Path) -> None:
    version = prepare(load_config(EXAMPLES / f"{name}.yaml"), tmp_path / name)
    c = version.manifest.counts
    assert c["train"] + c["validation"] + c["test"] + c["quarantine"] == c["input"] > 100
    assert c["test"] > 0 and c["validation"] > 0
