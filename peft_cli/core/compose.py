"""The one place that talks to Hydra: compose `conf/` with the user's overrides into a plain dict
(then core/config.py validates it). Hydra's multi-line errors become one-line UserErrors."""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path
from typing import Any

from peft_cli.core.config import DataConfig, RunConfig, TrainConfig, is_identity, run_config
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


def compose_dict(overrides: list[str]) -> dict[str, Any]:
    """Hydra compose over conf/ -> plain resolved dict. Hydra's errors become one-line UserErrors."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None, job_name="peftx"):
            cfg = compose(config_name="config", overrides=list(overrides))
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise UserError(_one_line(e)) from None


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
    same experiment, task, method, model and seed give without the other overrides."""
    d = compose_dict(overrides)
    d["setting"] = setting_of(d, _base(tuple(base_overrides(overrides))))
    return d


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
