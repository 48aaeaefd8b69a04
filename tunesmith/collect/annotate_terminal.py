"""Terminal mode of `tunesmith annotate`: the same queue as the page, one item at a time on stdout.
Type a label's number, s to skip, u to undo your last answer, q to quit (answers are already saved).
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from tunesmith.collect.annotate import Queue, check_annotator


def annotate_terminal(queue: Queue, annotator: str, console: Console | None = None,
                      ask: Callable[[str], str] | None = None) -> dict[str, int]:
    """Label until the queue is empty or the user quits; returns {"labelled", "skipped", "undone"} of this session.
    `ask` reads one answer (tests pass a scripted one; default: the console's input)."""
    console = console or Console()
    annotator = check_annotator(annotator)
    ask = ask or console.input
    labels = queue.task.labels
    keys = "  ".join(f"[bold]{i}[/] {escape(label)}" for i, label in enumerate(labels, start=1))
    counts = {"labelled": 0, "skipped": 0, "undone": 0}
    if queue.task.instructions:
        console.print(f"[dim]{escape(queue.task.instructions)}[/]")
    item = queue.next(annotator)
    while item is not None:
        p = queue.progress(annotator)
        # Text(), escape(): the item is data, not rich markup: "[b]" must show as typed, "[/quote]" must not crash
        progress = f"{p['labelled']} labelled, {p['skipped']} skipped, {p['left']} left"
        title = escape(f"{queue.task.name}: {item['item_id']}")
        # At least as wide as its title and progress line: fitted to a short text, they were cut ("0 labe")
        width = min(console.width, max(len(item["text"]), len(progress), len(title)) + 8)
        console.print(Panel(Text(item["text"]), title=title, subtitle=progress, width=width))
        if item.get("suggestion"):
            s = item["suggestion"]
            console.print(f"[dim]model suggests {escape(str(s['label']))} ({s['confidence']:.0%})[/]")
        console.print(f"{keys}  [bold]s[/] skip  [bold]u[/] undo  [bold]q[/] quit")
        answer = ask("> ").strip().lower()
        if answer == "q":
            break
        if answer == "s":
            queue.skip(annotator, item["item_id"], origin="terminal")
            counts["skipped"] += 1
        elif answer == "u":
            undone = queue.undo(annotator)
            if undone is None:
                console.print("[yellow]nothing to undo[/]")
                continue
            console.print(f"[yellow]undid {escape(str(undone['undone']))}[/]")
            counts["undone"] += 1
            item = undone
            continue
        elif answer.isdigit() and 1 <= int(answer) <= len(labels):
            queue.label(annotator, item["item_id"], labels[int(answer) - 1], origin="terminal")
            counts["labelled"] += 1
        else:
            console.print(f"[red]type 1-{len(labels)}, s, u or q[/]")
            continue
        item = queue.next(annotator)
    else:
        console.print("[green]nothing left for you in this task[/]")
    return counts
