"""Method registry: name -> Method class. A new method is a module (or subpackage) here, a
`conf/method/NAME.yaml`, and one line in REGISTRY. Nothing outside this package names a method:
the harness reaches every method through this registry and the `Method` protocol (base.py)."""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING, Any

from peft_cli.core.config import from_dict
from peft_cli.core.errors import UserError
from peft_cli.methods.base import Method, MethodContext, NoOptions, SharedResource

if TYPE_CHECKING:
    from peft_cli.core.config import MaskConfig, RunConfig

# name -> "module:Class", imported only when used (keeps `peftx --help` fast)
REGISTRY: dict[str, str] = {
    "full": "peft_cli.methods.full:Full",
    "bitfit": "peft_cli.methods.bitfit:BitFit",
    "pafi": "peft_cli.methods.pafi:PaFi",
    "hiwi": "peft_cli.methods.hiwi:HiWi",
    "lora": "peft_cli.methods.lora:LoRA",
    "adapter_houlsby": "peft_cli.methods.adapter:Houlsby",
    "adapter_pfeiffer": "peft_cli.methods.adapter:Pfeiffer",
}

# keys of conf/method/*.yaml that belong to the harness, not to the method's own schema
# (display_name: the report's row label; neither it nor name enters the method's dataclass)
HARNESS_KEYS = ("name", "lr", "display_name")


def method_class(name: str) -> type[Method]:
    """The registered class of method `name`; UserError with the choices (and a guess) otherwise."""
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown method '{name}'{hint}; choose one of: {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def method_config(raw: dict[str, Any]) -> Any:
    """The method's own dataclass from `method.*`, validated (unknown keys -> UserError)."""
    cls = method_class(raw["name"])
    own = {k: v for k, v in raw.items() if k not in HARNESS_KEYS}
    return from_dict(cls.config_cls, own, "method")


def method_tag(raw: dict[str, Any], mask: "MaskConfig") -> str:
    """The method's tag for a `method.*` dict and the top-level mask config, e.g. `lora-r8`."""
    return method_class(raw["name"]).tag(method_config(raw), mask)


def build_method(raw: dict[str, Any], ctx: MethodContext) -> Method:
    """An instance of the configured method, its config validated."""
    return method_class(raw["name"])(method_config(raw), ctx)


def shared_resource(cfg: "RunConfig") -> SharedResource | None:
    """What the run's method needs built once before runs start (PaFi: its shared mask), or None."""
    return method_class(cfg.method["name"]).shared_resource(cfg)


def mask_owner() -> type[Method]:
    """The registered method that reads the top-level `mask.*` keys: `peftx mask` builds its mask."""
    owners = [c for c in map(method_class, REGISTRY) if c.uses_mask]
    if len(owners) != 1:
        raise RuntimeError(f"expected one registered method that reads mask.*, found {len(owners)}")
    return owners[0]


__all__ = [
    "REGISTRY",
    "Method",
    "MethodContext",
    "NoOptions",
    "SharedResource",
    "build_method",
    "mask_owner",
    "method_class",
    "method_config",
    "method_tag",
    "shared_resource",
]
