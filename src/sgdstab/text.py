"""Text that is safe to print on a terminal.

Text read from files (a stored error, a worker name, a config value) may hold characters a terminal acts on
instead of showing: ESC starts CSI and OSC sequences (colours, cursor moves, window titles, hyperlinks, clipboard
writes), CR and BS overwrite what was printed, and Unicode format characters (bidirectional overrides, zero-width
characters) reorder or hide text. :func:`printable` shows each of them as a visible escape (``\\x1b``,
``\\u202e``), as Python's ``repr`` would, and leaves every other character as it is.

This module is pure (no sgdstab imports) so that any part of sgdstab, the command line included, can use it.
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _shown(char: str) -> bool:
    """Whether a terminal prints ``char`` as itself: printable characters and the spaces (category Zs, e.g. a
    no-break space, which :meth:`str.isprintable` refuses but which moves nothing)."""
    return char.isprintable() or unicodedata.category(char) == "Zs"


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str, keep_newlines: bool = False) -> str:
    """``text`` with every control or format character replaced by its visible escape (ESC → ``\\x1b``, a
    right-to-left override → ``\\u202e``, a tab → ``\\t``); ``keep_newlines`` keeps ``\\n`` as a line break.
    Text with nothing to escape is returned unchanged; backslashes are not doubled."""
    if text.isprintable():
        return text
    return "".join(char if _shown(char) or (keep_newlines and char == "\n") else _escape(char) for char in text)


__all__ = ["printable"]
