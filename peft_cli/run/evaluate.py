"""`peftx eval RUN_DIR`: rebuild base model + stored artifact, re-score the test split(s).

The rebuilt model never sees the trained one: it is the pre-trained backbone loaded afresh,
the method's artifact applied by `method.load`, the head copied in. Its metrics must equal the
run's, which is what makes an artifact worth storing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_cli.core.config import RunConfig, fill_added, run_config
from peft_cli.core.errors import UserError
from peft_cli.core.files import load_tensors, write_json
from peft_cli.core.runtime import amp_dtype, resolve_device, seed_everything
from peft_cli.methods.base import load_named
from peft_cli.run.assemble import Assembled, assemble
from peft_cli.run.record import read_result
from peft_cli.run.scoring import headline, score_tests

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class Restored:
    cfg: RunConfig
    assembled: Assembled
    model: "nn.Module"  # base + artifact, as `method.load` returns it
    device: "torch.device"


def read_run_config(run: Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The resolved config a run folder was trained with (its config.yaml)."""
    import yaml

    path = run / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run} is not a peftx run folder (no config.yaml)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {e}") from None
    for dotted, value in (overrides or {}).items():  # e.g. data.glue_dir on another machine
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {}) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise UserError(f"override '{dotted}' does not name a key of {path}")
        node[leaf] = value
    return run_config(fill_added(data))  # a run saved before a key existed computed its `before` value


def restore(run: Path, overrides: dict[str, Any] | None = None) -> Restored:
    """Base model + this run's artifact, ready for inference, on the configured device."""
    cfg = read_run_config(run, overrides)
    device = resolve_device(cfg.train)
    seed_everything(cfg.seed)
    a = assemble(cfg, device, with_train=False)
    tensors, meta = load_tensors(run / "artifact.safetensors")
    if meta.get("model_fingerprint") != a.fingerprint:
        raise UserError(
            f"{run / 'artifact.safetensors'} was made for another backbone than model '{cfg.model.name}' "
            "loads now (fingerprint mismatch); evaluate it against the model it was trained from"
        )
    a.method.check_metadata(meta)
    head_names = json.loads(meta.get("head", "[]"))
    missing = [n for n in head_names if n not in tensors]
    if missing:
        raise UserError(f"{run / 'artifact.safetensors'} lacks head tensor '{missing[0]}'; the file is damaged")
    load_named(a.model, {n: tensors.pop(n) for n in head_names})
    model = a.method.load(a.model, tensors).to(device)
    model.eval()
    return Restored(cfg, a, model, device)


def evaluate_run(run: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Re-score the test split(s); write eval.json beside result.json and return it."""
    r = restore(run, overrides)
    t0 = time.time()
    test = score_tests(r.cfg, r.model, r.assembled.data, r.device, amp_dtype(r.cfg.train, r.device)).metrics
    original = read_result(run / "result.json")
    run_test = original["metrics"]["test"] if original and original["status"] == "completed" else None
    record = {
        "run": str(run),
        "metrics": {"test": test},
        "score": headline(r.cfg, test),
        "run_metrics": {"test": run_test},
        "matches_run": run_test == test,
        "time": {"eval_s": round(time.time() - t0, 3)},
    }
    write_json(run / "eval.json", record)
    return record
