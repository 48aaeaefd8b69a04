"""Synthetic examples: templates with slots, or an instruct model writing or paraphrasing them.

  templates   each label's templates filled from `slots`: per_label rows per label, seeded, no
              filling repeated while unused ones remain
  generate    an instruct model writes per_label examples per label from a prompt per label ("*"
              for the rest): the packaged smollm2-135m, a local model folder, or any
              OpenAI-compatible endpoint (a teacher model) given by URL, with its key read from an
              environment variable at run time and never written anywhere
  paraphrase  the same models rewrite the real rows of the config's other sources, keeping their label

A model's text is kept only when it passes the filters: length (min_chars..max_chars), a simple
quality check (mostly letters, not an echo of the prompt, not the same words over and over), and no
exact or near duplicate (MinHash, the config's dedup settings) of the real data or of an earlier
generation. Every dropped generation is a line in the failure file with its reason; generation goes
on until per_label rows are kept or 3 x per_label tries are spent for a label, then the shortfall is
noted. Records are {"text", "label"}; provenance says the model, the method and the prompt.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunesmith.collect.sink import Sink
from tunesmith.config import HttpSpec, ProjectConfig, SourceSpec, SyntheticSpec, TaskType
from tunesmith.data import dedup
from tunesmith.data.clean import dedup_key
from tunesmith.errors import ConfigError
from tunesmith.tasks.text import TextCleaner

Say = Callable[[str], None]
TRIES_PER_ROW = 3  # a label stops after 3 x per_label tries: a model that cannot write it must not loop forever
LOCAL_BATCH = 16  # prompts generated together by the local model: much faster than one at a time on CPU
ENDPOINT_WORKERS = 4  # requests in flight to an endpoint: faster without hammering a teacher's rate limit
DEFAULT_GENERATE = ('Write one realistic example of {what} whose label is "{label}". Reply with the example text only: '
                    "no title, no quotes, no explanation.")
DEFAULT_PARAPHRASE = ("Rewrite the following text in other words, keeping its meaning and tone. Reply with the rewritten "
                      "text only.\n\nText: {text}")


def collect(cfg: ProjectConfig, index: int, spec: SourceSpec, sink: Sink, say: Say) -> None:
    syn = spec.synthetic
    assert syn is not None
    where = f"data.sources.{index}.synthetic"
    if cfg.task.type not in (TaskType.single_label, TaskType.multi_label):
        raise ConfigError(f"{where}: synthetic data is written as text + label, for classification tasks; "
                          f"task.type is {cfg.task.type.value}")
    if syn.method == "templates":
        _fill_templates(cfg, syn, where, sink, say)
        return
    real = real_rows(cfg, index, say)
    writer = _Endpoint(syn, spec.http) if syn.endpoint else _LocalModel(syn)
    check = Filter(cfg, syn, real)
    if syn.method == "generate":
        jobs = _generate_jobs(cfg, syn, where, real)
    else:
        jobs = _paraphrase_jobs(cfg, syn, where, real, sink)
    _write(syn, jobs, writer, check, sink, say)


# -- templates ---------------------------------------------------------------------------------------


def _fill_templates(cfg: ProjectConfig, syn: SyntheticSpec, where: str, sink: Sink, say: Say) -> None:
    if not syn.templates:
        raise ConfigError(f"{where}: method templates needs `templates` (label -> texts with {{slot}}s)")
    rng = random.Random(syn.seed)
    for label, texts in syn.templates.items():
        _known_label(cfg, label, f"{where}.templates")
        if not texts:
            raise ConfigError(f"{where}.templates.{label}: no templates listed")
        parsed = [(t, _slots_of(t, f"{where}.templates.{label}", syn.slots)) for t in texts]
        sizes = [math.prod(len(syn.slots[n]) for n in names) for _, names in parsed]
        for number in _draw(sum(sizes), syn.per_label, rng):
            template, values = _filling(number, parsed, sizes, syn.slots)
            sink.add({"text": template.format(**values), "label": label}, origin="templates", method="templates",
                     template=template)
        if syn.per_label > sum(sizes):
            note = (f"label {label}: its templates have only {sum(sizes)} distinct fillings, so {syn.per_label - sum(sizes)} "
                    f"of {syn.per_label} rows repeat one (data prepare removes duplicates); add templates or slot values")
            sink.notes.append(note)
            say(note)


def _draw(total: int, count: int, rng: random.Random) -> list[int]:
    """`count` filling numbers in a seeded random order, none repeated until all `total` were drawn."""
    out: list[int] = []
    while len(out) < count:
        out += rng.sample(range(total), min(total, count - len(out)))  # sampling a range never lists it
    return out


def _filling(number: int, parsed: list[tuple[str, list[str]]], sizes: list[int],
             slots: dict[str, list[str]]) -> tuple[str, dict[str, str]]:
    """Filling `number`: a template, then each of its slots' value as a digit of a mixed-radix number."""
    for (template, names), size in zip(parsed, sizes, strict=True):
        if number < size:
            values = {}
            for name in names:
                number, digit = divmod(number, len(slots[name]))
                values[name] = slots[name][digit]
            return template, values
        number -= size
    raise AssertionError("filling number out of range")  # pragma: no cover - numbers are drawn below the total


