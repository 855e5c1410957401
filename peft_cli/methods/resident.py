"""Task switching on one resident base model (`peftx predict` with several runs).

A run's artifact is *staged* once (`Method.stage`: checked, cast to the model's dtype and device)
and then switched in and out in place, as often as needed:

    switch = method.stage(shared, tensors)   # per run, once
    switch.apply()                           # the model now computes the run's backbone
    switch.restore()                         # the base model again, bit for bit

`Shared` is what the runs on one resident model share: the model's parameters, the pre-trained
values of every entry some run writes (saved once, before any run writes them), and whatever a
method loads once for all its runs (PaFi: the shared mask's indices and the base values there).
It also lays the backbone's parameters out as views into one flat buffer (`flat`, each tensor at
a 64-byte aligned offset), so a method that writes scattered entries of many tensors does it with
one indexed copy instead of one per tensor (PaFi: ~100 tensors on MiniLM, one `index_copy_`).

Two switches with the same `footprint` write exactly the same entries with no dependence on what
is there: going from one to the other needs no restore (PaFi runs on one mask, HiWi/BitFit runs
with the same targets). Switches that add to the weights (LoRA's merge) have no footprint and are
always restored first. The task head is not the method's: the run layer swaps it (run/resident.py).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable

from peft_cli.core.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn


class Shared:
    """What every run staged on one resident model shares (module docstring)."""

    def __init__(self, model: "nn.Module") -> None:
        self.model = model
        self.params: dict[str, "nn.Parameter"] = dict(model.named_parameters())
        self._originals: dict[str, "torch.Tensor"] = {}
        self._cache: dict[str, Any] = {}
        self.writing = False  # set by the run layer once a switch has been applied (originals are then gone)
        self.flat, self.offsets = _flatten(model)

    def flat_indices(self, name: str, idx: "torch.Tensor") -> "torch.Tensor | None":
        """Flat indices `idx` of parameter `name` as indices into `flat`; None if it is not in `flat`."""
        if name not in self.offsets:
            return None
        return idx.to(self.flat.device) + self.offsets[name]

    def param(self, name: str, what: str) -> "nn.Parameter":
        """The resident model's parameter `name`; UserError if the artifact names another one."""
        if name not in self.params:
            raise UserError(
                f"{what} tensor '{name}' is not a parameter of this model; "
                "was the artifact made for another model or method?"
            )
        return self.params[name]

    def original(self, name: str) -> "torch.Tensor":
        """The pre-trained value of parameter `name`, copied once for all runs that write it."""
        if name not in self._originals:
            self.check_base()
            self._originals[name] = self.params[name].detach().clone()
        return self._originals[name]

    def check_base(self) -> None:
        """Staging reads pre-trained values: refuse while a run's values are applied."""
        if self.writing:
            raise RuntimeError("staging reads base values but a run is applied (restore first)")

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        """`make()` the first time `key` is asked for, the same object afterwards (e.g. a mask)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def nbytes(self) -> int:
        """Memory held for all runs together (saved originals, shared masks), beyond the model."""
        unique = {id(v): v for v in self._cache.values()}.values()  # one object may sit under two keys
        return sum(t.nbytes for t in self._originals.values()) + sum(_nbytes(v) for v in unique)


class Switch(ABC):
    """One run's backbone change, staged on a resident model."""

    footprint: str | None = None  # equal footprints write the same entries, absolutely (module docstring)

    @abstractmethod
    def apply(self) -> None:
        """Turn the resident (base) model into this run's backbone, in place."""

    @abstractmethod
    def restore(self) -> None:
        """Undo `apply`: the base model's values again, bit for bit."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Memory this run's staged tensors hold."""


class WriteTensors(Switch):
    """Write stored tensors over the parameters of the same names (full, BitFit, HiWi's merged tensors)."""

    def __init__(self, shared: Shared, tensors: dict[str, "torch.Tensor"], what: str) -> None:
        params = []
        for name, t in tensors.items():
            p = shared.param(name, what)
            if p.shape != t.shape:
                raise UserError(f"{what} tensor '{name}' has shape {tuple(t.shape)}, the model's has {tuple(p.shape)}")
            params.append(p)
        self.params = params
        self.values = [t.to(device=p.device, dtype=p.dtype) for p, t in zip(params, tensors.values(), strict=True)]
        self.originals = [shared.original(n) for n in tensors]
        self.footprint = "write:" + hashlib.sha256("\n".join(sorted(tensors)).encode()).hexdigest()[:16]

    def apply(self) -> None:
        copy_params(self.params, self.values)

    def restore(self) -> None:
        copy_params(self.params, self.originals)

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.values)


ALIGN = 16  # elements: 64-byte aligned fp32 views, as a fresh allocation would be


def _flatten(model: "nn.Module") -> tuple["torch.Tensor | None", dict[str, int]]:
    """Make every backbone parameter a view into one flat buffer; (buffer, name -> offset).
    Left as they are (None, {}) when the backbone mixes dtypes or devices."""
    import torch

    from peft_cli.models import backbone_parameters

    params = backbone_parameters(model)
    kinds = {(p.dtype, p.device) for p in params.values()}
    if len(kinds) != 1:
        return None, {}
    dtype, device = kinds.pop()
    offsets, total = {}, 0
    for name, p in params.items():
        offsets[name] = total
        total += -(-p.numel() // ALIGN) * ALIGN
    flat = torch.zeros(total, dtype=dtype, device=device)
    with torch.no_grad():
        for name, p in params.items():
            view = flat[offsets[name] : offsets[name] + p.numel()].view(p.shape)
            view.copy_(p.detach())
            p.data = view  # the same Parameter object, its storage now in `flat`
    return flat, offsets


def copy_params(dst: list["nn.Parameter"], src: list["torch.Tensor"]) -> None:
    """Copy each `src` tensor into the parameter beside it, in place, in one call."""
    import torch

    with torch.no_grad():
        torch._foreach_copy_([p.data for p in dst], src)  # one call for all tensors: switching full FT is ~100 copies


def _nbytes(value: Any) -> int:
    """Bytes of the tensors in a (nested) cache value."""
    import torch

    if isinstance(value, torch.nn.Parameter):
        return 0  # the model's own
    if torch.is_tensor(value):
        return value.nbytes
    if isinstance(getattr(type(value), "nbytes", None), property):
        return value.nbytes  # an object that knows what it holds (and what it only points to)
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return sum(_nbytes(v) for v in getattr(value, "__dict__", {}).values())
