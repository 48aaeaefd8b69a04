"""Generated answers against reference answers: exact match, token F1, ROUGE-L, extracted-answer accuracy.

Exact match and token F1 follow the SQuAD evaluation (lowercase, no punctuation or articles,
whitespace collapsed), with the punctuation of every script removed and token F1 counting words as ROUGE-L does
(a Han, kana or Hangul character is a word); ROUGE-L is Google's `rouge-score` (LCS-based F-measure, English words
stemmed, words of every script counted). When the
references come from a small fixed set (classification-style chat data, e.g. answers "positive" /
"negative"), the answer is also extracted from the generation and scored as a classification.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
# SQuAD's ASCII punctuation (symbols such as "$" or "+" included, as before) and every Unicode punctuation mark:
# "是的。" is "是的" as "yes." is "yes"
_PUNCTUATION = set(string.punctuation)
MAX_CLASSES = 20  # more distinct answers than this is free text, not a label set


def normalize(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION and not unicodedata.category(ch).startswith("P"))
    words = text.split()
    kept = " ".join(_ARTICLES.sub(" ", text).split())
    # An answer that is only an article is that word: multiple-choice "A" became "", and an empty generation matched it
    return kept if kept or not words else " ".join(words)


def token_f1(prediction: str, reference: str) -> float:
    # Words as ROUGE-L finds them: Chinese and Japanese write without spaces, and a whole unspaced answer was one
    # token, so one character wrong of four scored 0. On ASCII text this is the whitespace split SQuAD uses.
    pred, ref = _WORDS.findall(normalize(prediction)), _WORDS.findall(normalize(reference))
    if not pred or not ref:  # no words: right only when nothing else differs either (an emoji is no empty answer)
        return float(normalize(prediction) == normalize(reference))
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def label_set(references: Sequence[str]) -> list[str] | None:
    """The distinct normalised answers when they look like labels (few, each repeated), else None."""
    counts = Counter(normalize(r) for r in references)
    if 2 <= len(counts) <= MAX_CLASSES and len(references) >= 2 * len(counts) and all(label for label in counts):
        return sorted(counts)
    return None


def extract_label(prediction: str, labels: Sequence[str]) -> str | None:
    """The label the answer states: the whole answer, else the label mentioned first (longest on ties)."""
    norm = normalize(prediction)
    if norm in labels:
        return norm
    found = [(at, -len(label), label) for label in labels if (at := _position(prediction, norm, label)) is not None]
    return min(found)[2] if found else None


def _position(prediction: str, norm: str, label: str) -> int | None:
    """Where `label` is first stated in the normalised answer. An article label (multiple-choice "A") is gone from
    `norm`: it counts where the answer has it before punctuation or at the end ("is A", "A) Paris"), not as "a car"."""
    if not _ARTICLES.fullmatch(label):
        m = re.search(rf"\b{re.escape(label)}\b", norm)
        return m.start() if m else None
    m = re.search(rf"(?<!\w){label}(?=\s*(?:[^\w\s]|$))", prediction.lower())
    return len(normalize(prediction[: m.start()])) if m else None


# Words in any script (rouge-score's own tokenizer keeps only [a-z0-9]: Russian, Greek or Chinese answers scored ROUGE-L 0
# however right); a Han, kana or Hangul character is a word of its own, as Chinese and Japanese write without spaces.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORDS = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


class _AnyScript:
    """rouge-score's tokenizer for every script: lowercased words, the English ones stemmed as rouge-score stems them
    (Porter, words over 3 characters), so English scores stay what they were."""

    def __init__(self) -> None:
        from nltk.stem import porter

        self.stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        return [self.stemmer.stem(w) if len(w) > 3 and w.isascii() else w for w in _WORDS.findall(text.lower())]


def answer_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    from rouge_score import rouge_scorer

    if not references:  # nothing generated: undefined, not 0.0 (which reads as every answer wrong)
        return {"exact_match": None, "token_f1": None, "rouge_l": None}
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_AnyScript())
    n = len(references)
    out: dict[str, Any] = {
        "exact_match": sum(normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True)) / n,
        "token_f1": sum(token_f1(p, r) for p, r in zip(predictions, references, strict=True)) / n,
        "rouge_l": sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)) / n,
    }
    labels = label_set(references)
    if labels:
        extracted = [extract_label(p, labels) for p in predictions]
        out["answer_accuracy"] = sum(e == normalize(r) for e, r in zip(extracted, references, strict=True)) / n
        out["answer_unparsed"] = sum(e is None for e in extracted) / n
    return out
