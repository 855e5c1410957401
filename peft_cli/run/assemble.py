"""Assemble what a run needs from a RunConfig: tokenizer, base model, encoded splits, method.
Shared by `train`, `eval` and `export`, so all three see the same model and the same examples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_cli.core.config import RunConfig
from peft_cli.core.runtime import to_device
from peft_cli.data.encode import Encoded
from peft_cli.data.glue import Splits, load_splits
from peft_cli.methods import Method, MethodContext, build_method
from peft_cli.models import backbone_parameters, fingerprint, head_parameters, load_model, load_tokenizer

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class Encodings:
    train: Encoded
    validation: Encoded
    tests: list[Encoded]  # one per dev set (MNLI: matched, mismatched)


def encode(cfg: RunConfig, tokenizer: Any, splits: Splits) -> Encodings:
    """Tokenize every split at `train.max_length`."""

    def enc(examples: list[dict]) -> Encoded:
        return Encoded(examples, tokenizer, cfg.train.max_length, cfg.task.is_regression)

    return Encodings(enc(splits.train), enc(splits.validation), [enc(t) for t in splits.tests])


@dataclass
class Assembled:
    model: "nn.Module"  # base model + fresh head, before the method touches it
    head: dict[str, "nn.Parameter"]  # references into `model`, valid after the method wraps it
    method: Method
    data: Encodings
    fingerprint: str
    backbone_size: int  # pre-trained backbone elements, counted before a method adds modules under it


def assemble(cfg: RunConfig, device: "torch.device", with_train: bool = True) -> Assembled:
    """Tokenizer, splits, base model + fresh head on `device`, and the method (not yet prepared).
    Seeding is the caller's (core.runtime.seed_everything), before this: the head init draws from it.
    `with_train=False` (eval, export): the method gets no training batches."""
    tokenizer = load_tokenizer(cfg.model)
    splits = load_splits(cfg.task, cfg.data)
    data = encode(cfg, tokenizer, splits)
    model = load_model(cfg.model, cfg.task).to(device)
    fp = fingerprint(model)
    train_batches = None
    if with_train:

        def train_batches():  # FISH: a seeded pass over training batches
            import torch

            order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(cfg.seed))
            for batch in data.train.loader(cfg.train.batch_size, order):
                yield to_device(batch, device)

    ctx = MethodContext(
        model_name=cfg.model.name,
        fingerprint=fp,
        results_dir=Path(cfg.results.dir),
        mask=cfg.mask,
        train_batches=train_batches,
    )
    method = build_method(cfg.method, ctx)
    backbone_size = sum(p.numel() for p in backbone_parameters(model).values())
    return Assembled(model, head_parameters(model), method, data, fp, backbone_size)
