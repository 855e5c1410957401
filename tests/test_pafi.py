"""PaFi through the harness: one shared mask reused across tasks, values-only artifacts,
fingerprint checks, FISH's per-task indices, eval equality."""

import json

import pytest
from safetensors import safe_open

from conftest import tiny_overrides


def folder(results, tag, task="rte"):
    return results / "runs" / "smoke" / "tiny-random" / tag / task / "seed42"


@pytest.fixture(scope="module")
def pafi_runs(tiny_glue, tmp_path_factory):
    from typer.testing import CliRunner

    from peft_cli.cli import app

    results = tmp_path_factory.mktemp("pafi")
    runner = CliRunner()
    out = runner.invoke(app, ["mask", "model=tiny-random", f"results.dir={results}", "mask.density=0.01"])
    assert out.exit_code == 0, out.output
    mask = results / "masks" / "tiny-random" / "smallest-d0.01.safetensors"
    mtime = mask.stat().st_mtime_ns
    for task in ("rte", "mrpc"):
        r = runner.invoke(
            app, ["train", *tiny_overrides(tiny_glue, results, task=task, method="pafi", **{"mask.density": 0.01})]
        )
        assert r.exit_code == 0, r.output
    assert mask.stat().st_mtime_ns == mtime, "the shared mask was rebuilt"
    return results


def test_one_mask_file_for_all_tasks(pafi_runs):
    files = list((pafi_runs / "masks").rglob("*.safetensors"))
    assert [f.name for f in files] == ["smallest-d0.01.safetensors"]
    meta = json.loads(files[0].with_suffix(".json").read_text())
    assert meta["k"] == round(0.01 * meta["candidates"])
    assert sum(meta["breakdown"].values()) == meta["k"]


def test_artifact_holds_k_values_and_head_only(pafi_runs):
    meta = json.loads((pafi_runs / "masks" / "tiny-random" / "smallest-d0.01.json").read_text())
    for task in ("rte", "mrpc"):
        f = folder(pafi_runs, "pafi-smallest-d0.01", task)
        r = json.loads((f / "result.json").read_text())
        with safe_open(str(f / "artifact.safetensors"), "pt") as fh:
            names = set(fh.keys())
            values = fh.get_tensor("pafi.values")
        assert names - {"pafi.values"} == {n for n in names if n.startswith("classifier.")}
        assert values.numel() == meta["k"] == r["params"]["trainable"] == r["params"]["stored"]
        payload = 4 * (meta["k"] + r["params"]["head"])
        assert payload < r["stored_bytes"] < payload + 2048  # + the safetensors header


def test_eval_equals_run(pafi_runs, cli):
    f = folder(pafi_runs, "pafi-smallest-d0.01")
    out = cli("eval", str(f))
    assert out.exit_code == 0, out.output
    assert json.loads((f / "eval.json").read_text())["matches_run"]


def test_mask_for_another_model_exits_2(pafi_runs, cli, tiny_glue):
    mask = pafi_runs / "masks" / "tiny-random" / "smallest-d0.01.safetensors"
    r = cli(
        "train",
        *tiny_overrides(
            tiny_glue,
            pafi_runs / "other",
            method="pafi",
            **{"mask.density": 0.01, "mask.path": str(mask), "model.init_seed": 1},
        ),
    )
    assert r.exit_code == 2 and "built for another model" in r.output


def test_artifact_on_another_backbone_exits_2(pafi_runs, cli):
    import shutil

    src = folder(pafi_runs, "pafi-smallest-d0.01")
    dst = pafi_runs / "copy"
    shutil.copytree(src, dst)
    text = (dst / "config.yaml").read_text().replace("init_seed: 0", "init_seed: 3")
    (dst / "config.yaml").write_text(text)
    r = cli("eval", str(dst))
    assert r.exit_code == 2 and "fingerprint" in r.output


def test_fisher_stores_its_indices(tiny_glue, tmp_path, cli):
    r = cli(
        "train",
        *tiny_overrides(
            tiny_glue,
            tmp_path,
            method="pafi",
            **{"mask.strategy": "fisher", "mask.density": 0.01, "mask.fisher_samples": 8, "train.max_steps": 4},
        ),
    )
    assert r.exit_code == 0, r.output
    f = folder(tmp_path, "pafi-fisher-d0.01-n8-steps4")
    res = json.loads((f / "result.json").read_text())
    with safe_open(str(f / "artifact.safetensors"), "pt") as fh:
        idx = [n for n in fh.keys() if n.startswith("pafi.indices.")]
        k = sum(fh.get_tensor(n).numel() for n in idx)
    assert k == res["params"]["stored"] and idx
    assert res["stored_bytes"] > 4 * k + 4 * k  # values and int32 indices
    assert not (tmp_path / "masks").exists()  # task-specific: nothing shared is written
    out = cli("eval", str(f))
    assert out.exit_code == 0 and json.loads((f / "eval.json").read_text())["matches_run"]


def test_half_precision_storage_scores_what_it_stores(tiny_glue, tmp_path, cli):
    r = cli(
        "train",
        *tiny_overrides(
            tiny_glue, tmp_path, method="pafi", **{"method.dtype": "fp16", "mask.density": 0.01, "train.max_steps": 4}
        ),
    )
    assert r.exit_code == 0, r.output
    f = folder(tmp_path, "pafi-smallest-d0.01-fp16-steps4")
    with safe_open(str(f / "artifact.safetensors"), "pt") as fh:
        assert str(fh.get_tensor("pafi.values").dtype) == "torch.float16"
    cli("eval", str(f))
    assert json.loads((f / "eval.json").read_text())["matches_run"]


def test_fisher_mask_cannot_be_built_by_peftx_mask(cli, tmp_path):
    r = cli("mask", "model=tiny-random", f"results.dir={tmp_path}", "mask.strategy=fisher")
    assert r.exit_code == 2 and "task-specific" in r.output
