"""Full fine-tuning: every backbone parameter trains and is stored."""

from __future__ import annotations

from peft_cli.methods.base import Method, NoOptions, load_backbone, stored_backbone
from peft_cli.models import backbone_parameters


def _everything(name: str) -> bool:
    return True


class Full(Method):
    name = "full"
    config_cls = NoOptions

    def prepare(self, model):
        for p in backbone_parameters(model).values():
            p.requires_grad_(True)
        return model

    def artifact(self, model):
        return stored_backbone(model, _everything)

    def load(self, model, tensors):
        load_backbone(model, tensors, _everything, "backbone")
        return model
