"""One resident base model serving many runs (`peftx predict RUN_DIR...`).

The base model is loaded once. Each run is staged once (its artifact read, checked against the
backbone and cast: `Method.stage`, methods/resident.py; its task head built as a module of its
own), and `use(run)` switches the resident model to it in place: the previous run's change is
restored (unless both write the same entries), the new one applied, and the run's head modules put
where the model's forward reads them. The model is never re-loaded or copied per run.

Switching A -> B -> A gives the logits of a fresh load of A bit for bit (tests/test_predict.py).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peft_cli.core.config import RunConfig
from peft_cli.core.errors import UserError
from peft_cli.core.files import load_tensors
from peft_cli.core.runtime import resolve_device, seed_everything
from peft_cli.methods import Method, MethodContext, build_method
from peft_cli.methods.resident import Shared, Switch
from peft_cli.models import fingerprint, load_model
from peft_cli.run.evaluate import read_run_config

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class Staged:
    """One run, ready to switch to."""

    run: Path
    cfg: RunConfig
    method: Method
    switch: Switch
    head: dict[str, "nn.Module"]  # top-level module name -> this run's module (e.g. "classifier")

    @property
    def nbytes(self) -> int:
        """Memory this run holds on the resident model: its staged tensors and its head."""
        return self.switch.nbytes + sum(p.nbytes for m in self.head.values() for p in m.parameters())


class Resident:
    """A base model loaded once, switched between staged runs in place (module docstring)."""

    def __init__(self, cfg: RunConfig, device: "torch.device | None" = None) -> None:
        self.cfg = cfg  # the first run's config: its model is the resident one
        self.device = device or resolve_device(cfg.train)
        seed_everything(cfg.seed)  # the base model's own head is replaced by every run's
        self.model = load_model(cfg.model, cfg.task).to(self.device).eval()
        self.fingerprint = fingerprint(self.model)
        self.shared = Shared(self.model)
        self.active: Staged | None = None

    def stage(self, run: Path, cfg: RunConfig | None = None) -> Staged:
        """Read, check and stage `run` (its artifact and head) on the resident model."""
        cfg = cfg or read_run_config(run)
        check_same_model(run, cfg, self.cfg)
        tensors, meta = load_tensors(run / "artifact.safetensors")
        if meta.get("model_fingerprint") != self.fingerprint:
            raise UserError(
                f"{run / 'artifact.safetensors'} was made for another backbone than model '{cfg.model.name}' "
                "loads now (fingerprint mismatch)"
            )
        ctx = MethodContext(cfg.model.name, self.fingerprint, Path(cfg.results.dir), cfg.mask)
        method = build_method(cfg.method, ctx)
        method.check_metadata(meta)
        head_names = json.loads(meta.get("head", "[]"))
        missing = [n for n in head_names if n not in tensors]
        if missing:
            raise UserError(f"{run / 'artifact.safetensors'} lacks head tensor '{missing[0]}'; the file is damaged")
        head = self._head(cfg, {n: tensors.pop(n) for n in head_names}, run)
        self.to_base()  # staging reads pre-trained values
        return Staged(run, cfg, method, method.stage(self.shared, tensors), head)

    def use(self, staged: Staged) -> "nn.Module":
        """Switch the resident model to `staged`'s run, in place; returns the model."""
        current = self.active
        if current is staged:
            return self.model
        if current is not None and not _overwrites(staged.switch, current.switch):
            current.switch.restore()
        staged.switch.apply()
        self.shared.writing = True
        for name, module in staged.head.items():
            setattr(self.model, name, module)  # a module swap: no tensor is copied
        self.model.num_labels = staged.cfg.task.num_labels
        self.active = staged
        return self.model

    @property
    def nbytes(self) -> int:
        """Memory shared by all runs beyond the base model (saved originals, masks)."""
        return self.shared.nbytes

    def to_base(self) -> None:
        """Restore the pre-trained backbone (no run active)."""
        if self.active is not None:
            self.active.switch.restore()
            self.active = None
        self.shared.writing = False

    def _head(self, cfg: RunConfig, tensors: dict[str, "torch.Tensor"], run: Path) -> dict[str, "nn.Module"]:
        """The run's task head as modules of their own: the model class's head for the run's task
        (its number of labels), built on the meta device and filled with the stored tensors."""
        import torch

        config = copy.deepcopy(self.model.config)
        config.num_labels = cfg.task.num_labels
        with torch.device("meta"):  # shapes only; the backbone part is dropped
            skeleton = type(self.model)(config)
        prefix = self.model.base_model_prefix
        head = {
            name: module
            for name, module in skeleton.named_children()
            if name != prefix and any(True for _ in module.parameters())
        }
        expected = {f"{name}.{p}" for name, m in head.items() for p, _ in m.named_parameters()}
        if set(tensors) != expected:
            odd = sorted(set(tensors) ^ expected)[0]
            raise UserError(f"{run}: the stored head and task '{cfg.task.name}' disagree on '{odd}'")
        dtype = next(self.model.parameters()).dtype
        for name, module in head.items():
            module.to_empty(device=self.device).to(dtype).eval()
            with torch.no_grad():
                for pname, p in module.named_parameters():
                    t = tensors[f"{name}.{pname}"]
                    if t.shape != p.shape:
                        raise UserError(f"{run}: head tensor '{name}.{pname}' has shape {tuple(t.shape)}")
                    p.copy_(t)
        return head


def check_same_model(run: Path, cfg: RunConfig, base: RunConfig) -> None:
    """UserError unless `run` (config `cfg`) was trained on the base model of config `base`."""
    if cfg.model != base.model:
        raise UserError(
            f"{run} was trained on model '{cfg.model.name}', not '{base.model.name}': "
            "runs predicted together share one base model (predict them separately)"
        )


def _overwrites(new: Switch, old: Switch) -> bool:
    """Whether applying `new` rewrites every entry `old` changed, from scratch: no restore needed."""
    return new.footprint is not None and new.footprint == old.footprint
