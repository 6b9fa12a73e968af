#!/usr/bin/env python3
"""Write ``examples/experiments/<name>.toml`` (every experiment's full run, i.e. its defaults) from the code.

Each file names every config key with its help text, so it documents the experiment; ``--check`` compares the
files with what would be written instead (exit 0 when equal, 1 when not). The paper-scale configurations under
``examples/experiments/paper/`` are written by hand (they carry their measured run times) and are only checked by
the tests (they load, and name every key).

Usage:
    scripts/write_example_configs.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sgdstab.experiments.config import config_to_toml
from sgdstab.experiments.registry import experiment_names, get_experiment

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "examples" / "experiments"


def text(name: str) -> str:
    exp = get_experiment(name)
    header = [
        f"# sgdstab experiment {name} --config examples/experiments/{name}.toml --out DIR",
        f"# {exp.title}.",
        f"# The full run (these are the defaults): {exp.run_time}.",
        "# Every key is optional: a file overrides only the keys it gives.",
        "",
    ]
    return "\n".join(header) + "\n" + config_to_toml(exp.default_config(), experiment=name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name in experiment_names():
        path = FOLDER / f"{name}.toml"
        wanted = text(name)
        if args.check:
            if not path.is_file() or path.read_text() != wanted:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(wanted)
    if stale:
        print("out of date (run scripts/write_example_configs.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
