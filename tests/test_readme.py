"""The README's commands are the ones that work (issue 14): every `peftx` command in its bash
blocks composes (`--cfg`: nothing runs, nothing is downloaded) or, for `peftx list`, runs; the
quickstart sweep validates all 12 runs offline against a GLUE folder."""

import re
import shlex

import pytest

from conftest import REPO


def _readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("#")[0]  # a comment
            for part in line.split("&&"):
                if part.strip().startswith("peftx "):
                    out.append(shlex.split(part)[1:])
    return out


COMMANDS = _readme_commands()


def test_the_readme_has_the_commands_a_newcomer_needs():
    firsts = {tuple(c[:2]) for c in COMMANDS}
    assert ("sweep", "sweep=quickstart") in firsts and ("report", "experiment=quickstart") in firsts
    assert any(c[0] == "train" and c[1].startswith("model=") for c in COMMANDS)


@pytest.mark.parametrize("args", [c for c in COMMANDS if c[0] in ("train", "sweep", "mask")], ids=" ".join)
def test_readme_command_composes(cli, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli(*args, "--cfg")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args", [c for c in COMMANDS if c[0] == "list"], ids=" ".join)
def test_readme_list_command_runs(cli, args):
    r = cli(*args)
    assert r.exit_code == 0, r.output


def test_quickstart_validates_offline(cli, tiny_glue, tmp_path):
    r = cli("sweep", "sweep=quickstart", f"data.glue_dir={tiny_glue}", f"results.dir={tmp_path}", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "12 runs" in r.output and "12 pending" in r.output
