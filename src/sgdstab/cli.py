"""The ``sgdstab`` command line: a thin layer over the Python API.

Every error a user can cause ends in a one-line message on stderr and exit code 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import sys
import traceback

import click

from sgdstab import __version__
from sgdstab.errors import NotBuiltError, SgdstabError


class _Context:
    debug: bool = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="sgdstab")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """sgdstab: how flat is this minimum, how is SGD's noise aligned with its curvature, and can SGD with
    learning rate η and batch size B stay here?

    Conventions: square loss L = (1/2n) Σ ||f(x_i) − y_i||² (see THEORY.md §1).
    """
    ctx.ensure_object(_Context).debug = debug


def _not_built(command: str, issue: str) -> None:
    raise NotBuiltError(f"`sgdstab {command}` is not built yet in sgdstab {__version__} ({issue})")


@cli.command()
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Directory for the report.")
@click.option("--n", "n", type=click.IntRange(min=2), default=None, help="Number of training samples.")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out: str | None, n: int | None, seed: int) -> None:
    """The main job: measure a network trained on the built-in Fashion-MNIST subset."""
    from sgdstab.experiments.demo import run_demo

    run_demo(out=out, n=n, seed=seed)


def _experiment_help() -> str:
    from sgdstab.experiments.registry import MODULES

    names = "\n".join(f"  {name:<10} {summary}" for name, (_, summary) in sorted(MODULES.items()))
    return (
        "Run one of the paper's experiments (THEORY.md §6) and write its report.\n\n"
        "NAME is one of:\n\n\b\n" + names + "\n\n"
        "The config starts from the experiment's defaults (the full run) or, with --quick, its CI-sized variant; "
        "--config FILE (TOML, flat key = value pairs, or a run's config.json) overrides them. DIR receives "
        "config.json, results.csv, PNG figures, report.md and summary.json; the path of report.md is printed."
    )


@cli.command(help=_experiment_help(), no_args_is_help=True)
@click.argument("name", metavar="NAME")
@click.option("--config", "config_path", metavar="FILE", default=None, help="TOML file overriding the defaults.")
@click.option("--quick", is_flag=True, help="The CI-sized variant (well under a minute on 2 cores).")
@click.option("--out", metavar="DIR", default=None, help="Output directory (required; created if missing).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def experiment(name: str, config_path: str | None, quick: bool, out: str | None, quiet: bool) -> None:
    from sgdstab.experiments.io import OutputError
    from sgdstab.experiments.registry import get_experiment, run_experiment

    get_experiment(name)  # an unknown name is reported before anything else
    if out is None:
        raise OutputError("missing --out DIR: name the directory for the report")
    report, _ = run_experiment(name, out, config_path=config_path, quick=quick, quiet=quiet)
    click.echo(str(report))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def analyze() -> None:
    """Curvature, alignment and stability of a saved model."""
    _not_built("analyze", "planned with the training and experiments milestone")


@cli.command()
@click.argument("config_path", metavar="CONFIG", required=False)
@click.option("--out", metavar="DIR", default=None, help="Sweep directory (required; created if missing).")
@click.option(
    "--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True, help="Where runs execute."
)
@click.option("--address", metavar="ADDR", default=None, help="Ray cluster: 'auto' or ray://HOST:10001 (with ray).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Runs at a time (default: CPUs).")
@click.option("--quiet", is_flag=True, help="No progress output.")
def sweep(
    config_path: str | None, out: str | None, executor: str, address: str | None, workers: int | None, quiet: bool
) -> None:
    """Run (or resume) a grid of runs from a TOML CONFIG into DIR, with a SQLite result store.

    Each run trains an MLP with SGD and measures ||H||_F, λ_max, μ (and optionally ρ, η*). Re-running the same
    command skips finished runs and retries failed or interrupted ones. DIR receives sweep.db, runs/<id>/,
    results.csv, report.md and figures; the path of report.md is printed. Exit code 1 when runs failed.
    """
    from sgdstab.sweep.config import SweepArgumentError, load_sweep
    from sgdstab.sweep.driver import run_sweep

    if config_path is None:
        raise SweepArgumentError("missing CONFIG: pass a sweep TOML file, e.g. sgdstab sweep examples/sweep-quick.toml")
    if out is None:
        raise SweepArgumentError("missing --out DIR: name the sweep directory")
    summary = run_sweep(load_sweep(config_path), out, executor=executor, workers=workers, address=address, quiet=quiet)
    click.echo(summary.report)
    if summary.failed:
        click.echo(
            f"{summary.failed} of {summary.total} runs failed (see `sgdstab runs list {out} --status failed`); "
            "rerun the same command to retry them",
            err=True,
        )
        raise click.exceptions.Exit(1)


@cli.group(invoke_without_command=True)
@click.pass_context
def runs(ctx: click.Context) -> None:
    """List, show and export the runs of a sweep directory."""
    if ctx.invoked_subcommand is None:
        from sgdstab.sweep.config import SweepArgumentError

        raise SweepArgumentError("missing subcommand: use `sgdstab runs list|show|export DIR` (see --help)")


_STATUS = click.Choice(["pending", "running", "done", "failed"])


@runs.command("list")
@click.argument("directory", metavar="DIR")
@click.option("--status", type=_STATUS, default=None, help="Only runs of this status.")
def runs_list(directory: str, status: str | None) -> None:
    """One line per run: id, status, the fields that vary, key results."""
    from rich.console import Console

    from sgdstab.sweep.show import runs_table
    from sgdstab.sweep.store import Store

    with Store.open(directory) as store:
        records = store.runs(status=status)
        counts = store.counts()
        title = f"sweep {store.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 200))
    console.print(runs_table(records, title))


@runs.command("show")
@click.argument("directory", metavar="DIR")
@click.argument("run_id", metavar="RUN")
def runs_show(directory: str, run_id: str) -> None:
    """Everything about one run (RUN: its id or a prefix of at least 4 hex digits)."""
    from sgdstab.sweep.show import run_text
    from sgdstab.sweep.store import Store

    with Store.open(directory) as store:
        click.echo(run_text(store, store.find(run_id)))


@runs.command("export")
@click.argument("directory", metavar="DIR")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option(
    "--table",
    type=click.Choice(["runs", "metrics"]),
    default="runs",
    show_default=True,
    help="runs: one row per run (config and results); metrics: per-step history, long format.",
)
@click.option("--status", type=_STATUS, default=None, help="Only runs of this status.")
@click.option("--out", "out", metavar="FILE", default=None, help="Output file (default: DIR/TABLE.FORMAT).")
def runs_export(directory: str, fmt: str, table: str, status: str | None, out: str | None) -> None:
    """Write the runs (or their metrics) as CSV or Parquet (Parquet needs pyarrow); prints the file's path."""
    from pathlib import Path

    from sgdstab.sweep.export import export
    from sgdstab.sweep.store import Store

    with Store.open(directory) as store:
        target = Path(out) if out is not None else Path(directory) / f"{table}.{fmt}"
        click.echo(str(export(store, target, fmt=fmt, table=table, status=status)))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        # without standalone mode, click returns the code of a `click.exceptions.Exit` raised by a command
        code = cli.main(args=argv, prog_name="sgdstab", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except SgdstabError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
