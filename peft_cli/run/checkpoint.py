"""Training checkpoints for preemption: everything a run needs to continue bit-for-bit.

Written on SIGUSR1/SIGTERM (SLURM's warning before a time limit or preemption) and, optionally,
every `train.checkpoint_every` steps. Tensors go to safetensors (no pickle), scalars to JSON:

    <run>/checkpoint/state-<step>.safetensors   trainable params, best-epoch snapshot, AdamW moments, RNG
    <run>/checkpoint/state.json                 config_hash, epoch, step, step_in_epoch, history,
                                                scheduler, the method's state (e.g. a mask digest)
                                                and the name of its tensors file

A new checkpoint writes its tensors under a new name, then replaces state.json (atomically), and
only then deletes the previous tensors: a kill at any moment (SIGKILL after SLURM's KillWait, OOM,
node failure) leaves the previous checkpoint or the new one, never none and never a mixed pair.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from peft_cli.core.files import load_tensors, save_tensors, write_json

if TYPE_CHECKING:
    import torch


@dataclass
class Progress:
    """Where training stands; everything here is JSON."""

    epoch: int = 0  # current epoch (0-based)
    step: int = 0  # optimizer steps done in total
    step_in_epoch: int = 0  # batches of `epoch` already done
    best_score: float | None = None
    best_epoch: int | None = None
    best_step: int | None = None  # the step of the best validation pass
    loss_scale: dict[str, Any] = field(default_factory=dict)  # fp16: the GradScaler's state (scale, growth tracker)
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per evaluated epoch


def _dir(run: Path) -> Path:
    return run / "checkpoint"


class Restored(NamedTuple):
    progress: Progress
    best: dict[str, "torch.Tensor"] | None  # the best epoch's trainable values, if one was evaluated


class MethodChanged(Exception):
    """The checkpoint's method state (e.g. a FISH mask's digest) differs from the rebuilt method's."""


def save(
    run: Path,
    config_hash: str,
    progress: Progress,
    params: dict[str, "torch.Tensor"],
    best: dict[str, "torch.Tensor"] | None,
    optimizer: "torch.optim.Optimizer",
    scheduler: "torch.optim.lr_scheduler.LRScheduler",
    method: dict[str, str] | None = None,
) -> None:
    """`method`: the method's metadata (Method.metadata()), checked again on load."""
    import torch

    names = {id(p): n for n, p in params.items()}
    tensors: dict[str, torch.Tensor] = {f"param/{n}": p.detach() for n, p in params.items()}
    if best is not None:
        tensors.update({f"best/{n}": t for n, t in best.items()})
    steps: dict[str, float] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if key == "step":
                    steps[names[id(p)]] = float(value)
                else:
                    tensors[f"opt/{key}/{names[id(p)]}"] = value
    tensors["rng/cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = state
    d = _dir(run)
    d.mkdir(parents=True, exist_ok=True)
    name = f"state-{progress.step}.safetensors"
    save_tensors(d / name, tensors, {})
    write_json(
        d / "state.json",
        {
            "config_hash": config_hash,
            "tensors": name,
            "progress": asdict(progress),
            "adam_steps": steps,
            "scheduler": scheduler.state_dict(),
            "has_best": best is not None,
            "method": method or {},
        },
    )
    for old in d.glob("state*.safetensors"):  # only now is the previous checkpoint superseded
        if old.name != name:
            old.unlink(missing_ok=True)


def load(
    run: Path,
    config_hash: str,
    params: dict[str, "torch.Tensor"],
    optimizer: "torch.optim.Optimizer",
    scheduler: "torch.optim.lr_scheduler.LRScheduler",
    method: dict[str, str] | None = None,
) -> "Restored | None":
    """Restore a checkpoint written for the same config into params/optimizer/scheduler/RNG.
    Returns where training stands and the best-epoch snapshot, or None when there is no usable checkpoint. Raises
    MethodChanged when the config matches but the method state does not: a FISH mask is recomputed
    on resume, and its saved values belong to the mask they were trained with."""
    import torch

    d = _dir(run)
    try:
        meta = json.loads((d / "state.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("config_hash") != config_hash:
        return None
    if meta.get("method", {}) != (method or {}):
        raise MethodChanged(
            f"{d / 'state.json'} was saved with method state {meta.get('method', {})}, the run now has {method or {}}"
        )
    tensors, _ = load_tensors(d / meta.get("tensors", "state.safetensors"))
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"param/{n}"])
    for group in optimizer.param_groups:
        for p in group["params"]:
            n = next(k for k, v in params.items() if v is p)
            state = {
                key.split("/")[1]: t.to(p.device)
                for key, t in tensors.items()
                if key.startswith("opt/") and key.split("/", 2)[2] == n
            }
            if n in meta["adam_steps"]:
                # fused/capturable AdamW keeps its step counter on the parameter's device
                on = p.device if group.get("fused") or group.get("capturable") else "cpu"
                state["step"] = torch.tensor(meta["adam_steps"][n], dtype=torch.float32, device=on)
            if state:
                optimizer.state[p] = state
    scheduler.load_state_dict(meta["scheduler"])
    # load_state_dict restores the schedule's position but not the lr the fresh optimizer holds
    # (that of step 0): without this the first resumed step would use the warmup's first lr.
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
        group["lr"] = lr
    torch.set_rng_state(tensors["rng/cpu"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    best = (
        {k.removeprefix("best/"): t for k, t in tensors.items() if k.startswith("best/")} if meta["has_best"] else None
    )
    return Restored(Progress(**meta["progress"]), best)


def saved_step(run: Path, config_hash: str) -> int | None:
    """The step a rerun of this config would resume at, or None (no usable checkpoint). Reads only
    the JSON, so sweeps can report it for hundreds of runs without touching tensors."""
    try:
        meta = json.loads((_dir(run) / "state.json").read_text())
        return int(meta["progress"]["step"]) if meta.get("config_hash") == config_hash else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear(run: Path) -> None:
    """Delete a run's checkpoint (state.json first, so half a checkpoint is never read)."""
    d = _dir(run)
    (d / "state.json").unlink(missing_ok=True)  # first: tensors without it are never read
    for path in [*d.glob("state*.safetensors"), *d.glob(".state*.tmp")]:  # .tmp: a write cut by a kill
        path.unlink(missing_ok=True)
    if d.is_dir() and not any(d.iterdir()):
        d.rmdir()
