"""LoRA (via peft) and the Houlsby/Pfeiffer bottleneck adapters: step 0 is the base model, the
artifact holds only the new matrices, a fresh base + artifact computes the trained logits, LoRA
merges into a plain model, adapters refuse to (and `peftx export` exits 2)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from conftest import prepare, tiny_overrides
from peft_cli.core.compose import compose
from peft_cli.core.errors import NotMergeable, UserError
from peft_cli.methods import MethodContext, build_method
from peft_cli.models import backbone_parameters, head_parameters, load_model

MODELS = ["tiny-random", "tiny-random-roberta"]


def _setup(model: str, method: str, *overrides: str):
    cfg = compose([f"model={model}", f"method={method}", *overrides])
    base = load_model(cfg.model, cfg.task).eval()
    ctx = MethodContext(model, "fp", Path("unused"), cfg.mask)
    return base, (lambda: build_method(cfg.method, ctx))


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(5, 1000, (3, 12), generator=g),
        "attention_mask": torch.ones(3, 12, dtype=torch.long),
    }


def _train_stand_in(model: torch.nn.Module) -> None:
    """Move every trainable backbone-side parameter off its init (B / W_up are zero at init)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in backbone_parameters(model).values():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("model", MODELS)
def test_lora_keeps_the_head_objects_and_merges_in_place(model):
    """peft injects in place: the harness's head Parameters stay the model's, and merging the
    prepared model itself (not only a reloaded one, test_method_contract.py) unloads peft."""
    base, make = _setup(model, "lora")
    x = _inputs()
    fresh = copy.deepcopy(base)
    head = head_parameters(fresh)
    m = make()
    prepared = prepare(m, fresh).eval()
    assert prepared is fresh and all(p is head[n] for n, p in head_parameters(prepared).items())
    _train_stand_in(prepared)
    trained = prepared(**x).logits
    merged = m.merge(prepared)
    assert type(merged) is type(base) and not hasattr(merged, "peft_config")
    torch.testing.assert_close(merged(**x).logits, trained, rtol=0, atol=1e-5)


def test_lora_never_targets_the_head():
    # RoBERTa's head has its own `dense`; targeting `dense` must only reach the backbone's
    base, make = _setup("tiny-random-roberta", "lora", "method.target_modules=[dense]")
    prepared = prepare(make(), copy.deepcopy(base))
    assert not any(".lora_" in n for n in head_parameters(prepared))
    assert any(".lora_" in n for n in backbone_parameters(prepared))


def test_lora_unknown_target_is_a_user_error():
    base, make = _setup("tiny-random", "lora", "method.target_modules=[q_proj]")
    with pytest.raises(UserError, match="method.target_modules"):
        prepare(make(), base)


@pytest.mark.parametrize("method, per_layer", [("adapter_houlsby", 2), ("adapter_pfeiffer", 1)])
def test_adapter_sites_width_and_no_merge(method, per_layer):
    base, make = _setup("tiny-random-roberta", method, "method.reduction_factor=8")
    m = make()
    prepared = prepare(m, copy.deepcopy(base))
    downs = {n: p for n, p in prepared.named_parameters() if n.endswith("adapter.down.weight")}
    assert len(downs) == per_layer * base.config.num_hidden_layers
    assert {p.shape for p in downs.values()} == {(base.config.hidden_size // 8, base.config.hidden_size)}
    assert not any(p.requires_grad for n, p in backbone_parameters(prepared).items() if "LayerNorm" in n)
    with pytest.raises(NotMergeable, match="cannot be folded"):
        m.merge(prepared)


def test_lora_train_then_eval_round_trip(cli, tiny_glue, tmp_path):
    r = cli("train", *tiny_overrides(tiny_glue, tmp_path, method="lora", model="tiny-random-roberta"))
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs/smoke/tiny-random-roberta/lora-r8/rte/seed42"
    result = json.loads((run / "result.json").read_text())
    cfg = compose(["model=tiny-random-roberta"])
    backbone = sum(p.numel() for p in backbone_parameters(load_model(cfg.model, cfg.task)).values())
    assert result["params"]["backbone"] == backbone  # the injected A/B are not backbone
    e = cli("eval", str(run))
    assert e.exit_code == 0, e.output
    assert json.loads((run / "eval.json").read_text())["matches_run"] is True


def test_adapter_export_exits_2(cli, tiny_glue, tmp_path):
    r = cli("train", *tiny_overrides(tiny_glue, tmp_path, method="adapter_pfeiffer", **{"train.max_steps": 2}))
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs/smoke/tiny-random/adapter_pfeiffer-rf16-steps2/rte/seed42"
    e = cli("export", str(run), str(tmp_path / "export"))
    assert e.exit_code == 2
    assert "cannot be folded" in e.output
    assert not (tmp_path / "export").exists() and not (tmp_path / "export.tmp").exists()
