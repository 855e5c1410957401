"""AdamW with BERT's weight-decay groups and a linear warmup/decay schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple

from peft_cli.core.config import RunConfig, TrainConfig
from peft_cli.core.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn


class Optimization(NamedTuple):
    optimizer: "torch.optim.Optimizer"
    scheduler: "torch.optim.lr_scheduler.LambdaLR"


def learning_rate(cfg: RunConfig) -> float:
    """`train.lr`, else the method's own default (`lr` in conf/method/NAME.yaml)."""
    lr = cfg.train.lr if cfg.train.lr is not None else cfg.method.get("lr")
    if lr is None:
        raise UserError(f"no learning rate: set train.lr or `lr` in conf/method/{cfg.method['name']}.yaml")
    return float(lr)


def make_optimizer(
    train: TrainConfig, lr: float, params: dict[str, "nn.Parameter"], decays: Callable[[str], bool], total_steps: int
) -> Optimization:
    """AdamW over `params` (name -> parameter, in model order): those for which `decays(name)` is
    true take `train.weight_decay`, the others none. The schedule warms up linearly over
    `warmup_ratio * total_steps` steps, then decays linearly to 0 at `total_steps`.
    The fused AdamW (one kernel for all tensors; CPU and CUDA) where the parameters allow it,
    else torch's default (foreach on CUDA)."""
    import torch

    groups = [
        {"params": [p for n, p in params.items() if decays(n)], "weight_decay": train.weight_decay},
        {"params": [p for n, p in params.items() if not decays(n)], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, lr=lr, fused=True) if _fusable(params) else torch.optim.AdamW(groups, lr=lr)
    warmup = int(train.warmup_ratio * total_steps)

    def factor(step: int) -> float:  # linear warmup to 1, then linear decay to 0
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return Optimization(opt, torch.optim.lr_scheduler.LambdaLR(opt, factor))


def _fusable(params: dict[str, "nn.Parameter"]) -> bool:
    """Whether torch's fused AdamW takes these parameters: floating point, one device type it supports."""
    devices = {p.device.type for p in params.values()}
    return len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params.values())
