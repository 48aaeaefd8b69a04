"""The fetcher both network collectors share: retries and backoff, Retry-After, timeouts, robots.txt,
the per-host rate limit and the on-disk cache, against a local server (tests/collect/conftest.py)."""

from __future__ import annotations

import email.utils
import time
from pathlib import Path

import pytest

from tests.collect.conftest import FixtureServer, Reply
from tests.servers import free_port
from tunesmith.collect.http import Fetcher, FetchError, retry_after
from tunesmith.config import HttpSpec

PAGE = "<html><body><p>hello</p></body></html>"


def spec(**kw: object) -> HttpSpec:
    return HttpSpec(**{"rate_limit": 1000, "retries": 2, "backoff": 0.5, "max_backoff": 30, "timeout": 5, **kw})


class Sleeps(list):
    """A recording sleep: the waits the fetcher asked for, without sitting through them."""

    def __call__(self, seconds: float) -> None:
        self.append(round(seconds, 3))


def test_429_with_retry_after_then_success(server: FixtureServer, tmp_path: Path) -> None:
    server.route("/a", Reply(429, "busy", headers={"Retry-After": "7"}), PAGE)
    sleeps = Sleeps()
    page = Fetcher(spec(), tmp_path, robots=False, sleep=sleeps).get(server.url("/a"))
    assert page.status == 200 and b"hello" in page.content
    assert server.count("/a") == 2
    assert 7.0 in sleeps  # the server's wish, not our 0.5 s backoff


def test_retry_after_is_capped_and_read_as_a_date() -> None:
    future = email.utils.formatdate(time.time() + 90, usegmt=True)
    assert 85 <= retry_after(future) <= 91
    assert retry_after("3") == 3.0 and retry_after(None) is None and retry_after("soon") is None


def test_long_retry_after_waits_only_max_backoff(server: FixtureServer, tmp_path: Path) -> None:
    server.route("/a", Reply(503, headers={"Retry-After": "3600"}), PAGE)
    sleeps = Sleeps()
    Fetcher(spec(max_backoff=2), tmp_path, robots=False, sleep=sleeps).get(server.url("/a"))
    assert sleeps == [2.0]


def test_500_then_success_backs_off_exponentially(server: FixtureServer, tmp_path: Path) -> None:
    server.route("/a", Reply(500), Reply(502), PAGE)
    sleeps = Sleeps()
    page = Fetcher(spec(), tmp_path, robots=False, sleep=sleeps).get(server.url("/a"))
    assert page.content == PAGE.encode() and server.count("/a") == 3
    assert sleeps == [0.5, 1.0]


def test_500_beyond_retries_fails_with_the_status(server: FixtureServer, tmp_path: Path) -> None:
    server.route("/a", Reply(500))
    with pytest.raises(FetchError) as err:
        Fetcher(spec(retries=2), tmp_path, robots=False, sleep=Sleeps()).get(server.url("/a"))
    assert err.value.status == 500 and "gave up after 3 attempts" in err.value.reason
    assert server.count("/a") == 3


def test_404_is_not_retried(server: FixtureServer, tmp_path: Path) -> None:
    with pytest.raises(FetchError) as err:
        Fetcher(spec(), tmp_path, robots=False, sleep=Sleeps()).get(server.url("/missing"))
    assert err.value.status == 404 and err.value.reason.startswith("HTTP 404")
    assert server.count("/missing") == 1


def test_timeout_is_retried_then_reported(server: FixtureServer, tmp_path: Path) -> None:
    server.route("/slow", Reply(body=PAGE, delay=0.6))
    with pytest.raises(FetchError) as err:
        Fetcher(spec(timeout=0.15, retries=1, backoff=0.01), tmp_path, robots=False).get(server.url("/slow"))
    assert err.value.status is None and "no answer within 0.15s" in err.value.reason
    assert server.count("/slow") == 2


