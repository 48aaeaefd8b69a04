"""The standalone HTML report: user text stays text, and only the report's own pictures are inlined."""

from __future__ import annotations

from pathlib import Path

from tunesmith.html_report import markdown_table, markdown_text, markdown_to_html

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def test_pictures_named_in_user_text_are_neither_inlined_nor_linked(tmp_path: Path) -> None:
    """A mistake's text "![x](/home/me/private.png)" base64-embedded that file into a report meant to be mailed."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "private.png").write_bytes(PNG)
    report = tmp_path / "run" / "eval"
    (report / "figures").mkdir(parents=True)
    (report / "figures" / "cm.png").write_bytes(PNG)
    texts = [f"![x]({secret / 'private.png'}) great", "![y](../../secret/private.png)", "[click](https://x.test) ok"]
    md = markdown_table(["text"], [[t] for t in texts]) + "\n\n![confusion](figures/cm.png)\n\n![z](../../secret/private.png)\n"
    page = markdown_to_html(md, report, "report")
    assert page.count("data:image/png;base64") == 1  # the report's own picture only
    assert page.count("<img") == 2 and '<img alt="z" src="#"' in page  # a file outside the report's folder: no link
    assert '<a href="https://x.test">' not in page and "[click](https://x.test) ok" in page
    assert f"![x]({secret / 'private.png'}) great" in page


def test_character_references_do_not_hide_a_scheme_or_a_path(tmp_path: Path) -> None:
    """Python-Markdown keeps "&#106;" in an href as written and the browser decodes it: "[a](&#106;avascript:...)"
    was a live javascript: link in a report quoting a label or a task description."""
    import html
    import re

    texts = ["[a](&#106;avascript:alert(1))", "[b](javascript&colon;alert(1))", "[c](jav&#x09;ascript:alert(1))",
             "[d](&amp;#106;avascript:alert(1))", "![e](&#106;avascript:alert(1))", "[f](&#46;&#46;/secret.txt)",
             "[g](&#x2F;home/me/id_rsa)", "[ok](https://x.test/?a=1&amp;b=2)", "[ok2](figures/cm&#46;png)"]
    page = markdown_to_html("\n\n".join(texts), tmp_path, "report")
    targets = [html.unescape(t) for t in re.findall(r'(?:href|src)="([^"]*)"', page)]
    assert targets == ["#"] * 7 + ["https://x.test/?a=1&b=2", "figures/cm.png"]


def test_underscores_at_word_edges_are_no_emphasis(tmp_path: Path) -> None:
    """Labels "__init__" and "_italic_" rendered as bold and italic "init" / "italic" and no longer matched the JSON."""
    page = markdown_to_html(markdown_table(["label"], [["__init__"], ["_italic_"], ["f1_macro"], ["a__b_"]]), tmp_path, "r")
    assert "<strong>" not in page and "<em>" not in page
    assert all(f"<td>{x}</td>" in page for x in ("__init__", "_italic_", "f1_macro", "a__b_"))
    assert markdown_text("f1_macro") == "f1_macro"  # readable in the .md: inside a word "_" is no emphasis


def test_inline_user_text_stays_one_line_of_text(tmp_path: Path) -> None:
    """User text outside tables (a list item, a quote) was Markdown: a picture the report fetched, a live link,
    a code span, a line break that ended the list."""
    text = "a ![p](https://tracker.example/p.png) [x](https://evil.example) `code` *b* | # c <i>d</i> \\e\n- f\tg"
    page = markdown_to_html(f"- {markdown_text(text)}\n- next", tmp_path, "r")
    assert "<img" not in page and "<a " not in page and "<code>" not in page and "<em>" not in page and "<i>" not in page
    assert ("<li>a ![p](https://tracker.example/p.png) [x](https://evil.example) `code` *b* | # c &lt;i&gt;d&lt;/i&gt; "
            "\\e - f g</li>") in page
    assert page.count("<li>") == 2
