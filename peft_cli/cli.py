"""`peftx`: a thin Typer shell. Each command composes the config from conf/ and the trailing
Hydra overrides, calls one library function, and prints. Heavy imports (torch, transformers,
Hydra) happen inside the commands, so `peftx --help` stays fast.

Exit status (the README's contract): 0 success; 2 bad usage/config/input (one line on stderr);
1 a run failed.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="PaFi, HiWi and PEFT baselines on GLUE. Trailing arguments are Hydra overrides "
    "(key=value, group=option, +new.key=value).",
)

OVERRIDES = typer.Argument(
    None, help="Hydra overrides, e.g. task=rte method=pafi mask.density=0.005", show_default=False
)
_state = {"debug": False}


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks of failed runs.")) -> None:
    _state["debug"] = debug


def _err(message: str) -> None:
    print(f"peftx: {message}", file=sys.stderr)


def command(fn: Callable) -> Callable:
    """Map library outcomes to the contract's exit codes."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import signal

        from peft_cli.core.errors import Busy, Interrupted, UserError

        try:
            return fn(*args, **kwargs)
        except UserError as e:
            _err(str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise typer.Exit(2) from None
        except typer.Exit:
            raise
        except Busy as e:
            _err(str(e))
            raise typer.Exit(3) from None
        except KeyboardInterrupt:
            _err("interrupted")
            raise typer.Exit(130) from None
        except Interrupted as e:
            _err(f"run cancelled: {e}")
            raise typer.Exit(130 if e.signum == signal.SIGINT else 1) from None
        except Exception as e:  # a run failed while training/evaluating
            if _state["debug"]:
                raise
            _err(f"run failed: {type(e).__name__}: {e} (rerun with --debug for the traceback)")
            raise typer.Exit(1) from None

    return wrapper


def _compose(overrides: Optional[List[str]]):
    from peft_cli.core.compose import compose

    return compose(list(overrides or []))


@app.command()
@command
def train(
    overrides: Optional[List[str]] = OVERRIDES,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a completed run in the run's folder."),
) -> None:
    """One run: ${model} x ${task} x ${method} x ${seed} -> results/runs/..."""
    from peft_cli.core.signals import ignore_stop_signals
    from peft_cli.run.identity import config_hash, run_folder
    from peft_cli.run.record import is_completed
    from peft_cli.run.train import train_run

    cfg = _compose(overrides)
    # SLURM's USR1/TERM can arrive after the run completed, once train_run has put the previous
    # handlers back: their default action would end this process with 138/143, and sweep.sbatch
    # would requeue, and retrain, a finished run. Around train_run (whose own handlers checkpoint)
    # this process ignores both; it is about to exit anyway.
    ignore_stop_signals()
    done = not overwrite and is_completed(run_folder(cfg), config_hash(cfg))
    r = train_run(cfg, overwrite=overwrite)
    if done:
        _err(f"{run_folder(cfg)} is already completed with this config: not trained again (--overwrite to retrain)")
    test = ", ".join(f"{k}={100 * v:.2f}" for k, v in r["metrics"]["test"].items())
    print(
        f"{cfg.task.name} {r['method_tag']} seed {cfg.seed}: score {r['score']:.2f} ({test}); "
        f"trainable {r['params']['trainable']:,} stored {r['params']['stored']:,} "
        f"({r['stored_bytes']:,} bytes) -> {run_folder(cfg)}"
    )


@app.command("eval")
@command
def eval_(
    run_dir: Path = typer.Argument(..., help="a run folder (holds result.json, config.yaml)"),
    overrides: Optional[List[str]] = OVERRIDES,
) -> None:
    """Reload base model + stored artifact, re-evaluate the test split(s), write eval.json."""
    from peft_cli.run.evaluate import evaluate_run

    r = evaluate_run(run_dir, _dotted(overrides))
    test = ", ".join(f"{k}={100 * v:.2f}" for k, v in r["metrics"]["test"].items())
    same = "equal to the run's" if r["matches_run"] else "DIFFERENT from the run's"
    print(f"{run_dir}: score {r['score']:.2f} ({test}); metrics {same}")


def _dotted(overrides: Optional[List[str]]) -> dict:
    """`key.path=value` pairs for commands that read a run's saved config (eval, export)."""
    import yaml

    from peft_cli.core.errors import UserError

    out = {}
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value (e.g. data.glue_dir=/data/glue)")
        key, value = item.split("=", 1)
        out[key.lstrip("+")] = yaml.safe_load(value)
    return out


@app.command()
@command
def mask(overrides: Optional[List[str]] = OVERRIDES) -> None:
    """Build, or reuse, the shared mask for ${model} (mask.strategy, mask.density, ...)."""
    from peft_cli.methods import mask_owner

    found = mask_owner().build_mask(_compose(overrides))
    _print_mask(found.meta, found.path, found.built)


def _print_mask(meta: dict, path: Path, built: bool) -> None:
    """The mask's breakdown of k by module type, as its sidecar json records it."""
    from rich.markup import escape
    from rich.table import Table

    from peft_cli.core.console import console

    k = meta["k"]
    out = console()
    out.print(escape(f"{'built' if built else 'reused'} {path}"))  # a line of its own: never folded
    out.print(f"k={k:,} of {meta['candidates']:,} candidates, {meta['strategy']}, {meta['scope']}")
    table = Table()
    table.add_column("module type")
    table.add_column("k", justify="right")
    table.add_column("share of k", justify="right")
    for kind, n in meta["breakdown"].items():
        table.add_row(kind, f"{n:,}", f"{100 * n / max(k, 1):.1f}%")
    out.print(table)


@app.command()
@command
def sweep(
    overrides: Optional[List[str]] = OVERRIDES,
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs, run nothing."),
    estimate: bool = typer.Option(
        False, "--estimate", help="With --dry-run: time a few steps here and print the hours per task and in total."
    ),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run failed runs again."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace completed runs of another config found in this grid's folders."
    ),
) -> None:
    """Run the grid of sweep=NAME locally or on SLURM; idempotent (completed runs are skipped)."""
    from peft_cli.sweep.runner import run_sweep

    failed = run_sweep(
        list(overrides or []), dry_run=dry_run, retry_failed=retry_failed, overwrite=overwrite, estimate=estimate
    )
    if failed:
        raise typer.Exit(1)


