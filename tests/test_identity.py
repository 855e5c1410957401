"""Run identity: one folder, one config. Tags are injective over what changes a result, the folder
names the keys a run sets beyond its experiment, and paths never change a run's identity."""

from __future__ import annotations

import itertools

import pytest

from peft_cli.core.compose import compose
from peft_cli.run.identity import config_hash, method_tag, run_folder, run_tag, setting_tag

# For each method: overrides that change its result, one per line; each pair must differ in tag.
VARIANTS = {
    "pafi": [
        "",
        "mask.density=0.01",
        "mask.strategy=random",
        "mask.strategy=random mask.seed=1",
        "mask.strategy=largest",
        "mask.scope=per_tensor",
        "mask.exclude=[embeddings]",
        "mask.exclude=[embeddings$]",
        "mask.include=[encoder]",
        "mask.strategy=fisher",
        "mask.strategy=fisher mask.fisher_samples=64",
        "method.dtype=bf16",
    ],
    "hiwi": [
        "",
        "method.r=4",
        "method.budget=0.01",
        "method.shared=true",
        "method.activation=gelu",
        r"method.targets=['\.intermediate\.dense\.bias$']",
        "method.targets=[intermediate.dense.bias]",
        r"method.targets=['\.output\.dense\.bias$']",
    ],
    "lora": [
        "",
        "method.r=16",
        "method.alpha=16",
        "method.dropout=0.1",
        "method.target_modules=[query]",
        "method.target_modules=[query,value,dense]",
    ],
    "adapter_houlsby": ["", "method.reduction_factor=8", "method.activation=relu"],
}


@pytest.mark.parametrize("method", list(VARIANTS))
def test_tags_tell_every_variant_apart(method):
    cfgs = [compose([f"method={method}", *v.split()]) for v in VARIANTS[method]]
    for a, b in itertools.combinations(cfgs, 2):
        if config_hash(a) != config_hash(b):
            assert method_tag(a) != method_tag(b), (a.method, a.mask, b.method, b.mask)


def test_setting_names_keys_set_beyond_the_experiment():
    plain = compose(["method=pafi"])
    assert plain.setting == {} and run_tag(plain) == "pafi-smallest-d0.005"
    lr = compose(["method=pafi", "train.lr=1e-2"])
    assert lr.setting == {"train.lr": 0.01} and run_tag(lr) == "pafi-smallest-d0.005-lr0.01"
    assert method_tag(lr) == method_tag(plain)  # the table row stays the method's
    # a value equal to the experiment's is no setting; the experiment file's own values are none either
    assert compose(["train.epochs=3"]).setting == {}
    assert compose(["experiment=cpu_minilm"]).setting == {}
    assert compose(["experiment=cpu_minilm", "train.epochs=2"]).setting == {"train.epochs": 2}


def test_paths_and_watch_keys_are_not_identity(tmp_path):
    a = compose(["train.lr=1e-3"])
    b = compose(
        [
            "train.lr=1e-3",
            f"data.glue_dir={tmp_path}",
            "train.progress=false",
            "train.log_every=3",
            "train.device=cpu",
            "train.checkpoint_every=5",
            f"results.dir={tmp_path}",
        ]
    )
    assert config_hash(a) == config_hash(b) and run_tag(a) == run_tag(b) and b.setting == a.setting
    assert run_folder(b).is_relative_to(tmp_path)


def test_setting_tag_is_exact_and_safe():
    assert setting_tag({}) == ""
    assert setting_tag({"train.lr": 1e-05, "train.epochs": 5}) == "ep5-lr1e-05"
    assert setting_tag({"train.lr": 0.001}) != setting_tag({"train.lr": 0.0010000001})  # repr, not %g
    odd = setting_tag({"train.precision": "bf16/x"})
    assert "/" not in odd and "-h" in odd  # a lossy value gets a hash
    long = setting_tag({f"data.k{i}": i for i in range(40)})
    assert len(long) < 20 and long.startswith("s-h")


def test_a_saved_config_from_before_a_key_existed_keeps_its_hash():
    """A committed run's config.yaml predates train.group_by_length, grad_accum and eval_every: it
    reads them as the behaviour it ran with (added(before=...)), so `peftx eval RUN` and the sweep
    compute the hash its result.json recorded."""
    import json
    from pathlib import Path

    from peft_cli.run.evaluate import read_run_config

    committed = Path(__file__).resolve().parents[1] / "results" / "runs"
    runs = sorted(committed.glob("cpu_minilm/*/*/*/seed*"))  # the first reproduction: before those keys
    if not runs:
        pytest.skip("no committed runs")
    for run in runs[:: max(1, len(runs) // 12)]:  # a dozen spread over methods and tasks
        cfg = read_run_config(run)
        assert "group_by_length" not in (run / "config.yaml").read_text()
        assert cfg.train.group_by_length is False and cfg.train.grad_accum == 1 and cfg.train.eval_every == 0
        assert config_hash(cfg) == json.loads((run / "result.json").read_text())["config_hash"], run
    newer = sorted(committed.glob("cpu_minilm_grid/*/*/*/seed*"))  # saved with every key: hashes as recorded
    for run in newer[:: max(1, len(newer) // 12)]:
        assert config_hash(read_run_config(run)) == json.loads((run / "result.json").read_text())["config_hash"], run
