"""`peftx predict`: label new text with trained runs, all served by one resident base model.

    peftx predict RUN_DIR... --input FILE|-  [--output PATH] [--scores probs|logits]
    peftx predict --glue-test RUN_DIR...     [--output DIR]      (GLUE leaderboard files)

Everything the user gave is checked before the model loads (run folders, input columns, test
files), so bad input exits 2 at once. Runs are switched on one resident model (run/resident.py).
Output: TSV, `index` and `prediction` (the label's name, or the score for a regression task),
plus one column per label with `--scores`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from peft_cli.core.compose import compose
from peft_cli.core.config import GlueTestSpec, RunConfig
from peft_cli.core.errors import UserError
from peft_cli.core.files import write_text
from peft_cli.core.runtime import to_device
from peft_cli.data.encode import Encoded
from peft_cli.data.glue import Example
from peft_cli.data.inputs import read_examples, read_source, text_columns
from peft_cli.models import load_tokenizer
from peft_cli.run.evaluate import read_run_config
from peft_cli.run.resident import Resident, Staged, check_same_model

if TYPE_CHECKING:
    import torch

SCORES = ("probs", "logits")


@dataclass
class Job:
    """One run's predictions to make: its examples and where the table goes."""

    staged: Staged
    examples: list[Example]
    labels: list[str] | None  # spellings in label-id order; None = regression
    destination: Path | None  # None: stdout


def predict_runs(
    runs: list[Path],
    source: str,
    output: Path | None = None,
    scores: str | None = None,
    overrides: dict[str, Any] | None = None,
    stdout: TextIO | None = None,
) -> list[Path]:
    """Predict `source` (a TSV/JSONL path, or '-' for stdin) with every run; returns the files written."""
    if scores is not None and scores not in SCORES:
        raise UserError(f"--scores {scores!r}: choose one of {', '.join(SCORES)}")
    cfgs = _configs(runs, overrides)
    text, name = read_source(source)
    examples = [read_examples(text, name, text_columns(c.task)) for c in cfgs]
    places = _destinations(runs, cfgs, output)
    resident, staged = _resident(runs, cfgs)
    jobs = [Job(s, e, s.cfg.task.labels, d) for s, e, d in zip(staged, examples, places, strict=True)]
    return _run(resident, jobs, scores, stdout, several=len(runs) > 1)


def glue_submission(runs: list[Path], out: Path, overrides: dict[str, Any] | None = None) -> list[Path]:
    """The GLUE leaderboard layout in `out`: one `<Task>.tsv` per test file of each run's task
    (`task.glue_test` in conf/task/*.yaml), `index` and `prediction`, labels as the server spells them."""
    cfgs = _configs(runs, overrides)
    seen: dict[str, Path] = {}
    for run, cfg in zip(runs, cfgs, strict=True):
        if cfg.task.name in seen:
            raise UserError(f"{seen[cfg.task.name]} and {run} are both {cfg.task.name} runs; a submission holds one")
        seen[cfg.task.name] = run
    todo = [(i, out / name, ex) for i, cfg in enumerate(cfgs) for name, ex in _test_files(cfg)]
    resident, staged = _resident(runs, cfgs)
    jobs = [Job(staged[i], ex, _spellings(cfgs[i]), dest) for i, dest, ex in todo]
    return _run(resident, jobs, None, None, several=False)


# --------------------------------------------------------------------------------------------


def _configs(runs: list[Path], overrides: dict[str, Any] | None) -> list[RunConfig]:
    if not runs:
        raise UserError("give at least one run folder")
    cfgs = []
    for run in runs:
        if not (run / "artifact.safetensors").is_file():
            raise UserError(f"{run} has no artifact.safetensors: not a completed run (or its artifact was not kept)")
        cfgs.append(read_run_config(run, overrides))
    return cfgs


def _resident(runs: list[Path], cfgs: list[RunConfig]) -> tuple[Resident, list[Staged]]:
    for run, cfg in zip(runs, cfgs, strict=True):  # before loading anything
        check_same_model(run, cfg, cfgs[0])
    resident = Resident(cfgs[0])
    return resident, [resident.stage(r, c) for r, c in zip(runs, cfgs, strict=True)]


