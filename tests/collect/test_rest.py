"""REST APIs: page, offset, cursor and Link pagination, JSONPath records and fields, the token that is
sent but never written, malformed JSON, a looping cursor, and an interrupted collection resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.collect.conftest import FixtureServer, Hit, Reply
from tunesmith.collect import rest
from tunesmith.collect.sink import collected_file
from tunesmith.errors import ConfigError

API = Path(__file__).resolve().parents[2] / "examples" / "collect" / "api"
REVIEWS = [{"id": i, "body": f"review number {i}", "stars": 1 + i % 5, "tags": ["food", f"t{i}"]} for i in range(1, 8)]


def page_route(size: int = 3):
    """/api?page=N: REVIEWS in pages of `size`, then empty pages."""
    def reply(hit: Hit) -> Reply:
        n = int(hit.query.get("page", 1))
        return Reply(body={"data": REVIEWS[(n - 1) * size:n * size], "page": n})
    return reply


def rest_source(server: FixtureServer, path: str, **spec: object) -> dict:
    return {"rest": {"url": server.url(path), **spec}}


def test_page_pagination_and_jsonpath_mapping(server, collect_config, run_collector) -> None:
    server.route("/api", page_route())
    mapping = {"text": "$.body", "score": "$.stars", "tag": "$.tags[1]", "all_tags": "$.tags[*]", "nothing": "$.missing"}
    cfg = collect_config(rest_source(server, "/api", pagination="page", records="$.data[*]", map=mapping, params={"lang": "en"}))
    out = run_collector(rest, cfg)
    assert [r["text"] for r in out.records] == [r["body"] for r in REVIEWS]
    assert out.records[0] == {"text": "review number 1", "score": 2, "tag": "t1", "all_tags": ["food", "t1"], "nothing": None}
    assert [h.query for h in server.hits("/api")] == [{"lang": "en", "page": str(n)} for n in (1, 2, 3, 4)]  # 4: empty, the end
    assert [p["page"] for p in out.provenance] == [1, 1, 1, 2, 2, 2, 3]
    assert out.provenance[3]["origin"] == server.url("/api?lang=en&page=2")
    assert out.state is not None and out.state["done"] is True and out.failures == []


def test_records_as_is_and_a_path_naming_the_list(server, collect_config, run_collector) -> None:
    server.route("/api", Reply(body={"data": REVIEWS[:2]}))
    out = run_collector(rest, collect_config(rest_source(server, "/api", pagination="none", records="$.data")))
    assert out.records == REVIEWS[:2]


def test_offset_pagination(server, collect_config, run_collector) -> None:
    def reply(hit: Hit) -> Reply:
        start, limit = int(hit.query["offset"]), int(hit.query["limit"])
        return Reply(body=REVIEWS[start:start + limit])
    server.route("/api", reply)
    out = run_collector(rest, collect_config(rest_source(server, "/api", pagination="offset", page_size=3)))
    assert [r["id"] for r in out.records] == list(range(1, 8))
    assert [h.query["offset"] for h in server.hits("/api")] == ["0", "3", "6", "7"]


@pytest.mark.parametrize("pagination", ["offset", "page"])
def test_a_filter_in_rest_records_moves_offsets_and_pages_by_what_the_api_sent(server, collect_config, run_collector,
                                                                                 pagination: str) -> None:
    """The position moved by the records kept after the filter: offsets came again (rows collected twice), and a page
    the filter emptied ended the collection."""
    langs = {i: "fr" if 4 <= i <= 6 else "en" for i in range(1, 10)}
    items = [{"id": i, "lang": lang} for i, lang in langs.items()]

    def reply(hit: Hit) -> Reply:
        start = int(hit.query["offset"]) if pagination == "offset" else (int(hit.query["page"]) - 1) * 3
        return Reply(body={"data": items[start:start + 3]})

    server.route("/api", reply)
    source = rest_source(server, "/api", pagination=pagination, page_size=3, records="$.data[?(@.lang == 'en')]")
    out = run_collector(rest, collect_config(source))
    assert [r["id"] for r in out.records] == [i for i, lang in langs.items() if lang == "en"]
    asked = [h.query["offset" if pagination == "offset" else "page"] for h in server.hits("/api")]
    assert asked == (["0", "3", "6", "9"] if pagination == "offset" else ["1", "2", "3", "4"])


def test_half_an_emoji_in_an_answer_is_kept_escaped_for_the_reader_to_name(server, collect_config, run_collector,
                                                                          tmp_path: Path) -> None:
    """A lone surrogate (an emoji cut in half, `\\ud83d`) crashed writing the records file with no URL named, and every
    run after it crashed on the same page."""
    server.route("/api", Reply(body=b'{"data": [{"id": 1, "body": "Loved it \\ud83d"}, {"id": 2, "body": "Fine"}]}'))
    out = run_collector(rest, collect_config(rest_source(server, "/api", pagination="none", records="$.data[*]")))
    assert out.state is not None and out.state["done"] and [r["body"] for r in out.records] == ["Loved it \ud83d", "Fine"]


def test_a_repeated_query_parameter_in_the_url_is_sent_whole(server, collect_config, run_collector) -> None:
    """`?lang=en&lang=fr` was asked as `?lang=fr&page=1`: a filter of another meaning, without a word."""
    server.route("/api", page_route())
    url = server.url("/api") + "?lang=en&lang=fr"
    out = run_collector(rest, collect_config({"rest": {"url": url, "pagination": "page", "records": "$.data[*]"}}))
    assert len(out.records) == len(REVIEWS)
    assert out.provenance[0]["origin"].endswith("/api?lang=en&lang=fr&page=1")


def test_data_prepare_on_an_unfinished_collection_says_so(server, make_config, tmp_path: Path) -> None:
    """Page 2 failing past its retries: `data prepare` built a dataset of page 1 alone without a word."""
    from tests.collect.conftest import FAST_HTTP
    from tests.data.test_prepare import sentences
    from tunesmith.data.prepare import prepare

    texts = sentences(40)

    def reply(hit: Hit) -> Reply:
        n = int(hit.query["page"])
        if n == 2:
            return Reply(503, body={"error": "maintenance"})
        return Reply(body={"data": [{"text": t, "label": "pos" if i % 2 else "neg"}
                                    for i, t in enumerate(texts[(n - 1) * 10:n * 10])]})

    server.route("/api", reply)
    source = {**rest_source(server, "/api", pagination="page", records="$.data[*]"), "http": FAST_HTTP}
    version = prepare(make_config([source], collect_dir=str(tmp_path / "collected")))
    warning = next(w for w in version.report()["warnings"] if "data.sources.0" in w)
    assert "stopped at page 2" in warning and "1 failed" in warning and "failures.jsonl" in warning
    assert "collect again" in warning and "built from the 10 rows collected" in warning


def test_a_refreshed_collection_forgets_the_last_ones_failures(server, collect_config) -> None:
    """--refresh kept appending to the failures file: a healthy refresh still listed the old 500, and the next run said
    1 failed."""
    from tunesmith.collect.run import collect_one

    broken = {"on": True}

    def reply(hit: Hit) -> Reply:
        n = int(hit.query["page"])
        return Reply(500, body={"error": "boom"}) if n == 2 and broken["on"] else Reply(body={"data": [{"id": n}] if n <= 3 else []})

    server.route("/api", reply)
    cfg = collect_config(rest_source(server, "/api", pagination="page", records="$.data[*]"))
    assert collect_one(cfg, 0).failures == 1
    broken["on"] = False
    again = collect_one(cfg, 0, refresh=True)
    assert (again.rows, again.failures, again.failures_path) == (3, 0, None)
    assert collect_one(cfg, 0).failures == 0


def test_a_response_in_the_charset_its_content_type_names(server, collect_config, run_collector) -> None:
    """`charset=iso-8859-1` was ignored: the page was refused as malformed UTF-8 JSON and the collection stopped."""
    body = '{"data": [{"id": 1, "body": "Crème brûlée à 5 €"}]}'.replace("€", "EUR").encode("latin-1")
    server.route("/api", Reply(body=body, headers={"Content-Type": "application/json; charset=iso-8859-1"}))
    out = run_collector(rest, collect_config(rest_source(server, "/api", pagination="none", records="$.data[*]")))
    assert [r["body"] for r in out.records] == ["Crème brûlée à 5 EUR"] and out.failures == []


def test_cursor_pagination(server, collect_config, run_collector) -> None:
    chain = {None: ("c1", REVIEWS[:3]), "c1": ("c2", REVIEWS[3:6]), "c2": (None, REVIEWS[6:])}
    server.route("/api", lambda hit: Reply(body={"items": chain[hit.query.get("after")][1],
                                                  "meta": {"next": chain[hit.query.get("after")][0]}}))
    source = rest_source(server, "/api", pagination="cursor", cursor_param="after", cursor_path="$.meta.next", records="$.items[*]")
    out = run_collector(rest, collect_config(source))
    assert [r["id"] for r in out.records] == list(range(1, 8))
    assert [h.query.get("after") for h in server.hits("/api")] == [None, "c1", "c2"]


def test_a_looping_cursor_is_detected(server, collect_config, run_collector) -> None:
    nxt = {None: "a", "a": "b", "b": "a"}
    server.route("/api", lambda hit: Reply(body={"data": [{"at": hit.query.get("cursor")}], "next_cursor": nxt[hit.query.get("cursor")]}))
    out = run_collector(rest, collect_config(rest_source(server, "/api", pagination="cursor", records="$.data[*]")))
    assert [r["at"] for r in out.records] == [None, "a", "b"] and server.count("/api") == 3
    assert len(out.failures) == 1 and "cursor 'a' was already followed: the API loops" in out.failures[0]["reason"]
    assert out.state["done"] is True and out.state["stopped"] == "cursor loop"


def test_link_header_pagination(server, collect_config, run_collector) -> None:
    def reply(hit: Hit) -> Reply:
        n = int(hit.query.get("p", 1))
        links = {"Link": f'<{server.url("/api")}?p={n + 1}&per_page=3>; rel="next", <{server.url("/api")}?p=1>; rel="first"'}
        return Reply(body=REVIEWS[(n - 1) * 3:n * 3], headers=links if n < 3 else {})
    server.route("/api", reply)
    out = run_collector(rest, collect_config(rest_source(server, "/api", params={"per_page": 3})))  # link is the default
    assert [r["id"] for r in out.records] == list(range(1, 8))
    assert [h.query for h in server.hits("/api")] == [{"per_page": "3"}, {"p": "2", "per_page": "3"}, {"p": "3", "per_page": "3"}]


def test_example_api_next_field(server, collect_config, run_collector) -> None:
    server.serve_dir(API)
    source = rest_source(server, "/reviews-1.json", next_path="$.next", records="$.reviews[*]",
                         map={"text": "$.body", "label": "$.sentiment", "author": "$.author.name"})
    out = run_collector(rest, collect_config(source))
    assert len(out.records) == 12 and {r["label"] for r in out.records} == {"positive", "negative"} and out.failures == []
    assert out.records[0]["author"] == "Kenji"
    assert [p["origin"].removeprefix(server.base) for p in out.provenance[::4]] == ["/reviews-1.json", "/reviews-2.json", "/reviews-3.json"]


def test_invalid_jsonpath_names_the_field(server, collect_config, run_collector) -> None:
    cfg = collect_config(rest_source(server, "/api", map={"text": "$.body", "label": "$.[broken"}))
    with pytest.raises(ConfigError, match=r"rest\.map\.label"):
        run_collector(rest, cfg)
    assert server.count() == 0


def test_token_is_sent_and_never_written(server, collect_config, run_collector, monkeypatch, tmp_path) -> None:
    token = "tok-5ecret-8c1f2a"
    monkeypatch.setenv("REVIEWS_API_TOKEN", token)

    def reply(hit: Hit) -> Reply:
        if hit.headers.get("Authorization") != f"Bearer {token}":
            return Reply(401, body={"error": "unauthorised"})
        return page_route()(hit)
    server.route("/api", reply)
    cfg = collect_config(rest_source(server, "/api", pagination="page", records="$.data[*]", auth_env="REVIEWS_API_TOKEN"))
    out = run_collector(rest, cfg)
    assert len(out.records) == 7
    run_collector(rest, cfg)  # the re-run from the cache: what it stores must be clean too
    files = [f for f in (tmp_path / "collected").rglob("*") if f.is_file()]
    assert any(f.suffix == ".sqlite" for f in files) and any(f.name.endswith(".state.json") for f in files)
    assert [f.name for f in files if token.encode() in f.read_bytes()] == []


def test_the_token_goes_to_the_api_s_own_origin_only(server, collect_config, run_collector, monkeypatch) -> None:
    """A next link naming another host got the token, and so did a 302 to one when it went in X-Api-Key (requests drops
    only Authorization on a redirect to another host)."""
    token = "tok-5ecret-8c1f2a"
    monkeypatch.setenv("REVIEWS_API_TOKEN", token)
    other = FixtureServer()
    try:
        other.route("/moved", Reply(body={"data": REVIEWS[:2], "next": server.url("/own")}))
        server.route("/own", Reply(body={"data": REVIEWS[2:4], "next": other.url("/elsewhere")}))
        other.route("/elsewhere", Reply(body={"data": REVIEWS[4:5], "next": None}))
        server.route("/api", Reply(302, headers={"Location": other.url("/moved")}))
        cfg = collect_config(rest_source(server, "/api", records="$.data[*]", next_path="$.next",
                                         auth_env="REVIEWS_API_TOKEN", auth_header="X-Api-Key", auth_scheme=""))
        assert len(run_collector(rest, cfg).records) == 5
        assert other.count() == 2 and all(token not in json.dumps(h.headers) for h in other.hits())
        assert all(token in json.dumps(h.headers) for h in server.hits())  # its own origin still gets it
    finally:
        other.close()


def test_missing_token_variable_is_named(server, collect_config, run_collector, monkeypatch) -> None:
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_TOKEN"):
        run_collector(rest, collect_config(rest_source(server, "/api", auth_env="NO_SUCH_TOKEN")))
    assert server.count() == 0


def test_malformed_json_stops_the_source_and_keeps_what_came(server, collect_config, run_collector) -> None:
    def reply(hit: Hit) -> Reply:
        if hit.query["page"] == "2":
            return Reply(body=b'{"data": [{"id": 4}, ', headers={"Content-Type": "application/json"})
        return page_route()(hit)
    server.route("/api", reply)
    cfg = collect_config(rest_source(server, "/api", pagination="page", records="$.data[*]"))
    out = run_collector(rest, cfg)
    assert [r["id"] for r in out.records] == [1, 2, 3] and server.count("/api") == 2
    (failure,) = out.failures
    assert failure["origin"] == server.url("/api?page=2") and failure["reason"].startswith("malformed JSON: ")
    assert out.state["done"] is False and out.state["page"] == 2
    server.route("/api", page_route())  # the API is fixed: the broken answer was not cached, page 2 is asked again
    again = run_collector(rest, cfg)
    assert [r["id"] for r in again.records] == list(range(1, 8)) and again.state["done"] is True


def test_interrupted_collection_resumes_without_duplicates(server, collect_config, run_collector) -> None:
    def broken(hit: Hit) -> Reply:
        return Reply(500, body={"error": "down"}) if hit.query["page"] == "3" else page_route(2)(hit)
    server.route("/api", broken)
    cfg = collect_config(rest_source(server, "/api", pagination="page", records="$.data[*]"), retries=1, cache=False)
    first = run_collector(rest, cfg)
    assert [r["id"] for r in first.records] == [1, 2, 3, 4]
    assert first.failures[0]["status"] == 500 and first.failures[0]["page"] == 3
    assert first.state["done"] is False and first.state["page"] == 3 and first.state["pages_done"] == 2
    asked = [h.query["page"] for h in server.hits("/api")]
    assert asked == ["1", "2", "3", "3"]

    server.route("/api", page_route(2))  # the server is fixed
    second = run_collector(rest, cfg)
    assert [r["id"] for r in second.records] == list(range(1, 8))  # pages 1-2 kept once, 3-4 added
    assert [h.query["page"] for h in server.hits("/api")][len(asked):] == ["3", "4", "5"]
    assert second.state["done"] is True and any("resumed after 2 pages" in n for n in second.notes)
    assert [p["page"] for p in second.provenance] == [1, 1, 2, 2, 3, 3, 4]


def test_a_finished_collection_has_nothing_left(server, collect_config, run_collector) -> None:
    from tunesmith.collect.sink import Sink

    server.route("/api", page_route())
    cfg = collect_config(rest_source(server, "/api", pagination="page", records="$.data[*]"))
    run_collector(rest, cfg)
    asked = server.count()
    spec = cfg.data.sources[0]
    with Sink(collected_file(cfg, 0, spec), "rest", resume=True) as sink:
        rest.collect(cfg, 0, spec, sink, print)
    assert server.count() == asked and sink.rows == 7 and sink.notes == ["already complete"]


def test_records_written_past_the_saved_position_are_fetched_again_not_doubled(server, collect_config, run_collector) -> None:
    broken = {"on": True}
    server.route("/api", lambda hit: Reply(500) if hit.query["page"] == "2" and broken["on"] else page_route()(hit))
    cfg = collect_config(rest_source(server, "/api", pagination="page", records="$.data[*]"), retries=0)
    first = run_collector(rest, cfg)
    assert len(first.records) == 3 and first.state["done"] is False
    path = collected_file(cfg, 0, cfg.data.sources[0])
    path.write_text(path.read_text() + json.dumps({"id": 99}) + "\n")  # killed after writing part of page 2, before its position
    broken["on"] = False
    second = run_collector(rest, cfg)
    assert {"id": 99} not in second.records and len(second.records) == 7
    assert len({json.dumps(r, sort_keys=True) for r in second.records}) == 7


def test_max_pages_stops_an_endless_api(server, collect_config, run_collector) -> None:
    server.route("/api", lambda hit: Reply(body=[{"page": hit.query["page"]}]))
    out = run_collector(rest, collect_config(rest_source(server, "/api", pagination="page", max_pages=3)))
    assert len(out.records) == 3 and server.count("/api") == 3
    assert out.state["done"] is True and "max_pages" in out.state["stopped"]


def test_a_malformed_token_is_reported_without_quoting_it(server, collect_config, run_collector, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("REVIEWS_API_TOKEN", "half-a-token\nhalf-another")  # pasted with a line break
    server.route("/api", page_route())
    out = run_collector(rest, collect_config(rest_source(server, "/api", pagination="page", auth_env="REVIEWS_API_TOKEN")))
    assert out.records == [] and "holds characters HTTP does not allow" in out.failures[0]["reason"]
    stored = b"".join(f.read_bytes() for f in (tmp_path / "collected").rglob("*") if f.is_file())
    assert b"half-a-token" not in stored and b"half-another" not in stored


def test_a_response_of_another_shape_is_named_not_taken_for_the_end(server, collect_config, run_collector) -> None:
    def reply(hit: Hit) -> Reply:  # page 2 is an error answered with 200, as some APIs do
        return Reply(body={"error": "quota exceeded"}) if hit.query["page"] == "2" else page_route()(hit)
    server.route("/api", reply)
    cfg = collect_config(rest_source(server, "/api", pagination="page", records="$.data[*]"))
    out = run_collector(rest, cfg)
    assert [r["id"] for r in out.records] == [1, 2, 3]
    (failure,) = out.failures
    assert failure["page"] == 2 and "rest.records '$.data[*]' does not match" in failure["reason"]
    assert "an object with keys ['error']" in failure["reason"]
    assert out.state["done"] is False and out.state["page"] == 2  # not finished: the next run asks page 2 again
    server.route("/api", page_route())  # the quota is back; the error answer was not cached
    again = run_collector(rest, cfg)
    assert [r["id"] for r in again.records] == list(range(1, 8)) and again.state["done"] is True and again.failures[1:] == []


def test_an_error_object_under_the_default_records_path_is_named(server, collect_config, run_collector) -> None:
    """`$[*]` on {"error": ...} gave the record {"value": "quota exceeded"}: no failure, and that page's data was lost."""
    def reply(hit: Hit) -> Reply:
        page = int(hit.query["page"])
        return Reply(body={"error": "quota exceeded"}) if page == 2 else Reply(body=REVIEWS[(page - 1) * 3:page * 3])
    server.route("/api", reply)
    out = run_collector(rest, collect_config(rest_source(server, "/api", pagination="page")))
    assert [r["id"] for r in out.records] == [1, 2, 3] and out.state["done"] is False
    (failure,) = out.failures
    assert failure["page"] == 2 and "an object with keys ['error']" in failure["reason"]


