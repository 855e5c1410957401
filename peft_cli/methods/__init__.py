"""Method registry: name -> Method class. A new method is one file here plus one line below."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from peft_cli.config import from_dict
from peft_cli.errors import UserError
from peft_cli.methods.base import Method, MethodContext

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
HARNESS_KEYS = ("name", "lr")


def method_class(name: str) -> type[Method]:
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown method '{name}'{hint}; choose one of: {', '.join(REGISTRY)}")
    import importlib

    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def method_config(raw: dict[str, Any]) -> Any:
    """The method's own dataclass from `method.*`, validated (unknown keys -> UserError)."""
    cls = method_class(raw["name"])
    own = {k: v for k, v in raw.items() if k not in HARNESS_KEYS}
    return from_dict(cls.config_cls, own, "method")


def method_tag(raw: dict[str, Any], mask: Any) -> str:
    return method_class(raw["name"]).tag(method_config(raw), mask)


def build_method(raw: dict[str, Any], ctx: MethodContext) -> Method:
    return method_class(raw["name"])(method_config(raw), ctx)


@dataclasses.dataclass
class NoOptions:
    """Config of a method that has no options of its own."""


__all__ = ["Method", "MethodContext", "NoOptions", "REGISTRY", "build_method", "method_class", "method_config", "method_tag"]
