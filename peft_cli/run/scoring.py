"""Scoring a model on a split: batched prediction, GLUE metrics, the headline score, and the
predictions file. Training (validation passes, the final test pass) and `peftx eval` use the
same functions, so a re-evaluated artifact is scored exactly as its run was."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from peft_cli.core.config import RunConfig
from peft_cli.core.files import write_text
from peft_cli.core.runtime import autocast, to_device
from peft_cli.data import metrics
from peft_cli.data.batching import longest_first

if TYPE_CHECKING:
    import torch
    from torch import nn

    from peft_cli.data.encode import Encoded
    from peft_cli.run.assemble import Encodings


class Scored(NamedTuple):
    metrics: dict[str, float]  # metric name (+ suffix) -> value, a fraction
    predictions: list[float]  # per example, file order: class id or regression value


class TestScores(NamedTuple):
    metrics: dict[str, float]  # every test metric of every dev set (MNLI: accuracy, accuracy_mm)
    splits: list[tuple[str, "Encoded", list[float]]]  # (suffix, split, predictions) per dev set


def predict(
    model: "nn.Module", encoded: "Encoded", batch_size: int, device: "torch.device", amp: "torch.dtype | None"
) -> list[float]:
    """Predictions in file order: class ids, or the regression value. Logits are taken in fp32.
    Rows are batched longest first (little padding), and outputs stay on the device until the end
    (one host copy per split, not per batch)."""
    import torch

    was_training = model.training
    model.eval()
    order = longest_first(encoded.lengths)  # (N,)
    outs = []
    with torch.inference_mode(), autocast(device, amp):
        for batch in encoded.loader(batch_size, order):
            batch = to_device(batch, device)
            batch.pop("labels")
            logits = model(**batch).logits.float()  # (B, num_labels)
            outs.append(logits[:, 0] if encoded.regression else logits.argmax(-1))
    model.train(was_training)
    if not outs:
        return []
    preds = torch.empty(len(encoded), dtype=outs[0].dtype)
    preds[order] = torch.cat(outs).cpu()  # back to file order
    return preds.tolist()


def score_split(
    cfg: RunConfig,
    model: "nn.Module",
    enc: "Encoded",
    device: "torch.device",
    amp: "torch.dtype | None",
    suffix: str = "",
) -> Scored:
    """Every metric of the task on one split (names get `suffix`, e.g. MNLI's "_mm")."""
    preds = predict(model, enc, cfg.train.eval_batch, device, amp)
    return Scored(metrics.compute(cfg.task.metrics, preds, enc.labels, suffix), preds)


def score_tests(
    cfg: RunConfig, model: "nn.Module", data: "Encodings", device: "torch.device", amp: "torch.dtype | None"
) -> TestScores:
    """The test split(s), each once: MNLI's mismatched set adds metrics with suffix `_mm`."""
    found: dict[str, float] = {}
    splits = []
    for enc, suffix in zip(data.tests, cfg.task.dev_suffixes, strict=True):
        scored = score_split(cfg, model, enc, device, amp, suffix)
        found.update(scored.metrics)
        splits.append((suffix, enc, scored.predictions))
    return TestScores(found, splits)


def headline(cfg: RunConfig, test_metrics: dict[str, float]) -> float:
    """The run's `score`: the task's headline test metric, in percent."""
    return 100.0 * test_metrics[cfg.task.headline]


def write_predictions(path: Path, enc: "Encoded", preds: list[float]) -> None:
    """predictions.tsv: `index prediction label`, one row per example of `enc`. Regression values
    are written at full precision (repr: they read back as the very floats the metrics saw)."""
    fmt = (lambda v: repr(float(v))) if enc.regression else (lambda v: str(int(v)))
    rows = ["index\tprediction\tlabel"] + [
        f"{i}\t{fmt(p)}\t{fmt(g)}" for i, p, g in zip(enc.idx, preds, enc.labels, strict=True)
    ]
    write_text(path, "\n".join(rows) + "\n")