def test_records_keyed_by_id_are_records(server, collect_config, run_collector) -> None:
    keyed = {"7": REVIEWS[0], "8": REVIEWS[1]}  # an object whose values are records is no error answer
    server.route("/keyed", Reply(body={"data": keyed}))
    out = run_collector(rest, collect_config(rest_source(server, "/keyed", pagination="none", records="$.data[*]")))
    assert out.records == [REVIEWS[0], REVIEWS[1]] and out.failures == []


@pytest.mark.parametrize("records", ["$.data[*].attributes", "$.data.edges[*].node"])
def test_the_empty_last_page_of_a_nested_records_path_is_the_end(server, collect_config, run_collector,
                                                                   records: str) -> None:
    """JSON:API and GraphQL shapes: the empty last page was read as a response of the wrong shape, every run."""
    def reply(hit: Hit) -> Reply:
        rows = REVIEWS[(int(hit.query["page"]) - 1) * 3:int(hit.query["page"]) * 3]
        if "attributes" in records:
            return Reply(body={"data": [{"attributes": r} for r in rows]})
        return Reply(body={"data": {"edges": [{"node": r} for r in rows]}})
    server.route("/api", reply)
    out = run_collector(rest, collect_config(rest_source(server, "/api", pagination="page", records=records)))
    assert [r["id"] for r in out.records] == list(range(1, 8)) and out.failures == [] and out.state["done"] is True


