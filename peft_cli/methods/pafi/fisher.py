"""FISH (Sung et al., 2021): a task-specific mask from squared per-example gradients.

score(θ) = Σ_n (∂ loss_n / ∂θ)², summed over the first `samples` training examples, one example
at a time (per-example gradients, as FISH defines them); the top k scores are selected with the
same exact streaming select as the shared masks. Dropout is off while scoring, so the mask is a
function of the data, the model and the seed alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

from peft_cli.methods.pafi.select import MaskSpec, select
from peft_cli.models import backbone_parameters

if TYPE_CHECKING:
    import torch
    from torch import nn


def fisher_mask(
    model: "nn.Module", batches: Callable[[], Iterable[dict[str, "torch.Tensor"]]], spec: MaskSpec, samples: int
) -> dict[str, "torch.Tensor"]:
    """{backbone parameter name: sorted int32 flat indices} of the k entries with the largest
    summed squared gradients over `samples` examples drawn from `batches()` (dicts with labels)."""
    import torch

    params = backbone_parameters(model)
    scores = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    flags = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)  # the harness froze the backbone; scoring needs every gradient
    was_training, seen = model.training, 0
    model.eval()
    try:
        for batch in batches():
            for i in range(batch["labels"].shape[0]):
                model.zero_grad(set_to_none=True)
                model(**{k: v[i : i + 1] for k, v in batch.items()}).loss.backward()
                for n, p in params.items():
                    if p.grad is not None:
                        scores[n] += p.grad.float() ** 2  # (shape of p)
                seen += 1
                if seen >= samples:
                    break
            if seen >= samples:
                break
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        for n, p in params.items():
            p.requires_grad_(flags[n])
    return select({n: p.detach() for n, p in params.items()}, spec, scores=scores)
