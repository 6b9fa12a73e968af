"""What the command line prints of an error: one line, with nothing a terminal would act on."""

from __future__ import annotations

import pytest

from sgdstab.cli import main
from sgdstab.sweep import store


@pytest.mark.parametrize(
    ("hostile", "shown"),
    [
        ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),  # OSC: sets the window title
        ("\x1b[2J", "\\x1b[2J"),  # CSI: clears the screen
        ("a\rb", "a\\rb"),  # CR overwrites what was printed
        ("\u202etxt.exe", "\\u202etxt.exe"),  # a right-to-left override reorders the line
        ("line\nbreak", "line\\nbreak"),  # an error stays on one line
    ],
)
def test_error_text_from_files_is_shown_not_obeyed(monkeypatch, capsys, hostile, shown):
    def fail(*args, **kwargs):
        raise store.StoreError(f"stored field {hostile} is bad")

    monkeypatch.setattr(store.Store, "open", fail)
    assert main(["runs", "list", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: stored field {shown} is bad\n"


def test_sigterm_ends_the_command_with_the_shells_code_and_one_line(monkeypatch, capsys, tmp_path):
    import signal

    import sgdstab.sweep.driver as driver
    from sgdstab.utils import signals

    def terminated(*args, **kwargs):
        raise signals.Terminated(signal.SIGTERM)

    monkeypatch.setattr(driver, "run_sweep", terminated)
    config = tmp_path / "sweep.toml"
    config.write_text('name = "t"\n[[runs]]\nlr = 0.2\n')
    assert main(["sweep", str(config), "--out", str(tmp_path / "out")]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1] == "terminated by SIGTERM"
