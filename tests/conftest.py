"""Shared fixtures: tiny GLUE folders written by the tests, the real ../shared/glue when present,
and a CLI runner. Every test works offline; real-data tests skip without ../shared/glue."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
SHARED_GLUE = REPO.parent / "shared" / "glue"

WORDS = "the a cat dog sat ran on under mat house big small red blue quickly slowly saw heard".split()


def _sentence(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_tiny_glue(root: Path, n_train: int = 48, n_dev: int = 24, seed: int = 0) -> Path:
    """RTE, MRPC (with BOM), CoLA (no header), STS-B and SST-2 in the classic layout, with a learnable
    signal: the label depends on whether the first word is 'the'."""
    rng = random.Random(seed)

    def rows(n: int):
        for i in range(n):
            s1 = _sentence(rng)
            y = int(s1.startswith("the"))
            yield i, s1, _sentence(rng), y

    def write(folder: str, name: str, text: str, bom: bool = False) -> None:
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(("\ufeff" if bom else "") + text, encoding="utf-8")

    for split, n in (("train", n_train), ("dev", n_dev)):
        data = list(rows(n))
        write(
            "RTE",
            f"{split}.tsv",
            "index\tsentence1\tsentence2\tlabel\n"
            + "".join(f"{i}\t{a}\t{b}\t{'entailment' if y else 'not_entailment'}\n" for i, a, b, y in data),
        )
        write(
            "MRPC",
            f"{split}.tsv",
            "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
            + "".join(f'{y}\t{i}\t{i + 1}\t{a}\t"{b}\n' for i, a, b, y in data),
            bom=True,
        )  # a stray quote, as in GLUE
        write("CoLA", f"{split}.tsv", "".join(f"src\t{y}\t\t{a}\n" for i, a, b, y in data))
        write(
            "STS-B",
            f"{split}.tsv",
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
            + "".join(f"{i}\tg\tf\t2012\t{i}\ts\ts\t{a}\t{b}\t{5.0 * y + rng.random():.3f}\n" for i, a, b, y in data),
        )
        write("SST-2", f"{split}.tsv", "sentence\tlabel\n" + "".join(f"{a} \t{y}\n" for i, a, b, y in data))
    return root


@pytest.fixture(scope="session")
def tiny_glue(tmp_path_factory) -> Path:
    return write_tiny_glue(tmp_path_factory.mktemp("glue"))


@pytest.fixture
def shared_glue() -> Path:
    if not (SHARED_GLUE / "RTE" / "train.tsv").is_file():
        pytest.skip("../shared/glue is absent")
    return SHARED_GLUE


def tiny_overrides(glue: Path, results: Path, **extra: object) -> list[str]:
    """Overrides for a fast run of the tiny random BERT on a tiny GLUE folder: experiment=smoke
    (2 epochs of batch 8, length 32), so runs land in runs/smoke/<model>/<method tag>/..."""
    base = {
        "experiment": "smoke",
        "model": "tiny-random",
        "task": "rte",
        "data.glue_dir": str(glue),
        "results.dir": str(results),
        "train.progress": False,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def prepare(method, model):
    """What the harness does before training: freeze the backbone, then `method.prepare`."""
    from peft_cli.methods.base import freeze_backbone

    freeze_backbone(model)
    return method.prepare(model)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    """`peftx train` run in-process (here, or in a module fixture) leaves USR1/TERM ignored, as a real
    process about to exit should. A child started by a later test would inherit that, and bash
    cannot trap a signal ignored at entry: every test starts with the default handlers."""
    yield
    for s in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)


@pytest.fixture
def cli():
    """Invoke the Typer app in-process: cli("train", "task=rte") -> click Result."""
    from peft_cli.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
        try:
            return runner.invoke(app, list(args))
        finally:  # within one test too (see pytest_runtest_setup)
            for s, h in saved.items():
                signal.signal(s, h)

    return invoke