def test_a_utf8_answer_with_a_bom_is_read(server, collect_config, run_collector) -> None:
    """charset=utf-8 kept the BOM, and json refused the page ("Unexpected UTF-8 BOM"): the collection stopped."""
    body = b"\xef\xbb\xbf" + json.dumps({"data": [{"id": 1, "body": "café"}]}).encode()
    server.route("/api", Reply(body=body, headers={"Content-Type": "application/json; charset=utf-8"}))
    out = run_collector(rest, collect_config(rest_source(server, "/api", pagination="none", records="$.data[*]")))
    assert [r["body"] for r in out.records] == ["café"] and out.failures == []


@pytest.mark.parametrize(("pagination", "where", "hint"), [
    ("link", {"next_path": "$._links.next"}, "did you mean `$._links.next.href`?"),
    ("cursor", {"cursor_path": "$.meta.next"}, "point rest.cursor_path at a cursor"),
])
def test_a_next_page_value_of_the_wrong_kind_is_named_not_taken_for_the_end(server, collect_config, run_collector,
                                                                           pagination, where, hint) -> None:
    """HAL's `_links.next` is {"href": ...}: read as no next page, the collection ended after page 1, marked done."""
    def reply(hit: Hit) -> Reply:
        after = int(hit.query.get("after", 0))
        nxt = {"_links": {"next": {"href": f"/api?after={after + 3}"}}, "meta": {"next": [after + 3]}} if after < 6 else {}
        return Reply(body={"data": REVIEWS[after:after + 3], **nxt})

    server.route("/api", reply)
    cfg = collect_config(rest_source(server, "/api", pagination=pagination, records="$.data[*]", cursor_param="after",
                                     **where))
    out = run_collector(rest, cfg)
    (failure,) = out.failures
    field = "rest.next_path" if pagination == "link" else "rest.cursor_path"
    assert failure["page"] == 1 and failure["reason"].startswith(f"{field} {where[field[5:]]!r} found ")
    assert ("an object with keys ['href']" if pagination == "link" else "a list of 1") in failure["reason"]
    assert hint in failure["reason"]
    assert out.state["done"] is False and out.records == []  # page 1 is asked again once the path is fixed
    fixed = {"next_path": "$._links.next.href"} if pagination == "link" else {"cursor_path": "$.meta.next[0]"}
    again = run_collector(rest, collect_config(rest_source(server, "/api", pagination=pagination, records="$.data[*]",
                                                           cursor_param="after", **fixed)))
    assert [r["id"] for r in again.records] == list(range(1, 8)) and again.failures == [] and again.state["done"] is True


