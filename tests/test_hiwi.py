"""HiWi: zero init, merged == unmerged, artifact = merged target tensors only, the stored/trainable
arithmetic on a roberta-base-sized model (built on the meta device: names and shapes, no memory)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from conftest import prepare
from peft_cli.core.compose import compose
from peft_cli.core.errors import UserError
from peft_cli.methods import MethodContext, build_method, method_tag
from peft_cli.models import backbone_parameters, load_model

FFN_IN_BIAS = r"\.intermediate\.dense\.bias$"


def _setup(model: str = "tiny-random", **method: object):
    cfg = compose([f"model={model}", "method=hiwi", *(f"method.{k}={v}" for k, v in method.items())])
    base = load_model(cfg.model, cfg.task).eval()
    with torch.no_grad():  # random init zeroes biases; pre-trained ones are not (and p = 0 starves W_down)
        g = torch.Generator().manual_seed(2)
        for n, p in backbone_parameters(base).items():
            if n.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    ctx = MethodContext(model, "fp", Path("unused"), cfg.mask)
    return cfg, base, (lambda: build_method(cfg.method, ctx))


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(5, 1000, (3, 12), generator=g),
        "attention_mask": torch.ones(3, 12, dtype=torch.long),
    }


def _perturb(model: torch.nn.Module) -> None:
    """Stand-in for training: move every adapter parameter off its init (W_up off zero). The head
    is the harness's (stored apart), so it stays as in `base`."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in backbone_parameters(model).values():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("model", ["tiny-random", "tiny-random-roberta"])
def test_merged_equals_unmerged_and_artifact_holds_only_targets(model):
    _, base, make = _setup(model)
    x = _inputs()
    method = make()
    prepared = prepare(method, copy.deepcopy(base)).eval()
    _perturb(prepared)
    trained = prepared(**x).logits
    assert not torch.allclose(trained, base(**x).logits)  # the adapter does act

    artifact = method.artifact(prepared)
    targets = {n for n in backbone_parameters(base) if n.endswith("intermediate.dense.bias")}
    assert set(artifact) == targets and len(targets) == base.config.num_hidden_layers
    for name, t in artifact.items():
        assert t.shape == backbone_parameters(base)[name].shape
        assert not torch.equal(t, backbone_parameters(base)[name])  # g(p), not p

    loaded = make().load(copy.deepcopy(base), artifact)  # another process: fresh base + artifact
    assert set(loaded.state_dict()) == set(base.state_dict())  # a plain model
    torch.testing.assert_close(loaded(**x).logits, trained, rtol=0, atol=1e-6)
    merged = method.merge(prepared)  # fold in place: the adapters are gone
    assert set(merged.state_dict()) == set(base.state_dict())
    torch.testing.assert_close(merged(**x).logits, trained, rtol=0, atol=1e-6)


def test_gradients_reach_adapter_through_frozen_p():
    _, base, make = _setup()
    prepared = prepare(make(), copy.deepcopy(base))
    _perturb(prepared)
    prepared(**_inputs(), labels=torch.tensor([0, 1, 0])).loss.backward()
    named = dict(prepared.named_parameters())
    originals = [n for n in named if n.endswith("parametrizations.bias.original")]
    assert originals and all(not named[n].requires_grad and named[n].grad is None for n in originals)
    adapters = [n for n, p in named.items() if p.requires_grad and n.startswith("bert.")]
    assert adapters and all(named[n].grad is not None and named[n].grad.abs().sum() > 0 for n in adapters)
    assert {n for n, p in backbone_parameters(prepared).items() if p.requires_grad} == set(adapters)


def test_weight_targets_work_along_the_input_dimension():
    _, base, make = _setup(targets=r"['\.intermediate\.dense\.weight$']", r=3)
    method = make()
    prepared = prepare(method, copy.deepcopy(base)).eval()
    down = [p for n, p in prepared.named_parameters() if n.endswith("down.weight")]
    hidden = base.config.hidden_size  # the (intermediate, hidden) weight is `intermediate` rows of length hidden
    assert down and all(p.shape == (3, hidden) for p in down)
    _perturb(prepared)
    x = _inputs()
    trained = prepared(**x).logits
    artifact = method.artifact(prepared)
    assert {t.shape for t in artifact.values()} == {(base.config.intermediate_size, hidden)}
    torch.testing.assert_close(make().load(copy.deepcopy(base), artifact)(**x).logits, trained, rtol=0, atol=1e-5)


def test_shared_adapter_is_one_module_across_layers():
    _, base, make = _setup(shared="true", r=4)
    prepared = prepare(make(), copy.deepcopy(base))
    d = base.config.intermediate_size
    trainable = sum(p.numel() for p in backbone_parameters(prepared).values() if p.requires_grad)
    assert trainable == 2 * d * 4 + 4 + d  # one Bottleneck(d, 4), not one per layer


def test_roberta_base_stored_and_trainable_arithmetic():
    """roberta-base: FFN-in biases are 12 x 3072 = 36,864 stored values (0.03% of the backbone); the default
    width r is the one whose 12 adapters come closest to 0.5% of the backbone."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    with torch.device("meta"):
        model = RobertaForSequenceClassification(
            RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, num_labels=2)
        )
    backbone = sum(p.numel() for p in backbone_parameters(model).values())
    assert backbone == 124_055_040  # 124.6M less the pooler (768 x 769), which the classifier does not use
    cfg = compose(["method=hiwi"])
    method = build_method(cfg.method, MethodContext("roberta-base", "fp", Path("unused"), cfg.mask))
    prepare(method, model)
    stored = sum(getattr(m, a).numel() for m, a in method.targets.values())  # what artifact() writes
    trainable = sum(p.numel() for p in backbone_parameters(model).values() if p.requires_grad)
    assert stored == 12 * 3072 == 36_864
    assert round(100 * stored / backbone, 2) == 0.03
    assert method.r == 8 and trainable == 12 * (2 * 3072 * 8 + 8 + 3072) == 626_784
    assert abs(trainable / backbone - 0.005) < 0.0001


def test_tags_name_the_variant():
    mask = compose([]).mask
    assert method_tag({"name": "hiwi", "targets": [FFN_IN_BIAS], "r": None, "budget": 0.005}, mask) == "hiwi-b0.005"
    assert method_tag({"name": "hiwi", "r": 16, "shared": True, "activation": "gelu"}, mask) == "hiwi-r16-shared-gelu"
    escaped = method_tag({"name": "hiwi", "targets": [r"\.intermediate\.dense\.weight$"]}, mask)
    plain = method_tag({"name": "hiwi", "targets": [r"intermediate.dense.weight"]}, mask)
    assert escaped.startswith("hiwi-tintermediatedenseweight-h") and escaped.endswith("-b0.005")
    assert plain != escaped  # the slug drops characters, so a hash of the exact regexes tells them apart


@pytest.mark.parametrize(
    "override, key",
    [
        ("targets=['nomatch$']", "method.targets"),
        ("r=0", "method.r"),
        ("activation=softplus", "method.activation"),
        ("budget=2", "method.budget"),
    ],
)
def test_bad_config_names_the_key(override, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        _, base, make = _setup(**dict([override.split("=", 1)]))
        prepare(make(), base)
