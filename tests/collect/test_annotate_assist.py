"""Model-assisted labelling: confident suggestions become model annotations, the rest reach humans most
uncertain first; the real scorers (a fine-tuned run through the predictor, a zero-shot encoder) on tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tunesmith.collect.annotate import NewItem, Queue, add_items, create_task
from tunesmith.collect.annotate_assist import RunScorer, ZeroShotScorer, scorer_for, suggest
from tunesmith.errors import ConfigError
from tunesmith.store.db import Store

CONFIDENCE = {"sure pos": 0.97, "sure neg": 0.02, "unsure": 0.55, "coin flip": 0.5, "leaning pos": 0.8}


class FakeScorer:
    """P(pos) per text, as a model would give it: the interface boundary of suggest()."""

    name = "fake"
    labels = ["pos", "neg"]

    def proba(self, texts: list[str]) -> np.ndarray:
        p = np.array([CONFIDENCE[t] for t in texts])
        return np.stack([p, 1 - p], axis=1)


@pytest.fixture()
def queue(tmp_path: Path) -> Queue:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    create_task(store, "food", ["pos", "neg"])
    add_items(store, "food", [NewItem(t.replace(" ", "-"), t) for t in CONFIDENCE])
    return Queue(store, "food")


def test_confident_suggestions_are_accepted_and_the_rest_queue_by_uncertainty(queue: Queue) -> None:
    queue.label("ann", "leaning-pos", "neg")  # labelled by a human already: not scored
    result = suggest(queue, FakeScorer(), accept_above=0.9)
    assert (result.scored, result.accepted, result.queued, result.annotator) == (4, 2, 2, "model:fake")
    labels = {i.item_id: i.labels for i in queue.items()}
    assert labels["sure-pos"] == {"model:fake": "pos"} and labels["sure-neg"] == {"model:fake": "neg"}
    order = []
    while (item := queue.next("bob")) is not None:
        order.append(item["item_id"])
        queue.label("bob", item["item_id"], "pos")
    assert order == ["coin-flip", "unsure"]  # most uncertain first; accepted and labelled items are done
    first = next(i for i in queue.items() if i.item_id == "coin-flip")
    assert first.suggestion["proba"] == {"pos": 0.5, "neg": 0.5} and first.suggestion["model"] == "model:fake"
    with pytest.raises(ConfigError, match=r"accept-above must be in \(0, 1\]"):
        suggest(queue, FakeScorer(), accept_above=1.5)


def test_without_a_threshold_nothing_is_accepted_but_the_page_shows_the_suggestion(queue: Queue) -> None:
    suggest(queue, FakeScorer())
    item = queue.next("ann")
    assert item["item_id"] == "coin-flip" and item["suggestion"] == {"label": "pos", "confidence": 0.5, "model": "model:fake"}
    assert queue.progress()["done"] == 0


def test_a_fine_tuned_run_suggests_through_the_predictor(tmp_path: Path, tiny_bert: Path, queue: Queue) -> None:
    from tests.test_train import project
    from tunesmith.training import train

    run = train(project(tmp_path, tiny_bert, train_spec={"max_steps": 2, "evals_per_epoch": 1}, n=24))
    scorer = scorer_for(str(run), ["pos", "neg"])
    assert isinstance(scorer, RunScorer)
    proba = scorer.proba(["great friendly food", "stale bitter bread"])
    assert proba.shape == (2, 2) and np.allclose(proba.sum(axis=1), 1)
    reordered = RunScorer(run, ["neg", "pos"]).proba(["great friendly food", "stale bitter bread"])
    assert np.allclose(reordered, proba[:, ::-1])  # columns follow the task's label order, not the run's
    result = suggest(queue, scorer, accept_above=1.0)
    assert result.scored == 5 and result.annotator == f"model:{run.name}"
    assert all(set(i.suggestion["proba"]) == {"pos", "neg"} for i in queue.items())
    with pytest.raises(ConfigError, match="the run predicts"):
        RunScorer(run, ["pos", "neg", "mixed"])
    with pytest.raises(ConfigError, match="run folder .* or `zero-shot"):
        scorer_for(str(tmp_path), ["pos", "neg"])


def test_zero_shot_scores_each_label_by_similarity(tiny_bert: Path) -> None:
    scorer = ZeroShotScorer(["pos", "neg"], model=str(tiny_bert))
    proba = scorer.proba(["pos", "neg", "the food"])
    assert proba.shape == (3, 2) and np.allclose(proba.sum(axis=1), 1)
    assert proba[0].argmax() == 0 and proba[1].argmax() == 1  # a text equal to a label's name is most like it
    assert scorer.name == f"zero-shot-{tiny_bert.name}"


@pytest.mark.parametrize(("extra", "message"), [
    ([], "--accept-above needs --suggest-from"),  # it was silently ignored: nothing accepted, no word why
    (["--suggest-from", "zero-shot"], "must be in (0, 1]"),  # said only after the model was loaded and rows added
])
def test_accept_above_is_checked_before_anything_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str], extra: list[str],
                                                           message: str) -> None:
    import tunesmith.collect.annotate_app as annotate_app
    import tunesmith.collect.annotate_assist as annotate_assist
    from tunesmith.cli import run

    def never(*_: object, **__: object) -> None:
        raise AssertionError("reached past the flag check")

    monkeypatch.setattr(annotate_assist, "scorer_for", never)  # no model is loaded
    monkeypatch.setattr(annotate_app, "serve", never)  # no page is served
    data = tmp_path / "food.jsonl"
    data.write_text('{"text": "lovely soup"}\n')
    db = tmp_path / "store.db"
    threshold = "0.9" if not extra else "1.5"
    code = run(["annotate", "label", str(data), "--labels", "pos,neg", "--accept-above", threshold,
                "--db", f"sqlite:///{db}", *extra])
    assert code == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not db.exists()  # nothing created or added either
