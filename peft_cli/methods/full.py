"""Full fine-tuning: every backbone parameter trains and is stored."""

from __future__ import annotations

from peft_cli.methods import NoOptions
from peft_cli.methods.base import Method, load_named
from peft_cli.models import backbone_parameters


class Full(Method):
    name = "full"
    config_cls = NoOptions

    def prepare(self, model):
        model.requires_grad_(True)
        return model

    def artifact(self, model):
        return {n: p.detach().cpu().contiguous() for n, p in backbone_parameters(model).items()}

    def load(self, model, tensors):
        load_named(model, tensors)
        return model
