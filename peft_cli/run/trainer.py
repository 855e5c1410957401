"""The training loop of one run, as one object that owns its state (torchtune's recipe pattern):
config, model, device, precision, optimizer, schedule, progress, best snapshot and log.

    Trainer(cfg, assembled, device, folder, log)   freeze the backbone, method.prepare, head on
    .fit(stop)                                     resume if a checkpoint fits, then epochs:
                                                   steps, validation passes (after each epoch,
                                                   or every `train.eval_every` steps)
    .restore_best()                                the best pass's trainable values, back in place

Speed: the step path never waits for the device. Losses are summed on the device and read every
`train.log_every` steps (one host sync per log line, not per step); batches come from padded
token tensors (data/encode.py), grouped by length (data/batching.py), pinned on CUDA; AdamW is
fused where available; `train.precision=fp16` scales the loss (GradScaler); `train.grad_accum`
splits a step's batch into micro-batches; `train.compile` wraps the model in torch.compile.

Preemption: `stop` (a threading.Event set by SIGUSR1/SIGTERM) is read after every step; when set,
the trainer checkpoints and raises `Interrupted`. A rerun resumes from the checkpoint and ends
with the metrics of an uninterrupted run.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from peft_cli.core.config import RunConfig
from peft_cli.core.errors import Interrupted
from peft_cli.core.runtime import amp_dtype, autocast, synchronize, to_device
from peft_cli.data.batching import epoch_batches, split_micro
from peft_cli.methods.base import default_decays, freeze_backbone
from peft_cli.run import checkpoint
from peft_cli.run.identity import config_hash
from peft_cli.run.log import Progress, RunLog
from peft_cli.run.optim import learning_rate, make_optimizer
from peft_cli.run.reporters import Reporter, open_reporters
from peft_cli.run.scoring import score_split

if TYPE_CHECKING:
    import torch

    from peft_cli.run.assemble import Assembled


class Trainer:
    """The training loop of one run and the state it owns (module docstring)."""

    def __init__(self, cfg: RunConfig, a: "Assembled", device: "torch.device", folder: Path, log: RunLog) -> None:
        import torch

        self.cfg, self.a, self.device, self.folder, self.log = cfg, a, device, folder, log
        self.amp = amp_dtype(cfg.train, device)
        # fp16 needs loss scaling (its range underflows small gradients); bf16 and fp32 do not
        self.scaler = torch.amp.GradScaler(device.type) if self.amp == torch.float16 else None
        self.chash = config_hash(cfg)
        freeze_backbone(a.model)  # the method switches on what it trains
        self.model = a.method.prepare(a.model).to(device)
        for p in a.head.values():
            p.requires_grad_(True)
        self.forward = torch.compile(self.model) if cfg.train.compile else self.model
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        per_epoch = math.ceil(len(a.data.train) / cfg.train.batch_size)
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * per_epoch
        self.epochs = math.ceil(self.total_steps / per_epoch)
        self.optimizer, self.scheduler = make_optimizer(
            cfg.train, learning_rate(cfg), self.params, self._decays, self.total_steps
        )
        self.state = checkpoint.Progress()
        self.best: dict[str, torch.Tensor] | None = None  # the best pass's trainable values
        self.method_state = a.method.metadata()  # fixed once prepared (PaFi: the mask digest, hashed once)
        self.meter = Meter()
        self._loss_sum: torch.Tensor | None = None  # on the device: losses since the last log line
        self._loss_n = 0
        self._grad_norm: torch.Tensor | None = None  # the last step's, on the device
        self.reporters: list[Reporter] = []

    def _decays(self, name: str) -> bool:
        return default_decays(name) if name in self.a.head else self.a.method.decays(name)

    # ---------------------------------------------------------------- the loop

    def fit(self, stop: threading.Event, show_progress: bool) -> None:
        """Train to `total_steps` (resuming from a checkpoint of this config if there is one)."""
        self._resume()
        self.model.train()
        c = self.cfg
        label = f"{c.task.name} {c.method['name']} seed {c.seed}"
        self.reporters = open_reporters(c.train.report_to, self.folder, label, c.to_dict())
        try:
            with Progress(show_progress, label, self.total_steps, self.state.step) as self.progress:
                self.meter.start(self.device)
                while self.state.epoch < self.epochs:
                    for batch in self._batches():
                        if self.state.step >= self.total_steps:  # max_steps reached mid-epoch (or resumed there)
                            break
                        loss, examples = self._step(batch)
                        self._after_step(loss, examples, stop)
                    self._end_epoch()
                self.meter.pause(self.device)
        finally:
            for r in self.reporters:
                r.close()
        if self.best is None:
            raise RuntimeError("training ended without a validation pass")

    def _batches(self):
        """This epoch's batches (each a list of micro-batches), minus those a resumed run already did."""
        import torch

        t = self.cfg.train
        # The epoch's batches are a function of (seed, epoch) alone, so a resumed run replays them.
        batches = epoch_batches(self.a.data.train.lengths, t.batch_size, self.cfg.seed, self.state.epoch,
                                t.group_by_length)  # fmt: skip
        micro = [split_micro(rows, t.grad_accum) for rows in batches[self.state.step_in_epoch :]]
        loader = self.a.data.train.batch_loader(micro, micro=True, pin=self.device.type == "cuda")
        # iter(DataLoader) draws a seed from the global RNG; a resumed run makes one more draw in the
        # epoch it resumes, which would shift every later dropout mask. Keep the draw off it.
        with torch.random.fork_rng(devices=[]):
            return iter(loader)

    def _step(self, micro: list[dict[str, "torch.Tensor"]]) -> tuple["torch.Tensor", int]:
        """One optimizer step over a batch given as micro-batches; returns the batch's mean loss (on
        the device) and its number of examples."""
        import torch

        n = sum(len(m["labels"]) for m in micro)
        total = None
        for m in micro:
            m = to_device(m, self.device)
            with autocast(self.device, self.amp):
                out = self.forward(**m)
            # each micro-batch's mean loss, weighted by its share: the sum is the batch's mean loss
            loss = out.loss.float() * (len(m["labels"]) / n)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
        if self.cfg.train.grad_clip:
            self._grad_norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.cfg.train.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)  # skipped when a gradient overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, n

    def _after_step(self, loss: "torch.Tensor", examples: int, stop: threading.Event) -> None:
        s, t = self.state, self.cfg.train
        s.step += 1
        s.step_in_epoch += 1
        self.meter.examples += examples
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._loss_n += 1
        self.progress.step(s.step)
        if s.step % t.log_every == 0 or s.step == self.total_steps:
            self._log_train()
        if t.eval_every and (s.step % t.eval_every == 0 or s.step == self.total_steps):
            self._validate()
        if stop.is_set() or (t.checkpoint_every and s.step % t.checkpoint_every == 0):
            self._save()
            if stop.is_set():
                raise Interrupted(f"stopped by signal at step {s.step}; checkpoint saved, rerun to resume", stop.signum)

    def _log_train(self) -> None:
        """The log line of the steps since the last one: reads the device once (the only sync of the step path)."""
        s = self.state
        loss = (self._loss_sum / self._loss_n).item()
        if not math.isfinite(loss):
            raise RuntimeError(f"loss is {loss}; lower train.lr (now {self.scheduler.get_last_lr()[0]:.3g})")
        self._loss_sum, self._loss_n = None, 0
        lr = self.scheduler.get_last_lr()[0]
        rate = self.meter.interval()
        norm = None if self._grad_norm is None else float(self._grad_norm)
        self.log.write(step=s.step, epoch=s.epoch, loss=loss, lr=lr, examples_per_s=round(rate, 2))
        for r in self.reporters:
            r.scalars(s.step, {"loss": loss, "lr": lr, "grad_norm": norm, "examples_per_s": rate})
        self.progress.logged(s.step, loss, rate)

    def _end_epoch(self) -> None:
        if not self.cfg.train.eval_every:
            self._validate()
        self.state.epoch += 1
        self.state.step_in_epoch = 0

    def _validate(self) -> None:
        """Score validation; keep a snapshot of the best pass (ties keep the earlier)."""
        s = self.state
        self.meter.pause(self.device)
        val = score_split(self.cfg, self.model, self.a.data.validation, self.device, self.amp).metrics
        self.meter.start(self.device)
        score = val[self.cfg.task.headline]
        s.history.append({"epoch": s.epoch, "step": s.step, **val})
        self.log.write(event="validation", epoch=s.epoch, step=s.step, **val)
        self.progress.validation(s.epoch, s.step, val)
        if s.best_score is None or score > s.best_score:
            s.best_score, s.best_epoch, s.best_step = score, s.epoch, s.step
            self.best = {n: p.detach().clone() for n, p in self.params.items()}

    def restore_best(self) -> None:
        """Copy the best pass's values back into the trainable parameters."""
        import torch

        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.best[n])

    # ---------------------------------------------------------------- checkpoints

    def _save(self) -> None:
        if self.scaler:
            self.state.loss_scale = self.scaler.state_dict()
        checkpoint.save(
            self.folder,
            self.chash,
            self.state,
            self.params,
            self.best,
            self.optimizer,
            self.scheduler,
            self.method_state,
        )

    def _resume(self) -> None:
        try:
            restored = checkpoint.load(
                self.folder, self.chash, self.params, self.optimizer, self.scheduler, self.method_state
            )
        except checkpoint.MethodChanged as e:  # never mix two masks' values: start over, and say so
            print(f"peftx: checkpoint discarded, the run starts from step 0: {e}", file=sys.stderr)
            self.log.write(event="checkpoint_discarded", reason=str(e))
            checkpoint.clear(self.folder)
            restored = None
        if restored is not None:
            self.state, self.best = restored.progress, restored.best
            if self.scaler and self.state.loss_scale:
                self.scaler.load_state_dict(self.state.loss_scale)
            self.log.write(event="resume", step=self.state.step, epoch=self.state.epoch)


class Meter:
    """Training examples per second, evaluation excluded: a stopwatch paused around validation
    passes. Reads happen at log lines, right after the loss was read (the device is idle then)."""

    def __init__(self) -> None:
        self.examples = 0  # trained by this process
        self.seconds = 0.0  # training time of this process (validation excluded)
        self._since: float | None = None
        self._mark = (0, 0.0)  # (examples, seconds) at the last interval() read

    def start(self, device: "torch.device") -> None:
        synchronize(device)
        self._since = time.perf_counter()

    def pause(self, device: "torch.device") -> None:
        if self._since is not None:
            synchronize(device)
            self.seconds += time.perf_counter() - self._since
            self._since = None

    def _now(self) -> float:
        return self.seconds + (time.perf_counter() - self._since if self._since is not None else 0.0)

    def interval(self) -> float:
        """Examples/s since the previous call."""
        now = self._now()
        ex, sec = self.examples - self._mark[0], now - self._mark[1]
        self._mark = (self.examples, now)
        return ex / sec if sec > 0 else 0.0

    def rate(self) -> float:
        """Examples/s over the whole of this process's training."""
        return self.examples / self.seconds if self.seconds > 0 else 0.0
