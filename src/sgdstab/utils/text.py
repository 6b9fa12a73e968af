"""Text for people: safe to print on a terminal (:func:`printable`), numbers for prose (:func:`fmt`).

Text read from files (a stored error, a worker name, a config value) may hold characters a terminal acts on
instead of showing: ESC starts CSI and OSC sequences (colours, cursor moves, window titles, hyperlinks, clipboard
writes), CR and BS overwrite what was printed, and Unicode format characters (bidirectional overrides, zero-width
characters) reorder or hide text. :func:`printable` shows each of them as a visible escape (``\\x1b``,
``\\u202e``), as Python's ``repr`` would, and leaves every other character as it is.

This module is pure (no sgdstab imports) so that any part of sgdstab, the command line included, can use it.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

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


__all__ = ["fmt", "printable"]


def fmt(value: Any, digits: int = 4) -> str:
    """A number for prose: ``digits`` significant figures, ``inf``/``nan`` spelled out, None as a dash.

    A value that rounding changed keeps its trailing zeros (0.9996 at 3 figures is ``1.00``, not ``1``: the reader
    sees the precision); a value that is exactly its short form stays short (a configured η = 0.02 is ``0.02``)."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    short = f"{value:.{digits}g}"
    if float(short) == value:
        return short
    mantissa, _, exponent = f"{value:#.{digits}g}".partition("e")
    return mantissa.rstrip(".") + (f"e{exponent}" if exponent else "")
