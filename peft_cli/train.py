"""One run: model x task x method x seed -> result.json, artifact, predictions, log.

    seed -> assemble -> method.prepare -> epochs (AdamW, linear warmup/decay) with a validation
    pass after each -> restore the best epoch -> score the test split(s) once -> write the run.

Preemption: SIGUSR1/SIGTERM set a flag; after the current step the run checkpoints
(checkpoint.py), marks itself cancelled and raises `Interrupted`. Rerunning the same config
resumes from the checkpoint and ends with the metrics of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from peft_cli import checkpoint, metrics, results
from peft_cli.assembly import Assembled, assemble, run_folder
from peft_cli.config import RunConfig
from peft_cli.errors import UserError
from peft_cli.runtime import autocast, device_name, predict, resolve_device, seed_everything, to_device, use_bf16

if TYPE_CHECKING:
    import torch
    from torch import nn


class Interrupted(Exception):
    """The run was stopped by a signal or Ctrl-C; `result.json` says cancelled."""


# --------------------------------------------------------------------------------------------
# pieces


def learning_rate(cfg: RunConfig) -> float:
    lr = cfg.train.lr if cfg.train.lr is not None else cfg.method.get("lr")
    if lr is None:
        raise UserError(f"no learning rate: set train.lr or `lr` in conf/method/{cfg.method['name']}.yaml")
    return float(lr)


def no_decay(name: str) -> bool:
    """Biases and LayerNorm scales get no weight decay (BERT's recipe)."""
    name = name.replace("__", ".")  # PaFi value params are named after their tensor with '.' -> '__'
    return name.endswith("bias") or "LayerNorm.weight" in name or "layer_norm.weight" in name


def make_optimizer(cfg: RunConfig, params: dict[str, "nn.Parameter"], total_steps: int):
    import torch

    groups = [
        {"params": [p for n, p in params.items() if not no_decay(n)], "weight_decay": cfg.train.weight_decay},
        {"params": [p for n, p in params.items() if no_decay(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate(cfg))
    warmup = int(cfg.train.warmup_ratio * total_steps)

    def factor(step: int) -> float:  # linear warmup to 1, then linear decay to 0
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def evaluate_split(cfg: RunConfig, model: "nn.Module", enc, device, bf16: bool, suffix: str = "") -> tuple[dict, list]:
    preds = predict(model, enc, cfg.train.eval_batch_size, device, bf16)
    return metrics.compute(cfg.task.metrics, preds, enc.labels, suffix), preds


def score_of(cfg: RunConfig, test_metrics: dict[str, float]) -> float:
    return 100.0 * test_metrics[cfg.task.headline]


def count_params(model: "nn.Module", a: Assembled, artifact: dict[str, "torch.Tensor"]) -> dict[str, int]:
    head = sum(p.numel() for p in a.head.values())
    return {
        "backbone": a.backbone_size,  # LoRA/adapters/HiWi add modules under the backbone prefix
        "head": head,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad) - head,
        "stored": sum(t.numel() for t in artifact.values() if t.is_floating_point()),
    }


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGUSR1/SIGTERM -> an Event the loop checks between steps (never mid-step)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class Log:
    """log.jsonl: one JSON object per line (loss, lr, step; evaluations)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, **record: Any) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def progress_bar(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=Console(stderr=True),
                    disable=not enabled, transient=True)


# --------------------------------------------------------------------------------------------
# the run


def train_run(cfg: RunConfig, progress: bool | None = None) -> dict[str, Any]:
    """Run one config to completion (or resume it) and return its result.json as a dict."""
    # Signals are caught from the start: a USR1 during model loading or FISH scoring must not kill
    # the run with result.json left at "running". The loop acts on it after its next step; one
    # that arrives after training is over is ignored and the run completes.
    with stop_on_signals() as stop:
        return _run(cfg, progress, stop)


def _run(cfg: RunConfig, progress: bool | None, stop: threading.Event) -> dict[str, Any]:
    out = run_folder(cfg)
    chash = cfg.config_hash()
    device = resolve_device(cfg.train)
    bf16 = use_bf16(cfg.train, device)
    seed_everything(cfg.seed)
    a = assemble(cfg, device)
    base = _record(cfg, a, chash, device)
    out.mkdir(parents=True, exist_ok=True)
    results.write_text(out / "config.yaml", _yaml(cfg))
    results.write_json(out / "result.json", {**base, "status": "running"})
    log = Log(out / "log.jsonl")
    started = time.time()
    try:
        model = a.method.prepare(a.model).to(device)
        for p in a.head.values():
            p.requires_grad_(True)
        best = _fit(cfg, a, model, out, chash, device, bf16, log, stop,
                    cfg.train.progress if progress is None else progress)
        train_s = time.time() - started
        record = _finish(cfg, a, model, out, best, device, bf16, base, train_s)
    except (Interrupted, KeyboardInterrupt) as e:
        results.write_json(out / "result.json", {**base, "status": "cancelled", "error": str(e) or "interrupted",
                                                 "resumable": (out / "checkpoint" / "state.json").is_file()})
        raise Interrupted(str(e) or "interrupted by Ctrl-C") from None
    except UserError:
        results.write_json(out / "result.json", {**base, "status": "failed", "error": "bad input (see stderr)"})
        raise
    except Exception as e:
        results.write_json(out / "result.json", {**base, "status": "failed", "error": f"{type(e).__name__}: {e}"})
        raise
    finally:
        log.close()
    checkpoint.clear(out)
    return record


def _fit(cfg, a: Assembled, model, out: Path, chash: str, device, bf16: bool, log: Log, stop, show: bool):
    """The training loop. Returns (best epoch's snapshot of the trainable parameters, progress)."""
    import torch

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    per_epoch = math.ceil(len(a.data.train) / cfg.train.batch_size)
    total = cfg.train.max_steps or cfg.train.epochs * per_epoch
    epochs = math.ceil(total / per_epoch)
    opt, sched = make_optimizer(cfg, params, total)
    state = checkpoint.Progress()
    best: dict[str, torch.Tensor] | None = None
    method_state = a.method.metadata()  # fixed once prepared (PaFi: the mask digest, hashed once)
    try:
        restored = checkpoint.load(out, chash, params, opt, sched, method_state)
    except checkpoint.MethodChanged as e:  # never mix two masks' values: start over, and say so
        print(f"peftx: checkpoint discarded, the run starts from step 0: {e}", file=sys.stderr)
        log.write(event="checkpoint_discarded", reason=str(e))
        checkpoint.clear(out)
        restored = None
    if restored is not None:
        state, best = restored
        log.write(event="resume", step=state.step, epoch=state.epoch)
    model.train()
    with progress_bar(show) as bar:
        task = bar.add_task(f"{cfg.task.name} {cfg.method['name']} seed {cfg.seed}", total=total,
                            completed=state.step, info="")
        while state.epoch < epochs:
            # The epoch's order is a function of (seed, epoch) alone, so a resumed run replays it.
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + state.epoch)
            order = torch.randperm(len(a.data.train), generator=gen)
            loader = a.data.train.loader(cfg.train.batch_size, order, skip=state.step_in_epoch)
            # iter(DataLoader) draws a seed from the global RNG; a resumed run makes one more draw in
            # the epoch it resumes, which would shift every later dropout mask. Keep the draw off it.
            with torch.random.fork_rng(devices=[]):
                batches = iter(loader)
            for batch in batches:
                if state.step >= total:  # max_steps reached mid-epoch (or a run resumed right there)
                    break
                loss = _step(cfg, model, params, to_device(batch, device), opt, sched, device, bf16)
                state.step += 1
                state.step_in_epoch += 1
                if state.step % cfg.train.log_every == 0 or state.step == total:
                    log.write(step=state.step, epoch=state.epoch, loss=loss, lr=sched.get_last_lr()[0])
                bar.update(task, advance=1, info=f"loss {loss:.4f}")
                if stop.is_set() or (cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0):
                    checkpoint.save(out, chash, state, params, best, opt, sched, method_state)
                    if stop.is_set():
                        raise Interrupted(f"stopped by signal at step {state.step}; checkpoint saved, rerun to resume")
            val, _ = evaluate_split(cfg, model, a.data.validation, device, bf16)
            score = val[cfg.task.headline]
            state.history.append({"epoch": state.epoch, "step": state.step, **val})
            log.write(event="validation", epoch=state.epoch, step=state.step, **val)
            if state.best_score is None or score > state.best_score:  # ties keep the earlier epoch
                state.best_score, state.best_epoch = score, state.epoch
                best = {n: p.detach().clone() for n, p in params.items()}
            state.epoch += 1
            state.step_in_epoch = 0
    if best is None:
        raise RuntimeError("training ended without a validation pass")
    return best, state


def _step(cfg, model, params, batch, opt, sched, device, bf16: bool) -> float:
    import torch

    with autocast(device, bf16):
        out = model(**batch)
    loss = out.loss.float()
    if not torch.isfinite(loss):
        raise RuntimeError(f"loss is {loss.item()}; lower train.lr (now {sched.get_last_lr()[0]:.3g})")
    loss.backward()
    if cfg.train.grad_clip:
        torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.train.grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def _finish(cfg, a: Assembled, model, out: Path, fitted, device, bf16: bool, base: dict, train_s: float) -> dict:
    """Restore the best epoch, score validation and test once, write artifact, predictions, result."""
    import torch

    best, state = fitted
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in best:
                p.copy_(best[n])
    a.method.finalize(model)
    t0 = time.time()
    val, _ = evaluate_split(cfg, model, a.data.validation, device, bf16)
    test: dict[str, float] = {}
    for enc, suffix in zip(a.data.tests, cfg.task.dev_suffixes):
        m, preds = evaluate_split(cfg, model, enc, device, bf16, suffix)
        test.update(m)
        write_predictions(out / f"predictions{suffix}.tsv", enc, preds)
    eval_s = time.time() - t0
    artifact = a.method.artifact(model)
    head = {n: p.detach().cpu().contiguous() for n, p in a.head.items()}
    nbytes = results.save_tensors(out / "artifact.safetensors", {**artifact, **head}, artifact_metadata(cfg, a))
    record = {**base, "status": "completed", "metrics": {"validation": val, "test": test},
              "score": score_of(cfg, test), "params": count_params(model, a, artifact), "stored_bytes": nbytes,
              "time": {"train_s": round(train_s, 3), "eval_s": round(eval_s, 3)},
              "best_epoch": state.best_epoch, "steps": state.step, "history": state.history}
    results.write_json(out / "result.json", record)
    return record


def artifact_metadata(cfg: RunConfig, a: Assembled) -> dict[str, str]:
    return {"peftx_method": cfg.method["name"], "method_tag": base_tag(cfg), "model": cfg.model.name,
            "model_fingerprint": a.fingerprint, "head": json.dumps(sorted(a.head)), **a.method.metadata()}


def base_tag(cfg: RunConfig) -> str:
    from peft_cli.methods import method_tag

    return method_tag(cfg.method, cfg.mask)


def write_predictions(path: Path, enc, preds: list[float]) -> None:
    fmt = (lambda v: f"{v:.6f}") if enc.regression else (lambda v: str(int(v)))
    rows = ["index\tprediction\tlabel"] + [f"{i}\t{fmt(p)}\t{fmt(g)}" for i, p, g in zip(enc.idx, preds, enc.labels)]
    results.write_text(path, "\n".join(rows) + "\n")


def _record(cfg: RunConfig, a: Assembled, chash: str, device) -> dict[str, Any]:
    """Keys of result.json known before training; the contract's others start empty."""
    return {"status": "running", "experiment": cfg.experiment, "model": cfg.model.name, "task": cfg.task.name,
            "method": cfg.method["name"], "method_tag": base_tag(cfg), "seed": cfg.seed,
            "metrics": {"validation": {}, "test": {}}, "score": None,
            "params": {}, "stored_bytes": None, "time": {}, "config_hash": chash,
            "protocol": cfg.data.protocol, "versions": results.versions(device_name(device))}


def _yaml(cfg: RunConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict()))
