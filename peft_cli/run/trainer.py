"""The training loop of one run, as one object that owns its state (torchtune's recipe pattern):
config, model, device, precision, optimizer, schedule, progress, best-epoch snapshot and log.

    Trainer(cfg, assembled, device, folder, log)   freeze the backbone, method.prepare, head on
    .fit(stop)                                     resume if a checkpoint fits, then epochs:
                                                   steps, a validation pass after each epoch
    .restore_best()                                the best epoch's trainable values, back in place

Preemption: `stop` (a threading.Event set by SIGUSR1/SIGTERM) is read after every step; when set,
the trainer checkpoints and raises `Interrupted`. A rerun resumes from the checkpoint and ends
with the metrics of an uninterrupted run.
"""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from peft_cli.core.config import RunConfig
from peft_cli.core.errors import Interrupted
from peft_cli.core.runtime import autocast, to_device, use_bf16
from peft_cli.methods.base import default_decays, freeze_backbone
from peft_cli.run import checkpoint
from peft_cli.run.identity import config_hash
from peft_cli.run.log import Progress, RunLog
from peft_cli.run.optim import learning_rate, make_optimizer
from peft_cli.run.scoring import score_split

if TYPE_CHECKING:
    import torch

    from peft_cli.run.assemble import Assembled


class Trainer:
    """The training loop of one run and the state it owns (module docstring)."""

    def __init__(self, cfg: RunConfig, a: "Assembled", device: "torch.device", folder: Path, log: RunLog) -> None:
        self.cfg, self.a, self.device, self.folder, self.log = cfg, a, device, folder, log
        self.bf16 = use_bf16(cfg.train, device)
        self.chash = config_hash(cfg)
        freeze_backbone(a.model)  # the method switches on what it trains
        self.model = a.method.prepare(a.model).to(device)
        for p in a.head.values():
            p.requires_grad_(True)
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        per_epoch = math.ceil(len(a.data.train) / cfg.train.batch_size)
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * per_epoch
        self.epochs = math.ceil(self.total_steps / per_epoch)
        self.optimizer, self.scheduler = make_optimizer(
            cfg.train, learning_rate(cfg), self.params, self._decays, self.total_steps
        )
        self.state = checkpoint.Progress()
        self.best: dict[str, torch.Tensor] | None = None  # the best epoch's trainable values
        self.method_state = a.method.metadata()  # fixed once prepared (PaFi: the mask digest, hashed once)

    def _decays(self, name: str) -> bool:
        return default_decays(name) if name in self.a.head else self.a.method.decays(name)

    # ---------------------------------------------------------------- the loop

    def fit(self, stop: threading.Event, show_progress: bool) -> None:
        """Train to `total_steps` (resuming from a checkpoint of this config if there is one)."""
        self._resume()
        self.model.train()
        c = self.cfg
        label = f"{c.task.name} {c.method['name']} seed {c.seed}"
        args = (label, self.total_steps, self.state.step, c.train.batch_size, c.train.log_every)
        with Progress(show_progress, *args) as self.progress:
            while self.state.epoch < self.epochs:
                for batch in self._batches():
                    if self.state.step >= self.total_steps:  # max_steps reached mid-epoch (or resumed right there)
                        break
                    loss = self._step(to_device(batch, self.device))
                    self._after_step(loss, stop)
                self._validate()
        if self.best is None:
            raise RuntimeError("training ended without a validation pass")

    def _batches(self):
        """This epoch's batches, minus those a resumed run already did."""
        import torch

        # The epoch's order is a function of (seed, epoch) alone, so a resumed run replays it.
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.state.epoch)
        order = torch.randperm(len(self.a.data.train), generator=gen)
        loader = self.a.data.train.loader(self.cfg.train.batch_size, order, skip=self.state.step_in_epoch)
        # iter(DataLoader) draws a seed from the global RNG; a resumed run makes one more draw in the
        # epoch it resumes, which would shift every later dropout mask. Keep the draw off it.
        with torch.random.fork_rng(devices=[]):
            return iter(loader)

    def _step(self, batch: dict[str, "torch.Tensor"]) -> float:
        import torch

        with autocast(self.device, self.bf16):
            out = self.model(**batch)
        loss = out.loss.float()
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss is {loss.item()}; lower train.lr (now {self.scheduler.get_last_lr()[0]:.3g})")
        loss.backward()
        if self.cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def _after_step(self, loss: float, stop: threading.Event) -> None:
        s = self.state
        s.step += 1
        s.step_in_epoch += 1
        if s.step % self.cfg.train.log_every == 0 or s.step == self.total_steps:
            self.log.write(step=s.step, epoch=s.epoch, loss=loss, lr=self.scheduler.get_last_lr()[0])
            self.progress.step(s.step, loss)
        else:
            self.progress.step(s.step, None)
        every = self.cfg.train.checkpoint_every
        if stop.is_set() or (every and s.step % every == 0):
            self._save()
            if stop.is_set():
                raise Interrupted(f"stopped by signal at step {s.step}; checkpoint saved, rerun to resume", stop.signum)

    def _validate(self) -> None:
        """Score validation after an epoch; keep a snapshot of the best epoch (ties keep the earlier)."""
        s = self.state
        val = score_split(self.cfg, self.model, self.a.data.validation, self.device, self.bf16).metrics
        score = val[self.cfg.task.headline]
        s.history.append({"epoch": s.epoch, "step": s.step, **val})
        self.log.write(event="validation", epoch=s.epoch, step=s.step, **val)
        self.progress.validation(s.epoch, s.step, val)
        if s.best_score is None or score > s.best_score:
            s.best_score, s.best_epoch = score, s.epoch
            self.best = {n: p.detach().clone() for n, p in self.params.items()}
        s.epoch += 1
        s.step_in_epoch = 0

    def restore_best(self) -> None:
        """Copy the best epoch's values back into the trainable parameters."""
        import torch

        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.best[n])

    # ---------------------------------------------------------------- checkpoints

    def _save(self) -> None:
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
            self.state, self.best = restored
            self.log.write(event="resume", step=self.state.step, epoch=self.state.epoch)
