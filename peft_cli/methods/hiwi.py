"""HiWi (Liao, Meng & Monz, 2023): an adapter on pre-trained *parameters*, not hidden states.

For each target tensor p the forward pass uses g(p) = p + f(p · W_down + b_down) · W_up + b_up
(methods/bottleneck.py) in place of p; p itself stays frozen and gradients reach the adapter
through it (torch.nn.utils.parametrize). After training, g(p) is computed once and written into
the model, and the adapter is dropped: the deployed model is the plain base model with new
values in the target tensors, so inference costs exactly what the base model costs.

Rows. g works on vectors of length d; a target is read as a stack of such rows:
  * a bias (d,) is one row;
  * a Linear weight, stored by PyTorch as (out, in), is `out` rows of length `in`: row j is the
    vector of weights output unit j applies to the input, so the adapter works along the input
    dimension (W_down is (in, r)). The rows of one tensor share the adapter.

Defaults (the paper's headline setting): targets = the first FFN layer's bias in every block
(`intermediate.dense.bias`: 12 x 3072 = 36,864 values for roberta-base, 0.03%), one adapter per
target, ReLU, and r chosen so that the adapters hold `budget` = 0.5% of the backbone (PaFi's
budget), unless `r` is given. The artifact holds only the merged target tensors, so what a task
stores is independent of r.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peft_cli.core.errors import UserError
from peft_cli.methods.base import Method, load_named, slug
from peft_cli.methods.resident import Shared, Switch, WriteTensors
from peft_cli.models import backbone_parameters, layout

if TYPE_CHECKING:
    import torch
    from torch import nn

    from peft_cli.core.config import MaskConfig

DEFAULT_TARGETS = [r"\.intermediate\.dense\.bias$"]


@dataclass
class HiWiConfig:
    targets: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGETS)
    )  # regexes (re.search) over backbone parameter names
    r: int | None = None  # bottleneck width; null = the largest width within `budget`, at least 1
    budget: float = 0.005  # adapter parameters / backbone parameters, used when r is null
    activation: str = "relu"  # relu | gelu | silu | tanh | identity
    shared: bool = False  # true: one adapter for all targets of the same row length (across layers)

    def __post_init__(self) -> None:
        if not self.targets:
            raise UserError(
                "config key 'method.targets' is empty; give at least one regex, e.g. '\\.intermediate\\.dense\\.bias$'"
            )
        for i, pattern in enumerate(self.targets):
            try:
                re.compile(pattern)
            except re.error as e:
                raise UserError(f"config key 'method.targets[{i}]' is not a regex ({e}): {pattern!r}") from None
        if self.r is not None and self.r < 1:
            raise UserError(
                f"config key 'method.r' is {self.r}; it must be >= 1 (or null to derive it from method.budget)"
            )
        if not 0.0 < self.budget < 1.0:
            raise UserError(f"config key 'method.budget' is {self.budget}; it must be in (0, 1), e.g. 0.005")
        from peft_cli.methods.bottleneck import activation

        activation(self.activation, "method.activation")


def find_targets(model: "nn.Module", patterns: list[str]) -> dict[str, tuple["nn.Module", str]]:
    """Backbone parameter name -> (owning module, attribute), for names matching any pattern."""
    backbone = backbone_parameters(model)
    out = {}
    for mname, module in model.named_modules():
        for attr in module._parameters:  # direct parameters only: each is owned once
            name = f"{mname}.{attr}" if mname else attr
            if name in backbone and any(re.search(p, name) for p in patterns):
                out[name] = (module, attr)
    if not out:
        default = (
            " (HiWi's default: the FFN's first-layer bias of a BERT/RoBERTa block)"
            if patterns == DEFAULT_TARGETS
            else ""
        )
        raise UserError(
            f"config key 'method.targets' {patterns}{default} matches no parameter of this "
            f"{layout(model, 'bias', 10)}; set method.targets to regexes over these names"
        )
    return out


def row_lengths(targets: dict[str, tuple["nn.Module", str]], shared: bool) -> list[int]:
    """Row length d of every adapter to build: one per target, or one per distinct d if shared."""
    ds = [getattr(m, a).shape[-1] for m, a in targets.values()]
    return sorted(set(ds)) if shared else ds


def width(cfg: HiWiConfig, model: "nn.Module", targets: dict[str, tuple["nn.Module", str]]) -> int:
    """cfg.r, or the r whose adapters come closest to budget x backbone (adapters of width r hold
    sum_d (2d + 1) r + d parameters)."""
    if cfg.r is not None:
        return cfg.r
    ds = row_lengths(targets, cfg.shared)
    backbone = sum(p.numel() for p in backbone_parameters(model).values())
    return max(1, round((cfg.budget * backbone - sum(ds)) / sum(2 * d + 1 for d in ds)))


class HiWi(Method):
    name = "hiwi"
    config_cls = HiWiConfig

    @classmethod
    def tag(cls, cfg: HiWiConfig, mask: "MaskConfig") -> str:
        # r may be derived from the model, so an unset r is named by its budget: hiwi-b0.005
        tag = "hiwi"
        if cfg.targets != DEFAULT_TARGETS:
            tag += f"-t{slug(cfg.targets)}"
        tag += f"-r{cfg.r}" if cfg.r is not None else f"-b{cfg.budget:g}"
        if cfg.shared:
            tag += "-shared"
        if cfg.activation != "relu":
            tag += f"-{cfg.activation}"
        return tag

    def prepare(self, model: "nn.Module") -> "nn.Module":
        from torch.nn.utils import parametrize

        from peft_cli.methods.bottleneck import Bottleneck, activation

        self.targets = find_targets(model, self.cfg.targets)
        self.r = width(self.cfg, model, self.targets)
        adapters: dict[int, Bottleneck] = {}  # shared: row length -> its adapter
        for module, attr in self.targets.values():
            p = getattr(module, attr)
            d = p.shape[-1]
            if self.cfg.shared and d in adapters:
                adapter = adapters[d]
            else:
                adapter = Bottleneck(d, self.r, activation(self.cfg.activation, "method.activation")).to(
                    p.device, p.dtype
                )
                adapters[d] = adapter
            # `module.<attr>` now evaluates adapter(original); `original` is the frozen p itself
            parametrize.register_parametrization(module, attr, adapter)
        return model

    def artifact(self, model: "nn.Module") -> dict[str, "torch.Tensor"]:
        import torch

        with torch.no_grad():  # g(p) of every target, under the original name
            return {n: getattr(m, a).detach().cpu().contiguous() for n, (m, a) in self.targets.items()}

    def metadata(self) -> dict[str, str]:
        return {"hiwi_r": str(self.r)}

    def load(self, model: "nn.Module", tensors: dict[str, "torch.Tensor"]) -> "nn.Module":
        self._check_targets(model, tensors)
        load_named(model, tensors)  # g(p) written over p: a plain model
        return model

    def stage(self, shared: Shared, tensors: dict[str, "torch.Tensor"]) -> Switch:
        self._check_targets(shared.model, tensors)
        return WriteTensors(shared, tensors, "HiWi")  # the merged g(p): switching writes them, nothing is computed

    def _check_targets(self, model: "nn.Module", tensors: dict[str, "torch.Tensor"]) -> None:
        expected = set(find_targets(model, self.cfg.targets))
        if set(tensors) != expected:
            odd = sorted(set(tensors) ^ expected)[0]
            raise UserError(f"artifact and method.targets disagree on '{odd}': was it trained with other targets?")

    def finalize(self, model: "nn.Module") -> None:
        # Fold g(p) into p, in fp32, before the test split is scored: the run then scores the very
        # tensors it stores. (Left parametrized, a bf16-autocast run would score g(p) computed in
        # bf16 while storing the fp32 one, and `peftx eval` would disagree with the run.)
        self.merge(model)

    def merge(self, model: "nn.Module") -> "nn.Module":
        """Fold g(p) into p in a model that still has its adapters (a model from `load` has none).
        Computed in fp32 whatever autocast is active."""
        import torch
        from torch.nn.utils import parametrize

        device = next(model.parameters()).device.type
        with torch.no_grad(), torch.autocast(device, enabled=False):
            for module in list(model.modules()):
                if parametrize.is_parametrized(module):
                    for attr in list(module.parametrizations):
                        parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
        return model