def _slots_of(template: str, where: str, slots: dict[str, list[str]]) -> list[str]:
    """The distinct slot names a template uses, each checked against `slots`."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ConfigError(f"{where}: template {template!r}: {err} (write a literal brace as {{{{ or }}}})") from None
    for name in names:
        if not name.isidentifier():
            raise ConfigError(f"{where}: template {template!r} has a slot {{{name}}}; slots are named, e.g. {{food}}")
        if name not in slots:
            raise ConfigError(f"{where}: template {template!r} uses slot '{name}', which is not in synthetic.slots "
                              f"(slots: {sorted(slots)})")
        if not slots[name]:
            raise ConfigError(f"{where}: template {template!r} uses slot '{name}', which has no values")
    return list(dict.fromkeys(names))


def _known_label(cfg: ProjectConfig, label: str, where: str) -> None:
    if cfg.task.labels and label not in cfg.task.labels:
        raise ConfigError(f"{where}: label '{label}' is not one of task.labels {list(cfg.task.labels)}")


# -- the real rows: what generations must not repeat, and what paraphrases rewrite -----------------------


@dataclass(frozen=True)
class RealRow:
    id: str  # the id `data prepare` gives it, so a paraphrase can name its original
    text: str  # cleaned as `data prepare` cleans it
    label: str
    trainable: bool  # not pre-assigned to validation or test: only these may be paraphrased


def real_rows(cfg: ProjectConfig, index: int, say: Say) -> list[RealRow]:
    """The labelled rows of the config's other, non-synthetic sources, as `data prepare` reads them."""
    from tunesmith.data.prepare import read_records
    from tunesmith.data.records import Canonicalizer, Corrections, Rejection

    canon = Canonicalizer(cfg, Corrections(cfg.data.annotate.corrections, "label"))
    rows = []
    for i, spec in enumerate(cfg.data.sources):
        if i == index or spec.kind == "synthetic":
            continue
        exprs = canon.fields_for(spec)
        canon.start_source()
        for raw in itertools.islice(read_records(cfg, i, spec, canon.header_fields(exprs, spec), say), spec.max_rows):
            row = canon.row(raw, exprs, spec)
            if isinstance(row, Rejection) or row["synthetic"]:
                continue
            label = row["labels"] if "labels" in row else row["label"]
            label = cfg.task.label_separator.join(label) if isinstance(label, list) else label
            rows.append(RealRow(row["id"], row["text"], label, spec.split in (None, "train")))
    return rows


# -- generate and paraphrase -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    label: str  # one of the keys of the jobs it comes from: tries are counted by it, so every label ends
    prompt: str
    extra: dict[str, Any]  # provenance beyond model/method/prompt (a paraphrase's original)


def _fill(prompt: str, **values: str) -> str:
    for name, value in values.items():  # plain replacement: prompts may hold other braces (JSON examples)
        prompt = prompt.replace("{" + name + "}", value)
    return prompt


def _prompt_for(syn: SyntheticSpec, label: str, default: str | None, where: str) -> str:
    prompt = syn.prompts.get(label, syn.prompts.get("*", default))
    if prompt is None:
        raise ConfigError(f"{where}.prompts: no prompt for label '{label}' and no \"*\" prompt for the others")
    return prompt


def _generate_jobs(cfg: ProjectConfig, syn: SyntheticSpec, where: str, real: list[RealRow]) -> dict[str, Iterator[Job]]:
    named = [label for label in syn.prompts if label != "*"]
    labels = list(cfg.task.labels or sorted(set(named) | {r.label for r in real}))
    if not labels:
        raise ConfigError(f"{where}: generate needs to know the labels: set task.labels, name them in "
                          "synthetic.prompts, or add a labelled source")
    for label in named:
        _known_label(cfg, label, f"{where}.prompts")
    what = f"a text for this task: {cfg.task.description}" if cfg.task.description else "a short text"
    default = DEFAULT_GENERATE.replace("{what}", what)
    return {label: itertools.repeat(Job(label, _fill(_prompt_for(syn, label, default, where), label=label), {}))
            for label in labels}


