"""`peftx sweep --dry-run --estimate`: the cost arithmetic with injected timings, and the command."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_overrides
from peft_cli.core.compose import compose
from peft_cli.sweep.estimate import (
    Timing,
    Workload,
    estimate,
    estimate_seconds,
    padded_per_example,
    render,
    workload,
)
from peft_cli.sweep.grid import Run


def _cfg(tiny_glue, tmp_path, **keys):
    return compose(tiny_overrides(tiny_glue, tmp_path, **keys))  # smoke: 2 epochs of batch 8


def test_workload_counts_epochs_passes_and_tests(tiny_glue, tmp_path):
    cfg = _cfg(tiny_glue, tmp_path)
    # 48 train examples, batch 8: 6 steps/epoch, 2 epochs = 96 examples; 2 epoch passes + the final
    # validation pass over 12 examples, then tests of 12: (3 x 12 + 12) x 20 eval tokens
    w = workload(cfg, n_train=48, n_val=12, n_tests=[12], train_pad=30.0, eval_pad=20.0)
    assert w == Workload(96 * 30.0, (3 * 12 + 12) * 20.0)
    # max_steps=7: one epoch (48) plus one batch (8); passes after epochs 0 and 1, + final
    w = workload(_cfg(tiny_glue, tmp_path, **{"train.max_steps": 7}), 48, 12, [12, 10], 1.0, 1.0)
    assert w == Workload(56.0, 3 * 12 + 22.0)
    # eval_every=5 over 12 steps: passes at 5, 10, 12 (+ final); a short last batch (44 = 5 x 8 + 4)
    w = workload(_cfg(tiny_glue, tmp_path, **{"train.eval_every": 5}), 44, 10, [10], 1.0, 1.0)
    assert w == Workload(88.0, 4 * 10 + 10.0)


def test_estimate_seconds_and_padding():
    t = Timing(train_tokens_per_s=1000.0, eval_tokens_per_s=4000.0, startup_s=10.0)
    assert estimate_seconds(Workload(50_000.0, 8_000.0), t) == pytest.approx(10 + 50 + 2)
    same = torch.full((64,), 37)
    assert padded_per_example(same, 8, group_by_length=False) == 37.0
    mixed = torch.tensor([10] * 32 + [100] * 32)
    grouped = padded_per_example(mixed, 8, group_by_length=True)
    assert grouped == pytest.approx(55.0)  # every batch uniform: the mean length, no padding
    assert padded_per_example(mixed, 8, group_by_length=False) > grouped


def test_estimate_measures_once_per_setting_and_sums_by_task(tiny_glue, tmp_path):
    runs = [
        Run([], _cfg(tiny_glue, tmp_path, method=m, task=task, seed=s), tmp_path / f"{m}{task}{s}", "pending")
        for task in ("rte", "mrpc")
        for m in ("full", "bitfit")
        for s in (1, 2)
    ]
    calls = []

    def fake(cfg):
        calls.append(cfg.method["name"])
        return Timing(1e4, 4e4, 5.0)

    e = estimate(runs, measure_fn=fake)
    assert sorted(calls) == ["bitfit", "full"]  # one measurement per (model, method, ...), not per run
    by_task = e.by_task()
    assert list(by_task) == ["rte", "mrpc"] and by_task["rte"][0] == 4
    assert e.total_s == pytest.approx(sum(s for _, s in e.per_run))
    assert all(s > 5.0 for _, s in e.per_run)
    lines = render(e, "cpu", workers=2)
    assert any("total" in x and "8 runs" in x for x in lines)
    hours = f"{e.total_s / 3600:.2f} h wall"  # CPU workers split the cores: no faster together
    assert any("2 workers" in x and hours in x for x in lines)
    gpus = render(e, "cuda (NVIDIA H100)", workers=2)
    assert any("2 workers" in x and f"{e.total_s / 7200:.2f} h wall" in x for x in gpus)


def test_sweep_dry_run_estimate_prints_hours(tiny_glue, tmp_path, cli):
    r = cli("sweep", "--dry-run", "--estimate", "sweep=smoke", f"data.glue_dir={tiny_glue}", f"results.dir={tmp_path}")
    assert r.exit_code == 0, r.output
    assert "tokens/s" in r.output and "total" in r.output and " h" in r.output
    assert not (tmp_path / "runs").exists()  # timing runs write nothing into the results folder
    r = cli("sweep", "--estimate", "sweep=smoke", f"data.glue_dir={tiny_glue}", f"results.dir={tmp_path}")
    assert r.exit_code == 2 and "--dry-run" in r.output
