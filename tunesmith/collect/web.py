"""Web pages: listed URLs and sitemaps, optionally crawled within each site, reduced to their main text.

Each page becomes one record {"text", "title", "url"} (+ "date", "author" when the page states them),
its main text extracted by trafilatura (menus, footers and ads left out). Pages are fetched through
`collect.http` (robots.txt, rate limit, retries, cache). What cannot be kept is listed, one line per
URL, in the failure list: an HTTP error, a page robots.txt disallows, a non-HTML response, a page
whose main text is shorter than `web.min_chars`, a sitemap that does not parse.

Order: listed URLs, then sitemap pages, then (with `depth` > 0) the links found on them, breadth first,
each URL (without its #fragment) once, at most `max_pages` in all.
"""

from __future__ import annotations

import codecs
import gzip
import re
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

import lxml.etree
import lxml.html
import trafilatura

from tunesmith.collect.http import Fetcher, FetchError, Page, codec_of
from tunesmith.collect.sink import Sink, collect_dir
from tunesmith.config import ProjectConfig, SourceSpec, WebSpec
from tunesmith.errors import ConfigError

HTML_TYPES = ("text/html", "application/xhtml+xml")
BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
MAX_SITEMAPS = 1000  # sitemaps read per source: large sites split their URLs over hundreds; stops an endless index


def collect(cfg: ProjectConfig, index: int, spec: SourceSpec, sink: Sink, say: Callable[[str], None]) -> None:
    web = spec.web
    assert web is not None, "web.collect needs a source with a `web:` section"
    include = _patterns(web.include, "web.include")
    exclude = _patterns(web.exclude, "web.exclude")
    _check_urls(web)
    with Fetcher(spec.http, collect_dir(cfg) / "http-cache") as fetcher:
        queue: deque[tuple[str, int]] = deque()
        seen: set[str] = set()
        excluded = 0

        def enqueue(url: str, depth: int) -> None:
            nonlocal excluded
            url = normalise(url)
            if url in seen:
                return
            seen.add(url)
            if any(p.search(url) for p in exclude):
                excluded += 1
                return
            queue.append((url, depth))

        for url in web.urls:
            enqueue(url, 0)
        if web.sitemap:
            for url in sitemap_pages(fetcher, web.sitemap, sink):
                enqueue(url, 0)

        fetched = 0
        kept_urls: set[str] = set()  # final URLs: two listed URLs redirecting to one page give one record
        while queue and fetched < web.max_pages:
            url, depth = queue.popleft()
            fetched += 1
            page = _fetch(fetcher, url, sink, depth)
            if page is None or normalise(page.url) in kept_urls:
                continue
            kept_urls.add(normalise(page.url))
            _keep(page, web, sink, depth)
            if depth < web.depth:
                def bad(link: str, why: str, page: Page = page, depth: int = depth) -> None:
                    sink.fail(link, f"a link on {page.url}: {why}", status=page.status, depth=depth + 1)

                for link in same_site_links(page, bad):
                    if not include or any(p.search(link) for p in include):
                        enqueue(link, depth + 1)
            if fetched % 25 == 0:
                say(f"web: {fetched} pages fetched, {sink.rows} kept, {len(queue)} queued")

    if queue:
        sink.notes.append(f"stopped at web.max_pages={web.max_pages}; {len(queue)} more URLs were queued")
    if excluded:
        sink.notes.append(f"{excluded} URLs matched web.exclude and were not fetched")


def normalise(url: str) -> str:
    """The URL without its #fragment: one page however many anchors point into it."""
    return urldefrag(url.strip())[0]


def _check_urls(web: WebSpec) -> None:
    """Each configured URL parses: a malformed one (`http://[oops/x`) had aborted the run as an internal error."""
    listed = [(f"web.urls[{i}]", url) for i, url in enumerate(web.urls)]
    for where, url in listed + ([("web.sitemap", web.sitemap)] if web.sitemap else []):
        try:
            urlsplit(normalise(url))
        except ValueError as err:
            raise ConfigError(f"{where}: {url!r} is not a valid URL ({err}); correct it in the config") from None


def _patterns(patterns: list[str], where: str) -> list[re.Pattern[str]]:
    out = []
    for i, text in enumerate(patterns):
        try:
            out.append(re.compile(text))
        except re.error as err:
            raise ConfigError(f"{where}[{i}]: {text!r} is not a valid regular expression ({err})") from None
    return out


def _fetch(fetcher: Fetcher, url: str, sink: Sink, depth: int) -> Page | None:
    try:
        page = fetcher.get(url)
    except FetchError as err:
        sink.fail(err.url, err.reason, status=err.status, depth=depth)
        return None
    if page.content_type and page.content_type not in HTML_TYPES:
        sink.fail(page.url, f"not an HTML page (Content-Type: {page.content_type}): skipped", status=page.status, depth=depth)
        return None
    return page


def _keep(page: Page, web: WebSpec, sink: Sink, depth: int) -> None:
    doc = trafilatura.bare_extraction(html_of(page), url=page.url, with_metadata=True)
    text = (doc.text or "").strip() if doc is not None else ""
    if not text:
        sink.fail(page.url, "no main text found (an empty page, or one built by scripts?)", status=page.status, depth=depth)
        return
    if len(text) < web.min_chars:
        sink.fail(page.url, f"main text has {len(text)} characters, fewer than web.min_chars={web.min_chars} "
                            "(a menu, index or error page?)", status=page.status, depth=depth)
        return
    record: dict[str, Any] = {"text": text, "title": doc.title or None, "url": page.url}
    for key in ("date", "author"):
        if getattr(doc, key, None):
            record[key] = getattr(doc, key)
    sink.add(record, origin=page.url, depth=depth)


