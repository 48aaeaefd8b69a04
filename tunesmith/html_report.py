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

    def inline(match: re.Match[str]) -> str:
        path = folder / html.unescape(match.group(2))
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img alt="{match.group(1)}" src="data:image/png;base64,{data}">'

    body = markdown_lib.markdown(md_text, extensions=["tables", "fenced_code"])
    body = re.sub(r'<img alt="([^"]*)" src="([^"]+\.png)"\s*/?>', inline, body)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table whose cells are escaped: text from the data must stay text in the HTML."""

    def cell(v: Any) -> str:
        return html.escape(str(v), quote=False).replace("|", "\\|").replace("\n", " ").replace("\r", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
