"""Synthetic data: templates, a local instruct model, an OpenAI-compatible endpoint, and the filters."""

from __future__ import annotations

import csv
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tunesmith.collect import synthetic
from tunesmith.collect.sink import Sink, collected_file
from tunesmith.config import ProjectConfig, parse_config
from tunesmith.errors import ConfigError

REAL = [
    ("The coffee beans arrived fresh and the aroma filled the whole kitchen every morning.", "pos"),
    ("Stale crackers, broken in the box, and they tasted of cardboard; never again.", "neg"),
    ("My kids love these fruit bars, soft and not too sweet, perfect for school lunches.", "pos"),
    ("The tea bags tore open in the cup and the flavour was weak and bitter.", "neg"),
]


def config(tmp_path: Path, synthetic_spec: dict[str, Any], real: bool = True, **source: Any) -> ProjectConfig:
    sources = []
    if real:
        path = tmp_path / "real.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["review", "sentiment"])
            writer.writerows(REAL)
        sources.append({"path": str(path)})
    sources.append({"synthetic": synthetic_spec, **source})
    return parse_config({"name": "t", "task": {"text": "review", "label": "sentiment", "labels": ["neg", "pos"]},
                         "data": {"sources": sources, "collect_dir": str(tmp_path / "collected")}})


def run(cfg: ProjectConfig) -> tuple[list[dict], list[dict], Sink]:
    index = len(cfg.data.sources) - 1
    spec = cfg.data.sources[index]
    path = collected_file(cfg, index, spec)
    with Sink(path, "synthetic") as sink:
        synthetic.collect(cfg, index, spec, sink, say=lambda _: None)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    failures = [json.loads(line) for line in sink.failures_path.read_text(encoding="utf-8").splitlines()]
    return rows, failures, sink


TEMPLATES = {
    "method": "templates", "per_label": 7, "seed": 3,
    "templates": {"pos": ["The {food} was {good}.", "Loved the {food}, truly {good}!"],
                  "neg": ["The {food} was {bad}.", "Sadly the {food} tasted {bad}."]},
    "slots": {"food": ["soup", "bread", "coffee"], "good": ["great", "lovely"], "bad": ["stale", "bland"]},
}


def test_templates_are_balanced_seeded_and_do_not_repeat_while_fillings_remain(tmp_path: Path) -> None:
    rows, failures, _ = run(config(tmp_path, TEMPLATES, real=False))
    assert Counter(r["label"] for r in rows) == {"pos": 7, "neg": 7} and failures == []
    texts = [r["text"] for r in rows]
    assert len(set(texts)) == 14  # 12 fillings per label: no repeat before they run out
    assert "{" not in "".join(texts)
    assert all(("stale" in t or "bland" in t) == (r["label"] == "neg") for t, r in zip(texts, rows, strict=True))
    prov = rows[0]["_provenance"]
    assert prov["kind"] == "synthetic" and prov["method"] == "templates" and prov["template"] in sum(TEMPLATES["templates"].values(), [])

    again, _, _ = run(config(tmp_path, TEMPLATES, real=False))
    assert [r["text"] for r in again] == texts  # same seed, same rows
    other, _, _ = run(config(tmp_path, {**TEMPLATES, "seed": 4}, real=False))
    assert [r["text"] for r in other] != texts


def test_templates_repeat_only_after_every_filling_was_used_and_say_so(tmp_path: Path) -> None:
    spec = {**TEMPLATES, "per_label": 15}
    rows, _, sink = run(config(tmp_path, spec, real=False))
    pos = [r["text"] for r in rows if r["label"] == "pos"]
    assert len(pos) == 15 and len(set(pos[:12])) == 12 and len(set(pos)) == 12
    assert any("only 12 distinct fillings" in n and "3 of 15" in n for n in sink.notes)


