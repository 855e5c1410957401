"""The results folder can be trusted: one folder, one config; one trainer per run; every stop
resumes; exact files; output fit for logs. (SLURM-side checks: tests/test_slurm.py.)"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, tiny_overrides
from peft_cli.core.compose import compose
from peft_cli.core.files import load_tensors, save_tensors, write_json
from peft_cli.run import lock
from peft_cli.run.identity import config_hash, run_folder
from peft_cli.run.record import read_result

PEFTX = [sys.executable, "-m", "peft_cli.cli"]


def _starts(folder: Path) -> int:
    """How many times a run was started in `folder` (log.jsonl start events)."""
    lines = (folder / "log.jsonl").read_text().splitlines()
    return sum(json.loads(line).get("event") == "start" for line in lines)


def _wait_for_step(log: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        if log.is_file():
            for line in log.read_text().splitlines():
                if json.loads(line).get("step", 0) >= step:
                    return
        time.sleep(0.1)
    pytest.fail(f"no step {step} in {log} after {timeout} s")


# --------------------------------------------------------------------------------------------
# one folder, one config


def test_completed_run_is_not_trained_twice(tiny_glue, tmp_path, cli):
    args = tiny_overrides(tiny_glue, tmp_path, method="bitfit", **{"train.max_steps": 2})
    assert cli("train", *args).exit_code == 0
    folder = run_folder(compose(args))
    before = (folder / "result.json").read_bytes()
    again = cli("train", *args)
    assert again.exit_code == 0 and "already completed" in again.output
    assert (folder / "result.json").read_bytes() == before and _starts(folder) == 1
    fresh = cli("train", "--overwrite", *args)  # asked for: trained again, one log, one run in it
    assert fresh.exit_code == 0 and _starts(folder) == 1


def test_another_configs_completed_run_is_never_overwritten_silently(tiny_glue, tmp_path, cli):
    args = tiny_overrides(tiny_glue, tmp_path, method="bitfit", **{"train.max_steps": 2})
    assert cli("train", *args).exit_code == 0
    folder = run_folder(compose(args))
    r = read_result(folder / "result.json")
    write_json(folder / "result.json", {**r, "config_hash": "0123456789abcdef"})  # as if the experiment changed
    refused = cli("train", *args)
    assert refused.exit_code == 2 and "another config" in refused.output and "--overwrite" in refused.output
    assert read_result(folder / "result.json")["config_hash"] == "0123456789abcdef"  # untouched
    replaced = cli("train", "--overwrite", *args)
    assert replaced.exit_code == 0
    assert read_result(folder / "result.json")["config_hash"] == config_hash(compose(args))
    assert _starts(folder) == 1  # the log holds this run only


def test_a_learning_rate_gets_its_own_folder(tiny_glue, tmp_path, cli):
    a = tiny_overrides(tiny_glue, tmp_path, method="full", **{"train.max_steps": 2, "train.lr": 1})
    b = tiny_overrides(tiny_glue, tmp_path, method="full", **{"train.max_steps": 2, "train.lr": 0.5})
    assert cli("train", *a).exit_code == 0 and cli("train", *b).exit_code == 0
    fa, fb = run_folder(compose(a)), run_folder(compose(b))
    assert fa != fb and fa.parent.parent.name == "full-lr1.0-steps2" and fb.parent.parent.name == "full-lr0.5-steps2"
    assert run_folder(compose([*a[:-1], "train.lr=1.0"])) == fa  # 1 and 1.0: one value, one folder
    assert read_result(fa / "result.json")["setting"] == {"train.lr": 1.0, "train.max_steps": 2}


# --------------------------------------------------------------------------------------------
# one trainer per run


def _foreign_lock(folder: Path, proc: subprocess.Popen, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "host": host or socket.gethostname(),
        "pid": proc.pid,
        "pid_start": lock._start_time(proc.pid),
        "slurm_job": None,
        "since": "then",
    }
    (folder / lock.LOCK).write_text(json.dumps(record))


def test_a_live_lock_skips_the_run_and_a_dead_one_is_taken_over(tiny_glue, tmp_path, cli):
    args = tiny_overrides(tiny_glue, tmp_path, method="bitfit", **{"train.max_steps": 2})
    folder = run_folder(compose(args))
    holder = subprocess.Popen(["sleep", "60"])
    try:
        _foreign_lock(folder, holder)
        busy = cli("train", *args)
        assert busy.exit_code == 3 and "being trained by" in busy.output and f"pid {holder.pid}" in busy.output
        assert not (folder / "result.json").exists()
    finally:
        holder.kill()
        holder.wait()
    done = cli("train", *args)  # the holder is dead: its lock is taken over
    assert done.exit_code == 0, done.output
    assert read_result(folder / "result.json")["status"] == "completed" and not (folder / lock.LOCK).exists()


def test_a_lock_from_another_host_without_slurm_is_respected(tmp_path):
    me = subprocess.Popen(["sleep", "60"])
    try:
        _foreign_lock(tmp_path, me, host="elsewhere.example")
        with pytest.raises(Exception, match="elsewhere.example"):
            lock.acquire(tmp_path)
    finally:
        me.kill()
        me.wait()


@pytest.mark.timeout(900)
def test_two_sweeps_at_once_train_every_run_exactly_once(tiny_glue, tmp_path):
    args = [
        "sweep",
        "sweep=smoke",
        f"data.glue_dir={tiny_glue}",
        f"results.dir={tmp_path}",
        "sweep.seeds=[1,2]",
        "train.max_steps=3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(PEFTX + args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    folders = sorted(p.parent for p in tmp_path.glob("runs/*/*/*/*/*/result.json"))
    assert len(folders) == 8, outs
    for f in folders:
        assert read_result(f / "result.json")["status"] == "completed"
        assert _starts(f) == 1, f"{f} was trained {_starts(f)} times"
    # A sweep that ends while the other still trains a run it skipped reports that run unfinished
    # (exit status = runs not completed), and says why; the other one completes everything.
    assert any(p.returncode == 0 for p in procs), outs
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 or "being trained by another process" in err or "running elsewhere" in err, err


# --------------------------------------------------------------------------------------------
# every stop resumes


@pytest.mark.timeout(900)
def test_ctrl_c_checkpoints_and_the_resumed_run_equals_an_uninterrupted_one(tiny_glue, tmp_path):
    steps = {"train.max_steps": 150, "train.log_every": 1, "method": "bitfit"}
    args = tiny_overrides(tiny_glue, tmp_path / "a", **steps)
    folder = run_folder(compose(args))
    proc = subprocess.Popen(
        PEFTX + ["train", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_step(folder / "log.jsonl", 5, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    r = read_result(folder / "result.json")
    assert r["status"] == "cancelled" and r["resumable"] is True
    resumed = subprocess.run(PEFTX + ["train", *args], cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    plain = subprocess.run(
        PEFTX + ["train", *tiny_overrides(tiny_glue, tmp_path / "b", **steps)], cwd=REPO, capture_output=True, text=True
    )
    assert plain.returncode == 0, plain.stderr
    a = read_result(folder / "result.json")
    b = read_result(run_folder(compose(tiny_overrides(tiny_glue, tmp_path / "b", **steps))) / "result.json")
    assert a["metrics"] == b["metrics"] and a["steps"] == b["steps"] == 150


@pytest.mark.timeout(600)
def test_a_second_ctrl_c_stops_at_once(tiny_glue, tmp_path):
    args = tiny_overrides(tiny_glue, tmp_path, **{"train.max_steps": 100000, "train.log_every": 1})
    folder = run_folder(compose(args))
    proc = subprocess.Popen(
        PEFTX + ["train", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_step(folder / "log.jsonl", 3, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert read_result(folder / "result.json")["status"] == "cancelled"


@pytest.mark.timeout(900)
def test_ctrl_c_on_a_sweep_reports_what_happened(tiny_glue, tmp_path):
    args = [
        "sweep",
        "sweep=smoke",
        f"data.glue_dir={tiny_glue}",
        f"results.dir={tmp_path}",
        "train.max_steps=100000",
        "train.log_every=1",
    ]
    proc = subprocess.Popen(PEFTX + args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not list(tmp_path.glob("runs/*/*/*/*/*/log.jsonl")) and time.time() - t0 < 300:
        time.sleep(0.2)
    [log] = tmp_path.glob("runs/*/*/*/*/*/log.jsonl")
    _wait_for_step(log, 3, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    r = read_result(log.parent / "result.json")
    assert r["status"] == "cancelled" and r["resumable"]
    label = f"{r['task']} {r['run_tag']} seed {r['seed']}"
    claims = [ln for ln in err.splitlines() if "checkpointed" in ln]
    assert claims and all(label in ln and "checkpointed at step" in ln for ln in claims)  # that run, and only it
    assert "3 not started" in err


# --------------------------------------------------------------------------------------------
# exact files


def test_regression_predictions_read_back_exactly(tiny_glue, tmp_path, cli):
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    args = tiny_overrides(tiny_glue, tmp_path, task="stsb", method="bitfit", **{"train.max_steps": 3})
    assert cli("train", *args).exit_code == 0
    folder = run_folder(compose(args))
    rows = list(csv.DictReader(open(folder / "predictions.tsv"), delimiter="\t"))
    pred, gold = np.array([float(r["prediction"]) for r in rows]), np.array([float(r["label"]) for r in rows])
    test = read_result(folder / "result.json")["metrics"]["test"]
    assert float(pearsonr(pred, gold)[0]) == test["pearson"] and float(spearmanr(pred, gold)[0]) == test["spearmanr"]


def test_hiwi_under_bf16_scores_what_it_stores(tiny_glue, tmp_path, cli):
    """The run's predictions are those of base + stored tensors, under the run's own precision."""
    import torch

    from peft_cli.core.runtime import amp_dtype
    from peft_cli.run.evaluate import restore
    from peft_cli.run.scoring import predict

    args = tiny_overrides(
        tiny_glue,
        tmp_path,
        task="stsb",
        method="hiwi",
        **{"train.max_steps": 6, "train.precision": "bf16", "train.lr": 0.05},
    )
    assert cli("train", *args).exit_code == 0
    folder = run_folder(compose(args))
    r = restore(folder)
    assert amp_dtype(r.cfg.train, r.device) == torch.bfloat16
    preds = predict(r.model, r.assembled.data.tests[0], r.cfg.train.eval_batch, r.device, torch.bfloat16)
    stored = [float(row["prediction"]) for row in csv.DictReader(open(folder / "predictions.tsv"), delimiter="\t")]
    assert preds == stored
    tensors, _ = load_tensors(folder / "artifact.safetensors")
    assert all(t.dtype == torch.float32 for t in tensors.values())


def test_pafi_artifact_without_mask_digest_is_refused(tiny_glue, tmp_path, cli):
    args = tiny_overrides(tiny_glue, tmp_path, method="pafi", **{"train.max_steps": 2})
    assert cli("train", *args).exit_code == 0
    folder = run_folder(compose(args))
    tensors, meta = load_tensors(folder / "artifact.safetensors")
    meta.pop("mask_digest")
    save_tensors(folder / "artifact.safetensors", tensors, meta)
    out = cli("eval", str(folder))
    assert out.exit_code == 2 and "mask_digest" in out.output


# --------------------------------------------------------------------------------------------
# output fit for logs


def test_piped_report_is_never_wrapped(tmp_path):
    from test_report import write_result  # a completed result.json with a long method tag

    tag = "pafi-smallest-d0.005-xembeddings-lr0.01-this-is-a-long-tag"
    for seed in (1, 2):
        write_result(
            tmp_path,
            tag,
            "rte",
            seed,
            {"accuracy": 0.5 + seed / 100},
            trainable=5,
            stored=5,
            nbytes=21_000,
            experiment="smoke",
        )
    out = subprocess.run(
        PEFTX + ["report", "experiment=smoke", f"results.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(tag in line for line in lines)  # one line, whole
    assert any(line.startswith("Experiment smoke: GLUE test scores") and line.rstrip().endswith(".") for line in lines)
    assert any("KB" in line or " B" in line for line in lines if tag in line)  # units kept


def test_piped_train_prints_a_line_per_log_every_and_per_validation(tiny_glue, tmp_path):
    """Off a terminal (a SLURM log, a pipe) training is not silent until the end: one whole line every
    train.log_every steps with step, loss, examples/s and ETA, and one per validation."""
    args = tiny_overrides(tiny_glue, tmp_path, **{"train.progress": True, "train.log_every": 2, "train.max_steps": 6})
    out = subprocess.run(PEFTX + ["train", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    steps = [line for line in out.stderr.splitlines() if " step " in line and " loss " in line]
    assert [line.split(" step ")[1].split()[0] for line in steps] == ["2/6", "4/6", "6/6"], out.stderr
    assert all("examples/s" in line and "ETA" in line for line in steps)
    logged = [json.loads(x) for x in (run_folder(compose(args)) / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert [float(line.split(" loss ")[1].split()[0]) for line in steps] == pytest.approx(losses, abs=1e-4)
    vals = [line for line in out.stderr.splitlines() if "validation after epoch" in line]
    assert len(vals) == sum(r.get("event") == "validation" for r in logged) >= 1
    assert "\r" not in out.stderr and "\x1b[" not in out.stderr  # no bar redraws, no escape codes