def html_of(page: Page) -> str:
    """The page decoded once, as browsers do, for its text and its links alike: a byte-order mark, the Content-Type
    charset, a <meta charset> in its first 1024 bytes; without any, UTF-8 when the bytes are valid UTF-8, else
    windows-1252. (trafilatura guessed UTF-8 while lxml read the links as latin-1: `python -m http.server` sends no
    charset, and a link to /über.html became /Ã¼ber.html, a 404.)"""
    for bom, codec in BOMS:
        if page.content.startswith(bom):
            return page.content.decode(codec, errors="replace")
    charset = page.charset or _meta_charset(page.content[:1024])
    if charset is None:
        try:
            return page.content.decode("utf-8")
        except UnicodeDecodeError:
            charset = "cp1252"
    return page.content.decode(charset, errors="replace")


_META_CHARSET = re.compile(rb"<meta\s[^>]*?charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)


def _meta_charset(head: bytes) -> str | None:
    """The charset a <meta charset> or <meta http-equiv=Content-Type> names, when Python knows it; a page that says
    UTF-16 in an ASCII-readable meta tag is not UTF-16 (WHATWG's prescan reads it as UTF-8)."""
    match = _META_CHARSET.search(head)
    codec = codec_of(match.group(1).decode("ascii", errors="replace")) if match else None
    return "utf-8" if codec is not None and codec.startswith("utf-16") else codec


_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


def same_site_links(page: Page, bad: Callable[[str, str], None] = lambda link, why: None) -> Iterator[str]:
    """Absolute http(s) links of `page` to its own host, in document order (rel=nofollow honoured). `bad` hears of
    each link that is not a valid URL (`http://[oops/x`: urllib's "Invalid IPv6 URL" had aborted the whole run),
    with why; the other links still count."""
    try:  # the text html_of decodes (lxml refuses text that still declares an encoding: XHTML's <?xml ...?>)
        tree = lxml.html.fromstring(_XML_DECLARATION.sub("", html_of(page)), base_url=page.url)
    except (lxml.etree.ParserError, ValueError):
        return
    href = tree.xpath("string(//base/@href)")
    try:
        base = urljoin(page.url, href)
    except ValueError as err:
        bad(href, f"<base href> is not a valid URL ({err}): the page's links are read against its own URL")
        base = page.url
    host = urlsplit(page.url).netloc
    for a in tree.iter("a"):
        href = a.get("href")
        if not href or "nofollow" in (a.get("rel") or "").lower().split():
            continue
        try:
            link = normalise(urljoin(base, href.strip()))
            parts = urlsplit(link)
        except ValueError as err:
            bad(href, f"not a valid URL ({err}): skipped")
            continue
        if parts.scheme in ("http", "https") and parts.netloc == host:
            yield link


def sitemap_pages(fetcher: Fetcher, url: str, sink: Sink) -> list[str]:
    """Page URLs of a sitemap, following a sitemap index into its sitemaps (gzipped ones too).
    A sitemap that cannot be fetched or parsed is listed as a failure; the others still count."""
    pages: list[str] = []
    todo, done = [url], set()
    parser = lxml.etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    while todo and len(done) < MAX_SITEMAPS:
        current = todo.pop(0)
        if current in done:
            continue
        done.add(current)
        try:
            page = fetcher.get(current)
        except FetchError as err:
            sink.fail(err.url, f"sitemap: {err.reason}", status=err.status)
            continue
        try:
            body = gzip.decompress(page.content) if page.content[:2] == b"\x1f\x8b" else page.content
        except (OSError, EOFError) as err:  # a download cut short: one sitemap lost, not the collection
            sink.fail(page.url, f"sitemap is not valid gzip: {err}", status=page.status)
            continue
        try:
            root = lxml.etree.fromstring(body, parser)
        except lxml.etree.XMLSyntaxError as err:
            sink.fail(page.url, f"sitemap is not valid XML: {err}", status=page.status)
            continue
        kind = lxml.etree.QName(root).localname
        locs = []
        for text in (e.text.strip() for e in root.iterfind("{*}*/{*}loc") if (e.text or "").strip()):
            try:
                locs.append(normalise(urljoin(page.url, text)))
            except ValueError as err:  # one bad <loc> (`http://[bad/`) had aborted the whole run
                sink.fail(text, f"sitemap {page.url}: <loc> is not a valid URL ({err}): skipped", status=page.status)
        if kind == "sitemapindex":
            todo.extend(locs)
        elif kind == "urlset":
            pages.extend(locs)
        else:
            sink.fail(page.url, f"not a sitemap: the root element is <{kind}>, expected <urlset> or <sitemapindex>",
                      status=page.status)
    left = [u for u in dict.fromkeys(todo) if u not in done]
    if left:  # they were dropped without a word
        sink.notes.append(f"sitemap: {len(left)} sitemap(s) not read, past the {MAX_SITEMAPS} read (first: {left[0]})")
    return pages
