"""sgdstab.utils.text.printable: every character a terminal would act on is shown as a visible escape, nothing else
changes."""

from __future__ import annotations

import unicodedata

import pytest

from sgdstab.utils.text import printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),  # OSC: set the window title
        ("\x1b]52;c;cGF3bmVk\x07", "\\x1b]52;c;cGF3bmVk\\x07"),  # OSC 52: write the clipboard
        ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),  # CSI: clear the screen, cursor home
        ("\x9b31m", "\\x9b31m"),  # the 8-bit CSI (C1 control)
        ("ok\rfake", "ok\\rfake"),  # CR: overwrite what was printed
        ("a\x08b\x7f", "a\\x08b\\x7f"),  # backspace, DEL
        ("tab\there", "tab\\there"),
        ("two\nlines", "two\\nlines"),
        ("\u202eevil", "\\u202eevil"),  # right-to-left override
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("\U000e0041tag", "\\U000e0041tag"),  # a tag character (format, outside the BMP)
        ("\x00nul", "\\x00nul"),
    ],
)
def test_control_and_format_characters_are_escaped(text, shown):
    assert printable(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain",
        "‖H‖_F ≤ sqrt(1/(cμ))/η",
        "10\u00a0000 and\u2009thin",
        "C:\\path\\x1b",
        "[bold]markup[/]",
        "日本語 🎉",
    ],
)
def test_printable_text_is_unchanged(text):
    assert printable(text) == text  # letters, symbols, spaces of every width; a backslash is not doubled


def test_newlines_can_be_kept_and_the_rest_is_still_escaped():
    assert printable("line 1\nline\x1b[2 2\r\n", keep_newlines=True) == "line 1\nline\\x1b[2 2\\r\n"


def test_the_output_never_holds_a_character_a_terminal_acts_on():
    every = "".join(chr(code) for code in range(0x3000)) + "\u2028\u2029\ufeff\U000e0001"
    out = printable(every)
    # what is left: printable characters and the spaces of category Zs (a no-break space), nothing else
    assert all(ch.isprintable() or unicodedata.category(ch) == "Zs" for ch in out)
    assert "\x1b" not in out and "\x9b" not in out and "\u2028" not in out