def _destinations(runs: list[Path], cfgs: list[RunConfig], output: Path | None) -> list[Path | None]:
    """One file per run: `output` itself for one run, else `<task>-<run_tag>-<seed>.tsv` in folder `output`."""
    if output is None or str(output) == "-":
        return [None] * len(runs)
    if len(runs) == 1 and not output.is_dir():
        return [output]
    if output.is_file():
        raise UserError(f"--output {output} is a file; with several runs it must be a folder")
    names = [f"{c.task.name}-{r.parent.parent.name}-{r.name}.tsv" for r, c in zip(runs, cfgs, strict=True)]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"two runs would both write {output / twice[0]}; predict them in separate commands")
    return [output / n for n in names]


def _test_files(cfg: RunConfig) -> list[tuple[str, list[Example]]]:
    """(submission file name, examples) for each unlabeled test file of the run's task."""
    spec = glue_test_spec(cfg)
    if cfg.data.glue_dir is None:
        raise UserError("--glue-test reads the classic GLUE folder: pass data.glue_dir=/path/to/glue")
    folder = Path(cfg.data.glue_dir).expanduser() / cfg.task.folder
    out = []
    for file, name in zip(spec.files, spec.outputs, strict=True):
        path = folder / file
        if not path.is_file():
            raise UserError(f"GLUE test file not found: {path} (data.glue_dir must hold {cfg.task.folder}/{file})")
        text, where = read_source(str(path))
        columns = {f: [c] for f, c in spec.columns.items() if f != "index"}
        out.append((name, read_examples(text, where, columns, index=[spec.columns["index"]], jsonl=False)))
    return out


def glue_test_spec(cfg: RunConfig) -> GlueTestSpec:
    """The task's `glue_test` keys: from the run's config, or conf/task/<task>.yaml for runs saved before them."""
    spec = cfg.task.glue_test or compose([f"task={cfg.task.name}"]).task.glue_test
    if spec is None:
        raise UserError(f"task '{cfg.task.name}' has no glue_test keys in conf/task/{cfg.task.name}.yaml")
    return spec


def _spellings(cfg: RunConfig) -> list[str] | None:
    return glue_test_spec(cfg).labels or cfg.task.labels


def _run(resident: Resident, jobs: list[Job], scores: str | None, stdout: TextIO | None, several: bool) -> list[Path]:
    import sys

    tokenizer = load_tokenizer(resident.cfg.model)
    written = []
    for job in jobs:
        logits = logits_of(resident, job.staged, job.examples, tokenizer)
        table = format_table([e["idx"] for e in job.examples], logits, job.labels, scores)
        if job.destination is None:
            out = stdout or sys.stdout
            if several:
                out.write(f"# {job.staged.run}\n")
            out.write(table)
        else:
            job.destination.parent.mkdir(parents=True, exist_ok=True)
            write_text(job.destination, table)
            written.append(job.destination)
    return written


def logits_of(resident: Resident, staged: Staged, examples: list[Example], tokenizer: Any) -> "torch.Tensor":
    """(N, num_labels) fp32 logits of `staged`'s run on `examples`, in order, on the resident model."""
    import torch

    cfg = staged.cfg
    enc = Encoded(examples, tokenizer, cfg.train.max_length, cfg.task.is_regression)
    model = resident.use(staged)
    out = []
    with torch.inference_mode():
        for batch in enc.loader(cfg.train.eval_batch):
            batch.pop("labels")
            out.append(model(**to_device(batch, resident.device)).logits.float().cpu())
    return torch.cat(out)


def format_table(index: list[Any], logits: "torch.Tensor", labels: list[str] | None, scores: str | None) -> str:
    """TSV: index, prediction (label name, or the regression score at full precision), and with
    `scores` one `prob_<label>` or `logit_<label>` column per label."""
    header = ["index", "prediction"]
    if labels is None:
        rows = [[str(i), repr(float(v))] for i, v in zip(index, logits[:, 0].tolist(), strict=True)]
    else:
        best = logits.argmax(dim=-1).tolist()
        rows = [[str(i), labels[b]] for i, b in zip(index, best, strict=True)]
        if scores:
            values = logits.softmax(dim=-1) if scores == "probs" else logits
            header += [f"{'prob' if scores == 'probs' else 'logit'}_{label}" for label in labels]
            for row, v in zip(rows, values.tolist(), strict=True):
                row += [repr(x) for x in v]
    return "\n".join("\t".join(r) for r in [header, *rows]) + "\n"