def _paraphrase_jobs(cfg: ProjectConfig, syn: SyntheticSpec, where: str, real: list[RealRow],
                     sink: Sink) -> dict[str, Iterator[Job]]:
    by_label: dict[str, list[RealRow]] = {}
    for row in real:
        if row.trainable:  # a paraphrase of a user's own test row would leak it into training
            by_label.setdefault(row.label, []).append(row)
    if not by_label:
        raise ConfigError(f"{where}: paraphrase rewrites the real rows of the config's other sources, and there are "
                          "none (sources sent whole to validation or test are not paraphrased)")
    rng = random.Random(syn.seed)
    jobs = {}
    for label in sorted(by_label):
        prompt = _prompt_for(syn, label, DEFAULT_PARAPHRASE, where)
        if "{text}" not in prompt:
            prompt += "\n\nText: {text}"
        rows = by_label[label][:]
        rng.shuffle(rows)
        jobs[label] = _rewrites(label, prompt, rows)
    missing = sorted(set(cfg.task.labels or []) - set(by_label))
    if missing:
        sink.notes.append(f"no real rows to paraphrase for label(s) {missing}")
    return jobs


def _rewrites(label: str, prompt: str, rows: list[RealRow]) -> Iterator[Job]:
    """Each row once, in the given order, then again (its own function: a generator binds its names here)."""
    for row in itertools.cycle(rows):
        yield Job(label, _fill(prompt, label=label, text=row.text), {"paraphrase_of": row.id})


def _write(syn: SyntheticSpec, jobs: dict[str, Iterator[Job]], writer: Any, check: Filter, sink: Sink, say: Say) -> None:
    kept: Counter[str] = Counter()
    tried: Counter[str] = Counter()
    budget = TRIES_PER_ROW * syn.per_label
    for round_ in itertools.count():
        batch = [next(jobs[label]) for label in jobs
                 for _ in range(min(syn.per_label - kept[label], budget - tried[label]))]
        if not batch:
            break
        for job, answer in zip(batch, writer.complete([j.prompt for j in batch], seed=syn.seed + round_), strict=True):
            tried[job.label] += 1
            if isinstance(answer, Failed):
                sink.fail(writer.origin, answer.reason, label=job.label)
                continue
            text = tidy(answer)
            reason = check(text, job.prompt)
            if reason:
                sink.fail(writer.origin, reason, label=job.label, text=text[:300])
                continue
            sink.add({"text": text, "label": job.label}, origin=writer.origin, model=syn.model, method=syn.method,
                     prompt=job.prompt, **job.extra)
            kept[job.label] += 1
        say(f"synthetic ({syn.method}, {writer.origin}): " + ", ".join(f"{label} {kept[label]}/{syn.per_label}" for label in jobs)
            + f" kept after {sum(tried.values())} tries")
    for label in jobs:
        if kept[label] < syn.per_label:
            note = (f"label {label}: {kept[label]} of {syn.per_label} kept after {tried[label]} tries; the reasons are "
                    f"in {sink.failures_path.name}")
            sink.notes.append(note)
            say(note)


@dataclass(frozen=True)
class Failed:
    reason: str  # why a request gave no text (HTTP status, timeout, malformed answer)


_LEAD_IN = re.compile(r"^(?:(?:sure|certainly|of course|okay|ok)\b[!,.]?\s*)?here(?:'s|’s| is| are)\b[^\n:]{0,100}:\s*",
                      re.IGNORECASE)
_LABEL_PREFIX = re.compile(
    r"^\W{0,3}(?:(?:rewritten|paraphrased|example|customer|product|food)\s+)?"
    r"(?:review|text|example|answer|output|paraphrase|rewrite|response|sentence)\s*\d*\s*\**\s*[:\-–]\s*", re.IGNORECASE)
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "„": "“"}


def tidy(text: str) -> str:
    """The example itself: without a 'Here is a review:' lead-in, a 'Review:' label or wrapping quotes."""
    text = text.strip()
    text = _LEAD_IN.sub("", text, count=1).strip()
    text = _LABEL_PREFIX.sub("", text, count=1).strip().strip("*").strip()
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    elif text[:1] in _QUOTES and _QUOTES[text[0]] not in text[1:]:  # opened, then cut off by max_new_tokens
        text = text[1:].strip()
    return text


# -- filters ------------------------------------------------------------------------------------------------


