"""A run's identity: its config hash, its tags and its folder. All are pure functions of the
config, so sweeps compute them for hundreds of runs without loading a model.

    results/runs/<experiment>/<model>/<run_tag>/<task>/seed<k>/
    run_tag = <method_tag>[-<setting>]      e.g. pafi-smallest-d0.005-lr0.01

`method_tag` names the method and its variant (the method's own `tag`: a table row); the setting
names the train.*/data.* keys the run sets beyond its experiment (core/compose.py), e.g. a
learning rate from a grid. Readable names are best effort; what guarantees that two configs never
share a folder silently is the config hash in result.json, checked before a run writes (run/train.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from peft_cli.core.config import RunConfig, as_before, is_identity
from peft_cli.methods import method_class, method_config
from peft_cli.methods import method_tag as _tag

# short names of common setting keys in folder names; other keys use their own name
ABBREVIATIONS = {
    "train.lr": "lr",
    "train.epochs": "ep",
    "train.max_steps": "steps",
    "train.batch_size": "bs",
    "train.weight_decay": "wd",
    "train.warmup_ratio": "wu",
    "train.max_length": "len",
    "train.grad_clip": "clip",
    "data.max_train_examples": "n",
}
MAX_SETTING_CHARS = 80  # longer settings are named by a hash (result.json and config.yaml spell them out)


def _identity_fields(obj: Any) -> dict[str, Any]:
    """A schema object as a dict, without its WATCH fields (core/config.py)."""
    keep = {f.name for f in dataclasses.fields(obj) if is_identity(f)}
    return {k: v for k, v in dataclasses.asdict(obj).items() if k in keep}


def config_hash(cfg: RunConfig) -> str:
    """Two runs with the same hash are the same run. Paths and watch keys (core/config.py WATCH) say
    *where* things are or how a run is watched, not *what* it is, so they are left out: moving the
    GLUE folder does not invalidate results."""
    d = {
        "experiment": cfg.experiment,
        "seed": cfg.seed,
        "task": _identity_fields(cfg.task),
        "model": dataclasses.asdict(cfg.model),
    }
    for section in ("train", "data", "mask", "results"):
        obj = getattr(cfg, section)
        d[section] = {
            f.name: getattr(obj, f.metadata.get("hash_as", f.name))  # e.g. eval_batch: null resolved to 4 x batch
            for f in dataclasses.fields(obj)
            if is_identity(f) and not as_before(f, getattr(obj, f.name))
        }
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
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _number(v: Any) -> Any:
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def method_tag(cfg: RunConfig) -> str:
    """The run's `method_tag`, e.g. `pafi-smallest-d0.005` or `lora-r8`: the method and its variant."""
    return _tag(cfg.method, cfg.mask)


def setting_tag(setting: dict[str, Any]) -> str:
    """A folder-safe name of a setting, e.g. `lr0.01-ep5`; '' for none. Exact values (floats by
    repr); a hash stands in for values that lose characters and for settings that grow too long."""
    parts, lossy = [], False
    for key in sorted(setting):
        value = setting[key]
        text = repr(value) if isinstance(value, float) else json.dumps(value, sort_keys=True).strip('"')
        safe = re.sub(r"[^A-Za-z0-9.+_-]+", "", text)
        lossy |= safe != text
        parts.append(ABBREVIATIONS.get(key, key.replace(".", "_")) + safe)
    name = "-".join(parts)
    if lossy or len(name) > MAX_SETTING_CHARS:
        digest = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:8]
        name = (name if len(name) <= MAX_SETTING_CHARS else "s") + f"-h{digest}"
    return name


def run_tag(cfg: RunConfig) -> str:
    """The run's folder name under its model: the method tag plus its setting, if any."""
    suffix = setting_tag(cfg.setting)
    return method_tag(cfg) + (f"-{suffix}" if suffix else "")


def run_dir(results_dir: str | Path, experiment: str, model: str, tag: str, task: str, seed: int) -> Path:
    """The folder of one run in the results layout."""
    return Path(results_dir) / "runs" / experiment / model / tag / task / f"seed{seed}"


def run_folder(cfg: RunConfig) -> Path:
    """The folder this config's run writes to."""
    return run_dir(cfg.results.dir, cfg.experiment, cfg.model.name, run_tag(cfg), cfg.task.name, cfg.seed)
