"""`peftx export RUN_DIR OUT_DIR`: the run's model as a plain Hugging Face folder.

    restore (base model + artifact, as `peftx eval`) -> method.merge -> save_pretrained
    (safetensors, config, tokenizer) -> reload with plain transformers and compare logits

`AutoModelForSequenceClassification.from_pretrained(OUT_DIR)` needs no peftx. Methods that add
modules which cannot be folded into the base weights (bottleneck adapters) raise NotMergeable,
a UserError: exit 2 with the reason.

The folder is written beside OUT_DIR as OUT_DIR.tmp and renamed into place only after the
reloaded model's logits matched, so OUT_DIR is a complete export or absent. An existing OUT_DIR
is replaced only if it is a previous export (it holds `peftx_export.json`) or empty.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from peft_cli.core.errors import UserError
from peft_cli.core.files import write_json
from peft_cli.core.runtime import to_device
from peft_cli.models import load_tokenizer
from peft_cli.run.evaluate import restore
from peft_cli.run.record import read_result

if TYPE_CHECKING:
    import torch
    from torch import nn

    from peft_cli.core.config import TaskConfig

MARKER = "peftx_export.json"  # provenance + the logits check; also marks a folder as replaceable
CHECK_EXAMPLES = 8  # test examples whose logits the reloaded export must reproduce
TOLERANCE = 1e-4  # max |logit diff| (fp32) accepted; merging reorders float sums, nothing more


def export_run(run: Path, out: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the merged model of `run` to `out`; return what `peftx_export.json` records."""
    import torch

    _check_destination(out)
    r = restore(run, overrides)
    batch = _check_batch(r.assembled.data.tests[0], r.device)
    with torch.inference_mode():
        expected = r.model(**batch).logits.float()  # (B, num_labels), fp32, before merging
    merged = r.assembled.method.merge(r.model)
    _check_plain(merged, r.assembled.method.name)
    _set_labels(merged.config, r.cfg.task)

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with _quiet_transformers():
        merged.save_pretrained(tmp)  # safetensors + config.json
        load_tokenizer(r.cfg.model).save_pretrained(tmp)
        diff = _reload_diff(tmp, batch, expected)
    if diff > TOLERANCE:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"the exported model's logits differ from the run's by {diff:.2e} (> {TOLERANCE:g})")
    original = read_result(run / "result.json") or {}
    record = {
        "run": str(run),
        "method": r.cfg.method["name"],
        "method_tag": original.get("method_tag"),
        "model": r.cfg.model.name,
        "task": r.cfg.task.name,
        "seed": r.cfg.seed,
        "score": original.get("score"),
        "labels": r.cfg.task.labels,
        "logits_check": {"examples": int(batch["input_ids"].shape[0]), "max_abs_diff": diff, "tolerance": TOLERANCE},
    }
    write_json(tmp / MARKER, record)
    for f in tmp.iterdir():  # atomic writers create 0600 files; a model folder is for others to read
        f.chmod(0o644)
    _move_into_place(tmp, out)
    return record


def _check_destination(out: Path) -> None:
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file()):
        raise UserError(f"{out} exists and is not a previous peftx export; choose an empty or new OUT_DIR")


def _check_batch(encoded, device: "torch.device") -> dict[str, "torch.Tensor"]:
    batch = next(iter(encoded.loader(CHECK_EXAMPLES)))
    batch.pop("labels")
    return to_device(batch, device)


def _check_plain(model: "nn.Module", method: str) -> None:
    """The merged model must have exactly the tensors of its plain HF class: nothing else travels."""
    import torch

    with torch.device("meta"):  # shapes and names only, no memory
        reference = type(model)(model.config)
    extra = set(model.state_dict()) ^ set(reference.state_dict())
    if extra:
        raise RuntimeError(f"method '{method}' merged into a model with non-base tensors, e.g. {sorted(extra)[0]}")


def _set_labels(config: Any, task: "TaskConfig") -> None:
    """Make the config self-describing for plain transformers users (pipelines read id2label)."""
    config.num_labels = task.num_labels
    if task.is_regression:
        config.problem_type = "regression"
    else:
        config.problem_type = "single_label_classification"
        config.id2label = dict(enumerate(task.labels))
        config.label2id = {label: i for i, label in enumerate(task.labels)}


def _reload_diff(folder: Path, batch: dict[str, "torch.Tensor"], expected: "torch.Tensor") -> float:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).to(expected.device).eval()
    with torch.inference_mode():
        got = model(**batch).logits.float()
    return float((got - expected).abs().max())


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No per-shard progress bars on stderr: the command prints one line."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _move_into_place(tmp: Path, out: Path) -> None:
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.is_dir():
        out.rename(old)  # a previous export, or an empty folder
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