_WORD = re.compile(r"[^\W\d_]+")
# An instruct model that declines, or talks about the request instead of answering it. Models write the
# apostrophe as ' or as ’ (U+2019), and decline with "cannot assist", "I apologize, but" as often as "can't help".
_REFUSAL = re.compile(r"\b(?:as an ai|an ai (?:language )?model|i(?:['’]m| am) (?:sorry|unable|not able)|i apologi[sz]e,? but"
                      r"|i (?:can(?:no|['’])t|won['’]t be able to) (?:help|provide|write|create|do that|assist|fulfill|comply"
                      r"|generate))\b", re.IGNORECASE)


class Filter:
    """Length, quality and duplicates: a reason to drop a generation, or None (and it is remembered)."""

    def __init__(self, cfg: ProjectConfig, syn: SyntheticSpec, real: list[RealRow]) -> None:
        self.syn = syn
        self.clean = TextCleaner(cfg.data.clean)
        spec = cfg.data.dedup
        self.threshold = spec.near_threshold
        self.signature = lambda texts: dedup.minhash_signatures(texts, len(texts), spec.num_perm, spec.shingle_size,
                                                                 seed=cfg.data.split.seed)
        self.seen = {dedup_key(r.text): f"real row '{r.id}'" for r in real}
        self.real_ids = [r.id for r in real]
        self.real = self.signature([r.text for r in real]) if real else np.empty((0, spec.num_perm), np.uint32)
        self.kept: list[np.ndarray] = []

    def __call__(self, text: str, prompt: str) -> str | None:
        text = self.clean(text)
        if len(text) < self.syn.min_chars:
            return f"too short: {len(text)} characters, below synthetic.min_chars={self.syn.min_chars}"
        if len(text) > self.syn.max_chars:
            return f"too long: {len(text)} characters, over synthetic.max_chars={self.syn.max_chars}"
        reason = quality_problem(text, prompt)
        if reason:
            return reason
        key = dedup_key(text)
        if key in self.seen:
            return f"exact duplicate of {self.seen[key]}"
        signature = self.signature([text])[0]
        for pool, name in ((self.real, lambda k: f"real row '{self.real_ids[k]}'"),
                           (np.array(self.kept), lambda k: "an earlier generation")):
            if len(pool):
                similarity = (pool == signature).mean(axis=1)
                best = int(np.argmax(similarity))
                if similarity[best] >= self.threshold:
                    return f"near duplicate (similarity {similarity[best]:.2f}) of {name(best)}"
        self.seen[key] = "an earlier generation"
        self.kept.append(signature)
        return None


def quality_problem(text: str, prompt: str) -> str | None:
    """Why a text is not a usable example (mostly symbols, an echo of the prompt, a loop), or None."""
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    if letters < 0.6 * len(visible):
        return f"mostly not letters: {letters} of {len(visible)} characters"
    words = _WORD.findall(text.casefold())
    if len(words) < 3:
        return f"fewer than 3 words ({len(words)})"
    word, count = Counter(words).most_common(1)[0]
    if len(words) >= 8 and count > 0.3 * len(words):
        return f"repeats '{word}' ({count} of {len(words)} words)"
    grams = list(zip(words, words[1:], words[2:], strict=False))
    if len(grams) >= 6 and len(set(grams)) < 0.6 * len(grams):
        return f"repeats itself: {len(set(grams))} distinct of {len(grams)} word triples"
    refusal = _REFUSAL.search(text)
    if refusal:
        return f"reads as a refusal or a remark about the request ('{refusal.group(0)}')"
    prompt_words = _WORD.findall(prompt.casefold())
    prompt_grams = set(zip(prompt_words, prompt_words[1:], prompt_words[2:], strict=False))
    if dedup_key(text) in dedup_key(prompt) or (grams and sum(g in prompt_grams for g in grams) >= 0.8 * len(grams)):
        return "copies the prompt (or the text it was asked to rewrite)"
    return None


# -- the models that write ----------------------------------------------------------------------------------


