"""A JSON API, page by page: records picked by JSONPath, fields mapped by JSONPath, a resumable position.

Pagination (rest.pagination): `none` (one request); `page` (?page=1,2,... until a page has no records, fewer than
rest.page_size, or, after the first, answers 404 or 400 as APIs do past the last page);
`offset` (?offset=0,n,... moved by the records received, until none come); `cursor` (?cursor=<value at
cursor_path in the last response> until it is null or absent); `link` (the RFC 8288 `Link: rel="next"`
header, or the URL at `next_path` in the body, until there is none). A cursor or next URL seen before
means the API loops: listed as a failure, and the collection stops there. So does a response where
rest.records finds nothing to pick from (`{"error": ...}` answered with 200): it is not an empty last
page, and a later run asks for it again. So does a cursor or next-page value of the wrong kind (HAL's
`_links.next` object where rest.next_path should name its `href`). A next URL that does not parse is a failure
line that ends the collection, keeping the pages before it.

Resuming: after each page the records are flushed and the next position is written atomically to the
sink's state file; a finished collection writes {"done": true}. Opened with `resume=True`, collect()
continues from the saved position, so an interrupted run (a page that failed beyond its retries, a
killed process) picks up where it stopped without duplicating records, and the failures listed for the pages it
asks again are dropped (listed anew if they fail again).

The token (rest.auth_env) goes in a request header only: never into records, failures, provenance,
the state file, the HTTP cache (the header is redacted there) or messages. robots.txt is not consulted:
it governs crawlers, not an API one calls on purpose.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from jsonpath_ng import JSONPath
from jsonpath_ng.exceptions import JSONPathError
from jsonpath_ng.ext import parse as parse_jsonpath
from jsonpath_ng.ext.filter import Filter
from jsonpath_ng.jsonpath import Child, Index, Slice, Wildcard
from requests_cache.policy.settings import AUTH_PARAMS

from tunesmith.collect.http import Fetcher, FetchError, Page, origin_of
from tunesmith.collect.sink import Sink, collect_dir, now
from tunesmith.config import ProjectConfig, RestSpec, SourceSpec
from tunesmith.errors import ConfigError, DataError


@dataclass
class Position:
    """Where the collection stands: the next request, and what was done. Written to the state file."""

    source: str  # rest.url, so a state file is never applied to another API
    pagination: str
    url: str  # the next request's URL (link pagination: the followed link)
    page: int  # the next page's number (page pagination), from rest.start_page
    offset: int = 0  # the next offset (offset pagination)
    cursor: str | None = None  # the next cursor (None: the first request, without one)
    pages_done: int = 0
    rows: int = 0  # records in the collected file when this position was saved
    seen: list[str] = field(default_factory=list)  # cursors or next URLs already followed (loop detection)
    done: bool = False
    stopped: str | None = None  # why a finished collection ended early (a loop, max_pages)


@dataclass
class _Paths:
    records_text: str
    records: JSONPath
    fields: dict[str, JSONPath]
    cursor: JSONPath | None
    next_url: JSONPath | None


def collect(cfg: ProjectConfig, index: int, spec: SourceSpec, sink: Sink, say: Callable[[str], None]) -> None:
    rest = spec.rest
    assert rest is not None, "rest.collect needs a source with a `rest:` section"
    paths = _compile(rest)
    headers = _auth_header(rest)
    pos = _start(rest, sink)
    if pos is None:
        return
    with Fetcher(spec.http, collect_dir(cfg) / "http-cache", robots=False, secret_headers=list(headers)) as fetcher:
        _pages(rest, paths, fetcher, headers, pos, sink, say)


def _pages(rest: RestSpec, paths: _Paths, fetcher: Fetcher, headers: dict[str, str], pos: Position, sink: Sink,
           say: Callable[[str], None]) -> None:
    while not pos.done:
        if pos.pages_done >= rest.max_pages:
            pos.done, pos.stopped = True, f"rest.max_pages={rest.max_pages} reached"
            sink.notes.append(f"stopped at rest.max_pages={rest.max_pages}: the API had more pages")
            _save(sink, pos)
            return
        number = pos.pages_done + 1
        url = _request_url(rest, pos)
        # the token goes to the API's own origin only: a next link (or Link header) may name any host
        try:
            page = fetcher.get(url, headers=headers if origin_of(url) == origin_of(rest.url) else {})
        except FetchError as err:
            if _past_the_end(rest, pos, err):
                pos.done = True
                sink.notes.append(f"page {pos.page} answered {err.status}: taken as the end of the pages")
                _save(sink, pos)
                return
            sink.fail(_public(err.url), err.reason, status=err.status, page=number)
            sink.notes.append(f"stopped at page {number}; run collect again to resume there")
            return
        try:
            body = json.loads(_text(page))
        except ValueError as err:
            fetcher.forget(page)  # a truncated or broken answer must not be served again from the cache
            sink.fail(_public(page.url), f"malformed JSON: {err}", status=page.status, page=number)
            sink.notes.append(f"stopped at page {number}: the pages after it cannot be found")
            return
        records = _records(paths, body)
        origin = _public(page.url)
        found = _picked_from(paths, body)  # once a page: the shape check and the page's count read it
        problem = _shape_problem(paths, body, found)
        if problem:  # an error answered with 200, or a wrong rest.records: not the end of the data
            fetcher.forget(page)  # asked again on the next run
            sink.fail(origin, problem, status=page.status, page=number)
            sink.notes.append(f"stopped at page {number}: its response is not shaped as rest.records expects")
            return
        nxt, problem = _next_of(rest, paths, body)
        if problem:  # read before the records are kept: the next run asks for this page again, after the fix
            sink.fail(origin, problem, status=page.status, page=number)
            sink.notes.append(f"stopped at page {number}: the page after it cannot be found")
            return
        for i, record in enumerate(records):
            sink.add(record, origin=origin, page=number, index=i)
        pos.pages_done += 1
        pos.rows = sink.rows
        _advance(rest, paths, pos, page, nxt, _sent(found, len(records)), sink)
        sink.flush()  # records first, then the position that assumes them
        _save(sink, pos)
        if pos.pages_done % 10 == 0 or pos.done:
            say(f"rest: {pos.pages_done} pages, {sink.rows} records")


def _text(page: Page) -> str | bytes:
    """The body in the charset its Content-Type names (an API answering iso-8859-1 was read as UTF-8 and refused as
    malformed JSON); without one, the bytes, for json to tell UTF-8, -16 or -32 apart as RFC 8259 says."""
    if page.charset:
        try:  # utf-8-sig: a BOM (.NET APIs send one) is no part of the JSON, which refused it
            return page.content.decode("utf-8-sig" if codecs.lookup(page.charset).name == "utf-8" else page.charset)
        except (LookupError, UnicodeDecodeError):  # a charset Python does not know, or that lies: JSON's own rule
            pass
    return page.content


def _next_of(rest: RestSpec, paths: _Paths, body: Any) -> tuple[str | None, str | None]:
    """Cursor pagination, or link pagination by rest.next_path: (the cursor or URL in `body`, None when there is none;
    why it cannot be one, or None). A value of the wrong kind is not the end: HAL's `_links.next` is {"href": ...},
    and the collection had ended after page 1 and been marked done."""
    if rest.pagination == "cursor":
        assert paths.cursor is not None
        nxt = _first(paths.cursor, body)
        if isinstance(nxt, dict | list):
            return None, _not_a_value("rest.cursor_path", rest.cursor_path, nxt, "a cursor (a string or number)")
        return (None if nxt in (None, "") else str(nxt)), None
    if rest.pagination == "link" and paths.next_url is not None:
        assert rest.next_path is not None
        nxt = _first(paths.next_url, body)
        if nxt in (None, ""):
            return None, None
        if not isinstance(nxt, str):
            return None, _not_a_value("rest.next_path", rest.next_path, nxt, "a URL (a string)")
        return nxt, None
    return None, None


def _not_a_value(field: str, path: str, value: Any, wanted: str) -> str:
    kind = (f"an object with keys {sorted(map(str, value))[:10]}" if isinstance(value, dict) else
            f"a list of {len(value)}" if isinstance(value, list) else f"a JSON {type(value).__name__}")
    strings = [k for k, v in value.items() if isinstance(v, str | int) and v] if isinstance(value, dict) else []
    key = "href" if "href" in strings else strings[0] if strings else None
    hint = f"; did you mean `{path}.{key}`?" if key else f"; point {field} at {wanted} inside it"
    return f"{field} {path!r} found {kind} in this response, not {wanted}{hint}"


def _advance(rest: RestSpec, paths: _Paths, pos: Position, page: Page, nxt: str | None, received: int,
             sink: Sink) -> None:
    """Move `pos` to the next request, or mark it done; `received`: the items the API sent on this page, `nxt`: the
    cursor or next URL in its body (_next_of)."""
    if rest.pagination == "none":
        pos.done = True
    elif rest.pagination == "page":
        pos.page += 1
        short = rest.page_size is not None and received < rest.page_size  # fewer than asked for: the last page
        pos.done = received == 0 or short
    elif rest.pagination == "offset":
        pos.offset += received
        pos.done = received == 0
    else:
        try:
            if rest.pagination == "cursor" or paths.next_url is not None:
                follow = nxt if rest.pagination == "cursor" or nxt is None else urljoin(page.url, nxt)
            else:
                follow = page.next_link
        except ValueError as err:  # urllib's "Invalid IPv6 URL" (`http://[oops/x`) had aborted the whole run
            where = f"next page {nxt[:200]!r} at rest.next_path" if nxt else "Link header's rel=next URL"
            sink.fail(_public(page.url), f"the {where} is not a valid URL ({err}); stopped", page=pos.pages_done)
            pos.done, pos.stopped = True, "malformed next page URL"
            return
        if follow is None:
            pos.done = True
        elif follow in pos.seen:
            what = "cursor" if rest.pagination == "cursor" else "next page"
            sink.fail(_public(page.url), f"{what} {_public(follow)!r} was already followed: the API loops; stopped",
                      page=pos.pages_done)
            pos.done, pos.stopped = True, f"{what} loop"
        else:
            pos.seen.append(follow)
            if rest.pagination == "cursor":
                pos.cursor = follow
            else:
                pos.url = follow


def _past_the_end(rest: RestSpec, pos: Position, err: FetchError) -> bool:
    """Page pagination: some APIs answer the page after the last with 404 or 400 (WordPress:
    rest_post_invalid_page_number) rather than an empty page; after a first page, that is the end."""
    return rest.pagination == "page" and pos.pages_done > 0 and err.status in (400, 404)


def _request_url(rest: RestSpec, pos: Position) -> str:
    """The next request's full URL: the configured parameters plus the pagination's own."""
    params: dict[str, Any] = dict(rest.params)
    if rest.page_size is not None:
        params[rest.limit_param] = rest.page_size
    if rest.pagination == "page":
        params[rest.page_param] = pos.page
    elif rest.pagination == "offset":
        params[rest.offset_param] = pos.offset
    elif rest.pagination == "cursor" and pos.cursor is not None:
        params[rest.cursor_param] = pos.cursor
    followed = rest.pagination == "link" and pos.pages_done > 0
    return _with_query(pos.url, params, keep_existing=followed)  # a followed link's own query wins


def _with_query(url: str, params: dict[str, Any], keep_existing: bool) -> str:
    """`url` with `params` set. A key the URL repeats (`?lang=en&lang=fr`) keeps every value unless `params` sets it."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {key for key, _ in query}
    replaced = {key for key in params if not (keep_existing and key in present)}
    query = [(k, v) for k, v in query if k not in replaced] + [(k, str(params[k])) for k in params if k in replaced]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _public(url: str) -> str:
    """`url` without query parameters that commonly carry keys (api_key, access_token): safe to write down."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in AUTH_PARAMS]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _records(paths: _Paths, body: Any) -> list[dict[str, Any]]:
    matches = [m.value for m in paths.records.find(body)]
    if len(matches) == 1 and isinstance(matches[0], list) and not paths.records_text.rstrip().endswith("]"):
        matches = matches[0]  # `$.data` naming the list itself: its items are the records
    out = []
    for item in matches:
        if paths.fields:
            out.append({name: _value(path, item) for name, path in paths.fields.items()})
        else:
            out.append(dict(item) if isinstance(item, dict) else {"value": item})
    return out


def _container(paths: _Paths) -> JSONPath:
    """Where rest.records picks its records from: `$.data` for `$.data[*]`, `$.data[0:5]`, `$.data[?(...)]`, and for
    `$.data[*].attributes` or `$.data.edges[*].node` too (the empty last page of those read as an error, forever)."""
    return _left_of_selector(paths.records) or paths.records


def _left_of_selector(path: JSONPath) -> JSONPath | None:
    """The path up to its first list selector ([*], [0:5], [0], [?(...)]), or None without one."""
    if not isinstance(path, Child):
        return None
    inner = _left_of_selector(path.left)
    if inner is not None:
        return inner
    return path.left if isinstance(path.right, Slice | Index | Wildcard | Filter) else None


def _picked_from(paths: _Paths, body: Any) -> list[Any]:
    """What the place rest.records picks from (its `_container`) holds in `body`."""
    return [m.value for m in _container(paths).find(body)]


def _sent(found: list[Any], kept: int) -> int:
    """How many items the page held (`found`: _picked_from), which offsets and pages count, whatever rest.records'
    filter or slice kept of them (counting the kept ones asked for the same offsets again, and ended at a page the
    filter emptied)."""
    return sum(len(v) for v in found) if found and all(isinstance(v, list) for v in found) else kept


def _shape_problem(paths: _Paths, body: Any, found: list[Any]) -> str | None:
    """Why a response looks wrong rather than records or empty, or None (`found`: _picked_from). Empty is the list
    (or object) that rest.records picks from being there with nothing in it, e.g. `{"data": []}` for `$.data[*]`;
    wrong is that place missing or holding a scalar, e.g. `{"error": "..."}`."""
    if found and all(isinstance(v, list) for v in found):
        return None
    # An object there is records keyed by id ({"7": {...}}) when its values are objects; {"error": "quota exceeded"}
    # under the default `$[*]` had become the record {"value": "quota exceeded"}, and the page's data was lost.
    selected = _left_of_selector(paths.records) is not None
    if found and all(isinstance(v, dict) and (not selected or all(isinstance(x, dict | list) for x in v.values()))
                     for v in found):
        return None
    shape = (f"an object with keys {sorted(body)[:10]}" if isinstance(body, dict) else
             f"a list of {len(body)}" if isinstance(body, list) else f"a JSON {type(body).__name__}")
    return (f"no records: rest.records {paths.records_text!r} does not match this response, which is {shape}; "
            "an error answered with status 200, or check rest.records against the API's documentation")


def _value(path: JSONPath, record: Any) -> Any:
    """One match: its value; several: their list; none: None (the pipeline's missing-value policy decides)."""
    values = [m.value for m in path.find(record)]
    return None if not values else values[0] if len(values) == 1 else values


def _first(path: JSONPath, body: Any) -> Any:
    matches = path.find(body)
    return matches[0].value if matches else None


def _compile(rest: RestSpec) -> _Paths:
    def one(text: str, where: str) -> JSONPath:
        try:
            return parse_jsonpath(text)
        except (JSONPathError, ValueError, TypeError, AttributeError) as err:  # ply's parser raises a few kinds
            raise ConfigError(f"{where}: {text!r} is not a valid JSONPath ({err})") from None

    return _Paths(
        records_text=rest.records,
        records=one(rest.records, "rest.records"),
        fields={name: one(path, f"rest.map.{name}") for name, path in rest.map.items()},
        cursor=one(rest.cursor_path, "rest.cursor_path") if rest.pagination == "cursor" else None,
        next_url=one(rest.next_path, "rest.next_path") if rest.next_path else None,
    )


def _auth_header(rest: RestSpec) -> dict[str, str]:
    if not rest.auth_env:
        return {}
    token = os.environ.get(rest.auth_env, "").strip()
    if not token:
        raise ConfigError(f"rest.auth_env: the environment variable {rest.auth_env} is not set (or empty); "
                          f"export it with the API token before collecting (it is read at run time and never written)")
    return {rest.auth_header: f"{rest.auth_scheme} {token}" if rest.auth_scheme else token}


def _start(rest: RestSpec, sink: Sink) -> Position | None:
    """The position to start from: the saved one when resuming, else the first page. None: nothing left to do."""
    fresh = Position(source=rest.url, pagination=rest.pagination, url=rest.url, page=rest.start_page)
    if rest.pagination == "link":
        fresh.seen.append(_request_url(rest, fresh))  # a next link back to the first page is a loop too
    if not (sink.resume and sink.state_path.exists()):
        _save(sink, fresh)  # replaces an older state at once: a failed first page must not leave a stale "done"
        return fresh
    where = sink.state_path
    try:
        saved = json.loads(where.read_text(encoding="utf-8"))
        saved.pop("updated_at", None)
        pos = Position(**saved)
    except (ValueError, TypeError) as err:
        raise DataError(f"{where}: not a readable collection position ({err}); delete it and the collected file "
                        f"{sink.path} to collect from the start") from None
    if (pos.source, pos.pagination) != (rest.url, rest.pagination):
        raise DataError(f"{where}: saved for {pos.source} ({pos.pagination} pagination), not for this source's "
                        f"{rest.url} ({rest.pagination}); delete it and {sink.path} to collect from the start")
    if pos.done:
        sink.notes.append("already complete" + (f" ({pos.stopped})" if pos.stopped else ""))
        return None
    if pos.rows < sink.rows:  # killed while writing a page: its records are fetched again from the saved position
        sink.truncate(pos.rows)
    if pos.rows != sink.rows:
        raise DataError(f"{sink.path} has {sink.rows} records but the position in {where} was saved at {pos.rows}: "
                        f"the run was interrupted while writing a page; delete both to collect from the start")
    # The last run's failures from the page it stopped at on are asked again now: kept, they said that a page collected
    # since was lost (a page that fails again is listed again).
    sink.drop_failures(lambda failure: isinstance(failure.get("page"), int) and failure["page"] > pos.pages_done)
    sink.notes.append(f"resumed after {pos.pages_done} pages ({pos.rows} records)")
    return pos


def _save(sink: Sink, pos: Position) -> None:
    """Write the position atomically: a crash leaves the old one or the new one, never half of either."""
    tmp = sink.state_path.with_name(sink.state_path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        out.write(json.dumps({**asdict(pos), "updated_at": now()}, indent=1))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, sink.state_path)
