"""PaFi (Liao, Meng & Monz, 2023): train only the k smallest-magnitude pre-trained entries.

The mask is task-agnostic (store.py): built once per model from |θ| and shared by every
task, so a task stores only its k values, in mask order, plus its head: no indices. The
ablations `largest` and `random` use the same machinery. `fisher` is the FISH baseline (Sung
et al., 2021): a task-specific mask from squared gradients on N training examples; it must
store its indices with the values, and `stored_bytes` shows that cost.

Layout of this subpackage: select.py (exact streaming top-k, mask files), store.py (the shared
mask: build once, reuse, verify), fisher.py (FISH scores), sparse.py (the k-entry trainable
values with a backward that never forms a dense weight gradient, so optimizer state and gradient
memory scale with k), and this file, the Method.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peft_cli.core.config import MaskConfig
from peft_cli.core.errors import UserError
from peft_cli.methods.base import Method, SharedResource, default_decays, slug
from peft_cli.methods.pafi.store import (
    MaskBuild,
    build_for_config,
    digest,
    ensure_mask,
    in_model_order,
    mask_path,
    spec_of,
    variant,
)
from peft_cli.methods.resident import Shared, Switch

if TYPE_CHECKING:
    import torch
    from torch import nn

    from peft_cli.core.config import MaskConfig, RunConfig
    from peft_cli.methods.pafi.switch import MaskOn

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
            tag += "-x" + slug(mask.exclude)
        if list(mask.include) != [".*"]:
            tag += f"-i{variant(mask)}"
        if mask.strategy == "fisher" and mask.fisher_samples != MaskConfig.fisher_samples:
            tag += f"-n{mask.fisher_samples}"
        if cfg.dtype != "fp32":
            tag += f"-{cfg.dtype}"
        return tag

    @classmethod
    def shared_resource(cls, cfg: "RunConfig") -> SharedResource | None:
        if cfg.mask.strategy == "fisher":
            return None  # task-specific: built inside each run
        path = mask_path(Path(cfg.results.dir), cfg.model.name, cfg.mask)
        key = json.dumps([asdict(cfg.model), asdict(cfg.mask), str(path)], sort_keys=True, default=str)
        return SharedResource(
            key,
            path,
            f"shared mask for {cfg.model.name} ({cfg.mask.strategy}, density {cfg.mask.density:g})",
            lambda: build_for_config(cfg).path,
        )

    @classmethod
    def build_mask(cls, cfg: "RunConfig") -> MaskBuild:
        return build_for_config(cfg)

    # ---------------------------------------------------------------- training

    def prepare(self, model: "nn.Module") -> "nn.Module":
        from peft_cli.methods.pafi.sparse import attach

        self.indices = self._fisher_mask(model) if self.ctx.mask.strategy == "fisher" else self._shared_mask(model)
        self.values = attach(model, self.indices)
        return model

    def decays(self, name: str) -> bool:
        # value params are named after their tensor with '.' -> '__' (sparse.py): decode, then BERT's rule
        return default_decays(name.replace("__", "."))

    def _shared_mask(self, model: "nn.Module") -> dict[str, "torch.Tensor"]:
        return ensure_mask(
            model, self.ctx.model_name, self.ctx.mask, self.ctx.results_dir, self.ctx.fingerprint
        ).indices

    def _fisher_mask(self, model: "nn.Module") -> dict[str, "torch.Tensor"]:
        """FISH: the top k of summed squared per-example gradients (fisher.py)."""
        from peft_cli.methods.pafi.fisher import fisher_mask

        if self.ctx.train_batches is None:
            raise UserError("mask.strategy=fisher needs training data; it cannot be rebuilt at eval time")
        return fisher_mask(model, self.ctx.train_batches, spec_of(self.ctx.mask), self.ctx.mask.fisher_samples)

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
        from peft_cli.methods.pafi.sparse import apply_values

        values = _values(tensors)
        indices = self._stored_indices(model, tensors) if self._fisher else self._shared_mask(model)
        self._check_digest(digest(indices))
        apply_values(model, indices, values)
        return model

    def stage(self, shared: Shared, tensors: dict[str, "torch.Tensor"]) -> Switch:
        from peft_cli.methods.pafi.switch import MaskOn, Scatter

        values = _values(tensors)
        if self._fisher:  # task-specific indices, stored with the values: a mask of its own
            indices = self._stored_indices(shared.model, tensors)
            found = digest(indices)
            self._check_digest(found)
            on = shared.once(f"pafi-on:{found}", lambda: MaskOn(shared, indices, found))
        else:  # the shared mask: read from disk and placed on the model once for all its runs
            path = mask_path(self.ctx.results_dir, self.ctx.model_name, self.ctx.mask)
            on = shared.once(f"pafi-mask:{path}", lambda: self._place(shared))
            self._check_digest(on.digest)
        return Scatter(on, values)

    def _place(self, shared: Shared) -> "MaskOn":
        """The shared mask, read and placed on the resident model (once per mask content)."""
        from peft_cli.methods.pafi.switch import MaskOn

        indices = self._shared_mask(shared.model)
        found = digest(indices)
        return shared.once(f"pafi-on:{found}", lambda: MaskOn(shared, indices, found))

    @property
    def _fisher(self) -> bool:
        return self.ctx.mask.strategy == "fisher"

    def _stored_indices(self, model: "nn.Module", tensors: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
        return in_model_order(model, {k.removeprefix(INDICES): v for k, v in tensors.items() if k.startswith(INDICES)})

    def _check_digest(self, found: str) -> None:
        expected = getattr(self, "_expected_digest", None)
        if expected is None:  # without it, values could land on another mask with the same k
            raise UserError(
                "the PaFi artifact's header has no mask_digest, so it cannot be checked against the mask it "
                "was trained with; retrain the run (peftx train ... --overwrite)"
            )
        if found != expected:
            raise UserError(
                "the shared mask found now differs from the one this artifact was trained with "
                "(mask_digest mismatch); point mask.path at the original mask file"
            )


def _values(tensors: dict[str, "torch.Tensor"]) -> "torch.Tensor":
    if VALUES not in tensors:
        raise UserError(f"artifact has no '{VALUES}' tensor: not a PaFi artifact")
    return tensors[VALUES]
