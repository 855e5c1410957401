"""`peftx sweep --dry-run --estimate`: what the pending runs of a grid will cost on this machine.

    per (model, method, batch, length, precision): time a few training steps and an evaluation
    pass here (`measure`) -> tokens/s for training and for evaluation, plus start-up seconds
    per run: padded training tokens (epochs x train examples x padded tokens per example, from the
    task's real length distribution, under the run's batch size and length grouping) and padded
    evaluation tokens (every validation pass, the final validation and test passes) -> seconds
    -> hours per task and in total (and wall hours at the launcher's concurrency)

The cost model is linear in padded tokens (attention's quadratic term is small at <= 256 tokens).
`estimate_seconds` is pure arithmetic over injected timings (tests/test_estimate.py).
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from peft_cli.core.config import RunConfig, run_config
from peft_cli.data.batching import chunks, epoch_batches, longest_first, padded_tokens
from peft_cli.run.identity import method_tag

if TYPE_CHECKING:
    import torch

    from peft_cli.sweep.grid import Run

SAMPLE = 2000  # examples per split whose lengths stand for the split
STEPS, WARMUP = 4, 1  # timed training steps per (model, method), after untimed ones
EVAL_ROWS = 256  # validation examples timed


@dataclass(frozen=True)
class Timing:
    """Measured here, per (model, method, batch, length, precision)."""

    train_tokens_per_s: float  # padded tokens through forward + backward + optimizer step
    eval_tokens_per_s: float  # padded tokens through inference
    startup_s: float  # per run: imports aside, model load, data, method set-up


@dataclass(frozen=True)
class Workload:
    """What one run will process, in padded tokens."""

    train_tokens: float
    eval_tokens: float


def timing_key(cfg: RunConfig) -> tuple:
    """Runs that share a key train at the same speed per token."""
    t = cfg.train
    return (cfg.model.name, method_tag(cfg), t.batch_size, t.grad_accum, t.max_length, t.precision, t.device)


def padded_per_example(lengths: "torch.Tensor", batch_size: int, group_by_length: bool) -> float:
    """Mean padded tokens per training example: each batch is padded to its longest row."""
    batches = epoch_batches(lengths, batch_size, seed=0, epoch=0, group_by_length=group_by_length)
    return padded_tokens(lengths, batches) / max(1, len(lengths))


def workload(
    cfg: RunConfig, n_train: int, n_val: int, n_tests: list[int], train_pad: float, eval_pad: float
) -> Workload:
    """Padded tokens of one run: `train_pad`, `eval_pad` are padded tokens per example (training
    batches; evaluation batches, sorted by length so ~ the mean length)."""
    t = cfg.train
    per_epoch = math.ceil(n_train / t.batch_size)
    steps = t.max_steps or t.epochs * per_epoch
    full, rest = divmod(steps, per_epoch)
    examples = full * n_train + min(rest * t.batch_size, n_train)
    passes = math.ceil(steps / t.eval_every) if t.eval_every else math.ceil(steps / per_epoch)
    return Workload(examples * train_pad, ((passes + 1) * n_val + sum(n_tests)) * eval_pad)  # +1: the final pass


def estimate_seconds(w: Workload, timing: Timing) -> float:
    return timing.startup_s + w.train_tokens / timing.train_tokens_per_s + w.eval_tokens / timing.eval_tokens_per_s


# --------------------------------------------------------------------------------------------
# measuring here


def measure(cfg: RunConfig) -> Timing:
    """Time WARMUP + STEPS training steps and one evaluation pass of EVAL_ROWS examples of `cfg`'s
    model and method on its own task's data, in a throwaway results folder."""
    import torch

    from peft_cli.core.runtime import resolve_device, seed_everything, synchronize
    from peft_cli.run.assemble import assemble
    from peft_cli.run.log import RunLog
    from peft_cli.run.scoring import predict
    from peft_cli.run.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="peftx-estimate-") as tmp:
        d = cfg.to_dict()
        d["data"]["max_train_examples"] = cfg.train.batch_size * (STEPS + WARMUP)
        d["results"]["dir"] = tmp
        d["mask"]["fisher_samples"] = min(cfg.mask.fisher_samples, cfg.train.batch_size)
        c = run_config(d)
        device = resolve_device(c.train)
        seed_everything(c.seed)
        t0 = time.perf_counter()
        a = assemble(c, device)
        t = Trainer(c, a, device, Path(tmp), RunLog(Path(tmp) / "log.jsonl"))
        startup = time.perf_counter() - t0
        batches = list(t._batches())
        t.model.train()
        for b in batches[:WARMUP]:
            t._step(b)
        synchronize(device)
        t0, tokens = time.perf_counter(), 0
        for b in batches[WARMUP:]:
            t._step(b)
            tokens += sum(m["input_ids"].numel() for m in b)
        synchronize(device)
        train_rate = tokens / (time.perf_counter() - t0)
        val = a.data.validation.subset(EVAL_ROWS)
        t0 = time.perf_counter()
        predict(t.model, val, c.train.eval_batch, device, t.amp)
        # predict pads longest-first batches; these are their tokens
        eval_tokens = padded_tokens(val.lengths, chunks(longest_first(val.lengths).tolist(), c.train.eval_batch))
        eval_rate = eval_tokens / (time.perf_counter() - t0)
        t.log.close()
        del t, a
        torch.cuda.empty_cache() if device.type == "cuda" else None
    return Timing(train_rate, eval_rate, startup)


