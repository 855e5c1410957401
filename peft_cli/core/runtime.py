"""Where and how tensors run: seeding (the one place), device, precision."""

from __future__ import annotations

import contextlib
import random
from typing import TYPE_CHECKING, Any

from peft_cli.core.config import TrainConfig
from peft_cli.core.errors import UserError

if TYPE_CHECKING:
    import torch


def seed_everything(seed: int) -> None:
    """The only place peftx seeds global RNGs (Python, NumPy, torch incl. CUDA)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(cfg: TrainConfig) -> "torch.device":
    """The torch device `train.device` names (auto: CUDA when visible, else CPU); UserError if unusable."""
    import torch

    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={cfg.device} but no CUDA device is visible; use train.device=cpu or auto")
    try:
        return torch.device(cfg.device)
    except RuntimeError:
        raise UserError(f"train.device={cfg.device!r} is not a device; use auto, cpu, cuda or cuda:N") from None


def use_bf16(cfg: TrainConfig, device: "torch.device") -> bool:
    """auto = bf16 autocast on CUDA (weights and optimizer stay fp32), fp32 on CPU."""
    if cfg.precision == "auto":
        import torch

        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return cfg.precision == "bf16"


def autocast(device: "torch.device", bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on `device` when `bf16`, else a no-op context."""
    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def device_name(device: "torch.device") -> str:
    """A readable device name for result.json (GPU model, or CPU and thread count)."""
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def to_device(batch: dict[str, "torch.Tensor"], device: "torch.device") -> dict[str, "torch.Tensor"]:
    """Every tensor of a batch on `device` (non-blocking where the source is pinned)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
