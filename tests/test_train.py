"""End-to-end runs of the tiny random BERT: result.json contract, predictions, eval equality,
what each artifact holds, and the exit codes of bad input."""

import csv
import json

import pytest
from safetensors import safe_open

from conftest import tiny_overrides
from peft_cli.run.record import REQUIRED_KEYS


def run_folder(results, method_tag, task="rte", seed=42, model="tiny-random"):
    return results / "runs" / "smoke" / model / method_tag / task / f"seed{seed}"


@pytest.fixture(scope="module")
def trained(tiny_glue, tmp_path_factory):
    """One bitfit and one full run on tiny RTE, shared by the tests below."""
    from typer.testing import CliRunner

    from peft_cli.cli import app

    results = tmp_path_factory.mktemp("results")
    for method in ("bitfit", "full"):
        r = CliRunner().invoke(app, ["train", *tiny_overrides(tiny_glue, results, method=method)])
        assert r.exit_code == 0, r.output
    return results


def test_result_json_has_contract_keys(trained):
    r = json.loads((run_folder(trained, "bitfit") / "result.json").read_text())
    assert set(REQUIRED_KEYS) <= set(r)
    assert r["status"] == "completed" and r["method_tag"] == "bitfit"
    assert set(r["params"]) == {"backbone", "head", "trainable", "stored"}
    assert r["metrics"]["test"]["accuracy"] * 100 == pytest.approx(r["score"])
    for name in ("config.yaml", "artifact.safetensors", "predictions.tsv", "log.jsonl"):
        assert (run_folder(trained, "bitfit") / name).is_file()


def test_accuracy_recomputed_from_predictions(trained):
    for tag in ("bitfit", "full"):
        folder = run_folder(trained, tag)
        rows = list(csv.DictReader(open(folder / "predictions.tsv"), delimiter="\t"))
        assert rows and list(rows[0]) == ["index", "prediction", "label"]
        acc = sum(r["prediction"] == r["label"] for r in rows) / len(rows)
        assert acc == json.loads((folder / "result.json").read_text())["metrics"]["test"]["accuracy"]


def test_bitfit_artifact_holds_only_biases_and_head(trained):
    folder = run_folder(trained, "bitfit")
    r = json.loads((folder / "result.json").read_text())
    with safe_open(str(folder / "artifact.safetensors"), "pt") as fh:
        names = list(fh.keys())
        numel = {n: fh.get_tensor(n).numel() for n in names}
    head = [n for n in names if n.startswith("classifier.")]
    body = [n for n in names if not n.startswith("classifier.")]
    assert head and all(n.endswith(".bias") for n in body)
    assert sum(numel[n] for n in body) == r["params"]["stored"] == r["params"]["trainable"]
    assert sum(numel[n] for n in head) == r["params"]["head"]
    assert r["stored_bytes"] == (folder / "artifact.safetensors").stat().st_size


def test_full_counts_every_backbone_parameter(trained):
    r = json.loads((run_folder(trained, "full") / "result.json").read_text())
    assert r["params"]["trainable"] == r["params"]["stored"] == r["params"]["backbone"]


def test_eval_reproduces_run_metrics(trained, cli):
    for tag in ("bitfit", "full"):
        folder = run_folder(trained, tag)
        out = cli("eval", str(folder))
        assert out.exit_code == 0, out.output
        ev = json.loads((folder / "eval.json").read_text())
        run = json.loads((folder / "result.json").read_text())
        assert ev["metrics"]["test"] == run["metrics"]["test"] and ev["matches_run"]


def test_frozen_backbone_unchanged_by_bitfit(trained):
    """Every non-bias backbone weight in the run equals the pre-trained one: only biases moved."""
    from peft_cli.core.compose import compose
    from peft_cli.models import backbone_parameters, load_model

    cfg = compose(["model=tiny-random"])
    base = backbone_parameters(load_model(cfg.model, cfg.task))
    with safe_open(str(run_folder(trained, "bitfit") / "artifact.safetensors"), "pt") as fh:
        changed = [n for n in fh.keys() if n in base and not (fh.get_tensor(n) == base[n].detach()).all()]
    assert changed and all(n.endswith(".bias") for n in changed)


def test_unknown_task_exits_2(cli):
    r = cli("train", "task=nosuch")
    assert r.exit_code == 2 and "task/nosuch" in r.output


def test_missing_glue_dir_exits_2(cli, tmp_path):
    r = cli("train", "model=tiny-random", f"data.glue_dir={tmp_path}/nope", f"results.dir={tmp_path}")
    assert r.exit_code == 2 and "data.glue_dir" in r.output


def test_missing_column_exits_2(cli, tmp_path, tiny_glue):
    import shutil

    glue = tmp_path / "glue"
    shutil.copytree(tiny_glue, glue)
    (glue / "RTE" / "train.tsv").write_text("index\tsentence1\tlabel\n0\ta\tentailment\n")
    r = cli("train", *tiny_overrides(glue, tmp_path / "res"))
    assert r.exit_code == 2 and "train.tsv: missing column 'sentence2'" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_regression_task_runs(cli, tiny_glue, tmp_path):
    r = cli("train", *tiny_overrides(tiny_glue, tmp_path, task="stsb", method="bitfit", **{"train.max_steps": 3}))
    assert r.exit_code == 0, r.output
    res = json.loads((run_folder(tmp_path, "bitfit-steps3", task="stsb") / "result.json").read_text())
    assert set(res["metrics"]["test"]) == {"pearson", "spearmanr"}
    assert res["score"] == pytest.approx(100 * res["metrics"]["test"]["pearson"])
