"""User strings in one-line messages: file names and texts shown safely, whatever they hold.

A file name may hold a newline, terminal escapes, bytes that are not UTF-8 (Python keeps them as
lone surrogates), or rich markup such as `[/]`. `shown` turns any of them into printable text on
one line; `one_line` does the same to a whole message and caps its length, so that a hostile
YAML or file name cannot print megabytes. The consoles print with markup off, so brackets are
shown as they are.
"""

from __future__ import annotations

import os

MAX_MESSAGE = 600  # characters of one error line


def _escaped(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def shown(value: object) -> str:
    """`value` (a path, a string) as printable text: control characters, line breaks and
    undecodable bytes become backslash escapes, so a message stays on one line."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escaped(c) for c in text)


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """`message` escaped by `shown` and cut to `limit` characters."""
    text = shown(message)
    if len(text) > limit:
        text = text[: limit - 25] + f"... ({len(text) - limit + 25} more characters)"
    return text
