"""PaFi on a resident model: scatter a run's k values at the mask's indices, in place.

All runs trained on one shared mask write the same entries, so the indices (and the pre-trained
values there, for restoring) are loaded once for all of them (`MaskOn`); a run holds only its k
values, cast once to the model's dtype and split per tensor. Switching between two runs of one
mask is one `index_copy_` per masked tensor and needs no restore in between (same footprint).
FISH runs carry their own indices: each gets its own `MaskOn` and a footprint of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from peft_cli.core.errors import UserError
from peft_cli.methods.pafi.sparse import lookup
from peft_cli.methods.resident import Shared, Switch

if TYPE_CHECKING:
    from torch import Tensor, nn


class MaskOn:
    """A mask placed on a resident model: (parameter, int64 flat indices) per masked tensor, in mask
    order, and the pre-trained values at those entries, (k,) concatenated in the same order."""

    def __init__(self, shared: Shared, indices: dict[str, "Tensor"], digest: str) -> None:
        if shared.writing:
            raise RuntimeError("stage runs while the resident model holds the base values (restore first)")
        found = lookup(shared.model, indices)
        self.params: list["nn.Parameter"] = [p for p, _ in found.values()]
        self.indices: list["Tensor"] = [i for _, i in found.values()]
        self.sizes = [i.numel() for i in self.indices]
        self.k = sum(self.sizes)
        self.digest = digest
        with torch.no_grad():  # (k,): the pre-trained values at the mask's entries, for `restore`
            base = [p.detach().view(-1)[i] for p, i in zip(self.params, self.indices, strict=True)]
        self.base = self.split(torch.cat(base)) if base else []

    def split(self, flat: "Tensor") -> list["Tensor"]:
        """(k,) values -> one view per masked tensor (no copy)."""
        return list(flat.split(self.sizes))

    def scatter(self, parts: list["Tensor"]) -> None:
        with torch.no_grad():
            for p, i, v in zip(self.params, self.indices, parts, strict=True):
                p.data.view(-1).index_copy_(0, i, v)


class Scatter(Switch):
    """One PaFi run: its k values, in the model's dtype, on the model's device."""

    def __init__(self, on: MaskOn, values: "Tensor") -> None:
        if values.numel() != on.k:
            raise UserError(f"PaFi values have {values.numel()} entries but the mask selects k={on.k}: wrong mask?")
        p0 = on.params[0] if on.params else None
        flat = values.reshape(-1)
        if p0 is not None:  # the same cast `apply_values` does, so logits equal a fresh load's
            flat = flat.to(device=p0.device, dtype=p0.dtype)
        self.on = on
        self.values = flat
        self.parts = on.split(flat)
        self.footprint = "pafi:" + on.digest

    def apply(self) -> None:
        self.on.scatter(self.parts)

    def restore(self) -> None:
        self.on.scatter(self.on.base)

    @property
    def nbytes(self) -> int:
        return self.values.nbytes
