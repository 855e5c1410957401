"""One run: model x task x method x seed -> result.json, artifact, predictions, log.

    seed -> assemble -> Trainer.fit (epochs; validation after each) -> restore the best epoch ->
    method.finalize -> score the test split(s) once -> artifact, predictions, result.json

result.json is written first as "running", then "completed", "failed" or "cancelled".
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_cli.core.config import RunConfig
from peft_cli.core.errors import Interrupted, UserError
from peft_cli.core.files import save_tensors, write_json, write_text
from peft_cli.core.runtime import device_name, resolve_device, seed_everything
from peft_cli.core.signals import StopFlag, stop_on_signals
from peft_cli.run import checkpoint
from peft_cli.run.assemble import Assembled, assemble
from peft_cli.run.identity import config_hash, method_tag, run_folder, run_tag
from peft_cli.run.lock import locked
from peft_cli.run.log import RunLog
from peft_cli.run.record import read_result, versions
from peft_cli.run.scoring import headline, score_split, score_tests, write_predictions
from peft_cli.run.trainer import Trainer

if TYPE_CHECKING:
    import torch


def train_run(cfg: RunConfig, progress: bool | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run one config to completion (or resume it) and return its result.json as a dict.

    `progress`: show a progress bar (None: `train.progress`). A completed run of the same config is
    returned as it is, not trained again; a completed run of another config in the same folder is a
    UserError. `overwrite=True` deletes either and trains afresh. Raises Busy when another live
    process trains the folder, Interrupted (after a checkpoint) when stopped by a signal."""
    out = run_folder(cfg)
    # Signals are caught from the start: a USR1 during model loading or FISH scoring must not kill
    # the run with result.json left at "running". The loop acts on it after its next step; one
    # that arrives after training is over is ignored and the run completes.
    with stop_on_signals() as stop, locked(out):
        done = _claim_folder(cfg, out, overwrite)
        if done is not None:
            return done
        return _run(cfg, out, cfg.train.progress if progress is None else progress, stop)


def _claim_folder(cfg: RunConfig, out: Path, overwrite: bool) -> dict[str, Any] | None:
    """Make `out` this config's: returns its completed result when there is nothing to do, clears
    files of another config (or of any run, with `overwrite`), refuses to replace a completed run
    of another config silently."""
    r = read_result(out / "result.json")
    chash = config_hash(cfg)
    if r is not None and r["status"] == "completed" and not overwrite:
        if r["config_hash"] == chash:
            return r
        raise UserError(
            f"{out} holds a completed run of another config (config_hash {r['config_hash']}, this "
            f"one {chash}); pass --overwrite to replace it, or give this run its own experiment= or "
            "results.dir="
        )
    if overwrite or (r is not None and r["config_hash"] != chash):
        clear_run(out)
    return None


def clear_run(out: Path) -> None:
    """Delete what a run wrote in `out` (its lock excepted): the folder then holds no run at all."""
    checkpoint.clear(out)
    # train.log stays: a sweep's child writes its own output there (a record of every attempt)
    for pattern in ("result.json", "config.yaml", "artifact.safetensors", "predictions*.tsv", "eval.json", "log.jsonl"):
        for path in out.glob(pattern):
            path.unlink()


