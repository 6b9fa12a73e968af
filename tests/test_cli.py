"""The command line: --help, --version, clear errors with exit code 2 and no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sgdstab import __version__
from sgdstab.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "experiment", "analyze", "sweep", "runs"):
        assert command in out


def test_unknown_command_exits_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "No such command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "missing"), [("sweep", "missing CONFIG"), ("runs", "missing subcommand")])
def test_commands_without_arguments_say_what_is_missing(command, missing, capsys):
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and missing in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_bad_option_value_exits_2(capsys):
    assert main(["demo", "--n", "-5"]) == 2
    assert "Invalid value" in capsys.readouterr().err


def test_console_script_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "sgdstab.cli", "sweep"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_debug_flag_shows_traceback(capsys):
    assert main(["--debug", "runs"]) == 2
    assert "Traceback" in capsys.readouterr().err
