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
    "(key=value, group=option). What there is: peftx list tasks|methods|models|sweeps|experiments|keys.",
)

OVERRIDES = typer.Argument(
    None,
    help="Hydra overrides, e.g. task=rte method=pafi mask.density=0.005 (all keys: peftx list keys)",
    show_default=False,
)
RUN_OVERRIDES = typer.Argument(
    None,
    help="key=value pairs that patch the run's saved config.yaml, e.g. data.glue_dir=/elsewhere/glue",
    show_default=False,
)
DEBUG = typer.Option(False, "--debug", help="Show the full traceback of a failure.")
CFG = typer.Option(False, "--cfg", help="Print the composed config (YAML) and exit; nothing runs.")
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"peftx {version('peftx')}")
        except PackageNotFoundError:
            print("peftx (not installed: run from a checkout)")
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = DEBUG,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


def _err(message: str) -> None:
    print(f"peftx: {message}", file=sys.stderr)


def command(fn: Callable) -> Callable:
    """Map library outcomes to the contract's exit codes."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import signal

        from peft_cli.core.errors import Busy, Interrupted, UserError

        _state["debug"] |= kwargs.pop("debug", False)  # `peftx train --debug` as well as `peftx --debug train`
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
        except BrokenPipeError:  # `peftx list keys | head`: the reader stopped reading; say nothing more
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            raise typer.Exit(141) from None  # 128 + SIGPIPE, as a shell reports a command killed by it
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


def _print_cfg(overrides: Optional[List[str]], run: bool = True) -> None:
    """`--cfg`: the composed config as YAML (a run's: model name derived, paths absolute). A
    trailing Hydra-style `job`/`all` (`--cfg job`) is accepted and ignored."""
    import yaml

    from peft_cli.core.compose import compose_dict, compose_run

    args = [o for o in overrides or [] if o not in ("job", "all")]
    d = compose_run(args) if run else compose_dict(args)
    print(yaml.safe_dump(d, sort_keys=False), end="")


@app.command()
@command
def train(
    overrides: Optional[List[str]] = OVERRIDES,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a completed run in the run's folder."),
    cfg_only: bool = CFG,
    debug: bool = DEBUG,
) -> None:
    """One run: ${model} x ${task} x ${method} x ${seed} -> results/runs/...

    Example: peftx train task=rte method=pafi data.glue_dir=/path/to/glue_data
    """
    if cfg_only:
        return _print_cfg(overrides)
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
    overrides: Optional[List[str]] = RUN_OVERRIDES,
    debug: bool = DEBUG,
) -> None:
    """Reload base model + stored artifact, re-evaluate the test split(s), write eval.json.

    Example: peftx eval results/runs/quickstart/minilm-l6/pafi-smallest-d0.005-lr0.01/sst2/seed1
    """
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
def mask(overrides: Optional[List[str]] = OVERRIDES, cfg_only: bool = CFG, debug: bool = DEBUG) -> None:
    """Build, or reuse, the shared mask for ${model} (mask.strategy, mask.density, ...).

    Example: peftx mask model=minilm-l6 mask.density=0.005
    """
    if cfg_only:
        return _print_cfg(overrides)
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
    cfg_only: bool = CFG,
    debug: bool = DEBUG,
) -> None:
    """Run the grid of sweep=NAME locally or on SLURM; idempotent (completed runs are skipped).

    Example: peftx sweep sweep=quickstart data.glue_dir=/path/to/glue_data (--dry-run lists the runs)
    """
    if cfg_only:
        return _print_cfg(overrides, run=False)
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
    debug: bool = DEBUG,
) -> None:
    """Submit sweep NAME to SLURM as one job array (= peftx sweep sweep=NAME launcher=slurm ...).

    Example: peftx submit paper_base launcher.partition=gpu launcher.gres=gpu:1 --dry-run
    """
    from peft_cli.sweep.runner import run_sweep

    args = [f"sweep={name}", "launcher=slurm", *(overrides or [])]
    if run_sweep(args, dry_run=dry_run, retry_failed=retry_failed):
        raise typer.Exit(1)


@app.command()
@command
def report(overrides: Optional[List[str]] = OVERRIDES, debug: bool = DEBUG) -> None:
    """Tables (Markdown, CSV, LaTeX) and a plot from the completed runs of ${experiment}.

    Example: peftx report experiment=quickstart
    """
    from peft_cli.core.compose import compose_dict
    from peft_cli.report.main import report_from_config

    for path in report_from_config(compose_dict(list(overrides or [])), show=True):
        print(path)


@app.command()
@command
def export(
    run_dir: Path = typer.Argument(..., help="a run folder"),
    out_dir: Path = typer.Argument(..., help="where to write the plain Hugging Face model"),
    overrides: Optional[List[str]] = RUN_OVERRIDES,
    debug: bool = DEBUG,
) -> None:
    """Merged plain Hugging Face model; loading it needs no peftx.

    Example: peftx export results/runs/quickstart/minilm-l6/pafi-smallest-d0.005-lr0.01/sst2/seed1 exported/
    """
    from peft_cli.run.export import export_run

    r = export_run(run_dir, out_dir, _dotted(overrides))
    check = r["logits_check"]
    print(
        f"{run_dir} -> {out_dir}: {r['method_tag']} as a plain Hugging Face model; logits of "
        f"{check['examples']} test examples within {check['max_abs_diff']:.1e} of the run's"
    )


@app.command("list")
@command
def list_(
    what: str = typer.Argument(..., help="tasks | methods | models | sweeps | experiments | keys"),
    debug: bool = DEBUG,
) -> None:
    """What you can pick: the options of a config group, or every config key with its type and default.

    Example: peftx list methods; peftx list keys
    """
    if what == "keys":
        return _list_keys()
    from peft_cli.core.catalog import entries

    found = entries(what)
    width = max(len(e.name) for e in found)
    for e in found:
        print(f"{e.name:<{width}}  {e.summary}")
    if what == "models":
        print(f"{'<id>':<{width}}  any hub id or local folder: model=bert-base-uncased, model=/path/to/model")


def _list_keys() -> None:
    """Every key a command line may set, from the schemas: top level, train, data, mask, model,
    results, each method's own keys, each launcher's and the report's."""
    import importlib

    from peft_cli.core.compose import compose_dict, flat_keys
    from peft_cli.core.config import KeyDoc, RunConfig, field_docs, yaml_text
    from peft_cli.methods import HARNESS_KEYS, REGISTRY, method_class
    from peft_cli.report.build import ReportOptions
    from peft_cli.sweep.launchers import REGISTRY as LAUNCHERS

    docs = [d for d in field_docs(RunConfig, "") if not d.key.startswith(("task.", "method", "setting"))]
    docs += [
        KeyDoc("method.name", "str", "(required)", "the method (method=NAME picks conf/method/NAME.yaml)"),
        KeyDoc("method.lr", "float", "(per method)", "the method's default learning rate (train.lr wins)"),
    ]
    for name in REGISTRY:
        own = [d for d in field_docs(method_class(name).config_cls, "method.") if d.key[7:] not in HARNESS_KEYS]
        docs += [d._replace(help=f"[{name}] {d.help}".strip()) for d in own]
    for name, spec in LAUNCHERS.items():
        module, cls = spec.split(":")
        settings = getattr(importlib.import_module(module), cls).settings_cls
        docs += [d._replace(help=f"[{name}] {d.help}".strip()) for d in field_docs(settings, "launcher.")]
    docs += field_docs(ReportOptions, "report.")
    composed = flat_keys(compose_dict([]))  # conf/config.yaml's values where a schema has no default
    docs = [d._replace(default=yaml_text(composed[d.key])) if d.default == "(required)" else d for d in docs]
    docs.append(KeyDoc("task.*", "", "", "a task's columns, labels and metrics: data files, conf/task/NAME.yaml"))
    width = max(len(d.key) for d in docs)
    for d in docs:
        print(f"{d.key:<{width}}  {d.type:<15} {d.default:<12} {d.help}".rstrip())


@app.command()
@command
def predict(
    args: List[str] = typer.Argument(..., help="run folders, then optional key=value patches of their configs"),
    input: Optional[str] = typer.Option(
        None, "--input", "-i", help="TSV (header row) or JSONL with the task's text columns; '-' reads stdin"
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="file (one run) or folder (several runs, --glue-test); default stdout"
    ),
    scores: Optional[str] = typer.Option(None, "--scores", help="add one column per label: probs or logits"),
    glue_test: bool = typer.Option(
        False, "--glue-test", help="label each task's unlabeled GLUE test set into leaderboard files in --output"
    ),
    debug: bool = DEBUG,
) -> None:
    """Predict labels for new text; several runs share one resident base model.

    Example: peftx predict results/runs/cpu_minilm/minilm-l6/pafi-smallest-d0.005-lr0.01/sst2/seed1 --input reviews.tsv
    """
    from peft_cli.core.errors import UserError
    from peft_cli.run.predict import glue_submission, predict_runs

    runs = [Path(a) for a in args if "=" not in a]
    overrides = _dotted([a for a in args if "=" in a])
    if glue_test:
        if input is not None:
            raise UserError("--glue-test reads each task's test files; drop --input")
        out = output or Path("glue_submission")
        for path in glue_submission(runs, out, overrides):
            _err(f"wrote {path}")
        return
    if input is None:
        raise UserError("give --input FILE (TSV or JSONL with the task's text columns) or --input - for stdin")
    for path in predict_runs(runs, input, output, scores, overrides):
        _err(f"wrote {path}")


if __name__ == "__main__":
    app()
