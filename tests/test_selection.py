"""Selection on validation (peft_cli/selection/rule.py): best median validation headline over the
seeds every setting shares, deterministic ties, reported seeds, and never a test metric."""

from __future__ import annotations

import copy
import random

import pytest

from peft_cli.selection.rule import canon, choose, select


def res(lr: float | None, seed: int, val: float | None, test: float = 0.5, task: str = "rte", tag: str = "m") -> dict:
    return {
        "model": "tiny",
        "method_tag": tag,
        "protocol": "holdout",
        "task": task,
        "seed": seed,
        "setting": {} if lr is None else {"train.lr": lr},
        "metrics": {"validation": {} if val is None else {"accuracy": val}, "test": {"accuracy": test}},
        "score": 100 * test,
    }


def test_best_median_validation_wins():
    rs = [res(0.1, s, v) for s, v in ((1, 0.6), (2, 0.9), (3, 0.61))]  # median 0.61, mean 0.70
    rs += [res(0.01, s, v) for s, v in ((1, 0.62), (2, 0.62), (3, 0.5))]  # median 0.62: wins
    c = choose(rs, "accuracy")
    assert c.setting == {"train.lr": 0.01} and c.compared
    assert c.selection_seeds == c.reported_seeds == (1, 2, 3)
    assert c.validation == {canon({"train.lr": 0.01}): 0.62, canon({"train.lr": 0.1}): 0.61}


def test_ties_break_on_mean_then_smallest_value_in_any_order():
    # equal medians (0.75): the higher mean wins, though its lr is the larger
    tie_mean = [res(0.1, s, v) for s, v in ((1, 0.7), (2, 0.75), (3, 0.9))] + [res(0.01, s, 0.75) for s in (1, 2, 3)]
    tie_all = [res(lr, s, 0.7) for lr in (3e-3, 1e-5, 2e-2) for s in (1, 2)]  # 1e-05 sorts after 0.003 as text
    for rs, want in ((tie_mean, 0.1), (tie_all, 1e-5)):
        for seed in range(5):
            shuffled = rs[:]
            random.Random(seed).shuffle(shuffled)
            assert choose(shuffled, "accuracy").setting == {"train.lr": want}


def test_never_reads_test_metrics():
    rs = [res(lr, s, random.Random(lr * 1000 + s).random()) for lr in (0.1, 0.01, 0.001) for s in (0, 1, 2, 3)]
    rs += [res(lr, s, random.Random(s).random(), task="stsb") for lr in (0.1, 0.01) for s in (0, 1)]
    heads = {"rte": "accuracy", "stsb": "accuracy"}
    before = select(rs, heads)
    changed = copy.deepcopy(rs)
    for i, r in enumerate(changed):
        r["metrics"]["test"] = {"accuracy": random.Random(i).random(), "f1": -1.0}
        r["score"] = -(10**i)
    assert select(changed, heads) == before
    # and a result with no test metrics at all selects the same
    for r in changed:
        del r["metrics"]["test"], r["score"]
    assert select(changed, heads) == before


def test_two_stage_reports_the_final_seeds_and_selects_on_search_seeds():
    search = [res(0.1, 0, 0.8), res(0.01, 0, 0.7)]
    final = [res(0.1, s, 0.1) for s in (1, 2, 3)]  # poor final validation must not flip the choice
    c = choose(search + final, "accuracy")
    assert c.setting == {"train.lr": 0.1}
    assert c.selection_seeds == (0,) and c.reported_seeds == (1, 2, 3)


def test_one_setting_nan_and_groups():
    c = choose([res(None, 1, 0.5), res(None, 2, 0.6)], "accuracy")
    assert c.setting == {} and not c.compared and c.reported_seeds == (1, 2)
    # a missing or NaN validation score is the worst
    assert choose([res(0.1, 1, None), res(0.01, 1, 0.0)], "accuracy").setting == {"train.lr": 0.01}
    assert choose([res(0.1, 1, float("nan")), res(0.01, 1, 0.0)], "accuracy").setting == {"train.lr": 0.01}
    groups = select([res(0.1, 1, 0.5, tag="a"), res(0.1, 1, 0.5, tag="b", task="cola")], {"rte": "a", "cola": "a"})
    assert list(groups) == [("tiny", "a", "holdout", "rte"), ("tiny", "b", "holdout", "cola")]
    with pytest.raises(ValueError):
        choose([], "accuracy")