def test_unknown_slot_names_the_template(tmp_path: Path) -> None:
    spec = {**TEMPLATES, "templates": {"pos": ["The {food} was {tasty}."], "neg": ["bad {food}"]}}
    with pytest.raises(ConfigError, match=r"templates\.pos: template 'The \{food\} was \{tasty\}\.' uses slot 'tasty'"):
        run(config(tmp_path, spec, real=False))
    with pytest.raises(ConfigError, match="label 'meh' is not one of task.labels"):
        run(config(tmp_path, {**TEMPLATES, "templates": {"meh": ["x"]}}, real=False))


# -- the filters -------------------------------------------------------------------------------------------


def test_tidy_strips_lead_ins_labels_and_quotes() -> None:
    assert synthetic.tidy('Here is a positive review:\n"Crisp, fresh and tasty."') == "Crisp, fresh and tasty."
    assert synthetic.tidy("Sure! Here's one: Review: “Great soup.”") == "Great soup."
    assert synthetic.tidy("**Review:** The bread was dry.") == "The bread was dry."
    assert synthetic.tidy("Reviewers loved it: yes") == "Reviewers loved it: yes"  # not a label prefix
    assert synthetic.tidy('"Bought this jam last week and it was') == "Bought this jam last week and it was"  # cut off
    assert synthetic.tidy('The "Festa" pizza was great.') == 'The "Festa" pizza was great.'


@pytest.mark.parametrize(("text", "reason"), [
    ("12345 !!!! ???? 678", "mostly not letters"),
    ("good good", "fewer than 3 words"),
    ("tasty tasty tasty tasty tasty tasty soup is tasty tasty", "repeats 'tasty'"),
    ("the soup was hot the soup was hot the soup was hot the soup was hot", "repeats itself"),
    ("Write one realistic example of a food review", "copies the prompt"),
    ("I'm sorry, but as an AI I cannot taste food.", "reads as a refusal"),
    ("I’m sorry, but I can’t help with writing that review.", "reads as a refusal"),  # the typographic apostrophe
    ("I apologize, but I cannot fulfill this request as written.", "reads as a refusal"),
    ("I cannot assist with creating fake reviews for a restaurant.", "reads as a refusal"),
    ("The soup was warm and filling, a fine lunch.", None),
])
def test_quality_check(text: str, reason: str | None) -> None:
    found = synthetic.quality_problem(text, 'Write one realistic example of a food review whose label is "pos".')
    assert found is None if reason is None else reason in found


# -- a local model --------------------------------------------------------------------------------------------


def test_generate_with_a_local_model_keeps_only_what_passes_the_filters(tmp_path: Path, tiny_llama: Path) -> None:
    spec = {"method": "generate", "model": str(tiny_llama), "per_label": 3, "max_new_tokens": 24, "min_chars": 15,
            "prompts": {"*": "Write a {label} food review."}}
    cfg = config(tmp_path, spec)
    rows, failures, sink = run(cfg)
    tried = Counter(f["label"] for f in failures) + Counter(r["label"] for r in rows)
    for label in ("pos", "neg"):  # every try is kept or listed; a label stops at per_label or 3 x per_label tries
        kept = sum(r["label"] == label for r in rows)
        assert kept == 3 or tried[label] == 9, (label, kept, tried)
    known = ("too short", "too long", "mostly not letters", "fewer than 3 words", "repeats", "copies the prompt",
             "exact duplicate of", "near duplicate")
    assert failures and all(f["reason"].startswith(known) and f["origin"] == str(tiny_llama) for f in failures)
    real = {t for t, _ in REAL}
    for r in rows:
        assert 15 <= len(r["text"]) <= 1000 and synthetic.quality_problem(r["text"], r["_provenance"]["prompt"]) is None
        assert r["text"] not in real and r["_provenance"]["model"] == str(tiny_llama)
        assert r["_provenance"]["prompt"] == f"Write a {r['label']} food review."
    assert len({r["text"] for r in rows}) == len(rows)
    if len(rows) < 6:
        assert any("kept after 9 tries" in n for n in sink.notes)

    again, _, _ = run(cfg)
    assert [r["text"] for r in again] == [r["text"] for r in rows]  # seeded


