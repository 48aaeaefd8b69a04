"""Web pages: the example site from its sitemap, robots.txt, crawling by depth and page limit, failures
listed per URL while the run goes on, non-HTML and thin pages, duplicates, and re-runs from the cache."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tests.collect.conftest import FixtureServer, Reply
from tunesmith.collect import web
from tunesmith.errors import ConfigError

SITE = Path(__file__).resolve().parents[2] / "examples" / "collect" / "site"


def page(title: str, links: tuple[str, ...] = (), words: str = "") -> str:
    text = words or (f"This is the review called {title}. The soup was hot, the bread was fresh and the staff were kind. "
                     "We would happily come back for the dumplings and the long list of teas.")
    anchors = "".join(f'<a href="{href}">link {i}</a> ' for i, href in enumerate(links))
    return (f"<html><head><title>{title}</title></head><body><nav>{anchors}</nav>"
            f"<article><h1>{title}</h1><p>{text}</p></article></body></html>")


def web_source(server: FixtureServer, **web_spec: object) -> dict:
    urls = [server.url(u) for u in web_spec.pop("urls", [])]  # type: ignore[union-attr]
    return {"web": {"urls": urls, **web_spec}}


def test_example_site_from_its_sitemap_honours_robots(server, collect_config, run_collector) -> None:
    server.serve_dir(SITE)
    cfg = collect_config(web_source(server, sitemap=server.url("/sitemap.xml"), urls=["/drafts/unpublished.html"]))
    out = run_collector(web, cfg)
    titles = sorted(r["title"] for r in out.records)
    assert len(titles) == 5 and titles[0] == "Crumb Bakery: the croissant to beat"
    ramen = next(r for r in out.records if r["url"].endswith("/reviews/ramen-house.html"))
    assert ramen["text"].startswith("Ramen House: worth the queue\nThe tonkotsu broth")
    assert "Previous review" not in ramen["text"] and "since 2019" not in ramen["text"]  # navigation and footer left out
    assert (ramen["author"], ramen["date"]) == ("Mei Tanaka", "2024-05-02")
    assert {p["origin"] for p in out.provenance} == {r["url"] for r in out.records}
    assert all(p["kind"] == "web" and p["collector"].startswith("tunesmith-collect/") for p in out.provenance)
    reasons = {f["origin"].removeprefix(server.base): f["reason"] for f in out.failures}
    assert "robots.txt" in reasons["/drafts/unpublished.html"]
    assert "fewer than web.min_chars=100" in reasons["/index.html"]
    assert server.count("/drafts/unpublished.html") == 0


def test_example_site_crawl_from_the_front_page(server, collect_config, run_collector) -> None:
    server.serve_dir(SITE)
    out = run_collector(web, collect_config(web_source(server, urls=["/index.html"], depth=1)))
    assert len(out.records) == 5
    assert [f["origin"].removeprefix(server.base) for f in out.failures] == ["/index.html", "/drafts/unpublished.html"]


def test_crawl_depth_and_same_site(server, collect_config, run_collector) -> None:
    for i in range(4):
        server.route(f"/p{i}", page(f"Page {i}", (f"/p{i + 1}", "#top", "mailto:x@y.z", "http://example.invalid/away")))
    out = run_collector(web, collect_config(web_source(server, urls=["/p0"], depth=2, min_chars=20)))
    assert [r["url"].removeprefix(server.base) for r in out.records] == ["/p0", "/p1", "/p2"]
    assert [p["depth"] for p in out.provenance] == [0, 1, 2]
    assert server.count("/p3") == 0 and out.failures == []  # the other host was never asked either


def test_max_pages_stops_the_crawl(server, collect_config, run_collector) -> None:
    for i in range(5):
        server.route(f"/p{i}", page(f"Page {i}", (f"/p{i + 1}",)))
    out = run_collector(web, collect_config(web_source(server, urls=["/p0"], depth=5, max_pages=2, min_chars=20)))
    assert len(out.records) == 2 and server.count("/p2") == 0
    assert any("max_pages=2" in n for n in out.notes)


def test_include_and_exclude(server, collect_config, run_collector) -> None:
    server.route("/", page("Home", ("/reviews/a", "/reviews/b", "/about", "/reviews/skip-me")))
    for p in ("/reviews/a", "/reviews/b", "/about", "/reviews/skip-me"):
        server.route(p, page(p))
    source = web_source(server, urls=["/"], depth=1, include=["/reviews/"], exclude=["skip"], min_chars=20)
    out = run_collector(web, collect_config(source))
    assert sorted(r["url"].removeprefix(server.base) for r in out.records) == ["/", "/reviews/a", "/reviews/b"]
    assert server.count("/about") == 0 and server.count("/reviews/skip-me") == 0
    assert any("web.exclude" in n for n in out.notes)


def test_invalid_pattern_is_a_config_error(server, collect_config, run_collector) -> None:
    with pytest.raises(ConfigError, match=r"web\.exclude\[1\]"):
        run_collector(web, collect_config(web_source(server, urls=["/"], exclude=["ok", "(unclosed"])))


def test_failures_are_listed_and_the_run_goes_on(server, collect_config, run_collector) -> None:
    server.route("/ok", page("Fine"))
    server.route("/busy", Reply(429, headers={"Retry-After": "0"}), page("Busy at first"))
    server.route("/flaky", Reply(500), page("Flaky at first"))
    server.route("/slow", Reply(body=page("Slow"), delay=1.2))
    server.route("/menu.pdf", Reply(body=b"%PDF-1.4", headers={"Content-Type": "application/pdf"}))
    server.route("/app", '<html><body><div id="root"></div><script src="app.js"></script></body></html>')
    urls = ["/missing", "/busy", "/flaky", "/slow", "/menu.pdf", "/app", "/ok"]
    out = run_collector(web, collect_config(web_source(server, urls=urls, min_chars=20), timeout=0.4, retries=1))
    assert sorted(r["title"] for r in out.records) == ["Busy at first", "Fine", "Flaky at first"]
    failed = {f["origin"].removeprefix(server.base): f for f in out.failures}
    assert set(failed) == {"/missing", "/slow", "/menu.pdf", "/app"}
    assert failed["/missing"]["status"] == 404
    assert "no answer within 0.4s" in failed["/slow"]["reason"] and server.count("/slow") == 2
    assert "not an HTML page (Content-Type: application/pdf)" in failed["/menu.pdf"]["reason"]
    assert failed["/app"]["reason"].startswith("no main text found")


def test_duplicate_urls_are_fetched_once(server, collect_config, run_collector) -> None:
    server.route("/a", page("A", ("/a#reviews", "/a")))
    out = run_collector(web, collect_config(web_source(server, urls=["/a", "/a#top", "/a"], depth=1, min_chars=20)))
    assert len(out.records) == 1 and server.count("/a") == 1


def test_a_rerun_is_served_from_the_cache(server, collect_config, run_collector) -> None:
    server.serve_dir(SITE)
    cfg = collect_config(web_source(server, sitemap=server.url("/sitemap.xml")))
    first = run_collector(web, cfg)
    asked = server.count()
    second = run_collector(web, cfg)
    assert server.count() == asked  # not one request more, robots.txt included
    assert [r["text"] for r in second.records] == [r["text"] for r in first.records] and len(first.records) == 5


def test_sitemap_index_with_a_gzipped_sitemap(server, collect_config, run_collector) -> None:
    urlset = '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><url><loc>{}</loc></url></urlset>'
    server.route("/sitemap.xml", Reply(body=(
        '<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        f'<sitemap><loc>{server.url("/s1.xml")}</loc></sitemap><sitemap><loc>/s2.xml.gz</loc></sitemap>'
        '<sitemap><loc>/broken.xml</loc></sitemap><sitemap><loc>/cut.xml.gz</loc></sitemap></sitemapindex>').encode(),
        headers={"Content-Type": "application/xml"}))
    server.route("/s1.xml", Reply(body=urlset.format(server.url("/a")).encode(), headers={"Content-Type": "application/xml"}))
    server.route("/s2.xml.gz", Reply(body=gzip.compress(urlset.format("/b").encode()), headers={"Content-Type": "application/gzip"}))
    server.route("/broken.xml", Reply(body=b"<urlset><url>", headers={"Content-Type": "application/xml"}))
    cut = gzip.compress(urlset.format("/c").encode())[:-12]  # a download cut short: it stopped the whole collection
    server.route("/cut.xml.gz", Reply(body=cut, headers={"Content-Type": "application/gzip"}))
    server.route("/a", page("A"))
    server.route("/b", page("B"))
    out = run_collector(web, collect_config({"web": {"sitemap": server.url("/sitemap.xml"), "min_chars": 20}}))
    assert [r["title"] for r in out.records] == ["A", "B"]
    assert [f["reason"].split(":")[0] for f in out.failures] == ["sitemap is not valid XML", "sitemap is not valid gzip"]


def test_sitemaps_past_the_limit_are_named_not_dropped(server, collect_config, run_collector, monkeypatch) -> None:
    monkeypatch.setattr(web, "MAX_SITEMAPS", 4)
    urlset = '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><url><loc>{}</loc></url></urlset>'
    server.route("/sitemap.xml", Reply(body=(
        '<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        + "".join(f"<sitemap><loc>/s{i}.xml</loc></sitemap>" for i in range(6)) + "</sitemapindex>").encode(),
        headers={"Content-Type": "application/xml"}))
    for i in range(6):
        server.route(f"/s{i}.xml", Reply(body=urlset.format(f"/p{i}").encode(), headers={"Content-Type": "application/xml"}))
        server.route(f"/p{i}", page(f"Page {i}"))
    out = run_collector(web, collect_config({"web": {"sitemap": server.url("/sitemap.xml"), "min_chars": 10}}))
    assert len(out.records) == 3  # the index and 3 sitemaps read
    assert any(note.startswith("sitemap: 3 sitemap(s) not read, past the 4 read") for note in out.notes), out.notes


def test_links_of_a_page_decoded_by_its_header_charset(server, collect_config, run_collector) -> None:
    """A UTF-8 page with its charset in the header only: its links were read as latin-1, and /über-uns fetched as
    /%C3%83%C2%BCber-uns (404)."""
    from urllib.parse import quote

    utf8 = {"Content-Type": "text/html; charset=utf-8"}
    server.route("/start", Reply(body=page("Start", links=("/über-uns",)).encode("utf-8"), headers=utf8))
    server.route(quote("/über-uns"), Reply(body=page("Über uns").encode("utf-8"), headers=utf8))
    out = run_collector(web, collect_config(web_source(server, urls=["/start"], depth=1, min_chars=20)))
    assert [r["title"] for r in out.records] == ["Start", "Über uns"] and out.failures == []


def test_the_charset_in_the_content_type_header_decodes_the_page(server, collect_config, run_collector) -> None:
    words = "Crème brûlée in Zürich: a naïve façade, but the café’s “best” dessert for 5 €. " * 2
    html = page("Café", words=words)
    server.route("/latin", Reply(body=html.replace("’", "'").replace("“", '"').replace("”", '"').replace("€", "EUR")
                                 .encode("latin-1"), headers={"Content-Type": "text/html; charset=ISO-8859-1"}))
    server.route("/cp1252", Reply(body=html.encode("cp1252"), headers={"Content-Type": "text/html; charset=windows-1252"}))
    server.route("/meta", Reply(body=html.replace("<head>", '<head><meta charset="windows-1252">').encode("cp1252"),
                                headers={"Content-Type": "text/html"}))  # no charset in the header: the <meta> one
    out = run_collector(web, collect_config(web_source(server, urls=["/latin", "/cp1252", "/meta"], min_chars=20)))
    texts = {r["url"].removeprefix(server.base): r["text"] for r in out.records}
    assert "Crème brûlée in Zürich: a naïve façade, but the café's \"best\" dessert for 5 EUR." in texts["/latin"]
    assert texts["/cp1252"] == texts["/meta"] and words.strip().split(". ")[0] in texts["/cp1252"]
    assert [r["title"] for r in out.records] == ["Café"] * 3


@pytest.mark.parametrize(("encoding", "head"), [("utf-8", ""), ("cp1252", ""), ("utf-8", '<meta charset="utf-8">')])
def test_links_and_text_of_a_page_without_a_header_charset_are_decoded_alike(server, collect_config, run_collector,
                                                                             encoding, head) -> None:
    """`python -m http.server` sends `text/html` without a charset: trafilatura read the UTF-8 text right, lxml read the
    links as latin-1, and /über.html was fetched as /%C3%83%C2%BCber.html (404)."""
    from urllib.parse import quote

    plain = {"Content-Type": "text/html"}
    words = "Das Café war wunderbar, der Kuchen frisch und die Bedienung freundlich und schnell. " * 2
    start = page("Start", links=("/über.html",), words=words).replace("<head>", f"<head>{head}")
    server.route("/start", Reply(body=start.encode(encoding), headers=plain))
    server.route(quote("/über.html"), Reply(body=page("Über uns").encode(encoding), headers=plain))
    out = run_collector(web, collect_config(web_source(server, urls=["/start"], depth=1, min_chars=20)))
    assert [r["title"] for r in out.records] == ["Start", "Über uns"] and out.failures == []
    assert "Das Café war wunderbar" in out.records[0]["text"]


def test_a_malformed_link_is_a_failure_line_not_an_aborted_run(server, collect_config, run_collector) -> None:
    """urllib raised "Invalid IPv6 URL" for `http://[oops/x`: the run aborted and a rerun crashed again from the cache."""
    server.route("/a", page("A", links=("/b", "http://[oops/x", "/c")))
    server.route("/b", page("B"))
    server.route("/c", page("C"))
    cfg = collect_config(web_source(server, urls=["/a"], depth=1, min_chars=20))
    for _ in range(2):  # the second run reads /a from the cache
        out = run_collector(web, cfg)
        assert [r["title"] for r in out.records] == ["A", "B", "C"]
        (failure,) = out.failures
        assert failure["origin"] == "http://[oops/x" and "Invalid IPv6 URL" in failure["reason"]
        assert server.url("/a") in failure["reason"] and failure["depth"] == 1


def test_a_malformed_sitemap_loc_is_a_failure_line(server, collect_config, run_collector) -> None:
    urlset = ('<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><url><loc>{}</loc></url>'
              '<url><loc>http://[bad/</loc></url></urlset>')
    server.route("/sitemap.xml", Reply(body=urlset.format(server.url("/a")).encode(), headers={"Content-Type": "application/xml"}))
    server.route("/a", page("A"))
    out = run_collector(web, collect_config({"web": {"sitemap": server.url("/sitemap.xml"), "min_chars": 20}}))
    assert [r["title"] for r in out.records] == ["A"]
    (failure,) = out.failures
    assert failure["origin"] == "http://[bad/" and "<loc> is not a valid URL (Invalid IPv6 URL)" in failure["reason"]


def test_a_malformed_configured_url_is_a_config_error(server, collect_config, run_collector) -> None:
    cfg = collect_config({"web": {"urls": [server.url("/a"), "http://[bad/"]}})
    with pytest.raises(ConfigError, match=r"web\.urls\[1\]: 'http://\[bad/' is not a valid URL \(Invalid IPv6 URL\)"):
        run_collector(web, cfg)
    assert server.count() == 0
