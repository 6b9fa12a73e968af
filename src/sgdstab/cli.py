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


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def sweep() -> None:
    """Resumable grids of runs with a SQLite result store (local pool or Ray)."""
    _not_built("sweep", "planned with the sweeps milestone")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def runs() -> None:
    """List, show and export the runs of a sweep directory."""
    _not_built("runs", "planned with the sweeps milestone")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="sgdstab", standalone_mode=False)
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
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
