"""Shared by the reports (data, evaluation, annotation, retrain, model card): user text escaped for Markdown, labels
made one-line and short for plain text and axes, the headline metrics per task, and one standalone HTML page with
pictures inlined."""

from __future__ import annotations

import base64
import html
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;"
         "text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}blockquote{color:#555}"
         "pre{background:#f6f6f6;padding:.8em;overflow-x:auto}")


# The metrics a reader looks at first, per task; the optional ones appear when the model has them. Here, below
# the evaluation, because the model card (a lower stage) shows them first too.
HEADLINE = {
    "single_label_classification": ["accuracy", "f1_macro", "f1_weighted"],
    "multi_label_classification": ["subset_accuracy", "f1_micro", "f1_macro", "hamming_loss"],
    "regression": ["mae", "rmse", "r2", "spearman"],
    "chat": ["loss", "perplexity", "mean_token_accuracy", "rouge_l", "token_f1", "exact_match", "stopped"],
    "preference": ["preference_accuracy", "logp_margin", "rouge_l", "token_f1", "stopped"],
}
OPTIONAL = {"single_label_classification": ["log_loss", "roc_auc"], "multi_label_classification": ["roc_auc_macro"],
            "chat": ["answer_accuracy"], "preference": ["reward_accuracy"]}


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


def markdown_text(value: Any) -> str:
    """User text (a label, a description, a review) put inline into Markdown that becomes HTML: it stays text.
    HTML is escaped (no `<script>`), and so is Markdown's punctuation: "![p](https://tracker.example/p.png)" in a
    correction is no picture the report fetches when opened, "[x](https://evil.example)" no live link, a backtick
    opens no code span, "#" or "|" starts no heading or table cell. Newlines and tabs become spaces: a line break
    would end the list item or quote the text sits in."""
    out = html.escape(str(value), quote=False)  # "<" and ">" become entities, so they need no backslash
    for c in "\\`*[]!|#":
        out = out.replace(c, "\\" + c)
    # "_" only where it can open or close emphasis ("__init__", "_x_"); inside a word (f1_macro) it is plain
    # text to Python-Markdown, and stays readable in the .md
    out = re.sub(r"(?<![^\W_])_|_(?![^\W_])", r"\\_", out)
    return re.sub(r"[\r\n\t\v\f]", " ", out)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table whose cells are escaped (`markdown_text`): text from the data must stay text in the HTML."""
    lines = ["| " + " | ".join(markdown_text(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(markdown_text(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# -- labels in plain text and on axes -----------------------------------------------------------


def short_labels(labels: Sequence[Any], width: int = 20) -> list[str]:
    """Labels cut to `width` in the middle, their start and end kept (classes often share a prefix:
    customer_complaint_billing / _shipping both read customer_complaint_…); the full names where two still read alike."""
    head = width // 2

    def cut(label: str) -> str:
        return label if len(label) <= width else label[:head] + "…" + label[len(label) - (width - 1 - head):]

    full = [shown(x) for x in labels]
    names = [cut(x) for x in full]
    return names if len(set(names)) == len(names) else full


def shown(label: Any) -> str:
    """A label as one line: a newline or tab in it (data allows them) broke the confusion matrix's rows and
    columns; each control or line-separator character becomes a visible "·"."""
    return "".join("·" if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in str(label))


def display_width(text: str) -> int:
    """Columns a terminal or monospace font gives the text: wide (CJK) characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def pad_to_width(text: str, width: int, right: bool = False) -> str:
    fill = " " * max(0, width - display_width(text))
    return fill + text if right else text + fill
