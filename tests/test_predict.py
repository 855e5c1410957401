"""`peftx predict`: one resident base model switched between runs in place (A -> B -> A gives a
fresh load's logits bit for bit, every method, BERT and RoBERTa heads), the prediction table, the
GLUE leaderboard layout, and bad input exiting 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_overrides, write_tiny_glue

METHODS = ["full", "bitfit", "pafi", "hiwi", "lora"]
MODELS = ["tiny-random", "tiny-random-roberta"]
TASKS = ["rte", "stsb"]  # two heads of different shapes (2 labels, regression)
TEXTS = [("the cat sat on the mat", "a dog ran"), ("a dog ran quickly", "the small blue house"), ("red", "blue")]


def write_tiny_mnli(root: Path) -> None:
    """A tiny MNLI folder (3 labels, matched and mismatched dev sets)."""
    labels = ["entailment", "neutral", "contradiction"]
    head = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2"
    d = root / "MNLI"
    d.mkdir(parents=True, exist_ok=True)
    for name in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"):
        rows = [f"{i}\tp\tq\tg\tthe cat {i}\ta dog {i % 3}\t{labels[i % 3]}" for i in range(24)]
        (d / name).write_text(f"{head}\tgold_label\n" + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    root = write_tiny_glue(tmp_path_factory.mktemp("glue"))
    write_tiny_mnli(root)
    return root


class Runs:
    """Tiny runs (2 AdamW steps), trained in this process on first use and kept for the module."""

    def __init__(self, glue: Path, results: Path) -> None:
        self.glue, self.results, self.done = glue, results, {}

    def __getitem__(self, case: tuple[str, str, str]) -> Path:
        if case not in self.done:
            from peft_cli.cli import app

            model, method, task = case
            extra = {"data.holdout_size": 8} if task == "mnli" else {}
            args = tiny_overrides(self.glue, self.results, model=model, method=method, task=task, **extra)
            r = CliRunner().invoke(app, ["train", *args, "train.max_steps=2"])
            assert r.exit_code == 0, r.output
            found = list((self.results / "runs/smoke" / model).glob(f"{method}*/{task}/seed42"))
            assert len(found) == 1, found
            self.done[case] = found[0]
        return self.done[case]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, glue) -> Runs:
    return Runs(glue, tmp_path_factory.mktemp("results"))


def encode(model: str) -> dict[str, torch.Tensor]:
    from peft_cli.core.compose import compose
    from peft_cli.models import load_tokenizer

    tok = load_tokenizer(compose([f"model={model}"]).model)
    a, b = zip(*TEXTS, strict=True)
    return dict(tok(list(a), list(b), padding=True, return_tensors="pt"))


def logits(resident, staged, batch) -> torch.Tensor:
    with torch.inference_mode():
        return resident.use(staged)(**batch).logits.float()


def fresh(run: Path, batch) -> torch.Tensor:
    """A fresh resident model holding only this run."""
    from peft_cli.run.evaluate import read_run_config
    from peft_cli.run.resident import Resident

    resident = Resident(read_run_config(run))
    return logits(resident, resident.stage(run), batch)


def evaluated(run: Path, batch) -> torch.Tensor:
    """The run's model as `peftx eval` rebuilds it (fresh base + `method.load`)."""
    from peft_cli.run.evaluate import restore

    with torch.inference_mode():
        return restore(run).model(**batch).logits.float()


# RoBERTa's head for the methods whose switch is a plain write runs with -m slow (the suite's budget)
CASES = [
    pytest.param(
        model, method, marks=[pytest.mark.slow] if model != MODELS[0] and method in ("full", "bitfit", "hiwi") else []
    )
    for model in MODELS
    for method in METHODS
]