@pytest.mark.parametrize("link_header", [False, True])
def test_a_malformed_next_url_is_a_failure_not_an_aborted_run(server, collect_config, run_collector, link_header) -> None:
    """`http://[bad/p2` raised urllib's "Invalid IPv6 URL": the run aborted, and the next one crashed the same way."""
    bad = "http://[bad/p2"
    server.route("/p1", Reply(body={"data": [{"id": 1}]}, headers={"Link": f'<{bad}>; rel="next"'}) if link_header
                 else Reply(body={"data": [{"id": 1}], "next": bad}))
    spec = {} if link_header else {"next_path": "$.next"}
    out = run_collector(rest, collect_config(rest_source(server, "/p1", records="$.data[*]", **spec)))
    assert out.records == [{"id": 1}]
    (failure,) = out.failures
    assert "is not a valid URL (Invalid IPv6 URL)" in failure["reason"] and failure["page"] == 1
    assert (bad in failure["reason"]) != link_header
    assert out.state["done"] is True and out.state["stopped"] == "malformed next page URL"


def test_a_resumed_collection_forgets_the_failure_of_a_page_collected_since(server, collect_config, run_collector) -> None:
    """Page 2's 503 stayed listed after a resumed run collected it: `data prepare` warned that rows were lost."""
    from tunesmith.collect.run import ensure_collected

    broken = {"on": True}
    server.route("/api", lambda hit: Reply(503) if hit.query["page"] == "2" and broken["on"] else page_route()(hit))
    cfg = collect_config(rest_source(server, "/api", pagination="page", records="$.data[*]"), retries=0)
    first = run_collector(rest, cfg)
    assert [f["page"] for f in first.failures] == [2] and first.state["done"] is False
    broken["on"] = False
    second = run_collector(rest, cfg)
    assert len(second.records) == 7 and second.failures == [] and second.state["done"] is True
    warned: list[str] = []
    ensure_collected(cfg, 0, cfg.data.sources[0], warn=warned.append)
    assert warned == []