@app.command()
@command
def submit(
    name: str = typer.Argument(..., help="a sweep in conf/sweep/, e.g. paper_base"),
    overrides: Optional[List[str]] = OVERRIDES,
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs and the sbatch command, submit nothing."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Submit failed runs again."),
) -> None:
    """Submit sweep NAME to SLURM as one job array (= peftx sweep sweep=NAME launcher=slurm ...)."""
    from peft_cli.sweep.runner import run_sweep

    args = [f"sweep={name}", "launcher=slurm", *(overrides or [])]
    if run_sweep(args, dry_run=dry_run, retry_failed=retry_failed):
        raise typer.Exit(1)


@app.command()
@command
def report(overrides: Optional[List[str]] = OVERRIDES) -> None:
    """Tables (Markdown, CSV, LaTeX) and a plot from the completed runs of ${experiment}."""
    from peft_cli.core.compose import compose_dict
    from peft_cli.report.main import report_from_config

    for path in report_from_config(compose_dict(list(overrides or [])), show=True):
        print(path)


@app.command()
@command
def export(
    run_dir: Path = typer.Argument(..., help="a run folder"),
    out_dir: Path = typer.Argument(..., help="where to write the plain Hugging Face model"),
    overrides: Optional[List[str]] = OVERRIDES,
) -> None:
    """Merged plain Hugging Face model; loading it needs no peftx."""
    from peft_cli.run.export import export_run

    r = export_run(run_dir, out_dir, _dotted(overrides))
    check = r["logits_check"]
    print(
        f"{run_dir} -> {out_dir}: {r['method_tag']} as a plain Hugging Face model; logits of "
        f"{check['examples']} test examples within {check['max_abs_diff']:.1e} of the run's"
    )


if __name__ == "__main__":
    app()
