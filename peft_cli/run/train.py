"""One run: model x task x method x seed -> result.json, artifact, predictions, log.

    seed -> assemble -> Trainer.fit (epochs; validation after each) -> restore the best epoch ->
    method.finalize -> score the test split(s) once -> artifact, predictions, result.json

result.json is written first as "running", then "completed", "failed" or "cancelled".
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

from peft_cli.core.config import RunConfig
from peft_cli.core.errors import Interrupted, UserError
from peft_cli.core.files import save_tensors, write_json, write_text
from peft_cli.core.runtime import device_name, resolve_device, seed_everything
from peft_cli.core.signals import stop_on_signals
from peft_cli.run import checkpoint
from peft_cli.run.assemble import Assembled, assemble
from peft_cli.run.identity import config_hash, method_tag, run_folder
from peft_cli.run.log import RunLog
from peft_cli.run.record import versions
from peft_cli.run.scoring import headline, score_split, score_tests, write_predictions
from peft_cli.run.trainer import Trainer

if TYPE_CHECKING:
    import torch
    from torch import nn


def train_run(cfg: RunConfig, progress: bool | None = None) -> dict[str, Any]:
    """Run one config to completion (or resume it) and return its result.json as a dict.
    `progress`: show a progress bar (None: `train.progress`). Raises Interrupted after a
    checkpoint when stopped by SIGUSR1/SIGTERM/Ctrl-C."""
    # Signals are caught from the start: a USR1 during model loading or FISH scoring must not kill
    # the run with result.json left at "running". The loop acts on it after its next step; one
    # that arrives after training is over is ignored and the run completes.
    with stop_on_signals() as stop:
        return _run(cfg, cfg.train.progress if progress is None else progress, stop)


def _run(cfg: RunConfig, show: bool, stop: threading.Event) -> dict[str, Any]:
    out = run_folder(cfg)
    device = resolve_device(cfg.train)
    seed_everything(cfg.seed)
    a = assemble(cfg, device)
    base = _record(cfg, device)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", _yaml(cfg))
    write_json(out / "result.json", {**base, "status": "running"})
    log = RunLog(out / "log.jsonl")
    started = time.time()
    try:
        trainer = Trainer(cfg, a, device, out, log)
        trainer.fit(stop, show)
        record = _finish(trainer, base, time.time() - started)
    except (Interrupted, KeyboardInterrupt) as e:
        write_json(
            out / "result.json",
            {
                **base,
                "status": "cancelled",
                "error": str(e) or "interrupted",
                "resumable": (out / "checkpoint" / "state.json").is_file(),
            },
        )
        raise Interrupted(str(e) or "interrupted by Ctrl-C") from None
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
    val = score_split(cfg, t.model, a.data.validation, t.device, t.bf16).metrics
    test = score_tests(cfg, t.model, a.data, t.device, t.bf16)
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
        "params": count_params(t.model, a, artifact),
        "stored_bytes": nbytes,
        "time": {"train_s": round(train_s, 3), "eval_s": round(eval_s, 3)},
        "best_epoch": t.state.best_epoch,
        "steps": t.state.step,
        "history": t.state.history,
    }
    write_json(out / "result.json", record)
    return record


def count_params(model: "nn.Module", a: Assembled, artifact: dict[str, "torch.Tensor"]) -> dict[str, int]:
    """result.json `params`: backbone and head sizes, trainable and stored counts (head excluded)."""
    head = sum(p.numel() for p in a.head.values())
    return {
        "backbone": a.backbone_size,  # LoRA/adapters/HiWi add modules under the backbone prefix
        "head": head,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad) - head,
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
        "seed": cfg.seed,
        "metrics": {"validation": {}, "test": {}},
        "score": None,
        "params": {},
        "stored_bytes": None,
        "time": {},
        "config_hash": config_hash(cfg),
        "protocol": cfg.data.protocol,
        "versions": versions(device_name(device)),
    }


def _yaml(cfg: RunConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict()))


__all__ = ["train_run"]