# -- an OpenAI-compatible endpoint ----------------------------------------------------------------------------


class Teacher:
    """A fake OpenAI-compatible /v1/chat/completions: scripted answers per label, requests logged."""

    def __init__(self, answers: dict[str, list[str]], first_status: int | None = None, finish_reason: str = "stop") -> None:
        self.answers = {label: list(a) for label, a in answers.items()}
        self.requests: list[tuple[dict[str, str], dict]] = []
        self.first_status = first_status
        self.finish_reason = finish_reason
        self.lock = threading.Lock()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with teacher.lock:
                    teacher.requests.append((dict(self.headers.items()), body))
                    status, teacher.first_status = teacher.first_status or 200, None
                    if self.path != "/v1/chat/completions":
                        status = 404
                    prompt = body["messages"][0]["content"]
                    queue = teacher.answers["pos" if '"pos"' in prompt or "POSITIVE" in prompt else "neg"]
                    text = (queue.pop(0) if len(queue) > 1 else queue[0]) if status == 200 else ""
                reply = {"choices": [{"index": 0, "finish_reason": teacher.finish_reason,
                                      "message": {"role": "assistant", "content": text}}]} if status == 200 \
                    else {"error": {"message": "busy"}}
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def teacher():
    made: list[Teacher] = []

    def make(answers: dict[str, list[str]], **kw: Any) -> Teacher:
        made.append(Teacher(answers, **kw))
        return made[-1]

    yield make
    for t in made:
        t.close()


FAST = {"retries": 2, "backoff": 0.01, "max_backoff": 0.05, "timeout": 5}


def test_a_local_model_samples_each_prompt_of_a_round_apart_and_the_same_again(tiny_llama: Path) -> None:
    """Every prompt of a round had the round's seed, and generate's prompts per label are one text: each round kept one
    sample per label and dropped the rest as duplicates (4 of 12 kept after 36 tries)."""
    from tunesmith.collect.synthetic import _LocalModel
    from tunesmith.config import SyntheticSpec

    model = _LocalModel(SyntheticSpec(method="generate", model=str(tiny_llama), max_new_tokens=12))
    round_ = model.complete(["Write a pos food review."] * 4, seed=3)
    assert len(set(round_)) == 4
    assert model.complete(["Write a pos food review."] * 4, seed=3) == round_  # a round is still reproducible
    assert model.complete(["Write a pos food review."] * 4, seed=4) != round_


def test_a_prompt_past_a_local_model_s_context_fails_alone(tiny_llama: Path) -> None:
    """It failed the whole collection: "internal error: ValueError: a prompt of 134 tokens leaves no room to answer"."""
    from tunesmith.collect.synthetic import Failed, _LocalModel
    from tunesmith.config import SyntheticSpec

    model = _LocalModel(SyntheticSpec(method="generate", model=str(tiny_llama), max_new_tokens=8))
    short, long_ = "Write a pos food review.", "Write a pos food review about " + "the tea and the coffee " * 60
    answers = model.complete([short, long_, short], seed=3)
    assert isinstance(answers[0], str) and isinstance(answers[2], str)
    assert isinstance(answers[1], Failed) and "leaves no room to answer in the context of" in answers[1].reason