@dataclass
class TaskShape:
    """A task's sizes and padded tokens per example, for one tokenizer and length."""

    n_train: int
    n_val: int
    n_tests: list[int]
    lengths_train: "torch.Tensor"
    eval_pad: float


def task_shape(cfg: RunConfig) -> TaskShape:
    """Sizes under the run's protocol; lengths from up to SAMPLE tokenized examples per split."""
    import torch

    from peft_cli.data.glue import load_splits
    from peft_cli.models import load_tokenizer

    splits = load_splits(cfg.task, cfg.data)
    tok = load_tokenizer(cfg.model)
    rng = random.Random(0)

    def lengths(examples: list) -> torch.Tensor:
        sample = rng.sample(examples, min(SAMPLE, len(examples)))
        if not sample:
            return torch.zeros(0, dtype=torch.long)
        b = [e["text_b"] for e in sample] if sample[0]["text_b"] is not None else None
        ids = tok([e["text_a"] for e in sample], b, truncation=True, max_length=cfg.train.max_length)["input_ids"]
        return torch.tensor([len(x) for x in ids], dtype=torch.long)

    evals = torch.cat([lengths(splits.validation)] + [lengths(t) for t in splits.tests])
    return TaskShape(
        len(splits.train),
        len(splits.validation),
        [len(t) for t in splits.tests],
        lengths(splits.train),
        float(evals.float().mean()) if len(evals) else 0.0,
    )


# --------------------------------------------------------------------------------------------
# the table


@dataclass
class Estimate:
    per_run: list[tuple["Run", float]]  # (run, seconds)
    timings: dict[tuple, Timing]

    def by_task(self) -> dict[str, tuple[int, float]]:
        """task -> (runs, seconds), in grid order."""
        out: dict[str, tuple[int, float]] = {}
        for run, sec in self.per_run:
            n, s = out.get(run.cfg.task.name, (0, 0.0))
            out[run.cfg.task.name] = (n + 1, s + sec)
        return out

    @property
    def total_s(self) -> float:
        return sum(s for _, s in self.per_run)


def estimate(runs: list["Run"], measure_fn: Callable[[RunConfig], Timing] = measure) -> Estimate:
    """Seconds for each run; one measurement per timing key, one length sample per task shape."""
    timings: dict[tuple, Timing] = {}
    shapes: dict[tuple, TaskShape] = {}
    per_run = []
    for run in runs:
        cfg = run.cfg
        key = timing_key(cfg)
        if key not in timings:
            timings[key] = measure_fn(cfg)
        skey = (cfg.task.name, cfg.model.name, cfg.train.max_length, repr(cfg.data))
        if skey not in shapes:
            shapes[skey] = task_shape(cfg)
        sh = shapes[skey]
        pad = padded_per_example(sh.lengths_train, cfg.train.batch_size, cfg.train.group_by_length)
        w = workload(cfg, sh.n_train, sh.n_val, sh.n_tests, pad, sh.eval_pad)
        per_run.append((run, estimate_seconds(w, timings[key])))
    return Estimate(per_run, timings)


def render(e: Estimate, device: str, workers: int) -> list[str]:
    """The lines `--estimate` prints."""
    lines = [f"estimate on {device} (timed here: a few steps per model x method; linear in padded tokens)"]
    for key, t in e.timings.items():
        lines.append(
            f"  {key[0]} {key[1]} batch {key[2]}: train {t.train_tokens_per_s:,.0f} tokens/s, "
            f"eval {t.eval_tokens_per_s:,.0f} tokens/s, start-up {t.startup_s:.1f} s/run"
        )
    for task, (n, sec) in e.by_task().items():
        lines.append(f"  {task:<6} {n:>4} runs  {sec / 3600:8.2f} h")
    total = e.total_s / 3600
    lines.append(f"  total  {len(e.per_run):>4} runs  {total:8.2f} h of this device")
    if workers > 1 and device.startswith("cpu"):
        # CPU workers split the cores the timing above used: together they go no faster than it did
        # (measured: cpu_minilm_grid's search stage, 2 workers on 2 cores, took 1.4x this figure)
        lines.append(f"  with {workers} workers at once: about {total:.2f} h wall (they split this machine's cores)")
    elif workers > 1:
        lines.append(f"  with {workers} workers at once: about {total / workers:.2f} h wall (if they share nothing)")
    return lines
