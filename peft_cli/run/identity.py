"""A run's identity: its config hash, its method tag and its folder. All three are pure functions
of the config, so sweeps compute them for hundreds of runs without loading a model.

    results/runs/<experiment>/<model>/<method_tag>/<task>/seed<k>/
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from peft_cli.core.config import RunConfig
from peft_cli.methods import method_class, method_config
from peft_cli.methods import method_tag as _tag

# keys that say where things are or how a run is watched, not what it computes
_NOT_IDENTITY = {
    "data": ("glue_dir", "cache_dir"),
    "results": ("dir",),
    "train": ("progress", "log_every", "checkpoint_every", "device"),
}


def config_hash(cfg: RunConfig) -> str:
    """Two runs with the same hash are the same run. Paths say *where* things are, not *what* the
    run is, so they are left out: moving the GLUE folder does not invalidate results."""
    d = cfg.to_dict()
    # The method's keys as its schema reads them (alpha 8 == 8.0), and the mask only for methods
    # that read it: `sweep ... mask.density=0.01` must not invalidate BitFit runs.
    cls = method_class(cfg.method["name"])
    d["method"] = {
        "name": cls.name,
        "lr": _number(cfg.method.get("lr")),
        **{k: _number(v) for k, v in dataclasses.asdict(method_config(cfg.method)).items()},
    }
    if not cls.uses_mask:
        d.pop("mask")
    else:
        d["mask"].pop("path")
    for section, keys in _NOT_IDENTITY.items():
        for key in keys:
            d[section].pop(key)
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _number(v: Any) -> Any:
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def method_tag(cfg: RunConfig) -> str:
    """The run's `method_tag`, e.g. `pafi-smallest-d0.005` or `lora-r8`."""
    return _tag(cfg.method, cfg.mask)


def run_dir(results_dir: str | Path, experiment: str, model: str, tag: str, task: str, seed: int) -> Path:
    """The folder of one run in the results layout."""
    return Path(results_dir) / "runs" / experiment / model / tag / task / f"seed{seed}"


def run_folder(cfg: RunConfig) -> Path:
    """The folder this config's run writes to."""
    return run_dir(cfg.results.dir, cfg.experiment, cfg.model.name, method_tag(cfg), cfg.task.name, cfg.seed)