@pytest.mark.parametrize(("model", "method"), CASES)
def test_switch_a_b_a_gives_a_fresh_loads_logits_bit_for_bit(runs, model, method):
    from peft_cli.run.evaluate import read_run_config
    from peft_cli.run.resident import Resident

    a, b = runs[model, method, "rte"], runs[model, method, "stsb"]
    batch = encode(model)
    resident = Resident(read_run_config(a))
    backbone = {n: p.detach().clone() for n, p in resident.model.named_parameters() if "classifier" not in n}
    sa, sb = resident.stage(a), resident.stage(b)
    first = logits(resident, sa, batch)
    on_b = logits(resident, sb, batch)
    again = logits(resident, sa, batch)
    assert first.shape == (len(TEXTS), 2) and on_b.shape == (len(TEXTS), 1)
    assert torch.equal(again, first)
    assert torch.equal(again, fresh(a, batch))
    assert torch.equal(on_b, fresh(b, batch))
    if method == "lora":  # `peftx eval` runs LoRA unmerged: the merge reorders float sums
        assert torch.allclose(again, evaluated(a, batch), atol=1e-5, rtol=0)
    else:  # the very values `method.load` writes
        assert torch.equal(again, evaluated(a, batch))
    assert not torch.equal(on_b[:, 0], first[:, 0])
    resident.to_base()  # and back to the pre-trained backbone, bit for bit
    now = dict(resident.model.named_parameters())
    assert all(torch.equal(now[n], v) for n, v in backbone.items())


@pytest.mark.parametrize("model", [MODELS[0], pytest.param(MODELS[1], marks=pytest.mark.slow)])
def test_one_resident_model_switches_across_methods(runs, model):
    from peft_cli.run.evaluate import read_run_config
    from peft_cli.run.resident import Resident

    batch = encode(model)
    order = [(m, t) for t in TASKS for m in METHODS]
    resident = Resident(read_run_config(runs[model, "full", "rte"]))
    staged = {key: resident.stage(runs[(model, *key)]) for key in order}
    expected = {key: fresh(runs[(model, *key)], batch) for key in order}
    for key in order + order[::-1] + order[::2]:
        assert torch.equal(logits(resident, staged[key], batch), expected[key]), key
    # PaFi's shared mask is read and placed once for both PaFi runs
    assert staged["pafi", "rte"].switch.on is staged["pafi", "stsb"].switch.on


def invoke(*args: str, stdin: str | None = None):
    from peft_cli.cli import app

    return CliRunner().invoke(app, list(args), input=stdin)


