"""The real model on the real data: MiniLM-L6 from its PyPI package on ../shared/glue/RTE."""

import csv
import json

import pytest

pytestmark = pytest.mark.realdata


def test_minilm_trains_on_real_rte_and_eval_matches(shared_glue, tmp_path, cli):
    r = cli(
        "train",
        "model=minilm-l6",
        "task=rte",
        "method=bitfit",
        f"data.glue_dir={shared_glue}",
        f"results.dir={tmp_path}",
        "train.max_steps=4",
        "train.max_length=64",
        "train.batch_size=8",
        "data.max_train_examples=64",
        "train.progress=false",
    )
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "default" / "minilm-l6" / "bitfit-n64-bs8-len64-steps4" / "rte" / "seed42"
    res = json.loads((run / "result.json").read_text())
    assert res["status"] == "completed"
    # holdout: RTE dev (277) split into validation 139 / test 138
    rows = list(csv.DictReader(open(run / "predictions.tsv"), delimiter="\t"))
    assert len(rows) == 138
    assert sum(r["prediction"] == r["label"] for r in rows) / 138 == res["metrics"]["test"]["accuracy"]
    # BitFit on MiniLM: biases are about 0.1% of the backbone
    assert 0.0005 < res["params"]["stored"] / res["params"]["backbone"] < 0.002
    assert res["params"]["backbone"] == 22_713_216
    out = cli("eval", str(run))
    assert out.exit_code == 0, out.output
    assert json.loads((run / "eval.json").read_text())["matches_run"]
