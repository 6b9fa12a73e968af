"""Output directories: stale temporary files of a killed run are cleared, final files are kept."""

from __future__ import annotations

import subprocess
import sys

from sgdstab.experiments.io import atomic_write_text, prepare_output_dir


def test_prepare_output_dir_clears_stale_temporaries_only(tmp_path):
    out = tmp_path / "run"
    atomic_write_text(prepare_output_dir(out) / "report.md", "done\n")
    writer = subprocess.Popen([sys.executable, "-c", "pass"])  # a writer process that is gone
    writer.wait()
    # what a run killed inside atomic_write leaves (sgdstab's temporary tag and the writer's pid, since issue 13)
    stale = out / f".summary.json.sgdstab-{writer.pid}-abc12345.tmp"
    stale.write_text('{"half": ')
    keep = out / ".notes.txt"  # a hidden file that is not ours
    keep.write_text("mine")
    prepare_output_dir(out)
    assert not stale.exists()
    assert keep.read_text() == "mine" and (out / "report.md").read_text() == "done\n"
