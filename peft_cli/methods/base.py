"""The Method protocol: what every fine-tuning method tells the harness.

A method is one module or subpackage here (a config dataclass + a `Method` subclass) and one
line in `methods/__init__.py`. The harness owns everything that is common to all methods, and
never names a method:

* the backbone is frozen before `prepare` (every backbone parameter has requires_grad=False),
  so `prepare` only switches on, or adds, what the method trains;
* the task head (`classifier.*`) is always trainable, always stored, and counted apart, so a
  method never touches it;
* weight decay: `decays(name)` says whether one of the method's trainable parameters takes it;
* `params.trainable` = parameters with `requires_grad` after `prepare`, head excluded;
* `params.stored`    = floating-point elements of `artifact()` (integer index tensors that a
  method must store, e.g. FISH's per-task mask, count in `stored_bytes` but not as parameters).

Life cycle of one run::

    method = build_method(method_cfg, ctx)          # methods/__init__.py
    freeze(base_model backbone)                     # the harness
    model  = method.prepare(base_model)             # unfreeze / inject / select; may wrap
    ... train; snapshots copy `p.data` of trainable params and restore it with `copy_` ...
    tensors = method.artifact(model)                # what goes into artifact.safetensors
    # later, in another process:
    model = method.load(fresh_base_model, tensors)  # ready for inference, same logits
    plain = method.merge(model)                     # plain HF model, no extra modules (export)

Invariant every method keeps: the trainable parameters are the single source of truth. Copying
saved values into them (best-epoch restore, checkpoint resume) fully restores the model's
function with no further call.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

from peft_cli.core.errors import NotMergeable, UserError
from peft_cli.methods.resident import Shared, Switch, WriteTensors
from peft_cli.models import backbone_parameters

if TYPE_CHECKING:  # keep `peftx --help` free of torch
    import torch
    from torch import nn

    from peft_cli.core.config import MaskConfig, RunConfig


@dataclass
class MethodContext:
    """What a method may need beyond its own config. Built by the run layer, never by methods."""

    model_name: str  # the `model` config name, e.g. "minilm-l6" (mask files live under it)
    fingerprint: str  # fingerprint of the pre-trained backbone (models.fingerprint)
    results_dir: Path
    mask: "MaskConfig"  # the top-level `mask.*` config (PaFi and its ablations read it)
    # Yields training batches (dicts of tensors on `device`, with "labels"). Only data-dependent
    # selection (FISH) calls it; None in `eval`/`export`, where the artifact says everything.
    train_batches: Callable[[], Iterable[dict[str, "torch.Tensor"]]] | None = None


class Method(ABC):
    """A fine-tuning method (module docstring: life cycle and what the harness owns)."""

    name: ClassVar[str]
    config_cls: ClassVar[type]  # dataclass of the keys in conf/method/<name>.yaml (besides `name`)
    mergeable: ClassVar[bool] = True  # False: `peftx export` exits 2 with `merge`'s reason
    uses_mask: ClassVar[bool] = False  # reads the top-level mask.* keys (they enter its config_hash)

    def __init__(self, cfg: Any, ctx: MethodContext) -> None:
        self.cfg = cfg
        self.ctx = ctx

    @classmethod
    def tag(cls, cfg: Any, mask: "MaskConfig") -> str:
        """`method_tag` of the contract: the name plus what distinguishes variants (`lora-r8`,
        `pafi-smallest-d0.005`). A function of the config alone: sweeps compute run folders
        without loading a model."""
        return cls.name

    @classmethod
    def shared_resource(cls, cfg: "RunConfig") -> "SharedResource | None":
        """Something many runs share and that should be built once, before any of them starts
        (PaFi: the shared mask file). None: nothing. Sweeps build each distinct one once."""
        return None

    @classmethod
    def build_mask(cls, cfg: "RunConfig") -> Any:
        """Methods with `uses_mask`: build, or reuse, the shared mask that `mask.*` describes and
        return what was found (`peftx mask` prints its `meta`, `path` and `built`)."""
        raise NotImplementedError(f"method '{cls.name}' reads no mask")

    @abstractmethod
    def prepare(self, model: "nn.Module") -> "nn.Module":
        """Make this method's parameters trainable (the backbone arrives frozen). May wrap the
        model; the returned module is called like the HF model (`input_ids=...` -> `.logits`)."""

    def decays(self, name: str) -> bool:
        """Whether the trainable parameter `name` (as `model.named_parameters()` gives it) takes
        weight decay. Default: BERT's recipe, none for biases and LayerNorm scales."""
        return default_decays(name)

    @abstractmethod
    def artifact(self, model: "nn.Module") -> dict[str, "torch.Tensor"]:
        """Backbone-side tensors this run must store (head excluded), on CPU, contiguous."""

    @abstractmethod
    def load(self, model: "nn.Module", tensors: dict[str, "torch.Tensor"]) -> "nn.Module":
        """Apply `artifact()`'s tensors to a freshly loaded base model; return it ready for
        inference (its logits equal the trained model's)."""

    def stage(self, shared: Shared, tensors: dict[str, "torch.Tensor"]) -> Switch:
        """Stage `artifact()`'s tensors (header checked by `check_metadata`) on a resident base model, for
        switching in place (methods/resident.py): `apply()` must give the backbone `load` gives, `restore()`
        the base model bit for bit. Default: the artifact is named backbone tensors, written over the model's."""
        if not self.mergeable:
            raise UserError(
                f"method '{self.name}' adds modules to the model, so its runs cannot switch on a resident "
                "base model; peftx predict takes runs of methods that merge (peftx eval scores this one)"
            )
        return WriteTensors(shared, tensors, self.name)

    def finalize(self, model: "nn.Module") -> None:
        """Called once after the best epoch is restored, before the test split is scored: make the
        model exactly what `artifact()` will store (e.g. round values to a half-precision storage
        dtype), so the run's metrics are the stored artifact's metrics. Default: nothing to do."""
        return None

    def merge(self, model: "nn.Module") -> "nn.Module":
        """Return a plain Hugging Face model with everything folded in (for `peftx export`).
        Methods whose `load` already yields a plain model keep this default."""
        if not self.mergeable:
            raise NotMergeable(f"method '{self.name}' adds modules that cannot be merged into the base model")
        return model

    def metadata(self) -> dict[str, str]:
        """Extra string entries for the artifact's safetensors header (e.g. a mask fingerprint)."""
        return {}

    def check_metadata(self, metadata: dict[str, str]) -> None:
        """Raise UserError if an artifact's header does not fit this method/base model. Default: no check."""
        return None


