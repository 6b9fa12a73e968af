"""The ``sgdstab`` command line: a thin layer over the Python API.

Every error a user can cause ends in a one-line message on stderr and exit code 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

import click

from sgdstab._version import __version__
from sgdstab.errors import SgdstabError, Terminated
from sgdstab.utils.text import printable


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


@cli.command()
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Directory for the report.")
@click.option(
    "--n", "n", type=click.IntRange(min=2), default=None, help="Samples per net (default 64; scaling: n/2 and n)."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quick", is_flag=True, help="Each experiment's CI-sized variant (about half the time).")
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Experiments at a time, one process each (default 2)."
)
@click.option("--quiet", is_flag=True, help="No progress lines.")
def demo(out: str | None, n: int | None, seed: int, quick: bool, workers: int | None, quiet: bool) -> None:
    """The main job: a compact version of the experiments (THEORY.md §6, §9) on the built-in Fashion-MNIST
    subset — the flatness of SGD's minima over (η, B), the alignment μ along training, its independence of n and
    width, one escape, one stability diagram, GD and SGD on cross-entropy — in one report with its figures
    (about 1–3 minutes on 2 cores). Prints the path of report.md (default sgdstab-demo/report.md)."""
    from sgdstab.experiments.demo import run_demo

    if not 0 <= seed < 2**63:  # checked here, not by an IntRange, to keep click's "not a valid integer" wording
        raise click.BadParameter(f"{seed} is not in the range 0<=x<=9223372036854775807.", param_hint="'--seed'")
    run_demo(out=out, n=n, seed=seed, quick=quick, workers=workers, quiet=quiet)


def _experiment_help() -> str:
    from sgdstab.experiments.registry import MODULES

    names = "\n".join(f"  {name:<10} {summary}" for name, (_, summary) in sorted(MODULES.items()))
    return (
        "Run one of the paper's experiments (THEORY.md §6) and write its report.\n\n"
        "NAME is one of:\n\n\b\n" + names + "\n\n"
        "The config starts from the experiment's defaults (the full run) or, with --quick, its CI-sized variant; "
        "--config FILE (TOML, flat key = value pairs, or a run's config.json) overrides them, and --set KEY=VALUE "
        "overrides single keys after that. DIR receives "
        "config.json, results.csv, PNG figures, report.md and summary.json; the path of report.md is printed."
    )


@cli.command(help=_experiment_help(), no_args_is_help=True)
@click.argument("name", metavar="NAME")
@click.option("--config", "config_path", metavar="FILE", default=None, help="TOML file overriding the defaults.")
@click.option("--quick", is_flag=True, help="The CI-sized variant (well under a minute on 2 cores).")
@click.option("--out", metavar="DIR", default=None, help="Output directory (required; created if missing).")
@click.option(
    "--set",
    "settings",
    metavar="KEY=VALUE",
    multiple=True,
    help="Override one config key after the file (repeatable), e.g. --set data_dir=~/cifar --set n=500.",
)
@click.option("--quiet", is_flag=True, help="No progress lines.")
def experiment(
    name: str, config_path: str | None, quick: bool, out: str | None, settings: tuple[str, ...], quiet: bool
) -> None:
    from sgdstab.errors import OutputError
    from sgdstab.experiments.config import parse_overrides
    from sgdstab.experiments.registry import get_experiment, run_experiment

    get_experiment(name)  # an unknown name is reported before anything else
    overrides = parse_overrides(settings)
    if out is None:
        raise OutputError("missing --out DIR: name the directory for the report")
    report, _ = run_experiment(name, out, config_path=config_path, quick=quick, quiet=quiet, overrides=overrides)
    click.echo(str(report))


@cli.command()
@click.option(
    "--checkpoint",
    "checkpoint",
    metavar="FILE",
    default=None,
    help="state_dict (torch.save or safetensors); with --model.",
)
@click.option("--model", "spec", metavar="SPEC", default=None, help="ModelSpec as a JSON object or a JSON file.")
@click.option(
    "--program", metavar="FILE", default=None, help="A .pt2 program saved with torch.export.save (no --model needed)."
)
@click.option("--data", "dataset", metavar="NAME", default="fashion-mnist-small", show_default=True)
@click.option("--data-dir", metavar="DIR", default=None, help="Folder of the data files (fashion-mnist, cifar10).")
@click.option("--n", "n", type=click.IntRange(min=1), default=200, show_default=True, help="Number of samples.")
@click.option("--classes", metavar="IDS", default=None, help="Class ids, e.g. 0,6 (two: one ±1 output; default: all).")
@click.option("--subset", type=click.Choice(["first", "stratified"]), default="first", show_default=True)
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--lr", type=float, default=None, help="Learning rate (in the --loss convention).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="SGD batch size B (needs --lr).")
@click.option(
    "--sampling",
    type=click.Choice(["with_replacement", "without_replacement"]),
    default="with_replacement",
    show_default=True,
)
@click.option(
    "--loss",
    type=click.Choice(["half_mse", "torch_mse", "cross_entropy", "bce_with_logits"]),
    default="half_mse",
    show_default=True,
    help=(
        "torch_mse: your lr is on nn.MSELoss; learning-rate figures are shown in it and on L. cross_entropy, "
        "bce_with_logits: the model's outputs are logits, analysed through the generalized Gauss–Newton."
    ),
)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None, help="Default: the checkpoint's.")
@click.option("--rtol", type=float, default=1e-2, show_default=True, help="Relative error of estimated figures.")
@click.option(
    "--at-minimum/--not-at-minimum",
    default=None,
    help="Assert θ is (or is not) a global minimum; default: decided from the loss and H − G.",
)
@click.option(
    "--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="Data subset and estimators."
)
@click.option("--json", "as_json", is_flag=True, help="Print every figure as JSON instead of a table.")
def analyze(
    checkpoint: str | None,
    spec: str | None,
    program: str | None,
    dataset: str,
    data_dir: str | None,
    n: int,
    classes: str | None,
    subset: str,
    split: str,
    lr: float | None,
    batch_size: int | None,
    sampling: str,
    loss: str,
    dtype: str | None,
    rtol: float,
    at_minimum: bool | None,
    seed: int,
    as_json: bool,
) -> None:
    """Curvature, alignment and stability of a saved model on a data set (Python: sgdstab.analyze).

    The model is a state dict (--checkpoint) with its architecture (--model), or a torch.export program
    (--program). Files are read with torch.load(weights_only=True), safetensors, or a guarded torch.export.load:
    code in a file never runs.
    """
    import warnings

    import torch

    from sgdstab.data import load_dataset
    from sgdstab.data.registry import check_dataset_name
    from sgdstab.linear_stability.analysis import analyze as run_analysis
    from sgdstab.linear_stability.analysis import check_analysis_arguments
    from sgdstab.models.loading import fit_inputs, load_model, load_program

    # every argument is checked before anything is loaded or computed
    _check_model_source(checkpoint, spec, program)
    check_analysis_arguments(lr, batch_size, sampling, loss, rtol, seed, at_minimum, n=n)
    check_dataset_name(dataset)
    ids = _class_ids(classes)
    model = load_program(program) if program is not None else load_model(spec, checkpoint)  # type: ignore[arg-type]
    data = load_dataset(dataset, n=n, classes=ids, seed=seed, data_dir=data_dir, split=split, subset=subset)
    check_analysis_arguments(lr, batch_size, sampling, loss, rtol, seed, at_minimum, n=len(data.X))
    X, reshaped = fit_inputs(model, data.X)
    # the built-in data's two-class targets are ±1 (one output); a logistic loss takes them as probabilities 0 and 1
    targets = (data.Y + 1) / 2 if loss == "bce_with_logits" and data.Y.shape[1] == 1 else data.Y
    with warnings.catch_warnings():  # torch 2.13 warns about its own pytree code when an exported module is copied
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        result = run_analysis(
            model,
            X,
            targets,
            lr=lr,
            batch_size=batch_size,
            sampling=sampling,
            loss=loss,
            dtype=None if dtype is None else getattr(torch, dtype),
            rtol=rtol,
            at_minimum=at_minimum,
            seed=seed,
        )
    _echo_analysis(result, str(program or checkpoint), data.description, reshaped, as_json)


def _check_model_source(checkpoint: str | None, spec: str | None, program: str | None) -> None:
    """A model is either a torch.export program or a state dict with its architecture, never both."""
    from sgdstab.errors import AnalysisError

    if program is not None and (checkpoint is not None or spec is not None):
        raise AnalysisError("give either --program FILE, or --checkpoint FILE with --model SPEC, not both")
    if program is None and (checkpoint is None or spec is None):
        raise AnalysisError("a model is needed: --checkpoint FILE with --model SPEC, or --program FILE (torch.export)")


def _class_ids(classes: str | None) -> tuple[int, ...] | None:
    """The class ids of ``--classes 0,6`` (None: the data set's default classes)."""
    from sgdstab.errors import ModelFileError

    if classes is None:
        return None
    try:
        return tuple(int(c) for c in classes.replace(" ", "").split(","))
    except ValueError:
        raise ModelFileError(f"--classes must be comma-separated class ids such as 0,6; got {classes!r}") from None


def _echo_analysis(result: Any, source: str, description: str, reshaped: str | None, as_json: bool) -> None:
    """Print the analysis as strict JSON, or as the result's own table (what ``print(sgdstab.analyze(...))``
    shows in Python)."""
    if as_json:
        from sgdstab.experiments.io import to_json_text

        click.echo(to_json_text({"data": description, "inputs": reshaped, **result.to_dict()}), nl=False)
        return
    click.echo(f"sgdstab analyze: {source} on {description}")
    click.echo(str(result))
    if reshaped:
        click.echo(f"note: {reshaped}")


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
    from sgdstab.errors import SweepArgumentError
    from sgdstab.sweep.config import load_sweep
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
        from sgdstab.errors import SweepArgumentError

        raise SweepArgumentError("missing subcommand: use `sgdstab runs list|show|export DIR` (see --help)")


_STATUS = click.Choice(["pending", "running", "done", "failed"])


@runs.command("list")
@click.argument("directory", metavar="DIR")
@click.option("--status", type=_STATUS, default=None, help="Only runs of this status.")
def runs_list(directory: str, status: str | None) -> None:
    """One line per run: id, status, the fields that vary, key results."""
    from rich.console import Console

    from sgdstab.sweep.outcome import counts_line
    from sgdstab.sweep.show import runs_table
    from sgdstab.sweep.store import Store

    with Store.open(directory) as store:
        records = store.runs(status=status)
        title = f"sweep {store.name}: {counts_line(store.runs())}"
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
    except click.exceptions.Abort as exc:
        if isinstance(
            exc.__cause__, Terminated
        ):  # SIGTERM or SIGHUP (sgdstab.utils.signals): the shell's code, 128 + N
            click.echo(str(exc.__cause__), err=True)
            return exc.__cause__.exit_code
        click.echo("aborted", err=True)
        return 130
    except click.UsageError as exc:
        # one line, as for every other error: what is wrong and where the help is
        command = exc.ctx.command_path if exc.ctx is not None else "sgdstab"
        click.echo(f"error: {printable(exc.format_message())} (see `{command} --help`)", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"error: {printable(exc.format_message())}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except SgdstabError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {printable(str(exc))}", err=True)
        return 2
    except Terminated as exc:
        click.echo(str(exc), err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
