"""`train.report_to`: where a run's training curve goes besides log.jsonl, all in the run folder.

csv           train.csv: step, loss, lr, grad_norm, examples_per_s (one row per logged step)
tensorboard   tb/ event files (needs the `tensorboard` package)
wandb         wandb/ offline run (needs `wandb`; never goes online: sync it yourself)
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Any, Protocol

from peft_cli.core.errors import UserError

CSV_COLUMNS = ("step", "loss", "lr", "grad_norm", "examples_per_s")


class Reporter(Protocol):
    def scalars(self, step: int, values: dict[str, float | None]) -> None: ...
    def close(self) -> None: ...


class CsvReporter:
    """train.csv, appended across restarts (a header only when the file is new); flushed per row."""

    def __init__(self, folder: Path) -> None:
        path = folder / "train.csv"
        new = not path.is_file()
        self.fh = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.fh)
        if new:
            self.writer.writerow(CSV_COLUMNS)

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        row = [step] + [values.get(c) for c in CSV_COLUMNS[1:]]
        self.writer.writerow(["" if v is None else v for v in row])
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class TensorBoardReporter:
    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / "tb"))

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        for key, value in values.items():
            if value is not None:
                self.writer.add_scalar(f"train/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbReporter:
    def __init__(self, folder: Path, name: str, config: dict[str, Any]) -> None:
        import wandb

        # mode="offline": never the network from a training job (and no environment variable set)
        self.run = wandb.init(dir=str(folder), name=name, config=config, mode="offline", reinit=True)

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        self.run.log({f"train/{k}": v for k, v in values.items() if v is not None}, step=step)

    def close(self) -> None:
        self.run.finish()


_NEEDS = {"tensorboard": "tensorboard", "wandb": "wandb"}


def open_reporters(targets: list[str], folder: Path, name: str, config: dict[str, Any]) -> list[Reporter]:
    """The reporters `targets` name; UserError naming the package when one is not installed."""
    for target in targets:
        package = _NEEDS.get(target)
        if package and importlib.util.find_spec(package) is None:
            raise UserError(
                f"train.report_to names {target!r} but the `{package}` package is not installed; "
                f"pip install {package}, or drop it from train.report_to"
            )
    out: list[Reporter] = []
    for target in targets:
        if target == "csv":
            out.append(CsvReporter(folder))
        elif target == "tensorboard":
            out.append(TensorBoardReporter(folder))
        elif target == "wandb":
            out.append(WandbReporter(folder, name, config))
    return out
