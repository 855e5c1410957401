"""The training engine: length-grouped batches, tensor collation, gradient accumulation, fp16 with
loss scaling, evaluation every N steps, throughput and the report_to writers.

Exact resume with length grouping on is covered by tests/test_resume.py (grouping is the default)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from conftest import tiny_overrides
from peft_cli.core.compose import compose
from peft_cli.core.errors import UserError
from peft_cli.data.batching import epoch_batches, split_micro
from peft_cli.run.identity import run_folder


def _lengths(n: int = 500, seed: int = 0) -> torch.Tensor:
    return torch.randint(5, 128, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("grouped", [False, True])
def test_epoch_batches_are_a_deterministic_partition(grouped):
    lengths = _lengths()
    a = epoch_batches(lengths, 16, seed=3, epoch=1, group_by_length=grouped)
    assert a == epoch_batches(lengths, 16, seed=3, epoch=1, group_by_length=grouped)  # resume replays it
    assert a != epoch_batches(lengths, 16, seed=3, epoch=2, group_by_length=grouped)  # each epoch reshuffles
    assert a != epoch_batches(lengths, 16, seed=4, epoch=1, group_by_length=grouped)
    rows = sorted(r for b in a for r in b)
    assert rows == list(range(len(lengths)))  # every row once
    assert sorted(len(b) for b in a) == [4] + [16] * 31  # 500 = 31 x 16 + 4


def test_length_grouping_cuts_padding():
    lengths = _lengths(2000)

    def padded(batches):  # tokens the model sees: each batch padded to its longest row
        return sum(len(b) * int(lengths[b].max()) for b in batches)

    plain = padded(epoch_batches(lengths, 16, 0, 0, group_by_length=False))
    grouped = padded(epoch_batches(lengths, 16, 0, 0, group_by_length=True))
    assert grouped < 0.75 * plain
    assert grouped >= int(lengths.sum())


def test_split_micro():
    assert split_micro(list(range(7)), 2) == [[0, 1, 2, 3], [4, 5, 6]]  # round(3.5) = 4 (banker's: 4)
    assert split_micro([1, 2, 3, 4], 4) == [[1], [2], [3], [4]]
    assert sum(split_micro(list(range(10)), 3), []) == list(range(10))


def test_collate_pads_each_batch_to_its_longest_row(tiny_glue):
    from peft_cli.core.runtime import resolve_device
    from peft_cli.run.assemble import assemble

    cfg = compose(tiny_overrides(tiny_glue, tiny_glue / "unused"))
    enc = assemble(cfg, resolve_device(cfg.train), with_train=False).data.validation
    rows = [3, 0, 5]
    batch = enc.collate(rows)
    width = int(enc.lengths[rows].max())
    assert batch["input_ids"].shape == (3, width)
    for i, r in enumerate(rows):
        n = int(enc.lengths[r])
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
    assert batch["labels"].tolist() == [enc.labels[r] for r in rows]


def _trainer(tiny_glue, tmp_path, **overrides):
    from peft_cli.core.runtime import resolve_device, seed_everything
    from peft_cli.run.assemble import assemble
    from peft_cli.run.log import RunLog
    from peft_cli.run.trainer import Trainer

    cfg = compose(tiny_overrides(tiny_glue, tmp_path, **overrides))
    device = resolve_device(cfg.train)
    seed_everything(cfg.seed)
    a = assemble(cfg, device)
    for m in a.model.modules():  # dropout draws differ by micro-batch shape; the arithmetic must not
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return Trainer(cfg, a, device, tmp_path, RunLog(tmp_path / "log.jsonl"))


@pytest.mark.parametrize("method", ["full", "pafi"])
def test_grad_accum_2x16_matches_1x32(tiny_glue, tmp_path, method):
    from peft_cli.data.batching import split_micro as split

    rows = list(range(32))
    after = []
    for accum in (1, 2):
        keys = {"train.batch_size": 32, "train.grad_accum": accum}
        t = _trainer(tiny_glue, tmp_path / str(accum), method=method, **keys)
        t.model.train()
        enc = t.a.data.train
        loss, examples = t._step(enc.collate_micro(split(rows, accum)))
        assert examples == 32
        after.append((float(loss), {n: p.detach().clone() for n, p in t.params.items()}))
    (loss1, p1), (loss2, p2) = after
    assert loss2 == pytest.approx(loss1, rel=1e-5)
    assert p1.keys() == p2.keys()
    for n in p1:
        torch.testing.assert_close(p2[n], p1[n], rtol=1e-5, atol=1e-6, msg=n)


def test_fp16_trains_with_loss_scaling_and_resumes_its_scale(tiny_glue, tmp_path, cli):
    args = tiny_overrides(tiny_glue, tmp_path, **{"train.precision": "fp16", "train.checkpoint_every": 3})
    from peft_cli.run import trainer as trainer_mod

    saved = []
    real_save = trainer_mod.Trainer._save

    def save(self):
        real_save(self)
        saved.append(dict(self.state.loss_scale))

    trainer_mod.Trainer._save = save
    try:
        r = cli("train", *args)
    finally:
        trainer_mod.Trainer._save = real_save
    assert r.exit_code == 0, r.output
    res = json.loads((run_folder(compose(args)) / "result.json").read_text())
    assert res["status"] == "completed"
    assert saved and all(s["scale"] > 0 for s in saved)  # the GradScaler's state goes into every checkpoint


def test_fp16_scaler_is_wired(tiny_glue, tmp_path):
    t = _trainer(tiny_glue, tmp_path, **{"train.precision": "fp16"})
    assert t.scaler is not None and t.amp == torch.float16
    t.model.train()
    scale = t.scaler.get_scale()
    t._step(t.a.data.train.collate_micro([list(range(8))]))
    assert t.scaler.get_scale() in (scale, scale / 2)  # update() ran (halved only on an overflow)
    assert _trainer(tiny_glue, tmp_path / "b").scaler is None  # fp32: no scaling


def test_eval_every_steps_log_throughput_and_csv(tiny_glue, tmp_path, cli):
    # 48 examples / batch 8 = 6 steps per epoch, 2 epochs: passes at steps 4, 8, 12 (the last one)
    args = tiny_overrides(
        tiny_glue, tmp_path, **{"train.eval_every": 4, "train.log_every": 2, "train.report_to": "[csv]"}
    )
    r = cli("train", *args)
    assert r.exit_code == 0, r.output
    folder = run_folder(compose(args))
    res = json.loads((folder / "result.json").read_text())
    assert [h["step"] for h in res["history"]] == [4, 8, 12]
    assert res["best_step"] in (4, 8, 12)
    assert res["time"]["train_examples_per_s"] > 0
    lines = [json.loads(x) for x in (folder / "log.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert [x["step"] for x in train_lines] == [2, 4, 6, 8, 10, 12]
    assert all(x["examples_per_s"] > 0 for x in train_lines)
    rows = list(csv.DictReader(open(folder / "train.csv")))
    assert [int(x["step"]) for x in rows] == [2, 4, 6, 8, 10, 12]
    assert all(float(x["grad_norm"]) >= 0 and float(x["lr"]) >= 0 for x in rows)


def test_speed_keys_stay_out_of_the_identity(tiny_glue, tmp_path):
    from peft_cli.run.identity import config_hash

    base = config_hash(compose(tiny_overrides(tiny_glue, tmp_path)))
    # the evaluation batch is hashed as resolved: null means 4 x batch_size (smoke: 4 x 8 = 32)
    for key, value in (("train.compile", "true"), ("train.report_to", "[csv]"), ("train.eval_batch_size", "32")):
        assert config_hash(compose(tiny_overrides(tiny_glue, tmp_path, **{key: value}))) == base, key
    changed = ("train.group_by_length", "false"), ("train.grad_accum", "2"), ("train.precision", "fp16")
    for key, value in (*changed, ("train.eval_batch_size", "7")):
        assert config_hash(compose(tiny_overrides(tiny_glue, tmp_path, **{key: value}))) != base, key


def test_bad_engine_keys_are_one_line_errors(tiny_glue, tmp_path):
    with pytest.raises(UserError, match="train.grad_accum"):
        compose(tiny_overrides(tiny_glue, tmp_path, **{"train.grad_accum": 9}))  # > batch 8
    with pytest.raises(UserError, match="train.report_to"):
        compose(tiny_overrides(tiny_glue, tmp_path, **{"train.report_to": "[nope]"}))


def test_report_to_names_a_missing_package(tmp_path, monkeypatch):
    import importlib.util

    from peft_cli.run import reporters

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(UserError, match="pip install tensorboard"):
        reporters.open_reporters(["csv", "tensorboard"], tmp_path, "run", {})
    out = reporters.open_reporters(["csv"], tmp_path, "run", {})
    out[0].scalars(3, {"loss": 0.5, "lr": 1e-3, "grad_norm": None, "examples_per_s": 10.0})
    out[0].close()
    assert (tmp_path / "train.csv").read_text().splitlines() == [
        "step,loss,lr,grad_norm,examples_per_s",
        "3,0.5,0.001,,10.0",
    ]
