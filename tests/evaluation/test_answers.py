from __future__ import annotations

import pytest

from tunesmith.evaluation.answers import answer_metrics, extract_label, label_set, normalize, token_f1


def test_normalisation_follows_squad() -> None:
    assert normalize("The  Capital, of France!") == "capital of france"
    assert token_f1("Paris is the capital", "the capital is Paris.") == 1.0
    assert token_f1("Paris", "Rome") == 0.0
    assert token_f1("Paris, France", "Paris") == pytest.approx(2 / 3)  # precision 1/2, recall 1


def test_answer_metrics_exact_f1_and_rouge() -> None:
    m = answer_metrics(["Paris.", "it is rome", "no idea"], ["paris", "Rome", "Madrid"])
    assert m["exact_match"] == pytest.approx(1 / 3)
    assert m["token_f1"] == pytest.approx((1 + 0.5 + 0) / 3)  # "it is rome" vs "rome": P 1/3, R 1
    assert 0 < m["rouge_l"] < 1
    assert "answer_accuracy" not in m  # three different free-text answers are not a label set
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        answer_metrics(["a", "b"], ["a"])


def test_classification_style_answers_are_extracted() -> None:
    refs = ["positive", "negative", "positive", "negative", "Positive"]
    assert label_set(refs) == ["negative", "positive"]
    assert extract_label("I think it's negative, not positive.", ["negative", "positive"]) == "negative"
    assert extract_label("Sentiment: POSITIVE", ["negative", "positive"]) == "positive"
    assert extract_label("hard to say", ["negative", "positive"]) is None
    m = answer_metrics(["positive", "The review is negative.", "negative", "unclear", "positive!"], refs)
    assert m["answer_accuracy"] == pytest.approx(3 / 5)
    assert m["answer_unparsed"] == pytest.approx(1 / 5)
