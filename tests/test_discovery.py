"""A newcomer's first hour (issue 14): the CLI says what it has (--version, list, --cfg), answers a
misspelt key once with the closest valid key, accepts --debug after the subcommand, and every
command's help shows an example that works."""

import re

import pytest
import yaml

from conftest import tiny_overrides


def test_version(cli):
    r = cli("--version")
    assert r.exit_code == 0 and re.fullmatch(r"peftx \S+\n", r.output)


@pytest.mark.parametrize(
    "what, expect",
    [
        ("tasks", ["rte ", "stsb ", "regression", "headline pearson"]),
        ("methods", ["pafi ", "hiwi ", "lora ", "default lr 0.001"]),
        ("models", ["minilm-l6 ", "hf ", "roberta-base ", "model=bert-base-uncased"]),
        ("sweeps", ["quickstart ", "2 tasks x 6 methods x 1 seeds = 12 runs"]),
        ("experiments", ["cpu_minilm ", "quickstart "]),
    ],
)
def test_list_groups(cli, what, expect):
    r = cli("list", what)
    assert r.exit_code == 0, r.output
    for text in expect:
        assert text in r.output


def test_list_keys_from_the_schemas(cli):
    r = cli("list", "keys")
    assert r.exit_code == 0, r.output
    lines = {line.split()[0]: line for line in r.output.splitlines()}
    assert re.search(r"float \| None\s+null\s+null = the method's own default", lines["train.lr"])
    assert re.search(r"\bint\s+42\s+", lines["seed"])  # conf/config.yaml's value where the schema has none
    assert "[lora]" in lines["method.target_modules"] and "[slurm]" in lines["launcher.partition"]
    for key in ("data.glue_dir", "mask.density", "model.id", "results.dir", "report.spread", "launcher.workers"):
        assert key in lines
    # every key the schemas know is listed, with a line of help
    from peft_cli.core.config import DataConfig, MaskConfig, TrainConfig, field_docs

    for cls, prefix in ((TrainConfig, "train."), (DataConfig, "data."), (MaskConfig, "mask.")):
        for doc in field_docs(cls, prefix):
            assert doc.key in lines and doc.help, doc


def test_list_unknown_group_exits_2(cli):
    r = cli("list", "widgets")
    assert r.exit_code == 2 and "tasks, methods, models, sweeps, experiments, keys" in r.output


@pytest.mark.parametrize("command", ["train", "mask"])
def test_cfg_prints_the_composed_config(cli, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli(command, "--cfg", "job", "task=sst2", "method=pafi", "data.glue_dir=glue", "train.lr=1e-2")
    assert r.exit_code == 0, r.output
    d = yaml.safe_load(r.output)
    assert d["task"]["name"] == "sst2" and d["method"]["name"] == "pafi" and d["train"]["lr"] == 0.01
    assert d["data"]["glue_dir"] == str(tmp_path / "glue")  # stored absolute
    assert not (tmp_path / "results").exists()  # nothing ran


def test_sweep_cfg_prints_the_sweep(cli):
    r = cli("sweep", "sweep=quickstart", "--cfg")
    assert r.exit_code == 0, r.output
    d = yaml.safe_load(r.output)
    assert d["sweep"]["tasks"] == ["sst2", "stsb"] and d["launcher"]["name"] == "local"


def test_debug_after_the_subcommand(cli, tiny_glue, tmp_path):
    r = cli("train", "--debug", *tiny_overrides(tiny_glue, tmp_path), "train.epochs=0")
    assert r.exit_code == 2 and "train.epochs" in r.output  # accepted, not "No such option"


@pytest.mark.parametrize(
    "override, answer",
    [
        ("train.learning_rate=1e-3", "unknown config key 'train.learning_rate' (did you mean train.lr?)"),
        ("+train.learning_rate=1e-3", "unknown config key 'train.learning_rate' (did you mean train.lr?)"),
        ("train.epoch=2", "(did you mean train.epochs?)"),
        ("data.glu_dir=x", "(did you mean data.glue_dir?)"),
        ("lr=1e-3", "(did you mean method.lr or train.lr?)"),
        ("+lrr=3", "unknown config key 'lrr'"),
    ],
)
def test_misspelt_key_answered_once(cli, override, answer):
    r = cli("train", override)
    assert r.exit_code == 2
    assert answer in r.output
    assert "+train" not in r.output  # no advice to append a key that does not exist


def test_misspelt_method_key_names_the_methods_keys(cli):
    for override in ("method.rank=4", "+method.rank=4"):
        r = cli("train", "method=lora", override)
        assert r.exit_code == 2 and "(did you mean method.r?)" in r.output, r.output


def _example(cli, command: str) -> list[str]:
    """The example in `peftx COMMAND --help` (read from the command's docstring, which help shows
    wrapped to the terminal), as arguments."""
    from peft_cli.cli import app

    r = cli(command, "--help")
    assert r.exit_code == 0 and "Example: peftx" in r.output
    (doc,) = [c.callback.__doc__ for c in app.registered_commands if (c.name or c.callback.__name__) == command]
    m = re.search(r"Example: (peftx .*)", doc)
    return m.group(1).split("(")[0].split(";")[0].split()[1:]


@pytest.mark.parametrize("command", ["train", "mask", "sweep"])
def test_help_example_composes(cli, command):
    args = _example(cli, command)
    assert args[0] == command
    r = cli(*args, "--cfg")
    assert r.exit_code == 0, r.output


def test_help_examples_of_eval_and_export_take_a_run_folder(cli, tiny_glue, tmp_path):
    """eval/export take a run folder, not method=...: the example's shape, run on a tiny run."""
    r = cli("train", *tiny_overrides(tiny_glue, tmp_path, method="bitfit"))
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "smoke" / "tiny-random" / "bitfit" / "rte" / "seed42"
    for command in ("eval", "export"):
        args = _example(cli, command)
        assert args[0] == command and "/runs/" in args[1] and not any("method=" in a for a in args)
        args[1] = str(run)
        if command == "export":
            args[2] = str(tmp_path / "exported")
        r = cli(*args)
        assert r.exit_code == 0, r.output


@pytest.mark.parametrize("argv", [["list", "keys"], ["train", "task=rte", "--cfg"]])
def test_output_piped_into_head_ends_quietly(argv):
    """`peftx list keys | head -1`: the reader closes the pipe early; peftx prints no error about it."""
    import subprocess
    import sys

    from conftest import REPO

    cmd = f"{sys.executable} -m peft_cli.cli {' '.join(argv)} | head -1"
    out = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert len(out.stdout.splitlines()) == 1
    assert out.stderr == "", out.stderr
    assert out.returncode in (0, 141)  # 141: peftx stopped by the closed pipe, as a shell would report it