def test_endpoint_generations_are_labelled_tidied_and_deduplicated_against_real_data(tmp_path: Path, teacher,
                                                                                     monkeypatch) -> None:
    monkeypatch.setenv("TEACHER_KEY", "sk-test-very-secret")
    pos = ["Review: \"Juicy peaches, sweet and ripe, the best fruit box we ordered this year.\"",
           "Juicy peaches, sweet and ripe, the best fruit box we ordered this year.",  # exact duplicate of the first
           REAL[0][0],  # a real row, word for word
           REAL[2][0].replace("school lunches", "school lunch"),  # a near duplicate of a real row
           "ok",  # too short
           "A lovely olive oil with a peppery finish; we use it on everything."]
    neg = ["The pasta turned to mush after five minutes and the sauce was far too salty."]
    t = teacher({"pos": pos, "neg": neg}, first_status=500)  # the first request fails once, its retry succeeds
    spec = {"method": "generate", "endpoint": t.url, "model": "teacher-1", "api_key_env": "TEACHER_KEY", "per_label": 2,
            "prompts": {"*": 'Write a food review whose label is "{label}".'}}
    rows, failures, sink = run(config(tmp_path, spec, http=FAST))

    assert all(h["Authorization"] == "Bearer sk-test-very-secret" for h, _ in t.requests)
    assert {b["model"] for _, b in t.requests} == {"teacher-1"} and all(b["n"] == 1 for _, b in t.requests)
    pos_rows = sorted(r["text"] for r in rows if r["label"] == "pos")
    assert pos_rows == ["A lovely olive oil with a peppery finish; we use it on everything.",
                        "Juicy peaches, sweet and ripe, the best fruit box we ordered this year."]
    neg_rows = [r["text"] for r in rows if r["label"] == "neg"]
    assert neg_rows == [neg[0]]  # the same answer again is a duplicate: one kept, then 3 x per_label tries spent
    assert any(f["reason"] == "exact duplicate of an earlier generation" and f["label"] == "pos" for f in failures)
    assert any(f["reason"] == "exact duplicate of real row 'real.csv:2'" for f in failures)
    assert any(f["reason"].startswith("near duplicate") and f["reason"].endswith("of real row 'real.csv:4'") for f in failures)
    assert any(f["reason"].startswith("too short") for f in failures)
    assert sum(f["label"] == "neg" for f in failures) == 5  # 6 tries, 1 kept
    assert any("label neg: 1 of 2 kept after 6 tries" in n for n in sink.notes)
    prov = rows[0]["_provenance"]
    assert prov["origin"] == t.url + "/chat/completions" and prov["model"] == "teacher-1" and prov["method"] == "generate"
    for path in (tmp_path / "collected").rglob("*"):
        assert "sk-test-very-secret" not in path.read_text(encoding="utf-8", errors="replace")


@pytest.mark.parametrize("finish_reason", ["length", "stop"])
def test_endpoint_generations_cut_by_max_new_tokens_end_at_their_last_full_sentence(tmp_path: Path, teacher,
                                                                                    finish_reason: str) -> None:
    """A local model's cut generation was tidied, an endpoint's kept its half sentence ("... the dessert menu was")."""
    cut = "The ramen broth was rich and the noodles had a lovely bite. The service was quick but the dessert menu was"
    other = "The soup was cold and the bread was stale when it came. We asked for the bill but the waiter had"
    t = teacher({"pos": [cut], "neg": [other]}, finish_reason=finish_reason)
    spec = {"method": "generate", "endpoint": t.url, "per_label": 1, "max_new_tokens": 24,
            "prompts": {"*": 'Write a food review whose label is "{label}".'}}
    rows, _, _ = run(config(tmp_path, spec, real=False, http=FAST))
    texts = sorted(r["text"] for r in rows)
    if finish_reason == "length":
        assert texts == ["The ramen broth was rich and the noodles had a lovely bite.",
                         "The soup was cold and the bread was stale when it came."]
    else:  # the model ended there itself: nothing to cut
        assert texts == [cut, other]


