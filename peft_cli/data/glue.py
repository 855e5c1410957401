"""GLUE data: read one task (classic TSV folder or the hub) and split it by protocol.

Every source is reduced to the same canonical examples: {"idx", "text_a", "text_b", "label"}.
`label` is a class id (int) or, for regression, a float. Knows nothing of methods.

Split protocols (`data.protocol`), seeded by `data.split_seed`, never by the run seed, so all
seeds of a run see the same validation and test examples:

* ``holdout`` (the PaFi paper's, after Mahabadi et al. 2021): GLUE's test labels are private,
  so the dev set must serve as test. Small tasks (size: small) split dev in two shuffled halves,
  validation (the first ceil(n/2)) and test (the rest). Large tasks hold `holdout_size` shuffled
  training examples out as validation and test on the full dev set(s).
* ``dev``: select and report on the dev set itself, as the RoBERTa and LoRA tables do.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from peft_cli.core.config import DataConfig, TaskConfig
from peft_cli.core.errors import UserError

Example = dict[str, Any]


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    tests: list[list[Example]]  # one per dev set; MNLI: matched, mismatched (task.dev_suffixes)


# --------------------------------------------------------------------------------------------
# reading


def read_tsv(path: Path, task: TaskConfig) -> list[Example]:
    """One classic GLUE TSV -> canonical examples. Quotes are literal text in GLUE (QUOTE_NONE),
    MRPC carries a UTF-8 BOM (utf-8-sig), CoLA has no header (columns by index)."""
    if not path.is_file():
        raise UserError(
            f"GLUE file not found: {path} (data.glue_dir must hold {task.folder}/{path.name}; "
            "set data.glue_dir=null to use the hub)"
        )
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: not a UTF-8 tab-separated GLUE file ({e})") from None
    spec = task.tsv
    if spec.header:
        header, rows = rows[0], rows[1:]
        where: dict[str, int] = {}
        for fieldname, col in spec.columns.items():
            if col not in header:
                raise UserError(f"{path}: missing column '{col}' (for {fieldname}); header has: {', '.join(header)}")
            where[fieldname] = header.index(col)
    else:
        where = {f: int(c) for f, c in spec.columns.items()}
    need = max(where.values()) + 1
    out = []
    for i, row in enumerate(rows):
        line = i + 1 + int(spec.header)  # 1-based line number in the file
        if not row:
            continue
        if len(row) < need:
            if task.skip_short_rows:  # the original QQP has a few broken rows; GLUE's processors skip them
                continue
            raise UserError(f"{path}:{line}: row has {len(row)} columns, expected at least {need}")
        out.append(_example(i, {f: row[c] for f, c in where.items()}, task, f"{path}:{line}"))
    if not out:
        raise UserError(f"{path}: no examples")
    return out


def _example(idx: int, raw: dict[str, Any], task: TaskConfig, where: str) -> Example:
    label = raw["label"]
    if task.is_regression:
        try:
            label = float(label)
        except (TypeError, ValueError):
            raise UserError(f"{where}: label {label!r} is not a number (task {task.name} is a regression)") from None
    elif isinstance(label, str):
        if label not in task.labels:  # type: ignore[operator]
            raise UserError(f"{where}: bad label {label!r}; task {task.name} expects one of {task.labels}")
        label = task.labels.index(label)  # type: ignore[union-attr]
    elif not 0 <= int(label) < task.num_labels:  # hub ids; -1 marks unlabeled test rows
        raise UserError(f"{where}: bad label id {label!r} for task {task.name}")
    return {"idx": idx, "text_a": raw["text_a"], "text_b": raw.get("text_b"), "label": label}


def read_hub(task: TaskConfig, split: str, cache_dir: str | None) -> list[Example]:
    """One split of nyu-mll/glue via `datasets` (needs the hub or a warm HF cache)."""
    import datasets

    try:
        ds = datasets.load_dataset("nyu-mll/glue", task.hub.config, split=split, cache_dir=cache_dir)
    except Exception as e:  # network, missing cache: tell the user how to go offline
        raise UserError(
            f"cannot load nyu-mll/glue/{task.hub.config} split '{split}' from the hub "
            f"({type(e).__name__}); offline, set data.glue_dir=/path/to/glue_data"
        ) from None
    cols = task.hub.columns
    where = f"nyu-mll/glue/{task.hub.config}/{split}"
    return [_example(i, {f: row[c] for f, c in cols.items()}, task, f"{where} row {i}") for i, row in enumerate(ds)]


class TaskData(NamedTuple):
    train: list[Example]
    devs: list[list[Example]]  # one per dev set (MNLI: matched, mismatched)


def read_task(task: TaskConfig, data: DataConfig) -> TaskData:
    """The task's train and dev examples from the configured source (GLUE folder or the hub)."""
    if data.glue_dir is None:
        return TaskData(
            read_hub(task, task.hub.train, data.cache_dir),
            [read_hub(task, s, data.cache_dir) for s in task.hub.dev],
        )
    root = Path(data.glue_dir).expanduser()
    if not root.is_dir():
        raise UserError(
            f"data.glue_dir={data.glue_dir} is not a folder; point it at a classic GLUE "
            f"folder ({task.folder}/train.tsv, ...) or set data.glue_dir=null for the hub"
        )
    folder = root / task.folder
    return TaskData(read_tsv(folder / task.tsv.train, task), [read_tsv(folder / f, task) for f in task.tsv.dev])


# --------------------------------------------------------------------------------------------
# protocol


def split(task: TaskConfig, data: DataConfig, train: list[Example], devs: list[list[Example]]) -> Splits:
    """Train / validation / test(s) under `data.protocol`, seeded by `data.split_seed` (module docstring)."""
    rng = random.Random(data.split_seed)
    if data.protocol == "dev":
        splits = Splits(train, devs[0], devs)
    elif task.size == "small":
        dev = devs[0][:]
        rng.shuffle(dev)
        half = math.ceil(len(dev) / 2)
        splits = Splits(train, dev[:half], [dev[half:]])
    else:
        if len(train) <= data.holdout_size:
            raise UserError(f"data.holdout_size={data.holdout_size} leaves no training data for {task.name}")
        order = train[:]
        rng.shuffle(order)
        splits = Splits(order[data.holdout_size :], order[: data.holdout_size], devs)
    if data.max_train_examples is not None and len(splits.train) > data.max_train_examples:
        splits.train = random.Random(data.split_seed + 1).sample(splits.train, data.max_train_examples)
    return splits


def load_splits(task: TaskConfig, data: DataConfig) -> Splits:
    """The task's train / validation / test example lists under `data.protocol`."""
    train, devs = read_task(task, data)
    return split(task, data, train, devs)