def test_a_resumed_collection_lists_a_page_that_fails_again_once(server, collect_config, run_collector) -> None:
    server.route("/api", lambda hit: Reply(503) if hit.query["page"] == "2" else page_route()(hit))
    cfg = collect_config(rest_source(server, "/api", pagination="page", records="$.data[*]"), retries=0)
    run_collector(rest, cfg)
    again = run_collector(rest, cfg)
    assert [f["page"] for f in again.failures] == [2] and len(again.records) == 3


@pytest.mark.parametrize("status", [404, 400])
def test_page_pagination_ends_at_a_page_past_the_end_answered_with_an_error(server, collect_config, run_collector,
                                                                             status: int) -> None:
    """WordPress answers the page after the last with 400 (rest_post_invalid_page_number), others with 404: the
    collection had stopped there as a failure, "run collect again to resume", forever."""
    def reply(hit: Hit) -> Reply:
        n = int(hit.query["page"])
        return Reply(body={"data": REVIEWS[(n - 1) * 3:n * 3]}) if n <= 3 else Reply(status, body={"code": "invalid page"})

    server.route("/api", reply)
    cfg = collect_config(rest_source(server, "/api", pagination="page", records="$.data[*]"))
    out = run_collector(rest, cfg)
    assert [r["id"] for r in out.records] == [r["id"] for r in REVIEWS]
    assert out.failures == [] and out.state is not None and out.state["done"] is True
    assert any(f"answered {status}" in n for n in out.notes)
    assert run_collector(rest, cfg).notes == ["already collected (--refresh collects again)"]


def test_a_first_page_answered_404_is_still_a_failure(server, collect_config, run_collector) -> None:
    server.route("/api", Reply(404, body={"error": "no such API"}))
    out = run_collector(rest, collect_config(rest_source(server, "/api", pagination="page", records="$.data[*]")))
    assert [f["status"] for f in out.failures] == [404] and out.state is not None and out.state["done"] is False


def test_page_pagination_ends_at_a_page_shorter_than_page_size(server, collect_config, run_collector) -> None:
    server.route("/api", page_route())
    cfg = collect_config(rest_source(server, "/api", pagination="page", records="$.data[*]", page_size=3))
    out = run_collector(rest, cfg)
    assert len(out.records) == len(REVIEWS) and out.state is not None and out.state["done"] is True
    assert [h.query["page"] for h in server.hits("/api")] == ["1", "2", "3"]  # page 3 held 1 of 3: no 4th request
