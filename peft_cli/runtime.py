"""Where and how tensors run: seeding (the one place), device, precision, batched prediction."""

from __future__ import annotations

import contextlib
import random
from typing import TYPE_CHECKING, Any, Iterator

from peft_cli.config import TrainConfig
from peft_cli.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from peft_cli.data import Encoded


def seed_everything(seed: int) -> None:
    """The only place peftx seeds global RNGs (Python, NumPy, torch incl. CUDA)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(cfg: TrainConfig) -> "torch.device":
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
    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def device_name(device: "torch.device") -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def to_device(batch: dict[str, "torch.Tensor"], device: "torch.device") -> dict[str, "torch.Tensor"]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def iterate(encoded: "Encoded", batch_size: int, device: "torch.device") -> Iterator[dict[str, "torch.Tensor"]]:
    for batch in encoded.loader(batch_size):
        yield to_device(batch, device)


def predict(model: "nn.Module", encoded: "Encoded", batch_size: int, device: "torch.device",
            bf16: bool) -> list[float]:
    """Predictions in file order: class ids, or the regression value. Logits are taken in fp32."""
    import torch

    was_training = model.training
    model.eval()
    preds: list[float] = []
    with torch.inference_mode(), autocast(device, bf16):
        for batch in iterate(encoded, batch_size, device):
            batch.pop("labels")
            logits = model(**batch).logits.float()  # (B, num_labels)
            out = logits[:, 0] if encoded.regression else logits.argmax(-1)
            preds.extend(out.cpu().tolist())
    model.train(was_training)
    return preds