def test_endpoint_that_refuses_the_key_stops_with_a_clear_error(tmp_path: Path, teacher, monkeypatch) -> None:
    t = teacher({"pos": ["x"], "neg": ["x"]}, first_status=401)
    monkeypatch.setenv("TEACHER_KEY", "wrong")
    spec = {"method": "generate", "endpoint": t.url, "api_key_env": "TEACHER_KEY", "per_label": 1}
    with pytest.raises(ConfigError, match=r"HTTP 401: the endpoint refused the request; check the key in TEACHER_KEY"):
        run(config(tmp_path, spec, http=FAST))
    monkeypatch.delenv("TEACHER_KEY")
    with pytest.raises(ConfigError, match="environment variable TEACHER_KEY is not set"):
        run(config(tmp_path, spec, http=FAST))


def test_paraphrase_rewrites_trainable_real_rows_and_keeps_their_labels(tmp_path: Path, teacher) -> None:
    t = teacher({"pos": ["Fresh-smelling beans; our kitchen smelled wonderful at breakfast each day.",
                         "Children adore the soft fruit snacks, mild in sweetness and ideal for packed meals."],
                 "neg": ["Crumbled biscuits in the packet with a papery taste, a purchase I regret.",
                         "Flimsy sachets split in hot water, leaving a thin and harsh brew."]})
    spec = {"method": "paraphrase", "endpoint": t.url, "per_label": 2,
            "prompts": {"pos": "Rewrite this POSITIVE review: {text}", "neg": "Rewrite this negative review: {text}"}}
    rows, failures, _ = run(config(tmp_path, spec, http=FAST))
    assert failures == [] and Counter(r["label"] for r in rows) == {"pos": 2, "neg": 2}
    originals = {f"real.csv:{i + 2}": (text, label) for i, (text, label) in enumerate(REAL)}
    for r in rows:
        text, label = originals[r["_provenance"]["paraphrase_of"]]
        assert r["label"] == label and text in r["_provenance"]["prompt"]
    assert len({r["_provenance"]["paraphrase_of"] for r in rows}) == 4  # every real row once before any twice


def test_the_endpoints_retry_after_is_capped_at_max_backoff_as_the_fetchers_is() -> None:
    """A teacher answering 429 with Retry-After: 6 was waited out in full with http.max_backoff 0.05 (urllib3 caps it
    at 6 hours)."""
    from tunesmith.collect.synthetic import _Endpoint
    from tunesmith.config import HttpSpec, SyntheticSpec

    endpoint = _Endpoint(SyntheticSpec(method="generate", endpoint="http://127.0.0.1:9/v1", model="teacher"),
                         HttpSpec(**FAST))
    retry = endpoint.session.get_adapter("http://127.0.0.1:9/v1").max_retries
    assert retry.retry_after_max == FAST["max_backoff"] and retry.parse_retry_after("6") == FAST["max_backoff"]


@pytest.mark.parametrize(("task", "split"), [({"id": "id"}, {}), ({}, {"group_by": "user"})])
def test_synthetic_rows_join_a_project_whose_data_has_ids_or_groups(tmp_path: Path, make_config, task: dict,
                                                                    split: dict) -> None:
    """Synthetic rows have no id or user column: with task.id all were quarantined ("missing id"), and with
    group_by prepare failed ("no record has 'user'")."""
    from tunesmith.collect.run import collect_sources
    from tunesmith.data.prepare import prepare

    real = tmp_path / "real.csv"
    with real.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "user", "text", "label"])
        writer.writerows([f"r{i}", f"u{i % 10}", f"Real review {i}: the {['soup', 'bread', 'tea'][i % 3]} was "
                          f"{'great' if i % 2 else 'awful'}, {i} times over.", "pos" if i % 2 else "neg"] for i in range(40))
    cfg = make_config([{"path": str(real)}, {"synthetic": {**TEMPLATES, "per_label": 6}}], task={"labels": ["neg", "pos"], **task},
                      collect_dir=str(tmp_path / "collected"), split=split, dedup={"near": False})
    assert [r.rows for r in collect_sources(cfg)] == [12]
    version = prepare(cfg)
    assert version.manifest.counts["quarantine"] == 0 and version.manifest.counts["input"] == 52
