"""Shared pieces of the sweep tests: tiny configs, running the CLI in a subprocess, checking a sweep directory."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import torch

from sgdstab.sweep.artifacts import PARAMS_FORMAT, RUNS_DIR

# digits (64 inputs), n = 40, width 8: p = 529, every figure on the exact dense route; a run takes ~0.2 s.
TINY_BASE = """
[base]
dataset = "digits"
classes = [0, 1]
n = 40
widths = [8]
steps = 60
track_every = 10
"""


def write_config(folder: Path, body: str, name: str = "tiny", file: str = "sweep.toml") -> Path:
    path = folder / file
    path.write_text(f'name = "{name}"\n' + TINY_BASE + body, encoding="utf-8")
    return path


def grid_config(folder: Path, lrs=(0.05, 0.2), batches=(4, 20), seeds=(0,), name: str = "tiny") -> Path:
    body = f"[grid]\nlr = {list(lrs)}\nbatch_size = {list(batches)}\nseed = {list(seeds)}\n"
    return write_config(folder, body, name=name)


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sgdstab.cli", *args]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # the driver process: one thread (its workers limit themselves)
    return env


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout, env=cli_env())


def db_rows(out: Path, query: str, args: tuple = ()) -> list[tuple]:
    """Read the store with a plain sqlite3 connection (independent of sgdstab's Store)."""
    conn = sqlite3.connect(f"{(out / 'sweep.db').resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


def visible_files(out: Path) -> list[Path]:
    """Every file under ``out`` that is not hidden (temporaries are hidden) and not the store itself."""
    return [
        p
        for p in out.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(out).parts)
        and not p.name.startswith("sweep.db")
    ]


def assert_artifacts_complete(out: Path) -> None:
    """Every visible file parses completely: JSON files load, params.pt files load (weights only) with θ."""
    for path in visible_files(out):
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".pt":
            data = torch.load(path, weights_only=True)
            assert data["format"] == PARAMS_FORMAT and data["theta"].ndim == 1, path
        elif path.suffix == ".png":
            assert path.read_bytes().endswith(b"IEND\xaeB`\x82"), f"{path} is a truncated PNG"


def artifact_dirs(out: Path) -> set[str]:
    folder = out / RUNS_DIR
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()
