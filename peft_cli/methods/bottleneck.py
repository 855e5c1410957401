"""The bottleneck adapter block shared by HiWi and the Houlsby/Pfeiffer adapters:

    g(x) = x + f(x · W_down + b_down) · W_up + b_up        x: (..., d)   W_down: (d, r)   W_up: (r, d)

W_up and b_up start at zero, so g is exactly the identity at step 0 and a model with adapters
starts as the pre-trained model. (W_down keeps nn.Linear's default init: with W_up = 0 its
gradient is zero on the first step, then both train.)

Houlsby/Pfeiffer apply g to hidden states; HiWi applies it to a pre-trained parameter tensor
(each row of it is one x).
"""

from __future__ import annotations

import torch
from torch import nn

from peft_cli.core.errors import UserError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,  # AdapterHub's name for SiLU
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def activation(name: str, key: str) -> nn.Module:
    """`key` is the config key that named it (for the error message)."""
    if name not in ACTIVATIONS:
        raise UserError(f"config key '{key}' is {name!r}; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class Bottleneck(nn.Module):
    def __init__(self, d: int, r: int, act: nn.Module) -> None:
        super().__init__()
        self.down = nn.Linear(d, r)
        self.act = act
        self.up = nn.Linear(r, d)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))
