"""The one place that talks to Hydra: compose `conf/` with the user's overrides into a plain dict
(then core/config.py validates it). Hydra's multi-line errors become one-line UserErrors."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Any

from peft_cli.core.config import (
    DataConfig,
    MaskConfig,
    ResultsConfig,
    RunConfig,
    TrainConfig,
    is_identity,
    is_path,
    run_config,
    unknown_key_message,
)
from peft_cli.core.errors import UserError

# The sections whose keys make a run's `setting` (method.* and mask.* are named by the method's tag).
SETTING_SECTIONS = {"train": TrainConfig, "data": DataConfig}


def conf_dir() -> Path:
    """`conf/` beside the package (editable install, a checkout) or inside it (wheel)."""
    here = Path(__file__).resolve().parent.parent  # the peft_cli package
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise UserError(f"cannot find peftx's conf/ folder next to {here}; reinstall peftx")


def options(group: str) -> list[str]:
    """The options of a config group: the names of conf/<group>/*.yaml."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def compose_dict(overrides: list[str]) -> dict[str, Any]:
    """Hydra compose over conf/ -> plain resolved dict. Hydra's errors become one-line UserErrors."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = expand_model(list(overrides))
    try:
        return _hydra(overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise UserError(_explain(e, overrides)) from None


def _hydra(overrides: list[str]) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None, job_name="peftx"):
        cfg = compose(config_name="config", overrides=list(overrides))
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def expand_model(overrides: list[str]) -> list[str]:
    """`model=<hub id or folder>` that is not a file in conf/model/ -> `model=hf model.id=<it>`; and a
    model whose `model.id` is set on the command line without `model.name` gets its name derived
    from that id (so other weights never land in the config's folder, e.g. roberta-base/)."""
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key == "model" and value and value not in options("model"):
            out += ["model=hf", f"model.id={value}"]
        else:
            out.append(o)
    keys = {o.split("=", 1)[0].lstrip("+~") for o in out}
    if "model.id" in keys and "model.name" not in keys:
        out.append("model.name=null")
    return out


def _explain(e: Exception, overrides: list[str]) -> str:
    """Hydra's error as one line; an unknown key gets the closest valid keys, in one round (Hydra
    itself suggests `+key=...`, which only leads to a second error)."""
    m = re.search(r"Could not override '([^']+)'", str(e))
    if m:
        key = m.group(1)
        rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
        try:
            valid = sorted(flat_keys(_hydra(rest)))
        except Exception:  # the other overrides are broken too: Hydra's own line
            return _one_line(e)
        return unknown_key_message(key, valid)
    return _one_line(e)


def flat_keys(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train.lr": value, ...}: the dotted leaf keys of a composed config."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_keys(v, key + "."))
        else:
            out[key] = v
    return out


def _one_line(e: Exception) -> str:
    """Hydra's messages span lines ('Could not find X\\nAvailable options in Y:\\n\\tA\\n\\tB')."""
    lines = [ln.strip() for ln in str(e).split("Config search path")[0].splitlines() if ln.strip()]
    if len(lines) > 1 and lines[1].startswith("Available options"):
        return f"{lines[0]}; {lines[1].rstrip(':').lower()}: {', '.join(lines[2:])}".replace("In 'config': ", "")
    msg = "; ".join(lines)
    if "not in struct" in msg or "Could not override" in msg:
        msg += " (use +key=value to add a new key, or check the spelling)"
    return msg


def compose_run(overrides: list[str]) -> dict[str, Any]:
    """compose_dict plus the run's `setting`: the train.*/data.* values that differ from what the
    same experiment, task, method, model and seed give without the other overrides. Paths are made
    absolute and a model without a name is named after its id."""
    d = compose_dict(overrides)
    _check_top_level(d)
    d["setting"] = setting_of(d, _base(tuple(base_overrides(overrides))))
    _name_model(d["model"])
    _absolute_paths(d)
    return d


# top-level keys of a composed config: RunConfig's, plus what sweeps and reports read
TOP_LEVEL = {f.name for f in dataclasses.fields(RunConfig)} | {"launcher", "sweep", "report"}


def _check_top_level(d: dict[str, Any]) -> None:
    """`+lrr=3` passes Hydra; refuse it here rather than ignore it."""
    unknown = sorted(set(d) - TOP_LEVEL)
    if unknown:
        raise UserError(
            unknown_key_message(unknown[0], sorted(flat_keys({k: v for k, v in d.items() if k in TOP_LEVEL})))
        )


def model_name_from_id(model_id: str) -> str:
    """A folder-safe model name for runs of `model_id`: `org--name` for a hub id, and for a local
    folder its name plus a hash of its absolute path, so two folders called `bert` stay apart."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        path = path.resolve()
        return f"{path.name}-{hashlib.blake2b(str(path).encode(), digest_size=3).hexdigest()}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model_id.replace("/", "--"))


def _name_model(model: dict[str, Any]) -> None:
    for key in ("id", "tokenizer"):  # a local folder is stored absolute, a hub id as is
        value = model.get(key)
        if isinstance(value, str) and Path(value).expanduser().is_dir():
            model[key] = str(Path(value).expanduser().resolve())
    if model.get("name") is None:
        if not model.get("id"):
            raise UserError("model.id is not set; pass model=<hub id or local folder>, e.g. model=bert-base-uncased")
        model["name"] = model_name_from_id(model["id"])


# The sections whose path keys (core/config.py PATH) a run stores absolute.
PATH_SECTIONS = {"data": DataConfig, "mask": MaskConfig, "results": ResultsConfig}


def _absolute_paths(d: dict[str, Any]) -> None:
    """Relative paths resolved against the current directory, so `peftx eval RUN` works from anywhere."""
    for section, cls in PATH_SECTIONS.items():
        for f in dataclasses.fields(cls):
            value = d.get(section, {}).get(f.name)
            if is_path(f) and isinstance(value, str):
                d[section][f.name] = os.path.abspath(os.path.expanduser(value))


def base_overrides(overrides: list[str]) -> list[str]:
    """The overrides that pick groups or top-level values (`experiment=`, `method=`, `seed=`, ...):
    those without a dot in their key. The rest (`train.lr=...`) are the run's own setting."""
    return [o for o in overrides if "." not in o.split("=", 1)[0]]


@functools.lru_cache(maxsize=256)
def _base(overrides: tuple[str, ...]) -> dict[str, Any]:
    return compose_dict(list(overrides))


def setting_of(d: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """{"section.key": value} for every identity key of SETTING_SECTIONS where `d` differs from `base`."""
    out = {}
    for section, cls in SETTING_SECTIONS.items():
        for f in dataclasses.fields(cls):
            value = d.get(section, {}).get(f.name)
            if is_identity(f) and value != base.get(section, {}).get(f.name):
                out[f"{section}.{f.name}"] = copy.deepcopy(value)
    return out


def compose(overrides: list[str]) -> RunConfig:
    """Hydra overrides -> a validated RunConfig (UserError naming the key or value otherwise)."""
    return run_config(compose_run(overrides))