class _LocalModel:
    """A packaged or local instruct model, sampled in batches with its own chat template."""

    def __init__(self, syn: SyntheticSpec) -> None:
        from tunesmith.inference.generation import ChatModel
        from tunesmith.models.catalog import resolve_model_dir

        self.syn = syn
        self.origin = syn.model
        self.model = ChatModel.from_base(resolve_model_dir(syn.model))

    def complete(self, prompts: list[str], seed: int) -> list[str | Failed]:
        import torch

        # Seeded once per round, rows drawing one after another from the stream: a seed per prompt (generate's `seed`)
        # gave a round's identical prompts (one per label in `generate`) one identical text, and batches of one.
        torch.manual_seed(seed)
        asked = [[{"role": "user", "content": p}] for p in prompts]
        # A prompt that fills the model's context fails on its own, as a failed request does: it failed the whole
        # collection with an internal error (one batch's prompt of 134 tokens against a context of 128).
        context = self.model.context
        sizes = [self.model.count_tokens(self.model.prompt_text(c)) for c in asked]
        fits = {i for i, n in enumerate(sizes) if context is None or n < context}
        done = iter(self.model.generate([asked[i] for i in sorted(fits)], max_new_tokens=self.syn.max_new_tokens,
                                        temperature=self.syn.temperature, top_p=0.95, batch_size=LOCAL_BATCH))
        out: list[str | Failed] = []
        for i, n in enumerate(sizes):
            if i not in fits:
                out.append(Failed(f"the prompt is {n} tokens, which leaves no room to answer in the context of "
                                  f"{self.origin} ({context} tokens); shorten synthetic.prompts or use a model with a "
                                  "longer context"))
                continue
            c = next(done)
            out.append(_whole_sentences(c.text) if c.finish_reason == "length" else c.text)
        return out


def _whole_sentences(text: str) -> str:
    """A text cut off by max_new_tokens, up to its last full sentence (when that keeps most of it)."""
    end = max(text.rfind(c) for c in ".!?")
    return text[: end + 1] if end >= len(text) // 2 else text


class _Endpoint:
    """An OpenAI-compatible chat completions endpoint (a teacher model), one example per request."""

    def __init__(self, syn: SyntheticSpec, http: HttpSpec) -> None:
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        assert syn.endpoint is not None
        base = syn.endpoint.rstrip("/")
        if base.endswith("/chat/completions"):
            self.url = base
        else:
            self.url = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self.origin = self.url
        self.syn, self.timeout = syn, http.timeout
        self.session = requests.Session()
        retry = Retry(total=http.retries, backoff_factor=http.backoff, backoff_max=http.max_backoff,
                      status_forcelist=(429, 500, 502, 503, 504), allowed_methods=None, respect_retry_after_header=True,
                      retry_after_max=http.max_backoff,  # as the collectors' own fetcher caps it (urllib3: 6 hours)
                      raise_on_status=False)
        self.session.mount("http://", HTTPAdapter(max_retries=retry, pool_maxsize=ENDPOINT_WORKERS))
        self.session.mount("https://", HTTPAdapter(max_retries=retry, pool_maxsize=ENDPOINT_WORKERS))
        self.session.headers.update({"User-Agent": http.user_agent, **http.headers})
        if syn.api_key_env:
            key = os.environ.get(syn.api_key_env)
            if not key:
                raise ConfigError(f"synthetic.api_key_env: the environment variable {syn.api_key_env} is not set "
                                  f"(the key for {self.url} is read from it at run time)")
            self.session.headers["Authorization"] = f"Bearer {key}"

    def complete(self, prompts: list[str], seed: int) -> list[str | Failed]:
        with ThreadPoolExecutor(ENDPOINT_WORKERS) as pool:
            return list(pool.map(lambda k: self._one(prompts[k], seed * 100_003 + k), range(len(prompts))))

    def _one(self, prompt: str, seed: int) -> str | Failed:
        import requests

        body = {"model": self.syn.model, "messages": [{"role": "user", "content": prompt}], "n": 1, "seed": seed,
                "temperature": self.syn.temperature, "max_tokens": self.syn.max_new_tokens}
        try:
            response = self.session.post(self.url, json=body, timeout=self.timeout)
        except requests.RequestException as err:
            return Failed(f"request failed (after retries): {type(err).__name__}: {str(err)[:200]}")
        if response.status_code in (401, 403):
            raise ConfigError(f"{self.url}: HTTP {response.status_code}: the endpoint refused the request; check the key "
                              f"in {self.syn.api_key_env or '(no synthetic.api_key_env set)'}")
        if response.status_code == 404:
            raise ConfigError(f"{self.url}: HTTP 404: not an OpenAI-compatible chat completions endpoint, or it has no "
                              f"model '{self.syn.model}' (synthetic.endpoint, synthetic.model)")
        if response.status_code >= 400:
            return Failed(f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            choice = response.json()["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return Failed(f"malformed response (no choices[0].message.content): {response.text[:200]}")
        if not isinstance(text, str):
            return Failed(f"malformed response: content is {json.dumps(text)[:100]}")
        # cut off by max_tokens: its half sentence went, as a local model's does (it had been kept)
        return _whole_sentences(text) if choice.get("finish_reason") == "length" else text