def test_predict_writes_label_names_and_probabilities(runs, tmp_path):
    run = runs["tiny-random", "pafi", "rte"]
    lines = "".join(
        json.dumps({"index": f"q{i}", "sentence1": a, "sentence2": b}) + "\n" for i, (a, b) in enumerate(TEXTS)
    )
    r = invoke("predict", str(run), "--input", "-", "--scores", "probs", stdin=lines)
    assert r.exit_code == 0, r.output
    rows = [line.split("\t") for line in r.stdout.strip().splitlines()]
    assert rows[0] == ["index", "prediction", "prob_entailment", "prob_not_entailment"]
    expected = evaluated(run, encode("tiny-random"))
    labels = ["entailment", "not_entailment"]
    assert [row[0] for row in rows[1:]] == ["q0", "q1", "q2"]
    assert [row[1] for row in rows[1:]] == [labels[i] for i in expected.argmax(-1).tolist()]
    probs = torch.tensor([[float(x) for x in row[2:]] for row in rows[1:]])
    assert torch.allclose(probs.sum(-1), torch.ones(3)) and torch.equal(probs, expected.softmax(-1))

    # a TSV with hub or canonical column names, two runs of one model, one file per run
    tsv = tmp_path / "in.tsv"
    tsv.write_text("text_a\ttext_b\n" + "".join(f"{a}\t{b}\n" for a, b in TEXTS))
    both = [str(run), str(runs["tiny-random", "hiwi", "stsb"])]
    r = invoke("predict", *both, "--input", str(tsv), "--output", str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["rte-pafi-smallest-d0.005-steps2-seed42.tsv", "stsb-hiwi-b0.005-steps2-seed42.tsv"]
    stsb = (tmp_path / "out" / files[1]).read_text().splitlines()
    assert stsb[0] == "index\tprediction" and [row.split("\t")[0] for row in stsb[1:]] == ["0", "1", "2"]
    assert [float(row.split("\t")[1]) for row in stsb[1:]] == evaluated(
        runs["tiny-random", "hiwi", "stsb"], encode("tiny-random")
    )[:, 0].tolist()


def test_predict_bad_input_exits_2_with_one_line(runs, tmp_path):
    run = str(runs["tiny-random", "bitfit", "rte"])
    cases = {
        "missing column": ("sentence1\tother\nthe cat\ta dog\n", "has no column for text_b"),
        "empty file": ("", "is empty"),
        "header only": ("sentence1\tsentence2\n", "has no examples"),
        "short row": ("sentence1\tsentence2\nthe cat\n", "row has 1 tab-separated columns"),
        "bad json": ('{"sentence1": "a", "sentence2": \n', "not a JSON line"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.tsv"
        path.write_text(text)
        r = invoke("predict", run, "--input", str(path))
        assert r.exit_code == 2, (name, r.output)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, (name, r.stderr)
    ok = tmp_path / "ok.tsv"
    ok.write_text("sentence1\tsentence2\nthe cat\ta dog\n")
    other = str(runs["tiny-random-roberta", "bitfit", "rte"])
    for args, message in [
        ((run, other), "share one base model"),
        ((str(tmp_path),), "no artifact.safetensors"),
        ((run, "--scores", "odds"), "--scores"),
    ]:
        r = invoke("predict", *args, "--input", str(ok))
        assert r.exit_code == 2 and message in r.stderr, (args, r.output)
    r = invoke("predict", run)
    assert r.exit_code == 2 and "--input" in r.stderr


def write_test_files(glue: Path) -> dict[str, list[str]]:
    """Unlabeled test files as GLUE ships them; returns each submission file's expected indices."""
    (glue / "RTE" / "test.tsv").write_text(
        "index\tsentence1\tsentence2\n" + "".join(f"{i}\t{a}\t{b}\n" for i, (a, b) in enumerate(TEXTS))
    )
    (glue / "STS-B" / "test.tsv").write_text(
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n"
        + "".join(f"{i}\tg\tf\t2015\t{i}\ts\ts\t{a}\t{b}\n" for i, (a, b) in enumerate(TEXTS[:2]))
    )
    mnli = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    mnli += "sentence2_parse\tsentence1\tsentence2\n"
    for name, n in (("test_matched.tsv", 3), ("test_mismatched.tsv", 2)):
        rows = "".join(f"{10 + i}\tp\tq\tg\tx\ty\tx\ty\t{a}\t{b}\n" for i, (a, b) in enumerate(TEXTS[:n]))
        (glue / "MNLI" / name).write_text(mnli + rows)
    return {
        "RTE.tsv": ["0", "1", "2"],
        "STS-B.tsv": ["0", "1"],
        "MNLI-m.tsv": ["10", "11", "12"],
        "MNLI-mm.tsv": ["10", "11"],
    }


def test_glue_test_writes_the_leaderboard_layout(runs, glue, tmp_path):
    expected = write_test_files(glue)
    picked = [
        runs["tiny-random", "lora", "rte"],
        runs["tiny-random", "pafi", "stsb"],
        runs["tiny-random", "pafi", "mnli"],
    ]
    out = tmp_path / "submission"
    r = invoke("predict", "--glue-test", *map(str, picked), "--output", str(out))
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    spellings = {
        "RTE.tsv": {"entailment", "not_entailment"},
        "MNLI-m.tsv": {"entailment", "neutral", "contradiction"},
        "MNLI-mm.tsv": {"entailment", "neutral", "contradiction"},
    }
    for name, indices in expected.items():
        lines = (out / name).read_text().splitlines()
        assert lines[0] == "index\tprediction"
        rows = [line.split("\t") for line in lines[1:]]
        assert [row[0] for row in rows] == indices
        if name in spellings:
            assert {row[1] for row in rows} <= spellings[name]
        else:
            [float(row[1]) for row in rows]  # STS-B: scores

    # two runs of one task, a missing test file: exit 2, nothing loaded
    again = invoke(
        "predict", "--glue-test", str(picked[0]), str(runs["tiny-random", "full", "rte"]), "--output", str(out)
    )
    assert again.exit_code == 2 and "a submission holds one" in again.stderr
    (glue / "RTE" / "test.tsv").unlink()
    gone = invoke("predict", "--glue-test", str(picked[0]), "--output", str(out))
    assert gone.exit_code == 2 and "GLUE test file not found" in gone.stderr
