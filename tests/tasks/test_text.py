"""Text cleaning: markup and entities go, plain text that only looks like them stays."""

from __future__ import annotations

import pytest

from tunesmith.config import CleanSpec
from tunesmith.tasks.text import TextCleaner

clean = TextCleaner(CleanSpec(strip_html=True))


@pytest.mark.parametrize(("raw", "cleaned"), [
    ("Loved it!<br />Would buy &amp; again &#8364;5 &eacute;t&eacute;", "Loved it!\nWould buy & again €5 été"),
    ('<p class="x">a <b>bold</b> claim</p><!-- note -->', "a bold claim"),
    # html.unescape read HTML4's bare entities: the link's "&region" became "®ion", "&notes" "¬es", "&copy=2" "©=2"
    ("cart?id=3&region=eu&currency=usd", "cart?id=3&region=eu&currency=usd"),
    ("Tom&notes and &copy=2&para=3", "Tom&notes and &copy=2&para=3"),
    ("write to <john@example.com>, a < b and c > d", "write to <john@example.com>, a < b and c > d"),
])
def test_markup_goes_and_text_that_looks_like_it_stays(raw: str, cleaned: str) -> None:
    assert clean(raw) == cleaned
