"""BitFit (Ben Zaken et al., 2022): only the backbone's bias terms train and are stored."""

from __future__ import annotations

from peft_cli.methods.base import Method, NoOptions, check_complete, load_backbone, stored_backbone
from peft_cli.methods.resident import WriteTensors
from peft_cli.models import backbone_parameters


def _is_bias(name: str) -> bool:
    # LayerNorm's additive term is a bias too (BitFit trains it); its scale is not.
    return name.endswith(".bias")


class BitFit(Method):
    name = "bitfit"
    config_cls = NoOptions

    def prepare(self, model):
        for n, p in backbone_parameters(model).items():
            if _is_bias(n):
                p.requires_grad_(True)
        return model

    def artifact(self, model):
        return stored_backbone(model, _is_bias)

    def load(self, model, tensors):
        load_backbone(model, tensors, _is_bias, "bias")
        return model

    def stage(self, shared, tensors):
        check_complete(shared.model, tensors, _is_bias, "bias")
        return WriteTensors(shared, tensors, "bias")
