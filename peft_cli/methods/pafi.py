"""PaFi (Liao, Meng & Monz, 2023): train only the k smallest-magnitude pre-trained entries.

The mask is task-agnostic (shared_mask.py): built once per model from |θ| and shared by every
task, so a task stores only its k values, in mask order, plus its head: no indices. The
ablations `largest` and `random` use the same machinery. `fisher` is the FISH baseline (Sung
et al., 2021): a task-specific mask from squared gradients on N training examples; it must
store its indices with the values, and `stored_bytes` shows that cost.

Training uses peft_cli/sparse.py: value parameters of shape (k_i,) and a backward that never
forms a dense weight gradient, so optimizer state and gradient memory scale with k.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from peft_cli.errors import UserError
from peft_cli.methods.base import Method
from peft_cli.models import backbone_parameters
from peft_cli.shared_mask import digest, ensure_mask, in_model_order, spec_of, variant

if TYPE_CHECKING:
    import torch
    from torch import nn

    from peft_cli.config import MaskConfig

DTYPES = ("fp32", "fp16", "bf16")
VALUES = "pafi.values"  # (k,) in mask order
INDICES = "pafi.indices."  # FISH only: + parameter name -> int32 sorted flat indices


@dataclass
class PaFiConfig:
    dtype: str = "fp32"  # storage dtype of the k values: fp32 | fp16 | bf16

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UserError(f"config key 'method.dtype' is {self.dtype!r}; choose one of: {', '.join(DTYPES)}")


def _torch_dtype(name: str) -> "torch.dtype":
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


class PaFi(Method):
    name = "pafi"
    config_cls = PaFiConfig
    uses_mask = True

    @classmethod
    def tag(cls, cfg: PaFiConfig, mask: "MaskConfig") -> str:
        tag = f"pafi-{mask.strategy}-d{spec_of(mask).density:g}"
        if mask.strategy == "random":
            tag += f"-s{mask.seed}"
        if mask.scope == "per_tensor":
            tag += "-pt"
        if mask.exclude:  # readable name for the common ablation, e.g. -xembeddings
            tag += "-x" + "-".join(re.sub(r"[^A-Za-z0-9]+", "", p) for p in mask.exclude)
        if list(mask.include) != [".*"]:
            tag += f"-i{variant(mask)}"
        if cfg.dtype != "fp32":
            tag += f"-{cfg.dtype}"
        return tag

    # ---------------------------------------------------------------- training

    def prepare(self, model: "nn.Module") -> "nn.Module":
        from peft_cli.sparse import attach

        self.indices = self._fisher_mask(model) if self.ctx.mask.strategy == "fisher" else self._shared_mask(model)
        for p in backbone_parameters(model).values():
            p.requires_grad_(False)
        self.values = attach(model, self.indices)
        return model

    def _shared_mask(self, model: "nn.Module") -> dict[str, "torch.Tensor"]:
        indices, _, _, _ = ensure_mask(model, self.ctx.model_name, self.ctx.mask, self.ctx.results_dir,
                                       self.ctx.fingerprint)
        return indices

    def _fisher_mask(self, model: "nn.Module") -> dict[str, "torch.Tensor"]:
        """FISH: sum over N examples of the squared per-example gradient, keep the top k."""
        import torch

        from peft_cli.mask import select

        if self.ctx.train_batches is None:
            raise UserError("mask.strategy=fisher needs training data; it cannot be rebuilt at eval time")
        params = backbone_parameters(model)
        scores = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        was_training, seen = model.training, 0
        model.eval()  # no dropout: the mask is a function of the data and the seed alone
        for batch in self.ctx.train_batches():
            for i in range(batch["labels"].shape[0]):
                model.zero_grad(set_to_none=True)
                model(**{k: v[i : i + 1] for k, v in batch.items()}).loss.backward()
                for n, p in params.items():
                    if p.grad is not None:
                        scores[n] += p.grad.float() ** 2
                seen += 1
                if seen >= self.ctx.mask.fisher_samples:
                    break
            if seen >= self.ctx.mask.fisher_samples:
                break
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        named = {n: p.detach() for n, p in params.items()}
        return select(named, spec_of(self.ctx.mask), scores=scores)

    def finalize(self, model: "nn.Module") -> None:
        if self.cfg.dtype != "fp32":  # score the run with the values exactly as stored
            self.values.load_flat(self.values.flat().to(_torch_dtype(self.cfg.dtype)))

    # ---------------------------------------------------------------- storage

    def artifact(self, model: "nn.Module") -> dict[str, "torch.Tensor"]:
        out = {VALUES: self.values.flat().to(_torch_dtype(self.cfg.dtype)).contiguous()}
        if self.ctx.mask.strategy == "fisher":
            import torch

            out.update({INDICES + n: i.to("cpu", torch.int32).contiguous() for n, i in self.indices.items()})
        return out

    def metadata(self) -> dict[str, str]:
        return {"mask_digest": digest(self.indices), "mask_strategy": self.ctx.mask.strategy}

    def check_metadata(self, metadata: dict[str, str]) -> None:
        self._expected_digest = metadata.get("mask_digest")

    def load(self, model: "nn.Module", tensors: dict[str, "torch.Tensor"]) -> "nn.Module":
        from peft_cli.sparse import apply_values

        if VALUES not in tensors:
            raise UserError(f"artifact has no '{VALUES}' tensor: not a PaFi artifact")
        if self.ctx.mask.strategy == "fisher":
            indices = in_model_order(model, {k.removeprefix(INDICES): v for k, v in tensors.items()
                                             if k.startswith(INDICES)})
        else:
            indices = self._shared_mask(model)
        expected = getattr(self, "_expected_digest", None)
        if expected is not None and digest(indices) != expected:
            raise UserError("the shared mask found now differs from the one this artifact was trained with "
                            "(mask_digest mismatch); point mask.path at the original mask file")
        apply_values(model, indices, tensors[VALUES])
        return model
