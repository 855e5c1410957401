"""Full fine-tuning: every backbone parameter trains and is stored."""

from __future__ import annotations

from peft_cli.methods.base import Method, NoOptions, check_complete, load_backbone, stored_backbone
from peft_cli.methods.resident import WriteTensors
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

    def stage(self, shared, tensors):
        # the baseline: every backbone tensor is copied in, and the base model is kept as a second copy
        check_complete(shared.model, tensors, _everything, "backbone")
        return WriteTensors(shared, tensors, "backbone")
