"""Full fine-tuning: every backbone parameter trains and is stored."""

from __future__ import annotations

from peft_cli.methods import NoOptions
from peft_cli.methods.base import Method, load_backbone, stored_backbone


class Full(Method):
    name = "full"
    config_cls = NoOptions

    def prepare(self, model):
        model.requires_grad_(True)
        return model

    def artifact(self, model):
        return stored_backbone(model, lambda n: True)

    def load(self, model, tensors):
        load_backbone(model, tensors, lambda n: True, "backbone")
        return model
