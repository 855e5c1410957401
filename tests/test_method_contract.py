"""The Method contract, checked for every registered method on a tiny BERT and a tiny RoBERTa:

* freeze + `prepare` changes nothing at step 0 (the logits are the base model's);
* two real training steps (the harness's Trainer) move the model, and only through the method;
* trainable and stored counts are the method's, computed by hand from the model's shapes;
* `artifact()` loaded into a freshly loaded base model gives the trained logits;
* `merge()` gives a plain model with the same logits, or raises NotMergeable;
* `stage()` on a resident base model: `apply` gives the trained logits, `restore` the base model bit
  for bit, `apply` again the same logits bit for bit (non-mergeable methods refuse, exit 2);
* the tag is a pure function of the config.

Method-specific behaviour (HiWi's rows, LoRA's head exclusion, PaFi's sparse gradients) has its
own tests; this file is the one place the shared contract is checked.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch

from conftest import prepare, tiny_overrides
from peft_cli.core.compose import compose
from peft_cli.core.errors import NotMergeable, UserError
from peft_cli.core.runtime import seed_everything
from peft_cli.methods import REGISTRY, MethodContext, build_method, method_class
from peft_cli.methods.base import load_named
from peft_cli.methods.resident import Shared
from peft_cli.models import backbone_parameters, fingerprint, load_model
from peft_cli.run.assemble import assemble
from peft_cli.run.identity import method_tag
from peft_cli.run.log import RunLog
from peft_cli.run.trainer import Trainer

MODELS = ["tiny-random", "tiny-random-roberta"]
CASES = [(model, method) for model in MODELS for method in REGISTRY]


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(5, 1000, (3, 12), generator=g),
        "attention_mask": torch.ones(3, 12, dtype=torch.long),
    }


def expected_counts(method: str, base: torch.nn.Module, r: int | None) -> tuple[int, int]:
    """(trainable, stored) backbone-side parameters of `method` on `base`, from shapes alone."""
    c = base.config
    layers, h, inter = c.num_hidden_layers, c.hidden_size, c.intermediate_size
    backbone = backbone_parameters(base)
    total = sum(p.numel() for p in backbone.values())
    if method == "full":
        return total, total
    if method == "bitfit":
        biases = sum(p.numel() for n, p in backbone.items() if n.endswith(".bias"))
        return biases, biases
    if method == "pafi":  # global smallest 0.5% of every backbone entry
        k = round(0.005 * total)
        return k, k
    if method == "hiwi":  # one Bottleneck(d=inter, r) per FFN-in bias; stores the merged biases
        return layers * (2 * inter * r + r + inter), layers * inter
    if method == "lora":  # query and value: A (r x h) and B (h x r), r = 8
        n = layers * 2 * 2 * h * 8
        return n, n
    sites = {"adapter_houlsby": 2, "adapter_pfeiffer": 1}[method]  # Bottleneck(h, h // 16) per site
    b = h // 16
    n = layers * sites * (2 * h * b + b + h)
    return n, n


@pytest.fixture(scope="module")
def trained(tiny_glue, tmp_path_factory):
    """(model, method) -> what two real training steps left: config, base, method, trained model."""
    cache: dict[tuple[str, str], tuple] = {}

    def get(model: str, method: str):
        if (model, method) not in cache:
            out = tmp_path_factory.mktemp(f"{model}-{method}")
            cfg = compose(tiny_overrides(tiny_glue, out, model=model, method=method, **{"train.max_steps": 2}))
            seed_everything(cfg.seed)
            a = assemble(cfg, torch.device("cpu"))
            base = copy.deepcopy(a.model).eval()
            log = RunLog(out / "log.jsonl")
            t = Trainer(cfg, a, torch.device("cpu"), out, log)
            t.fit(threading.Event(), show_progress=False)
            log.close()
            t.restore_best()
            a.method.finalize(t.model)
            trainable = sum(p.numel() for p in t.params.values())  # what was optimized (finalize may fold it)
            cache[(model, method)] = (cfg, base, a.method, t.model.eval(), a.head, trainable)
        return cache[(model, method)]

    return get


@pytest.mark.parametrize("model, method", CASES)
def test_step0_is_the_base_model(model, method, tmp_path):
    cfg = compose([f"model={model}", f"method={method}"])
    base = load_model(cfg.model, cfg.task).eval()
    x = _inputs()
    ctx = MethodContext(model, fingerprint(base), tmp_path, cfg.mask)  # tmp_path: where PaFi's mask goes
    with torch.no_grad():
        expected = base(**x).logits
    prepared = prepare(build_method(cfg.method, ctx), copy.deepcopy(base)).eval()
    with torch.no_grad():
        assert torch.equal(prepared(**x).logits, expected)


@pytest.mark.parametrize("model, method", CASES)
def test_counts_artifact_reload_and_merge(trained, model, method):
    cfg, base, m, model_t, head, optimized = trained(model, method)
    x = _inputs()
    with torch.no_grad():
        before, after = base(**x).logits, model_t(**x).logits
    assert not torch.equal(before, after), "two training steps changed nothing"

    # counts, as result.json reports them (head excluded)
    artifact = m.artifact(model_t)
    trainable = optimized - sum(p.numel() for p in head.values())
    stored = sum(t.numel() for t in artifact.values() if t.is_floating_point())
    assert (trainable, stored) == expected_counts(method, base, getattr(m, "r", None))
    assert set(head) and all(p.requires_grad for p in head.values())

    # another process: a fresh base model + head + artifact gives the trained logits
    fresh = copy.deepcopy(base)
    load_named(fresh, {n: p.detach() for n, p in head.items()})
    loader = build_method(cfg.method, MethodContext(model, fingerprint(base), Path(cfg.results.dir), cfg.mask))
    loader.check_metadata(m.metadata())
    loaded = loader.load(fresh, artifact).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, after, rtol=0, atol=1e-6)

    # merged away into a plain model, or refused
    if not method_class(method).mergeable:
        with pytest.raises(NotMergeable):
            loader.merge(loaded)
        return
    merged = loader.merge(loaded)
    assert type(merged) is type(base) and set(merged.state_dict()) == set(base.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(merged(**x).logits, after, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model, method", CASES)
def test_stage_switches_in_and_out_of_a_resident_model(trained, model, method):
    cfg, base, m, model_t, head, _ = trained(model, method)
    x = _inputs()
    resident = copy.deepcopy(base)
    load_named(resident, {n: p.detach() for n, p in head.items()})
    before = {n: p.detach().clone() for n, p in resident.named_parameters()}
    stager = build_method(cfg.method, MethodContext(model, fingerprint(base), Path(cfg.results.dir), cfg.mask))
    stager.check_metadata(m.metadata())
    if not method_class(method).mergeable:
        with pytest.raises(UserError, match="cannot switch"):
            stager.stage(Shared(resident), m.artifact(model_t))
        return
    switch = stager.stage(Shared(resident), m.artifact(model_t))
    with torch.no_grad():
        after = model_t(**x).logits
        switch.apply()
        first = resident(**x).logits
        switch.restore()
        assert all(torch.equal(p, before[n]) for n, p in resident.named_parameters())
        switch.apply()
        assert torch.equal(resident(**x).logits, first)
    torch.testing.assert_close(first, after, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", list(REGISTRY))
def test_tag_is_a_function_of_the_config(method):
    a = compose([f"method={method}"])
    b = compose([f"method={method}", "model=tiny-random-roberta", "task=stsb", "seed=7", "train.epochs=9"])
    assert method_tag(a) == method_tag(b) == method_tag(compose([f"method={method}"]))
    assert method_tag(a).startswith(method)


def test_tags_tell_methods_apart():
    tags = [method_tag(compose([f"method={m}"])) for m in REGISTRY]
    assert len(set(tags)) == len(tags)
