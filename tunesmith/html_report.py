"""Markdown reports (data and evaluation): tables of user text, and one standalone HTML page with pictures inlined."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;"
         "text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}blockquote{color:#555}"
         "pre{background:#f6f6f6;padding:.8em;overflow-x:auto}")


def markdown_to_html(md_text: str, folder: Path, title: str) -> str:
    """PNG links relative to `folder` become data URIs, so the single HTML file can be mailed or archived."""
    import markdown as markdown_lib

    root = folder.resolve()

    def inline(match: re.Match[str]) -> str:
        path = (folder / html.unescape(match.group(2))).resolve()
        if not path.is_relative_to(root) or not path.is_file():  # only the report's own pictures, never /home/... or ../
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img alt="{match.group(1)}" src="data:image/png;base64,{data}">'

    body = _safe_markdown(markdown_lib).convert(md_text)
    body = re.sub(r'<img alt="([^"]*)" src="([^"]+\.png)"\s*/?>', inline, body)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")


def _safe_markdown(markdown_lib: Any) -> Any:
    """A converter for reports that quote user text (descriptions, labels, rows, warnings, file names):
    raw HTML in it is shown as text instead of run as markup (a `<script>` in a label must not execute
    when the report is opened), and a link may only lead to the web or a file beside the report (or below it)."""
    from markdown.treeprocessors import Treeprocessor

    class SafeLinks(Treeprocessor):
        def run(self, root: Any) -> None:
            for element in root.iter():
                for attr in ("href", "src"):
                    target = _unescaped(element.get(attr) or "")
                    # Browsers drop blanks and control characters inside a scheme ("java\tscript:").
                    scheme = re.match(r"([a-z][a-z0-9+.-]*):", re.sub(r"[\x00-\x20]", "", target), re.I)
                    if scheme and scheme.group(1).lower() not in ("http", "https", "mailto"):
                        element.set(attr, "#")
                    elif not scheme and target and (target.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", target)):
                        element.set(attr, "#")  # a file elsewhere on the machine that opens the report

    md = markdown_lib.Markdown(extensions=["tables", "fenced_code"])
    md.preprocessors.deregister("html_block")  # <div>...</div> blocks passed through as they are
    md.inlinePatterns.deregister("html")  # inline tags such as <script> or <img onerror=...>
    md.treeprocessors.register(SafeLinks(md), "safe_links", 5)  # after "inline" (20), which makes the links
    return md


def _unescaped(target: str) -> str:
    """The URL a browser follows: Python-Markdown keeps character references in an href or src as written
    ("&#106;avascript:", "javascript&colon;"), and the browser decodes them. Decoded until stable, so that no
    nesting of references hides a scheme from the check."""
    while (decoded := html.unescape(target)) != target:
        target = decoded
    return target


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table whose cells are escaped: text from the data must stay text in the HTML."""

    def cell(v: Any) -> str:
        # Markdown's punctuation escaped too: "![x](/home/me/id.png)" in a review stays text, not a picture the
        # report fetches; a label "5*" or "[x](javascript:...)" is no emphasis or link ("_" inside a word is no
        # emphasis to Python-Markdown, so f1_macro stays readable in the .md)
        out = html.escape(str(v), quote=False)
        for c in "\\`*[]|":
            out = out.replace(c, "\\" + c)
        return out.replace("\n", " ").replace("\r", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
