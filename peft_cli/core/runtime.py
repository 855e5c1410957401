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


def amp_dtype(cfg: TrainConfig, device: "torch.device") -> "torch.dtype | None":
    """The autocast dtype of `train.precision` on `device`, or None (fp32). auto = bf16 on CUDA
    when supported, fp32 elsewhere. Weights and optimizer states stay fp32 in every case."""
    import torch

    if cfg.precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)


def autocast(device: "torch.device", amp: "torch.dtype | None") -> contextlib.AbstractContextManager[Any]:
    """Autocast to `amp` on `device`, or a no-op context when `amp` is None."""
    import torch

    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


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


def synchronize(device: "torch.device") -> None:
    """Wait for the device's queued work (for timing, at boundaries: never on the step path)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
