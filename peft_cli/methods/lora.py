"""LoRA (Hu et al., 2022) through the `peft` library: W x + (alpha / r) B A x on the target Linears.

peft's LoraModel injects the low-rank layers into the HF model in place (no PeftModel wrapper),
so the prepared model is still called like the HF model and its task head keeps the very
Parameter objects the harness holds. Modules outside the backbone are excluded from targeting:
the head is the harness's. The artifact holds the A/B matrices only; `merge` folds B A into W
and removes the LoRA layers, leaving a model whose state_dict has the base model's keys.

Defaults follow the LoRA paper's RoBERTa-base GLUE recipe (Table 9): query and value, r = 8,
alpha = 8, lr 4e-4 to 5e-4; it lists no LoRA dropout, so 0. The default `[query, value]` means the
attention's query and value projections whatever a model calls them (DistilBERT: q_lin, v_lin;
DeBERTa: query_proj, value_proj); targets given explicitly are used as given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peft_cli.core.errors import UserError
from peft_cli.methods.base import Method, load_backbone, slug, stored_backbone
from peft_cli.methods.resident import Shared, Switch, copy_params

if TYPE_CHECKING:
    import torch
    from torch import nn

    from peft_cli.core.config import MaskConfig

ADAPTER = "default"  # peft's adapter name: parameters are `<module>.lora_A.default.weight`

# What architectures call the attention's query and value projections (module-name suffixes).
QUERY_VALUE = (("query", "value"), ("q_lin", "v_lin"), ("query_proj", "value_proj"), ("q_proj", "v_proj"))


@dataclass
class LoRAConfig:
    r: int = 8  # rank of the update B A
    alpha: float = 8.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the LoRA branch's input
    target_modules: list[str] = field(
        default_factory=lambda: ["query", "value"]
    )  # module-name suffixes; the default = the query/value projections of any architecture

    def __post_init__(self) -> None:
        if self.r < 1:
            raise UserError(f"config key 'method.r' is {self.r}; it must be >= 1, e.g. 8")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"config key 'method.dropout' is {self.dropout}; it must be in [0, 1)")
        if not self.target_modules:
            raise UserError("config key 'method.target_modules' is empty; e.g. [query, value]")


class LoRA(Method):
    name = "lora"
    config_cls = LoRAConfig

    @classmethod
    def tag(cls, cfg: LoRAConfig, mask: "MaskConfig") -> str:
        default = LoRAConfig()
        tag = f"lora-r{cfg.r}"
        if cfg.alpha != default.alpha:
            tag += f"-a{cfg.alpha:g}"
        if cfg.dropout != default.dropout:
            tag += f"-do{cfg.dropout:g}"
        if cfg.target_modules != default.target_modules:
            tag += "-" + slug(cfg.target_modules)
        return tag

    def _targets(self, model: "nn.Module") -> list[str]:
        """The module-name suffixes to adapt: the configured ones, with the default query/value
        pair read as this architecture's names for it. UserError naming the model's Linear layers
        when none match."""
        linears = _backbone_linears(model)
        wanted = list(self.cfg.target_modules)
        if wanted == LoRAConfig().target_modules:
            for pair in QUERY_VALUE:
                if set(pair) <= linears:
                    return list(pair)
        if any(t in linears for t in wanted):
            return wanted
        raise UserError(
            f"config key 'method.target_modules' {wanted} names no Linear layer of this "
            f"{model.config.model_type} model; its Linear layers: {', '.join(sorted(linears))} "
            "(set e.g. method.target_modules='[NAME,NAME]')"
        )

    def _inject(self, model: "nn.Module") -> "nn.Module":
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel

        self.targets = self._targets(model)
        config = LoraConfig(
            r=self.cfg.r,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            target_modules=self.targets,
            bias="none",
            exclude_modules=rf"(?!{re.escape(model.base_model_prefix)}\.).*",
        )  # never the head
        try:
            # In place; also sets requires_grad=False on everything but A/B (the harness re-enables the head).
            self.tuner = LoraModel(model, config, ADAPTER)
        except ValueError as e:  # "Target modules ... not found in the base model"
            raise UserError(
                f"config key 'method.target_modules' {self.cfg.target_modules}: {str(e).splitlines()[0]}"
            ) from None
        return model

    def prepare(self, model: "nn.Module") -> "nn.Module":
        return self._inject(model)

    def metadata(self) -> dict[str, str]:
        return {"lora_targets": ",".join(self.targets)}  # what the default [query, value] meant here

    def artifact(self, model: "nn.Module") -> dict[str, "torch.Tensor"]:
        return stored_backbone(model, _is_lora)

    def load(self, model: "nn.Module", tensors: dict[str, "torch.Tensor"]) -> "nn.Module":
        self._inject(model)
        load_backbone(model, tensors, _is_lora, "LoRA")
        return model

    def stage(self, shared: Shared, tensors: dict[str, "torch.Tensor"]) -> Switch:
        return Merge(shared, tensors, self.cfg.alpha / self.cfg.r)  # peft's scaling (no rsLoRA)

    def merge(self, model: "nn.Module") -> "nn.Module":
        if getattr(self, "tuner", None) is None or self.tuner.model is not model:
            raise RuntimeError("merge() needs the model this LoRA instance prepared or loaded")
        import torch

        with torch.no_grad():
            merged = self.tuner.merge_and_unload()  # W <- W + (alpha/r) B A; LoRA layers -> their base Linear
        self.tuner = None
        return merged


def _backbone_linears(model: "nn.Module") -> set[str]:
    """The last name component of every Linear in the backbone (`query`, `q_lin`, `dense`, ...)."""
    from torch import nn

    prefix = model.base_model_prefix + "."
    return {n.rpartition(".")[2] for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, nn.Linear)}


def _is_lora(name: str) -> bool:
    return f".lora_A.{ADAPTER}." in name or f".lora_B.{ADAPTER}." in name


class Merge(Switch):
    """LoRA on a resident model: merge W <- W + (B A) * scaling on apply, as peft's merge computes it;
    restore copies W's pre-trained values back (unmerging by subtraction would not give W's bits back).
    No footprint: the merge adds to what is there, so every switch restores first."""

    def __init__(self, shared: Shared, tensors: dict[str, "torch.Tensor"], scaling: float) -> None:
        pairs: dict[str, dict[str, "torch.Tensor"]] = {}
        for name, t in tensors.items():
            if not _is_lora(name):
                raise UserError(f"artifact tensor '{name}' is not a LoRA matrix; was it made by another method?")
            module, _, rest = name.partition(".lora_")  # rest: "A.default.weight"
            pairs.setdefault(module, {})[rest[0]] = t
        self.weights, self.products, self.originals = [], [], []
        for module, ab in pairs.items():
            if set(ab) != {"A", "B"}:
                raise UserError(f"artifact holds only lora_{''.join(ab)} of '{module}'; the file is damaged")
            w = shared.param(module + ".weight", "LoRA target")
            a, b = ab["A"], ab["B"]  # A (r, in), B (out, r)
            if a.shape[1] != w.shape[1] or b.shape[0] != w.shape[0] or a.shape[0] != b.shape[1]:
                raise UserError(f"LoRA matrices of '{module}' do not fit its weight {tuple(w.shape)}")
            self.weights.append(w)
            self.products.append((b.to(w.device, w.dtype), a.to(w.device, w.dtype)))
            self.originals.append(shared.original(module + ".weight"))
        self.scaling = scaling

    def apply(self) -> None:
        import torch

        with torch.no_grad():
            for w, (b, a) in zip(self.weights, self.products, strict=True):
                w.data += (b @ a) * self.scaling  # (out, r) @ (r, in): peft's get_delta_weight, then its merge

    def restore(self) -> None:
        copy_params(self.weights, self.originals)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for b, a in self.products)
