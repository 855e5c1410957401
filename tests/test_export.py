"""`peftx export`: a merged model that plain transformers loads (in a process that never imports
peft_cli) and whose logits equal those of the run's model, base + artifact as `peftx eval` builds it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides

TEXTS = (["the cat sat on the mat", "a dog ran quickly under the big house"], ["red mat", "the small blue house"])

# Runs in a fresh interpreter: transformers only. Prints {folder: {"logits": ..., "config": ...}}.
PLAIN = """
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
a, b = json.loads(sys.argv[1])
out = {}
for folder in sys.argv[2:]:
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        logits = model(**tok(a, b, padding=True, return_tensors="pt")).logits
    c = model.config
    out[folder] = {"logits": logits.tolist(), "dtype": str(logits.dtype),
                   "config": {"num_labels": c.num_labels, "problem_type": c.problem_type, "id2label": c.id2label}}
assert not [m for m in sys.modules if m.startswith("peft_cli")]
print(json.dumps(out))
"""


def plain_transformers(folders: list[Path]) -> dict[str, dict]:
    r = subprocess.run(
        [sys.executable, "-c", PLAIN, json.dumps(TEXTS), *map(str, folders)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_logits(run: Path) -> torch.Tensor:
    """Logits of the run's model as `peftx eval` rebuilds it (base + artifact, before any merge)."""
    from peft_cli.models import load_tokenizer
    from peft_cli.run.evaluate import restore

    r = restore(run)
    enc = load_tokenizer(r.cfg.model)(*TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return r.model(**enc).logits.float()


def train_and_export(cli, glue: Path, results: Path, model: str, method: str, task: str = "rte") -> tuple[Path, Path]:
    r = cli("train", *tiny_overrides(glue, results, model=model, method=method, task=task, **{"train.epochs": 1}))
    assert r.exit_code == 0, r.output
    run = next((results / "runs/smoke" / model).glob(f"*/{task}/seed42"))
    out = results / "exports" / f"{model}-{method}-{task}"
    e = cli("export", str(run), str(out))
    assert e.exit_code == 0, e.output
    return run, out


class Exports:
    """Runs trained and exported on first use; one plain-transformers process per batch of cases."""

    def __init__(self, cli, glue: Path, results: Path, cases: list[tuple[str, str, str]]) -> None:
        self.done = {case: train_and_export(cli, glue, results, *case) for case in cases}
        self.plain = plain_transformers([out for _, out in self.done.values()])

    def __call__(self, *case: str) -> tuple[Path, Path, dict]:
        run, out = self.done[case]
        return run, out, self.plain[str(out)]


FAST = [
    ("tiny-random-roberta", "hiwi", "rte"),
    ("tiny-random-roberta", "lora", "rte"),
    ("tiny-random", "bitfit", "rte"),
]
MORE = [
    ("tiny-random", "hiwi", "rte"),
    ("tiny-random", "lora", "rte"),
    ("tiny-random", "full", "rte"),
    ("tiny-random-roberta", "full", "rte"),
    ("tiny-random-roberta", "bitfit", "rte"),
    ("tiny-random", "pafi", "rte"),
    ("tiny-random-roberta", "pafi", "rte"),
    ("tiny-random", "hiwi", "stsb"),
]


@pytest.fixture(scope="module")
def fast_exports(tmp_path_factory, tiny_glue):
    from typer.testing import CliRunner

    from peft_cli.cli import app

    runner = CliRunner()
    return Exports(lambda *a: runner.invoke(app, list(a)), tiny_glue, tmp_path_factory.mktemp("fast"), FAST)


@pytest.fixture(scope="module")
def more_exports(tmp_path_factory, tiny_glue):
    from typer.testing import CliRunner

    from peft_cli.cli import app

    runner = CliRunner()
    return Exports(lambda *a: runner.invoke(app, list(a)), tiny_glue, tmp_path_factory.mktemp("more"), MORE)


def check_export(run: Path, out: Path, got: dict, model: str, task: str) -> None:
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "peftx_export.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert got["dtype"] == "torch.float32"
    expected = run_logits(run)
    assert not torch.allclose(expected, base_logits(model, task))  # training changed the model
    assert (torch.tensor(got["logits"]) - expected).abs().max().item() <= 1e-5
    if task == "stsb":
        assert got["config"]["num_labels"] == 1 and got["config"]["problem_type"] == "regression"
    else:
        assert got["config"] == {
            "num_labels": 2,
            "problem_type": "single_label_classification",
            "id2label": {"0": "entailment", "1": "not_entailment"},
        }
    record = json.loads((out / "peftx_export.json").read_text())
    assert record["run"] == str(run) and record["logits_check"]["max_abs_diff"] <= 1e-5


def base_logits(model: str, task: str) -> torch.Tensor:
    """The untrained base model with the run's head init (seed 42), for "training changed something"."""
    from peft_cli.core.compose import compose
    from peft_cli.core.runtime import seed_everything
    from peft_cli.models import load_model, load_tokenizer

    cfg = compose([f"model={model}", f"task={task}"])
    seed_everything(cfg.seed)
    base = load_model(cfg.model, cfg.task).eval()
    with torch.inference_mode():
        return base(**load_tokenizer(cfg.model)(*TEXTS, padding=True, return_tensors="pt")).logits.float()


@pytest.mark.parametrize("case", FAST, ids="-".join)
def test_export_reloads_with_plain_transformers_and_same_logits(fast_exports, case):
    check_export(*fast_exports(*case), case[0], case[2])


@pytest.mark.slow
@pytest.mark.parametrize("case", MORE, ids="-".join)
def test_export_more_models_and_methods(more_exports, case):
    check_export(*more_exports(*case), case[0], case[2])


def test_export_replaces_only_a_previous_export(cli, fast_exports, tmp_path):
    run, out, _ = fast_exports("tiny-random", "bitfit", "rte")
    first = (out / "model.safetensors").read_bytes()
    again = cli("export", str(run), str(out))  # a previous export: replaced
    assert again.exit_code == 0, again.output
    assert (out / "model.safetensors").read_bytes() == first
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    refused = cli("export", str(run), str(foreign))
    assert refused.exit_code == 2 and "not a previous peftx export" in refused.output
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert not list(out.parent.glob("*.tmp")) and not list(out.parent.glob("*.old"))
