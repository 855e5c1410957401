"""Config composition and validation: bad keys and values are named, with the valid choices."""

import pytest

from peft_cli.core.compose import compose
from peft_cli.core.errors import UserError
from peft_cli.run.identity import config_hash


def test_defaults_compose_and_validate():
    cfg = compose([])
    assert cfg.task.name == "rte" and cfg.model.name == "minilm-l6" and cfg.method["name"] == "full"
    assert cfg.task.num_labels == 2 and not cfg.task.is_regression


@pytest.mark.parametrize("task", ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"])
def test_all_nine_tasks_are_declared(task):
    cfg = compose([f"task={task}"])
    assert cfg.task.name == task
    assert cfg.task.headline in cfg.task.metrics
    assert len(cfg.task.dev_suffixes) == len(cfg.task.tsv.dev) == len(cfg.task.hub.dev)


def test_unknown_task_lists_choices():
    with pytest.raises(UserError, match=r"task/nosuch.*cola, mnli"):
        compose(["task=nosuch"])


def test_misspelt_key_is_named():
    with pytest.raises(UserError, match="train.lrr"):
        compose(["train.lrr=3"])


def test_bad_choice_lists_valid_values():
    with pytest.raises(UserError, match=r"data.protocol.*holdout, dev"):
        compose(["data.protocol=foo"])


def test_bad_type_is_named():
    with pytest.raises(UserError, match="train.epochs"):
        compose(["train.epochs=abc"])


def test_density_range():
    with pytest.raises(UserError, match="mask.density"):
        compose(["mask.density=2"])


def test_unknown_method_suggests():
    from peft_cli.methods import method_class

    with pytest.raises(UserError, match="did you mean 'bitfit'"):
        method_class("bitfti")


def test_config_hash_ignores_paths_but_not_hyperparameters():
    a = compose(["data.glue_dir=/x"])
    b = compose(["data.glue_dir=/y", "results.dir=/z"])
    c = compose(["train.lr=1e-4"])
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_config_hash_ignores_mask_for_methods_that_do_not_read_it():
    assert config_hash(compose(["method=bitfit"])) == config_hash(compose(["method=bitfit", "mask.density=0.01"]))
    assert config_hash(compose(["method=pafi"])) != config_hash(compose(["method=pafi", "mask.density=0.01"]))


def test_config_hash_normalises_numbers():
    assert config_hash(compose(["method=lora", "method.alpha=8"])) == config_hash(
        compose(["method=lora", "method.alpha=8.0"])
    )


@pytest.mark.parametrize(
    "override,key",
    [
        ("data.holdout_size=-5", "data.holdout_size"),
        ("method.lr=-1", "method.lr"),
        ("train.log_every=0", "train.log_every"),
        ("data.max_train_examples=0", "data.max_train_examples"),
        ("train.warmup_ratio=-3", "train.warmup_ratio"),
        ("task.headline=f1", "task.headline"),
        ("task.size=medium", "task.size"),
        ("task.metrics=[bleu]", "task.metrics"),
    ],
)
def test_values_that_would_fail_mid_run_fail_at_load(override, key):
    with pytest.raises(UserError, match=key):
        compose([override])
