"""peftx works from a wheel, not only from a checkout: conf/, the SLURM batch script and the submit
helper ship inside the package. The wheel is built here (hatchling, no network) and installed into
a folder of its own that shadows the editable checkout; every command runs outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    pytest.importorskip("hatchling")
    dist = tmp_path_factory.mktemp("dist")
    site = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    [wheel] = dist.glob("peftx-*.whl")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    return site


def _peftx(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}  # before the editable checkout on sys.path
    return subprocess.run(
        [sys.executable, "-m", "peft_cli.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_wheel_ships_conf_and_the_slurm_scripts(wheel_site):
    package = wheel_site / "peft_cli"
    assert (package / "conf" / "config.yaml").is_file()
    assert (package / "slurm" / "sweep.sbatch").is_file() and (package / "slurm" / "submit.sh").is_file()


def test_slurm_dry_run_from_a_wheel_install(wheel_site, tiny_glue, tmp_path):
    which = _peftx(wheel_site, tmp_path, "--help")
    assert which.returncode == 0
    out = _peftx(
        wheel_site, tmp_path, "submit", "smoke", f"data.glue_dir={tiny_glue}", f"results.dir={tmp_path}", "--dry-run"
    )
    assert out.returncode == 0, out.stderr
    [line] = [ln for ln in out.stdout.splitlines() if ln.startswith("would submit:")]
    assert str(wheel_site / "peft_cli" / "slurm" / "sweep.sbatch") in line
    assert str(REPO) not in line  # nothing came from the checkout
