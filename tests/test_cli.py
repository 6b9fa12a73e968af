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


@pytest.mark.parametrize("command", ["analyze", "sweep", "runs"])
def test_not_yet_built_commands_say_so(command, capsys):
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not built yet" in err
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