def _run(cfg: RunConfig, out: Path, show: bool, stop: StopFlag) -> dict[str, Any]:
    device = resolve_device(cfg.train)
    seed_everything(cfg.seed)
    a = assemble(cfg, device)
    base = _record(cfg, device)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", _yaml(cfg))
    write_json(out / "result.json", {**base, "status": "running"})
    log = RunLog(out / "log.jsonl")
    log.write(event="start", config_hash=base["config_hash"], **base["where"])
    started = time.time()
    try:
        if stop.is_set():  # stopped while loading: nothing trained, nothing to save
            raise Interrupted("stopped by signal before training started; rerun to start it", stop.signum)
        trainer = Trainer(cfg, a, device, out, log)
        trainer.fit(stop, show)
        record = _finish(trainer, base, time.time() - started)
    except (Interrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        message = str(e) or "aborted by a second Ctrl-C; the last checkpoint (if any) is kept"
        resumable = (out / "checkpoint" / "state.json").is_file()
        write_json(out / "result.json", {**base, "status": "cancelled", "error": message, "resumable": resumable})
        log.write(event="cancelled", signal=signal.Signals(signum).name if signum else None, resumable=resumable)
        raise Interrupted(message, signum) from None
    except UserError:
        write_json(out / "result.json", {**base, "status": "failed", "error": "bad input (see stderr)"})
        raise
    except Exception as e:
        write_json(out / "result.json", {**base, "status": "failed", "error": f"{type(e).__name__}: {e}"})
        raise
    finally:
        log.close()
    checkpoint.clear(out)
    return record


def _finish(t: Trainer, base: dict[str, Any], train_s: float) -> dict[str, Any]:
    """Restore the best epoch, score validation and test once, write artifact, predictions, result."""
    cfg, a, out = t.cfg, t.a, t.folder
    t.restore_best()
    a.method.finalize(t.model)
    t0 = time.time()
    val = score_split(cfg, t.model, a.data.validation, t.device, t.amp).metrics
    test = score_tests(cfg, t.model, a.data, t.device, t.amp)
    for suffix, enc, preds in test.splits:
        write_predictions(out / f"predictions{suffix}.tsv", enc, preds)
    eval_s = time.time() - t0
    artifact = a.method.artifact(t.model)
    head = {n: p.detach().cpu().contiguous() for n, p in a.head.items()}
    nbytes = save_tensors(out / "artifact.safetensors", {**artifact, **head}, artifact_metadata(cfg, a))
    record = {
        **base,
        "status": "completed",
        "metrics": {"validation": val, "test": test.metrics},
        "score": headline(cfg, test.metrics),
        "params": count_params(t, artifact),
        "stored_bytes": nbytes,
        "time": {
            "train_s": round(train_s, 3),  # wall time of fit(): training and validation passes
            "eval_s": round(eval_s, 3),
            "train_examples_per_s": round(t.meter.rate(), 2),  # this process's training steps, validation excluded
        },
        "best_epoch": t.state.best_epoch,
        "best_step": t.state.best_step,
        "steps": t.state.step,
        "history": t.state.history,
    }
    write_json(out / "result.json", record)
    return record


def count_params(t: Trainer, artifact: dict[str, "torch.Tensor"]) -> dict[str, int]:
    """result.json `params`: backbone and head sizes, trainable and stored counts (head excluded).
    Trainable = what the trainer optimized (a method's finalize may fold its modules away)."""
    head = sum(p.numel() for p in t.a.head.values())
    return {
        "backbone": t.a.backbone_size,  # LoRA/adapters/HiWi add modules under the backbone prefix
        "head": head,
        "trainable": sum(p.numel() for p in t.params.values()) - head,
        "stored": sum(t.numel() for t in artifact.values() if t.is_floating_point()),
    }


def artifact_metadata(cfg: RunConfig, a: Assembled) -> dict[str, str]:
    """The artifact's safetensors header: method, tag, model and its fingerprint, head names, and
    the method's own entries (e.g. PaFi's mask digest)."""
    return {
        "peftx_method": cfg.method["name"],
        "method_tag": method_tag(cfg),
        "model": cfg.model.name,
        "model_fingerprint": a.fingerprint,
        "head": json.dumps(sorted(a.head)),
        **a.method.metadata(),
    }


def _record(cfg: RunConfig, device: "torch.device") -> dict[str, Any]:
    """Keys of result.json known before training; the others start empty."""
    return {
        "status": "running",
        "experiment": cfg.experiment,
        "model": cfg.model.name,
        "task": cfg.task.name,
        "method": cfg.method["name"],
        "method_tag": method_tag(cfg),
        "run_tag": run_tag(cfg),
        "setting": cfg.setting,
        "seed": cfg.seed,
        "metrics": {"validation": {}, "test": {}},
        "score": None,
        "params": {},
        "stored_bytes": None,
        "time": {},
        "config_hash": config_hash(cfg),
        "protocol": cfg.data.protocol,
        "versions": versions(device_name(device)),
        "where": where(),
    }


def where() -> dict[str, Any]:
    """Where this process runs: host, pid, and the SLURM job, array job and task ids when under SLURM."""
    env = os.environ
    out: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    for key, var in (
        ("slurm_job_id", "SLURM_JOB_ID"),
        ("slurm_array_job_id", "SLURM_ARRAY_JOB_ID"),
        ("slurm_array_task_id", "SLURM_ARRAY_TASK_ID"),
        ("slurm_node", "SLURMD_NODENAME"),
    ):
        if env.get(var):
            out[key] = env[var]
    return out


def _yaml(cfg: RunConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict()))


__all__ = ["train_run"]