@dataclass
class NoOptions:
    """Config of a method that has no options of its own."""


@dataclass
class SharedResource:
    """A file many runs read and one process should build first (e.g. PaFi's shared mask)."""

    key: str  # identity: two runs with the same key share it
    path: Path  # where it lives once built
    describe: str  # one line for the sweep's log, e.g. "shared mask for minilm-l6 (smallest, density 0.005)"
    build: Callable[[], Path]  # build it (or reuse it); returns `path`


def slug(items: list[str]) -> str:
    """A folder-safe name for tags: the items' letters and digits joined by '-', plus a short hash
    when that drops characters, so `embeddings` and `embeddings$` never give one tag."""
    parts = [re.sub(r"[^A-Za-z0-9]+", "", p) for p in items]
    text = "-".join(parts)
    if parts != list(items):
        text += "-h" + hashlib.sha256(json.dumps(list(items)).encode()).hexdigest()[:6]
    return text


def default_decays(name: str) -> bool:
    """BERT's weight-decay rule: biases and LayerNorm scales take none."""
    return not (name.endswith("bias") or "LayerNorm.weight" in name or "layer_norm.weight" in name)


def freeze_backbone(model: "nn.Module") -> None:
    """requires_grad=False on every backbone parameter (the harness calls it before `prepare`)."""
    for p in backbone_parameters(model).values():
        p.requires_grad_(False)


def load_named(model: "nn.Module", tensors: dict[str, "torch.Tensor"]) -> None:
    """Copy `tensors` into `model`'s parameters of the same names, in place. Every name must
    exist with the same shape: a stored artifact that does not fit is a user error, not a
    silent partial load."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in tensors.items():
            if name not in params:
                raise UserError(
                    f"artifact tensor '{name}' is not a parameter of this model; "
                    "was the artifact made for another model or method?"
                )
            if params[name].shape != t.shape:
                raise UserError(
                    f"artifact tensor '{name}' has shape {tuple(t.shape)}, the model's has {tuple(params[name].shape)}"
                )
            params[name].copy_(t)


def stored_backbone(model: "nn.Module", keep: Callable[[str], bool]) -> dict[str, "torch.Tensor"]:
    """Backbone tensors whose names pass `keep`, detached, on CPU: most methods' `artifact()`."""
    return {n: p.detach().cpu().contiguous() for n, p in backbone_parameters(model).items() if keep(n)}


def load_backbone(
    model: "nn.Module", tensors: dict[str, "torch.Tensor"], keep: Callable[[str], bool], what: str
) -> None:
    """`load_named`, after checking that every backbone tensor passing `keep` is in the artifact."""
    check_complete(model, tensors, keep, what)
    load_named(model, tensors)


def check_complete(
    model: "nn.Module", tensors: dict[str, "torch.Tensor"], keep: Callable[[str], bool], what: str
) -> None:
    """UserError unless every backbone tensor passing `keep` is in the artifact."""
    missing = sorted(n for n in backbone_parameters(model) if keep(n) and n not in tensors)
    if missing:
        raise UserError(f"artifact lacks {what} tensor '{missing[0]}': was it trained with other method.* settings?")
