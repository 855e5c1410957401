"""Bottleneck adapters on hidden states: Houlsby et al. (2019) and Pfeiffer et al. (2021).

Each adapter is g(h) = h + f(h W_down) W_up (methods/bottleneck.py, width d // reduction_factor,
W_up zero at init so step 0 is the base model), applied to a sub-layer's output projection
before the sub-layer's residual add and LayerNorm:

    Houlsby:  after the attention output projection and after the FFN output projection
              (`attention.output.dense`, `output.dense` of every block)
    Pfeiffer: after the FFN output projection only (AdapterHub's Pfeiffer variant feeds the
              adapter the post-LayerNorm state and adds a second residual; this keeps Houlsby's
              placement, one site per block, which is what the latency comparison needs)

The adapter hangs off the projection it follows (`<...>.output.dense.adapter.*`), applied by a
forward hook, so the base model's parameter names are untouched and BERT and RoBERTa naming both
work. Only the adapters (and the harness's head) train; the base LayerNorms stay frozen, unlike
Houlsby et al., who also tune them: the artifact is then adapters only, and every method here
compares against the same frozen backbone.

The nonlinearity sits on the forward path of every token, so the adapters cannot be folded into
the base weights: `merge` raises NotMergeable and `peftx export` exits 2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from peft_cli.core.errors import NotMergeable, UserError
from peft_cli.methods.base import Method, load_backbone, stored_backbone

if TYPE_CHECKING:
    import torch
    from torch import nn

    from peft_cli.core.config import MaskConfig

ATTENTION_OUT = r"\.layer\.\d+\.attention\.output\.dense$"  # BertSelfOutput / RobertaSelfOutput .dense
FFN_OUT = r"\.layer\.\d+\.output\.dense$"  # BertOutput / RobertaOutput .dense
ATTR = "adapter"  # child name of the adapted projection


@dataclass
class AdapterConfig:
    reduction_factor: int = 16  # bottleneck width = hidden size // reduction_factor
    activation: str = "relu"  # relu | gelu | silu (= swish) | tanh | identity

    def __post_init__(self) -> None:
        if self.reduction_factor < 1:
            raise UserError(
                f"config key 'method.reduction_factor' is {self.reduction_factor}; it must be >= 1, e.g. 16"
            )
        from peft_cli.methods.bottleneck import activation

        activation(self.activation, "method.activation")


def _apply_adapter(module: "nn.Module", args: tuple, output: "torch.Tensor") -> "torch.Tensor":
    # A module-level function (no closure): a deep-copied model calls its own copy of the adapter.
    return getattr(module, ATTR)(output)


class BottleneckAdapters(Method):
    sites: ClassVar[tuple[str, ...]]  # regexes over module names: the projections an adapter follows
    default_activation: ClassVar[str]
    config_cls = AdapterConfig
    mergeable = False

    @classmethod
    def tag(cls, cfg: AdapterConfig, mask: "MaskConfig") -> str:
        tag = f"{cls.name}-rf{cfg.reduction_factor}"
        return tag if cfg.activation == cls.default_activation else f"{tag}-{cfg.activation}"

    def _insert(self, model: "nn.Module") -> "nn.Module":
        from torch import nn

        from peft_cli.methods.bottleneck import Bottleneck, activation

        found = [
            (n, m)
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(re.search(s, n) for s in self.sites)
        ]
        if not found:
            from peft_cli.models import layout

            # the site regexes, readable: '\\.layer\\.\\d+\\.output\\.dense$' -> 'layer.N.output.dense'
            wanted = " and ".join(
                f"'{s.replace(chr(92) + 'd+', 'N').replace(chr(92), '').strip('.$')}'" for s in self.sites
            )
            raise UserError(
                f"method '{self.name}' needs BERT/RoBERTa sub-layer output projections ({wanted}); this "
                f"{layout(model, 'weight', 8)} has none; with this model use full, bitfit, lora or pafi"
            )
        for _, dense in found:
            d = dense.out_features
            adapter = Bottleneck(
                d, max(1, d // self.cfg.reduction_factor), activation(self.cfg.activation, "method.activation")
            )
            dense.add_module(ATTR, adapter.to(dense.weight.device, dense.weight.dtype))
            dense.register_forward_hook(_apply_adapter)
        return model

    def prepare(self, model: "nn.Module") -> "nn.Module":
        return self._insert(model)  # new parameters require grad; the base LayerNorms stay frozen

    def artifact(self, model: "nn.Module") -> dict[str, "torch.Tensor"]:
        return stored_backbone(model, _is_adapter)

    def load(self, model: "nn.Module", tensors: dict[str, "torch.Tensor"]) -> "nn.Module":
        self._insert(model)
        load_backbone(model, tensors, _is_adapter, "adapter")
        return model

    def merge(self, model: "nn.Module") -> "nn.Module":
        raise NotMergeable(
            f"method '{self.name}' adds bottleneck layers with a nonlinearity on the hidden states; "
            "they cannot be folded into the base weights (use `peftx eval`, or a mergeable method: "
            "full, bitfit, pafi, hiwi, lora)"
        )


def _is_adapter(name: str) -> bool:
    return f".{ATTR}." in name


class Houlsby(BottleneckAdapters):
    name = "adapter_houlsby"
    sites = (ATTENTION_OUT, FFN_OUT)
    default_activation = "swish"  # AdapterHub's DoubleSeqBnConfig (Houlsby)


class Pfeiffer(BottleneckAdapters):
    name = "adapter_pfeiffer"
    sites = (FFN_OUT,)
    default_activation = "relu"  # AdapterHub's SeqBnConfig (Pfeiffer)
