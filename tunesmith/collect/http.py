"""Fetching over HTTP for the web and REST collectors: politely, patiently, and once.

Politely: robots.txt is read once per host and honoured (a missing one allows; a 401/403 one, or one the
server fails to give (5xx: RFC 9309's "unreachable"), forbids everything, until a later run reads it;
a host that cannot be reached at all fails on its pages), and requests to one host are spaced by
`http.rate_limit` (or the robots.txt Crawl-delay when longer). Patiently: 429, 5xx, timeouts and
dropped connections are retried with exponential backoff, a Retry-After header winning, every wait
capped at `http.max_backoff`. Once: successful responses are kept in an SQLite cache under
`collect_dir/http-cache`, so a re-run reads them back without touching the site (and without counting
against the rate limit). A fetch that finally fails raises FetchError, which the collectors turn into
one failure line: one bad URL never aborts a collection.

Secrets (a REST token in a header) are sent but never stored: the header is redacted from cached
requests and left out of cache keys, and no message here ever includes request headers.
"""

from __future__ import annotations

import codecs
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.utils import check_header_validity, parse_header_links
from requests.structures import CaseInsensitiveDict
from requests_cache import DEFAULT_IGNORED_PARAMS, CachedResponse, CachedSession

from tunesmith.config import HttpSpec

ROBOTS_TTL = 24 * 3600  # seconds a cached robots.txt is trusted: a day, as major crawlers do; pages never expire
CACHE_FILE = "responses.sqlite"  # inside the http-cache folder


class FetchError(Exception):
    """A URL that could not be fetched, after retries where retrying could help. `reason` is for the
    failure list; `status` is the last HTTP status, None when no response came (timeout, refused, robots)."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Page:
    """One successful (2xx) response."""

    url: str  # the final URL, after redirects
    status: int
    headers: Mapping[str, str]
    content: bytes
    from_cache: bool
    cache_key: str | None  # where it sits in the cache, for `Fetcher.forget`

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-case ('' when the server sent none)."""
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    @property
    def charset(self) -> str | None:
        """The Content-Type charset when Python knows it (None when absent or unknown), as `codec_of` names it."""
        match = re.search(r";\s*charset\s*=\s*[\"']?([\w.:-]+)", self.headers.get("Content-Type", ""), re.IGNORECASE)
        return None if match is None else codec_of(match.group(1))

    @property
    def next_link(self) -> str | None:
        """The absolute URL of the RFC 8288 `Link: <...>; rel="next"` header, if any."""
        for link in parse_header_links(self.headers.get("Link", "")):
            if "next" in link.get("rel", "").split() and link.get("url"):
                return urljoin(self.url, link["url"])
        return None


def codec_of(label: str) -> str | None:
    """The Python codec of a charset label, None when Python does not know it. ISO-8859-1 and ASCII read as
    windows-1252, its superset, as browsers do (WHATWG Encoding): servers say latin-1 for cp1252 text."""
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    return "cp1252" if name in ("iso8859-1", "ascii") else name


def retryable(status: int) -> bool:
    """Worth asking again: rate-limited or a server-side failure (501 Not Implemented never heals)."""
    return status == 429 or (status >= 500 and status != 501)


def retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for: a number of seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def origin_of(url: str) -> str:
    """scheme://host[:port]: what robots.txt and the rate limit are kept per."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _why(err: requests.RequestException) -> str:
    """The root cause of a requests error in a few words, without urllib3's pool and object noise."""
    inner: Any = err.args[0] if err.args else err
    inner = getattr(inner, "reason", inner)  # urllib3's MaxRetryError wraps the real cause
    text = str(inner)
    return text.rsplit("): ", 1)[-1] if "): " in text else text


