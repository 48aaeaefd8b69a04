"""Duplicate keys: when two cleaned texts count as the same. (The cleaning itself, shared with inference, is
tunesmith/tasks/text.py.)"""

from __future__ import annotations


# Invisible format characters (zero-width space and joiners, byte-order mark, soft hyphen, direction marks): kept in
# the text, left out of its key. "\ufeffNice tea" (a BOM pasted from another file) and "Nice tea" were two texts.
_INVISIBLE = dict.fromkeys([0x00AD, *range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2060, 0x2065), 0xFEFF])


def dedup_key(text: str) -> str:
    """What counts as 'the same text' for exact duplicates: case, spacing and invisible characters do not matter."""
    return " ".join(text.translate(_INVISIBLE).casefold().split())
