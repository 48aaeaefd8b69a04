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


def test_rouge_counts_words_of_every_script_and_english_scores_as_rouge_score_does() -> None:
    """rouge-score's tokenizer keeps [a-z0-9] only: a Russian, Greek or Chinese answer equal to its reference scored 0."""
    from rouge_score import rouge_scorer

    for same in ("Москва — столица России", "Η Αθήνα είναι η πρωτεύουσα", "北京是中国的首都", "Crème brûlée à Zürich"):
        assert answer_metrics([same], [same])["rouge_l"] == 1.0
    assert answer_metrics(["北京是首都"], ["北京是中国的首都"])["rouge_l"] == pytest.approx(2 * 5 / 13)  # 5 of 5 and 8 chars
    reference = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    english = ["The running dogs were jumping over fences", "A dog runs and jumps over the fence", "don't stop, it's 2024"]
    for r in english:
        for p in english:
            assert answer_metrics([p], [r])["rouge_l"] == pytest.approx(reference.score(r, p)["rougeL"].fmeasure)


def test_token_f1_and_exact_match_count_cjk_characters_and_strip_unicode_punctuation() -> None:
    """An unspaced Chinese answer was one token (one character wrong of four: token F1 0, ROUGE-L 0.75), and the
    full-width "。" was not punctuation ("是的。" did not match "是的")."""
    assert answer_metrics(["我喜欢猫"], ["我喜欢狗"])["token_f1"] == pytest.approx(0.75)
    assert answer_metrics(["是的。"], ["是的"])["exact_match"] == 1.0
    assert normalize("«Да», — сказал он…") == "да сказал он"
    assert token_f1("東京です", "東京") == pytest.approx(2 * 1 * 0.5 / 1.5)  # 2 of 4 characters, both of 2
    assert token_f1("👍", "") == 0.0 and token_f1("👍", "👍") == 1.0  # no words, but not an empty answer


def test_english_token_f1_and_exact_match_are_unchanged() -> None:
    """Values the whitespace-split SQuAD scoring gave before words were counted as ROUGE-L counts them."""
    m = answer_metrics(["The dog's well-known trick: $5 + 3!", "an apple a day", "It's 2024, isn't it?"],
                       ["dogs well known trick 5 3", "apple day", "its 2024 isnt it"])
    assert m["exact_match"] == pytest.approx(2 / 3)
    assert m["token_f1"] == pytest.approx((2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6) + 1 + 1) / 3)  # "wellknown" ≠ "well known"


def test_multiple_choice_answers_a_b_c_d_are_labels() -> None:
    """"A" was removed as an article: A/B/C/D data had no answer accuracy, and an empty answer matched every "A"."""
    assert normalize("A") == "a" and normalize("The") == "the" and normalize("a cat") == "cat"
    references = ["A", "B", "C", "D"] * 3
    predictions = ["A.", "b", "C", "The answer is D"] * 2 + ["", "", "", ""]
    out = answer_metrics(predictions, references)
    assert out["answer_accuracy"] == pytest.approx(8 / 12) and out["exact_match"] == pytest.approx(6 / 12)


def test_an_article_label_inside_a_longer_answer_is_found() -> None:
    """"The answer is A" and "A) Paris" were unparsed (the article "a" removed) while the same with B was right."""
    labels = ["a", "b", "c"]
    assert [extract_label(answer, labels) for answer in ("The answer is A", "A) Paris", "Answer: A.", "It is a B",
                                                         "A car? No: C", "The answer is B")] == ["a", "a", "a", "b", "c", "b"]
    out = answer_metrics(["The answer is A", "The answer is B", "The answer is C", "A) Paris", "B) Rome", "C) Oslo"],
                         ["A", "B", "C", "A", "B", "C"])
    assert out["answer_accuracy"] == 1.0 and out["answer_unparsed"] == 0.0


def test_no_answers_have_no_scores_rather_than_zero() -> None:
    """A chat split where no conversation is asked (each opens with its answer) reported exact match 0.0."""
    assert answer_metrics([], []) == {"exact_match": None, "token_f1": None, "rouge_l": None}
