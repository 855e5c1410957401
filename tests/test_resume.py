"""Preemption and crash safety of one run.

* A run stopped by SIGUSR1/SIGTERM (what SLURM sends before a time limit or preemption) and rerun
  ends with exactly the metrics, history and weights of an uninterrupted run with the same seed.
* `kill -9` mid-training, then rerunning the sweep: exactly one completed result per run.
* A half-written result.json is never read as a result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, tiny_overrides
from peft_cli.core import files
from peft_cli.core.compose import compose
from peft_cli.core.errors import Interrupted
from peft_cli.run import record as results
from peft_cli.run.identity import config_hash, run_folder
from peft_cli.run.train import train_run
from peft_cli.run.trainer import Trainer

# tiny_glue: 48 train examples / batch 8 = 6 steps per epoch, 2 epochs = 12 steps
STEPS_PER_EPOCH = 6


def _signal_after(monkeypatch, stops: list[int], sig: int) -> list[int]:
    """Make the process signal itself right after global optimizer step `stops[0]` (then `stops[1]`,
    ...; calls count across reruns), as SLURM would: the real handler and checkpoint path run."""
    real_step = Trainer._step
    done = [0]

    def step(*args, **kwargs):
        loss = real_step(*args, **kwargs)
        done[0] += 1
        if stops and done[0] == stops[0]:
            stops.pop(0)
            os.kill(os.getpid(), sig)
        return loss

    monkeypatch.setattr(Trainer, "_step", step)
    return done


def _artifact(folder: Path) -> dict:
    tensors, _ = files.load_tensors(folder / "artifact.safetensors")
    return tensors


def _assert_same_run(a: dict, b: dict, folder_a: Path, folder_b: Path) -> None:
    import torch

    assert a["status"] == b["status"] == "completed"
    assert a["metrics"] == b["metrics"]  # exact, not approximate
    assert a["history"] == b["history"]  # every epoch's validation metrics
    assert (a["best_epoch"], a["steps"]) == (b["best_epoch"], b["steps"])
    ta, tb = _artifact(folder_a), _artifact(folder_b)
    assert ta.keys() == tb.keys()
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name
    assert (folder_a / "predictions.tsv").read_text() == (folder_b / "predictions.tsv").read_text()


@pytest.mark.parametrize(
    "method, stops, sig",
    [
        ("full", [3], signal.SIGUSR1),  # mid-epoch: resume replays the epoch's order without its first 3 batches
        ("bitfit", [STEPS_PER_EPOCH], signal.SIGTERM),  # last step of epoch 0, before its validation pass
        ("full", [2, 9], signal.SIGUSR1),  # stopped twice; step 9 is in epoch 1, after the best-epoch snapshot
    ],
)
def test_resume_after_signal_equals_uninterrupted(tiny_glue, tmp_path, monkeypatch, method, stops, sig):
    overrides = tiny_overrides(tiny_glue, tmp_path / "a", method=method, seed=7)
    plain = train_run(compose(overrides))
    folder_a = run_folder(compose(overrides))

    cfg = compose(tiny_overrides(tiny_glue, tmp_path / "b", method=method, seed=7))
    folder_b = run_folder(cfg)
    n_stops = len(stops)
    resume_steps = list(stops)  # `_step` calls count across reruns = the global step (nothing is replayed)
    _signal_after(monkeypatch, stops, sig)
    for _ in range(n_stops):
        with pytest.raises(Interrupted):
            train_run(cfg)
        r = results.read_result(folder_b / "result.json")
        assert r["status"] == "cancelled" and r["resumable"] is True
        assert not results.is_completed(folder_b, config_hash(cfg))
    resumed = train_run(cfg)

    _assert_same_run(plain, resumed, folder_a, folder_b)
    events = [json.loads(line) for line in (folder_b / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "resume"] == resume_steps
    assert not (folder_b / "checkpoint").exists()  # cleared once the run completed


def test_checkpoint_of_another_fisher_mask_is_discarded(tiny_glue, tmp_path, monkeypatch, capsys):
    """A FISH run recomputes its task-specific mask on resume. If that mask differed from the one the
    checkpoint's values were trained with (e.g. a tie flipped on another GPU), the values would land
    on other entries: the checkpoint is discarded instead, loudly, and the run starts over."""
    fish = {"method": "pafi", "mask.strategy": "fisher", "mask.density": 0.05, "seed": 3}
    plain = train_run(compose(tiny_overrides(tiny_glue, tmp_path / "a", **fish)))
    cfg = compose(tiny_overrides(tiny_glue, tmp_path / "b", **fish))
    folder = run_folder(cfg)
    _signal_after(monkeypatch, [4], signal.SIGUSR1)
    with pytest.raises(Interrupted):
        train_run(cfg)
    state = folder / "checkpoint" / "state.json"
    meta = json.loads(state.read_text())
    assert meta["method"]["mask_strategy"] == "fisher" and meta["method"]["mask_digest"]
    meta["method"]["mask_digest"] = "0" * len(meta["method"]["mask_digest"])  # as if saved for another mask
    state.write_text(json.dumps(meta))

    resumed = train_run(cfg)
    _assert_same_run(plain, resumed, tmp_path / "a" / folder.relative_to(tmp_path / "b"), folder)
    events = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [e.get("event") for e in events if e.get("event") in ("resume", "checkpoint_discarded")] == [
        "checkpoint_discarded"
    ]
    assert "checkpoint discarded" in capsys.readouterr().err


def test_cli_train_ignores_a_signal_that_arrives_after_the_run(tiny_glue, tmp_path):
    """SLURM's USR1 can land after the run completed and train_run restored the previous handlers;
    the default action would exit 138 and sweep.sbatch would requeue (and retrain) a finished run."""
    from typer.testing import CliRunner

    from peft_cli.cli import app

    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        r = CliRunner().invoke(
            app, ["train", *tiny_overrides(tiny_glue, tmp_path, method="bitfit", **{"train.max_steps": 2})]
        )
        assert r.exit_code == 0, r.output
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGUSR1)  # the late warning: ignored (without the fix this kills pytest)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_periodic_checkpoint_does_not_change_the_run(tiny_glue, tmp_path):
    """train.checkpoint_every only writes files; the run (and its config_hash) stay the same."""
    a = train_run(compose(tiny_overrides(tiny_glue, tmp_path / "a", method="bitfit")))
    b = train_run(compose(tiny_overrides(tiny_glue, tmp_path / "b", method="bitfit", **{"train.checkpoint_every": 2})))
    assert a["config_hash"] == b["config_hash"]
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]


def test_checkpoint_survives_a_kill_while_saving(tmp_path, monkeypatch):
    """Killed between writing the new tensors and the new state.json: the previous checkpoint is
    still whole and is what a rerun resumes from."""
    import torch

    from peft_cli.run import checkpoint

    layer = torch.nn.Linear(3, 2)
    params = dict(layer.named_parameters())
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)

    def train_to(step: int) -> checkpoint.Progress:
        layer(torch.ones(1, 3)).sum().backward()
        opt.step()
        sched.step()
        return checkpoint.Progress(step=step, step_in_epoch=step)

    checkpoint.save(tmp_path, "h", train_to(2), params, None, opt, sched)
    saved = {n: p.detach().clone() for n, p in params.items()}

    def killed(*args, **kwargs):
        raise SystemExit("killed")

    monkeypatch.setattr(checkpoint, "write_json", killed)
    with pytest.raises(SystemExit):
        checkpoint.save(tmp_path, "h", train_to(4), params, None, opt, sched)
    monkeypatch.undo()
    assert checkpoint.saved_step(tmp_path, "h") == 2
    assert checkpoint.saved_step(tmp_path, "other config") is None
    progress, _ = checkpoint.load(tmp_path, "h", params, opt, sched)
    assert progress.step == 2
    assert all(torch.equal(params[n], saved[n]) for n in params)
    checkpoint.save(tmp_path, "h", train_to(6), params, None, opt, sched)  # the next save supersedes both
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["state-6.safetensors", "state.json"]
    checkpoint.clear(tmp_path)
    assert not (tmp_path / "checkpoint").exists()


def test_truncated_result_is_never_completed(tmp_path):
    good = {
        "status": "completed",
        "experiment": "e",
        "model": "m",
        "task": "rte",
        "method": "full",
        "method_tag": "full",
        "seed": 1,
        "metrics": {"validation": {}, "test": {"accuracy": 0.5}},
        "score": 50.0,
        "params": {},
        "stored_bytes": 1,
        "time": {},
        "config_hash": "abc",
        "versions": {},
    }
    files.write_json(tmp_path / "result.json", good)
    assert results.is_completed(tmp_path, "abc")
    assert not results.is_completed(tmp_path, "other")  # a different config in the same folder
    text = (tmp_path / "result.json").read_text()
    for cut in (1, len(text) // 3, len(text) // 2, len(text) - 3):  # a writer killed at any point
        (tmp_path / "result.json").write_text(text[:cut])
        assert results.read_result(tmp_path / "result.json") is None
        assert not results.is_completed(tmp_path, "abc")
    (tmp_path / "result.json").write_text("")
    assert results.read_result(tmp_path / "result.json") is None
    files.write_json(tmp_path / "result.json", {k: v for k, v in good.items() if k != "score"})
    assert results.read_result(tmp_path / "result.json") is None  # a required key missing


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def test_kill_9_then_sweep_completes_every_run_once(tiny_glue, tmp_path):
    """SIGKILL gives train.py no chance to write anything: result.json stays 'running' and a periodic
    checkpoint is left behind. Rerunning the sweep (real `peftx train` subprocesses) finishes the run
    exactly once, resumed from that checkpoint, with the metrics of an uninterrupted run."""
    from peft_cli.core.compose import compose_dict
    from peft_cli.sweep.grid import expand, sweep_config
    from peft_cli.sweep.runner import run_sweep

    res = tmp_path / "res"
    args = [
        "sweep=smoke",
        f"data.glue_dir={tiny_glue}",
        f"results.dir={res}",
        "sweep.tasks=[rte]",
        "sweep.methods=[bitfit]",
        "train.max_steps=40",
        "train.log_every=1",
        "train.checkpoint_every=2",
    ]
    [run] = expand(sweep_config(compose_dict(args)["sweep"]), args)
    proc = subprocess.Popen(
        [sys.executable, "-m", "peft_cli.cli", "train", *run.overrides],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = run.folder / "log.jsonl"

    def past_a_checkpoint() -> bool:
        assert proc.poll() is None, "the run ended before it could be killed"
        lines = log.read_text().splitlines() if log.is_file() else []
        return any(json.loads(x).get("step", 0) >= 5 and "loss" in x for x in lines[:-1])

    _wait_for(past_a_checkpoint, 240, "the run to pass step 5")
    proc.kill()  # SIGKILL, mid-training
    proc.wait()
    r = results.read_result(run.folder / "result.json")
    assert r is not None and r["status"] == "running"  # what a killed run leaves behind
    assert not results.is_completed(run.folder, config_hash(run.cfg))

    assert run_sweep(args) == 0
    found = list(results.iter_results(res))
    assert [(f, r["status"]) for f, r in found] == [(run.folder, "completed")]
    resumes = [json.loads(x) for x in log.read_text().splitlines() if '"resume"' in x]
    assert len(resumes) == 1 and resumes[0]["step"] >= 4  # from the periodic checkpoint, not from zero
    reference = train_run(
        compose([*run.overrides, f"results.dir={tmp_path / 'ref'}", "train.checkpoint_every=0"]), progress=False
    )
    final = results.read_result(run.folder / "result.json")
    assert final["metrics"] == reference["metrics"] and final["history"] == reference["history"]
    assert final["config_hash"] == reference["config_hash"]  # results.dir and checkpoint_every: not the run
    assert run_sweep(args) == 0  # nothing left to do
    assert len(list(results.iter_results(res))) == 1
