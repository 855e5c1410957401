"""Launchers: how a sweep's pending runs get executed. Each is a plug-in registered below by
name (`launcher=NAME` picks conf/launcher/NAME.yaml) that implements the `Launcher` protocol of
base.py; the sweep never names one. Every launcher runs the same `peftx train <overrides>` per
run, so a run behaves the same wherever it executes."""

from __future__ import annotations

import importlib
from typing import Any

from peft_cli.core.config import from_dict
from peft_cli.core.errors import UserError
from peft_cli.sweep.launchers.base import Launched, Launcher, Outcome

# name -> "module:Class", imported only when used
REGISTRY: dict[str, str] = {
    "local": "peft_cli.sweep.launchers.local:LocalLauncher",
    "slurm": "peft_cli.sweep.launchers.slurm:SlurmLauncher",
}


def make_launcher(raw: dict[str, Any], results_dir: str, sweep: str) -> Launcher:
    """The launcher the composed `launcher:` node names, its settings validated."""
    name = raw.get("name")
    if name not in REGISTRY:
        raise UserError(
            f"config key 'launcher.name' is {name!r}; choose one of: {', '.join(REGISTRY)} "
            "(launcher=NAME picks conf/launcher/NAME.yaml)"
        )
    module, cls_name = REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    settings = from_dict(cls.settings_cls, raw, "launcher")
    return cls(settings, results_dir, sweep)


__all__ = ["REGISTRY", "Launched", "Launcher", "Outcome", "make_launcher"]
