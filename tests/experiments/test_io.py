"""Output directories: stale temporary files of a killed run are cleared, final files are kept."""

from __future__ import annotations

from sgdstab.experiments.io import atomic_write_text, prepare_output_dir


def test_prepare_output_dir_clears_stale_temporaries_only(tmp_path):
    out = tmp_path / "run"
    atomic_write_text(prepare_output_dir(out) / "report.md", "done\n")
    stale = out / ".summary.json.abc123.tmp"  # what a run killed inside atomic_write leaves
    stale.write_text('{"half": ')
    keep = out / ".notes.txt"  # a hidden file that is not ours
    keep.write_text("mine")
    prepare_output_dir(out)
    assert not stale.exists()
    assert keep.read_text() == "mine" and (out / "report.md").read_text() == "done\n"