def test_refused_connection_is_reported(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/x"  # nothing listens there
    with pytest.raises(FetchError) as err:
        Fetcher(spec(retries=1), tmp_path, robots=False, sleep=Sleeps()).get(url)
    assert "connection failed" in err.value.reason and "refused" in err.value.reason.lower()


def test_a_rerun_is_served_from_the_cache_but_failures_are_not_cached(server: FixtureServer, tmp_path: Path) -> None:
    server.route("/a", PAGE)
    first = Fetcher(spec(), tmp_path / "cache", robots=False).get(server.url("/a"))
    again = Fetcher(spec(), tmp_path / "cache", robots=False).get(server.url("/a"))  # a new process, the same folder
    assert (first.from_cache, again.from_cache) == (False, True) and again.content == first.content
    assert server.count("/a") == 1
    for _ in range(2):
        with pytest.raises(FetchError):
            Fetcher(spec(), tmp_path / "cache", robots=False).get(server.url("/gone"))
    assert server.count("/gone") == 2
    Fetcher(spec(cache=False), tmp_path / "cache", robots=False).get(server.url("/a"))
    assert server.count("/a") == 2  # cache: false always asks


def test_rate_limit_spaces_requests_to_one_host(server: FixtureServer, tmp_path: Path) -> None:
    for p in ("/1", "/2", "/3"):
        server.route(p, PAGE)
    fetcher = Fetcher(spec(rate_limit=4), tmp_path, robots=False)  # one request every 0.25 s
    for p in ("/1", "/2", "/3"):
        fetcher.get(server.url(p))
    arrivals = [h.at for h in server.hits()]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert len(gaps) == 2 and min(gaps) >= 0.2, gaps  # 0.25 s, with room for clock and scheduling jitter
    start = time.monotonic()
    for p in ("/1", "/2", "/3"):
        assert fetcher.get(server.url(p)).from_cache
    assert time.monotonic() - start < 0.2  # cached answers do not wait for a turn
    assert server.count() == 3


def test_robots_txt_disallows_and_is_read_once(server: FixtureServer, tmp_path: Path) -> None:
    server.route("/robots.txt", Reply(body=b"User-agent: *\nDisallow: /private/\n", headers={"Content-Type": "text/plain"}))
    server.route("/private/x", PAGE)
    server.route("/public", PAGE)
    fetcher = Fetcher(spec(), tmp_path)
    with pytest.raises(FetchError) as err:
        fetcher.get(server.url("/private/x"))
    assert "disallowed by" in err.value.reason and "robots.txt" in err.value.reason
    fetcher.get(server.url("/public"))
    fetcher.get(server.url("/public?again=1"))
    assert server.count("/private/x") == 0 and server.count("/robots.txt") == 1
    assert Fetcher(spec(robots=False), tmp_path / "other").get(server.url("/private/x")).status == 200


def test_robots_rules_for_our_user_agent(server: FixtureServer, tmp_path: Path) -> None:
    rules = b"User-agent: tunesmith-collect\nDisallow: /\n\nUser-agent: *\nDisallow:\n"
    server.route("/robots.txt", Reply(body=rules, headers={"Content-Type": "text/plain"}))
    server.route("/a", PAGE)
    with pytest.raises(FetchError):
        Fetcher(spec(), tmp_path).get(server.url("/a"))
    assert Fetcher(spec(user_agent="other-bot/1.0"), tmp_path / "c2").get(server.url("/a")).status == 200


@pytest.mark.parametrize(("rules", "path", "allowed"), [
    (b"Allow: /\nDisallow: /private/\n", "/private/x", False),  # the longest rule wins, not the first
    (b"Disallow: /\nAllow: /public\n", "/public/x", True),
    (b"Disallow: /*?session=\n", "/p?session=1", False),  # * matches any run of characters
    (b"Disallow: /*.pdf$\n", "/files/a.pdf", False),  # $ anchors the end
    (b"Disallow: /*.pdf$\n", "/files/a.pdf?page=2", True),
    (b"Allow: /a\nDisallow: /a\n", "/a/b", True),  # a tie goes to Allow
    # urllib's parser: "/*?" became "/%2A", every page; a second group for us was dropped; a blank line ended the group
    (b"Disallow: /*?\n", "/article", True),
    (b"Disallow: /*?\n", "/article?page=2", False),
    (b"Disallow: /private/\n\nUser-agent: *\nDisallow: /drafts/\n", "/drafts/y", False),
    (b"\nDisallow: /drafts/\n", "/drafts/y", False),
])
def test_robots_rules_are_read_as_rfc_9309_says(server: FixtureServer, tmp_path: Path, rules: bytes, path: str,
                                                allowed: bool) -> None:
    server.route("/robots.txt", Reply(body=b"User-agent: *\n" + rules, headers={"Content-Type": "text/plain"}))
    assert Fetcher(spec(), tmp_path).allowed(server.url(path)) is allowed


def test_a_robots_txt_with_a_bom_keeps_its_first_group(server: FixtureServer, tmp_path: Path) -> None:
    body = b"\xef\xbb\xbfUser-agent: *\nDisallow: /private/\n"  # the BOM hid "User-agent", and the rules with it
    server.route("/robots.txt", Reply(body=body, headers={"Content-Type": "text/plain"}))
    assert Fetcher(spec(), tmp_path).allowed(server.url("/private/page")) is False


def test_a_redirect_into_a_disallowed_page_is_not_kept(server: FixtureServer, tmp_path: Path) -> None:
    server.route("/robots.txt", Reply(body=b"User-agent: *\nDisallow: /private/\n", headers={"Content-Type": "text/plain"}))
    server.route("/go", Reply(302, headers={"Location": "/private/x"}))
    server.route("/private/x", PAGE)
    fetcher = Fetcher(spec(), tmp_path)
    for _ in range(2):  # from the network, then from the cache
        with pytest.raises(FetchError, match=r"redirected to .*/private/x, which .*robots.txt disallows"):
            fetcher.get(server.url("/go"))


@pytest.mark.parametrize(("status", "allowed"), [(403, False), (401, False), (404, True), (500, False), (503, False)])
def test_robots_txt_status(server: FixtureServer, tmp_path: Path, status: int, allowed: bool) -> None:
    """A 5xx robots.txt is RFC 9309's "unreachable": complete disallow (it was read as no rules, and crawled)."""
    server.route("/robots.txt", Reply(status))
    server.route("/a", PAGE)
    fetcher = Fetcher(spec(), tmp_path)
    if allowed:
        assert fetcher.get(server.url("/a")).status == 200
    else:
        with pytest.raises(FetchError, match=f"robots.txt answered HTTP {status}" if status >= 500 else "robots.txt"):
            fetcher.get(server.url("/a"))
        assert server.count("/a") == 0


def test_robots_crawl_delay_slows_the_host(server: FixtureServer, tmp_path: Path) -> None:
    server.route("/robots.txt", Reply(body=b"User-agent: *\nCrawl-delay: 1\n", headers={"Content-Type": "text/plain"}))
    server.route("/1", PAGE)
    Fetcher(spec(rate_limit=1000), tmp_path).get(server.url("/1"))
    one, two = server.hits("/robots.txt")[0].at, server.hits("/1")[0].at
    assert two - one >= 0.9  # robots.txt's 1 s, not our 1 ms



def test_a_fractional_crawl_delay_is_kept(server: FixtureServer, tmp_path: Path) -> None:
    """urllib read only whole seconds: "Crawl-delay: 1.5" was no delay at all."""
    server.route("/robots.txt", Reply(body=b"User-agent: *\nCrawl-delay: 1.5\n", headers={"Content-Type": "text/plain"}))
    server.route("/1", PAGE)
    Fetcher(spec(rate_limit=1000), tmp_path).get(server.url("/1"))
    assert server.hits("/1")[0].at - server.hits("/robots.txt")[0].at >= 1.4


def test_secret_headers_are_sent_but_never_stored(server: FixtureServer, tmp_path: Path) -> None:
    server.route("/a", PAGE)
    fetcher = Fetcher(spec(), tmp_path / "cache", robots=False, secret_headers=["X-Token"])
    fetcher.get(server.url("/a"), headers={"X-Token": "s3cr3t-value"})
    assert server.hits("/a")[0].headers["X-Token"] == "s3cr3t-value"
    fetcher.close()
    stored = b"".join(f.read_bytes() for f in (tmp_path / "cache").rglob("*") if f.is_file())
    assert b"/a" in stored and b"s3cr3t-value" not in stored


@pytest.mark.parametrize("status", [301, 302])
@pytest.mark.parametrize("header", ["X-Token", "Authorization"])
def test_secret_headers_of_a_redirect_are_never_stored(server: FixtureServer, tmp_path: Path, status: int,
                                                        header: str) -> None:
    # requests-cache redacted the final request only: the 302 in the response's history was pickled with the token
    server.route("/old", Reply(status, b"", headers={"Location": server.url("/new")}))
    server.route("/new", PAGE)
    fetcher = Fetcher(spec(), tmp_path / "cache", robots=False, secret_headers=[header])
    page = fetcher.get(server.url("/old"), headers={header: "Bearer s3cr3t-value"})
    assert page.url == server.url("/new") and not page.from_cache
    assert server.hits("/new")[0].headers[header] == "Bearer s3cr3t-value"  # same origin: still sent after the redirect
    fetcher.close()
    stored = b"".join(f.read_bytes() for f in (tmp_path / "cache").rglob("*") if f.is_file())
    assert b"/new" in stored and b"s3cr3t-value" not in stored
    with Fetcher(spec(), tmp_path / "cache", robots=False, secret_headers=[header]) as again:
        assert again.get(server.url("/old"), headers={header: "Bearer s3cr3t-value"}).from_cache  # still a cache hit


def test_forget_drops_a_cached_response(server: FixtureServer, tmp_path: Path) -> None:
    server.route("/a", PAGE)
    fetcher = Fetcher(spec(), tmp_path, robots=False)
    fetcher.forget(fetcher.get(server.url("/a")))
    assert not fetcher.get(server.url("/a")).from_cache
    assert server.count("/a") == 2
