"""Published reference rows (conf/reference/NAME.yaml): numbers from papers, shown beside the
measured rows of a report but never mixed into them. The schema is documented in
conf/reference/roberta_base_lora.yaml and checked here by `from_dict` (unknown keys are errors)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peft_cli.core.compose import conf_dir
from peft_cli.core.config import from_dict
from peft_cli.core.errors import UserError


@dataclass
class ReferenceRow:
    label: str
    scores: dict[str, dict[str, float]]  # task -> metric -> percent
    trainable: int | None = None  # parameters updated in training, head excluded
    stored: int | None = None  # parameters a task stores, head excluded; None = not plotted
    avg: float | None = None  # as published (over the source's own tasks)


@dataclass
class Reference:
    source: str
    model: str
    protocol: str
    backbone: int
    rows: list[ReferenceRow]
    runs: int | None = None  # seeds behind each published cell
    name: str = ""  # filled from the file name


def reference_path(name: str) -> Path:
    """NAME -> conf/reference/NAME.yaml; a name ending in .yaml is a path to the user's own file."""
    if name.endswith((".yaml", ".yml")):
        return Path(name)
    return conf_dir() / "reference" / f"{name}.yaml"


def load_reference(name: str) -> Reference:
    """One reference file by name (conf/reference/NAME.yaml) or path, validated."""
    import yaml

    path = reference_path(name)
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir() / "reference").glob("*.yaml"))
        raise UserError(
            f"report.references: no reference file {path}; choose from: {', '.join(known) or 'none'} "
            "(or give a path ending in .yaml)"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path} is not readable YAML ({str(e).splitlines()[0]})") from None
    ref = from_dict(Reference, {**(data or {}), "name": Path(name).stem}, path.stem)
    if ref.backbone <= 0:
        raise UserError(f"{path}: backbone is {ref.backbone}; it must be the backbone's parameter count (> 0)")
    return ref


def load_references(names: list[str]) -> list[Reference]:
    """Every reference file named in `report.references`."""
    return [load_reference(n) for n in names]
