"""PaFi on a resident model: scatter a run's k values at the mask's indices, in place.

All runs trained on one shared mask write the same entries, so the indices (and the pre-trained
values there, for restoring) are loaded once for all of them (`MaskOn`); a run holds only its k
values, cast once to the model's dtype. With the backbone laid out in one flat buffer
(methods/resident.py) the mask becomes k indices into it and a switch is one `index_copy_` of k
values; otherwise one per masked tensor. Two runs of one mask need no restore in between (same
footprint).
FISH runs carry their own indices: each gets its own `MaskOn` and a footprint of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from peft_cli.core.errors import UserError
from peft_cli.methods.pafi.sparse import lookup
from peft_cli.methods.resident import Shared, Switch

if TYPE_CHECKING:
    from torch import Tensor


class MaskOn:
    """A mask placed on a resident model: int64 indices into the flat buffer (one target), or per
    masked tensor into its flat view (fallback), in mask order, and the pre-trained values there."""

    def __init__(self, shared: Shared, indices: dict[str, "Tensor"], digest: str) -> None:
        shared.check_base()
        found = lookup(shared.model, indices)
        self.k = sum(i.numel() for _, i in found.values())
        self.digest = digest
        flat = [shared.flat_indices(name, i) for name, (_, i) in found.items()]
        if found and all(i is not None for i in flat):  # (k,) indices into the flat buffer
            self.targets: list["Tensor"] = [shared.flat]
            self.indices: list["Tensor"] = [torch.cat(flat)]
        else:
            self.targets = [p.data.view(-1) for p, _ in found.values()]
            self.indices = [i for _, i in found.values()]
        self.sizes = [i.numel() for i in self.indices]
        with torch.no_grad():  # (k,): the pre-trained values at the mask's entries, for `restore`
            base = [t[i] for t, i in zip(self.targets, self.indices, strict=True)]
        self.base = self.split(torch.cat(base)) if base else []

    @property
    def nbytes(self) -> int:
        """Indices and base values; the targets are the model's."""
        return sum(i.nbytes for i in self.indices) + sum(b.nbytes for b in self.base)

    def split(self, values: "Tensor") -> list["Tensor"]:
        """(k,) values -> one view per target (no copy)."""
        return list(values.split(self.sizes))

    def scatter(self, parts: list["Tensor"]) -> None:
        with torch.no_grad():
            for t, i, v in zip(self.targets, self.indices, parts, strict=True):
                t.index_copy_(0, i, v)


class Scatter(Switch):
    """One PaFi run: its k values, in the model's dtype, on the model's device."""

    def __init__(self, on: MaskOn, values: "Tensor") -> None:
        if values.numel() != on.k:
            raise UserError(f"PaFi values have {values.numel()} entries but the mask selects k={on.k}: wrong mask?")
        flat = values.reshape(-1)
        if on.targets:  # the same cast `apply_values` does, so logits equal a fresh load's
            flat = flat.to(device=on.targets[0].device, dtype=on.targets[0].dtype)
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