class Fetcher:
    """GETs with robots.txt, a per-host rate limit, retries and the on-disk cache of one source's HttpSpec.

    `sleep` and `clock` are injectable so tests can observe waits without sitting through them.
    `secret_headers` names request headers that carry credentials: sent, never cached or logged.
    """

    def __init__(self, http: HttpSpec, cache_dir: Path | None, *, robots: bool | None = None,
                 secret_headers: Iterable[str] = (), sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.http = http
        self.robots = http.robots if robots is None else robots
        self._sleep = sleep
        self._clock = clock
        self._last: dict[str, float] = {}  # origin -> clock() of its last network request
        self._interval: dict[str, float] = {}  # origin -> seconds between requests (Crawl-delay may raise it)
        self._rules: dict[str, Robots] = {}
        self._unread: dict[str, int] = {}  # origin -> the 5xx its robots.txt answered (everything there is refused)
        self.session: requests.Session
        if http.cache and cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            self.session = CachedSession(
                str(cache_dir / CACHE_FILE), backend="sqlite",
                allowable_codes=(200,), allowable_methods=("GET",),  # only successes: a failed page is fetched again next time
                expire_after=-1, urls_expire_after={re.compile(r"/robots\.txt$"): ROBOTS_TTL},
                cache_control=False,  # the user asked for a re-run not to refetch, whatever the site's headers say
                ignored_parameters=(*DEFAULT_IGNORED_PARAMS, *secret_headers),  # redacted from stored requests and keys
            )
            self._redact_redirects(self.session, [*secret_headers, "Authorization"])
        else:
            self.session = requests.Session()
        self.session.headers["User-Agent"] = http.user_agent
        self.session.headers.update(http.headers)
        self._keep_secrets_home(self.session, list(secret_headers))

    @staticmethod
    def _keep_secrets_home(session: requests.Session, secret: list[str]) -> None:
        """A redirect to another origin goes without the credential headers: requests drops only Authorization, so an
        X-Api-Key token followed a 302 to whichever host it named."""
        rebuild = session.rebuild_auth

        def rebuild_auth(prepared: Any, response: Any) -> None:
            rebuild(prepared, response)
            if origin_of(str(prepared.url)) != origin_of(str(response.request.url)):
                for name in secret:
                    prepared.headers.pop(name, None)

        session.rebuild_auth = rebuild_auth  # type: ignore[method-assign]

    @staticmethod
    def _redact_redirects(session: CachedSession, secret: list[str]) -> None:
        """requests-cache redacts ignored_parameters from the final response's request only: the redirects it keeps in
        `history` were pickled with the token in their request headers (a same-origin 302 wrote it to the cache file).
        They are stored from copies without those headers, so the token is never written, not even to be overwritten."""
        save = session.cache.save_response
        lowered = {name.lower() for name in secret}

        def redacted(response: requests.Response) -> CachedResponse:
            cached = CachedResponse.from_response(response)
            for request in (cached.request, cached._next):
                if request is not None:
                    request.headers = CaseInsensitiveDict(
                        {k: v for k, v in request.headers.items() if k.lower() not in lowered})
            return cached

        def save_response(response: requests.Response, cache_key: str | None = None, expires: Any = None) -> None:
            if response.history:
                response.history = [redacted(r) for r in response.history]
            save(response, cache_key, expires)

        session.cache.save_response = save_response  # type: ignore[method-assign]

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def get(self, url: str, params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None) -> Page:
        """The 2xx response for `url`, from the cache or the network. Raises FetchError: disallowed by
        robots.txt, a 4xx, or a retryable failure that lasted through `http.retries` retries."""
        if self.robots and not self.allowed(url):
            unread = self._unread.get(origin_of(url))
            raise FetchError(url, f"{origin_of(url)}/robots.txt answered HTTP {unread}: a site whose rules cannot be read "
                                  "is not crawled (RFC 9309); collect again later" if unread else
                             f"disallowed by {origin_of(url)}/robots.txt for user agent {self.http.user_agent!r}")
        for name, value in (headers or {}).items():
            try:
                check_header_validity((name, value))
            except requests.exceptions.InvalidHeader:  # its message quotes the value, which may be a token
                raise FetchError(url, f"header {name} holds characters HTTP does not allow (a line break pasted "
                                      "into the token's environment variable?)") from None
        cached = self._from_cache(url, params, headers)
        if cached is not None:
            return self._not_redirected_into_robots(url, cached)
        for attempt in range(self.http.retries + 1):
            status: int | None = None
            wait: float | None = None
            try:
                response = self._send(url, params, headers)
            except requests.Timeout:
                problem = f"no answer within {self.http.timeout:g}s (http.timeout)"
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
                problem = f"connection failed: {_why(err)}"
            except requests.RequestException as err:  # a bad URL, a redirect loop: asking again will not help
                raise FetchError(url, _why(err)) from None
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return self._not_redirected_into_robots(url, _page(response))
                problem = f"HTTP {status} {response.reason or ''}".rstrip()
                if not retryable(status):
                    raise FetchError(response.url or url, problem, status)
                wait = retry_after(response.headers.get("Retry-After"))
            if attempt == self.http.retries:
                tries = f"{self.http.retries + 1} attempt{'s' * (self.http.retries > 0)}"
                raise FetchError(url, f"{problem}; gave up after {tries}", status)
            delay = self.http.backoff * 2**attempt if wait is None else wait
            self._sleep(min(delay, self.http.max_backoff))
        raise AssertionError("unreachable: the loop returns or raises")

    def _not_redirected_into_robots(self, url: str, page: Page) -> Page:
        """`page`, unless a redirect took `url` to a page robots.txt disallows: requests follows redirects by
        itself, and the site asked crawlers not to take that page's content whatever link led there."""
        if self.robots and page.url != url and not self.allowed(page.url):
            raise FetchError(url, f"redirected to {page.url}, which {origin_of(page.url)}/robots.txt disallows for "
                                  f"user agent {self.http.user_agent!r}", page.status)
        return page

    def forget(self, page: Page) -> None:
        """Drop a cached response that turned out unusable (e.g. truncated JSON), so the next run asks again."""
        if page.cache_key and isinstance(self.session, CachedSession):
            self.session.cache.delete(page.cache_key)

    def allowed(self, url: str) -> bool:
        """Whether robots.txt of url's host lets our user agent fetch it (read once per host)."""
        origin = origin_of(url)
        if origin not in self._rules:
            self._rules[origin] = self._read_robots(origin)
        return robots_allow(self._rules[origin], self.http.user_agent, url)

    def _read_robots(self, origin: str) -> Robots:
        url = f"{origin}/robots.txt"
        try:
            response = self._from_cache(url, None, None) or _page(self._send(url, None, None))
        except requests.RequestException:
            return Robots(allow_all=True)  # unreachable: nothing forbids us
        status = response.status
        if status in (401, 403):
            return Robots(allow_all=False)  # the site keeps even its rules private: stay out
        if status >= 500:  # RFC 9309 2.3.1.4: rules the server fails to give may forbid anything: assume they do
            self._unread[origin] = status
            return Robots(allow_all=False)
        if not 200 <= status < 300:
            return Robots(allow_all=True)  # no robots.txt (404): no rules
        from protego import Protego

        # utf-8-sig: a BOM hid the first User-agent line, and its rules with it
        rules = Protego.parse(response.content.decode("utf-8-sig", errors="replace"))
        delay = rules.crawl_delay(self.http.user_agent)
        if delay:
            self._interval[origin] = min(max(float(delay), 1 / self.http.rate_limit), self.http.max_backoff)
        return Robots(rules=rules)

    def _from_cache(self, url: str, params: Mapping[str, Any] | None, headers: Mapping[str, str] | None) -> Page | None:
        if not isinstance(self.session, CachedSession):
            return None
        response = self.session.get(url, params=params, headers=headers, only_if_cached=True)
        hit = getattr(response, "from_cache", False) and response.status_code != 504  # 504: requests-cache's "not cached"
        return _page(response) if hit else None

    def _send(self, url: str, params: Mapping[str, Any] | None, headers: Mapping[str, str] | None) -> requests.Response:
        """One network request, after waiting for this host's turn (the rate limit)."""
        origin = origin_of(url)
        interval = self._interval.get(origin, 1 / self.http.rate_limit)
        last = self._last.get(origin)
        if last is not None:
            wait = last + interval - self._clock()
            if wait > 0:
                self._sleep(wait)
        self._last[origin] = self._clock()
        return self.session.get(url, params=params, headers=headers, timeout=self.http.timeout)


@dataclass
class Robots:
    """A host's robots.txt as read: its rules, or a verdict for every path (none found, or none given)."""

    rules: Any = None  # protego.Protego
    allow_all: bool = True


def robots_allow(robots: Robots, user_agent: str, url: str) -> bool:
    """RFC 9309 as Protego (Scrapy's parser) reads it: the longest matching rule wins, Allow on a tie, `*` and a final
    `$`, every group naming our agent merged, blank lines inside a group, fractional Crawl-delay. urllib's parser took
    the first rule that matched, dropped a second group and `Disallow: /*?` became "the whole site"."""
    if robots.rules is None:
        return robots.allow_all
    return bool(robots.rules.can_fetch(url, user_agent))


def _page(response: requests.Response) -> Page:
    return Page(url=response.url, status=response.status_code, headers=response.headers, content=response.content,
                from_cache=bool(getattr(response, "from_cache", False)), cache_key=getattr(response, "cache_key", None) or None)
