"""launcher=local: a sweep's pending runs as `peftx train` subprocesses on this machine.

One subprocess per run, so a crash or an out-of-memory kill ends that run only and frees its
(GPU) memory. `launcher.workers: N` keeps N running at once; worker i gets GPU i through
CUDA_VISIBLE_DEVICES in the child's environment (this process's environment is never changed).
`launcher.runs_per_gpu: M` runs M at once on each worker's device (small models leave a GPU
mostly idle; on CPU the cores are shared out among all workers x M runs).
A child's stdout/stderr go to <run>/train.log (appended: a resumed run keeps its history).
SIGUSR1/SIGTERM to the sweep (or Ctrl-C) stops launching, forwards SIGTERM so the running runs
checkpoint, and waits for them: rerunning the sweep resumes them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peft_cli.core.errors import UserError
from peft_cli.core.signals import stop_on_signals
from peft_cli.run import checkpoint
from peft_cli.run.identity import config_hash
from peft_cli.run.record import read_result
from peft_cli.sweep.grid import Status, status_of
from peft_cli.sweep.launchers.base import Launched, Outcome
from peft_cli.sweep.launchers.view import SweepView

if TYPE_CHECKING:
    from rich.console import Console

    from peft_cli.sweep.grid import Run

POLL_S = 0.5


@dataclass
class LocalSettings:
    name: str = "local"  # launcher=NAME picks conf/launcher/NAME.yaml
    workers: int = 1  # >1: one worker per GPU (CUDA_VISIBLE_DEVICES per worker)
    runs_per_gpu: int = 1  # runs at once on each worker's device

    def __post_init__(self) -> None:
        for key in ("workers", "runs_per_gpu"):
            if getattr(self, key) < 1:
                raise UserError(f"config key 'launcher.{key}' is {getattr(self, key)}; it must be >= 1")

    @property
    def slots(self) -> int:
        """Runs at once."""
        return self.workers * self.runs_per_gpu


class LocalLauncher:
    """Runs the pending runs here, `workers` at a time, and waits for them."""

    name = "local"
    settings_cls = LocalSettings

    def __init__(self, settings: LocalSettings, results_dir: str, sweep: str) -> None:
        self.s, self.sweep = settings, sweep

    def status(self, runs: list["Run"]) -> dict[Path, Status]:
        return {}  # a live child holds its run's lock, which the folders already tell

    def plan(self, todo: list["Run"]) -> list[str]:
        return []  # the run list says it all

    def launch(self, todo: list["Run"], skipped: int, console: "Console") -> Launched:
        if not todo:
            return Launched([])
        return run_local(self.sweep, todo, skipped, self.s, console)


def train_command(run: "Run") -> list[str]:
    """`peftx train` for one run, through this interpreter (works in any venv, no PATH needed)."""
    extra = ["--overwrite"] if run.overwrite else []
    return [sys.executable, "-m", "peft_cli.cli", "train", *extra, *run.overrides]


def worker_env(slot: int, workers: int, base: dict[str, str], runs_per_gpu: int = 1) -> dict[str, str]:
    """The environment of the children of `slot` (0 .. workers x runs_per_gpu - 1). Slot s runs on
    worker s // runs_per_gpu's GPU (counted in the parent's CUDA_VISIBLE_DEVICES when set); on CPU
    every slot gets a fair share of the cores."""
    env = dict(base)
    if workers * runs_per_gpu == 1:
        return env
    gpu = slot // runs_per_gpu
    visible = [d for d in base.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not visible:
        import torch

        visible = [str(i) for i in range(torch.cuda.device_count())]
    if visible:
        env["CUDA_VISIBLE_DEVICES"] = visible[gpu % len(visible)]
    elif "OMP_NUM_THREADS" not in base:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // (workers * runs_per_gpu)))
    return env


def start(run: "Run", env: dict[str, str]) -> subprocess.Popen:
    """Start `peftx train` for `run` as a child process; its output goes to the run's train.log.
    The child gets its own session: a terminal's Ctrl-C reaches the sweep alone, which tells the
    children (once: checkpoint and stop; twice: stop at once)."""
    run.folder.mkdir(parents=True, exist_ok=True)
    with open(run.folder / "train.log", "ab") as log:
        log.write(f"$ peftx train {' '.join(run.overrides)}\n".encode())
        log.flush()
        return subprocess.Popen(
            train_command(run),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def outcome_of(run: "Run", rc: int, seconds: float) -> Outcome:
    """Read what the child left: result.json decides, the exit status and train.log explain."""
    r = read_result(run.folder / "result.json")
    mine = r is not None and r["config_hash"] == config_hash(run.cfg)
    if rc == 0 and mine and r["status"] == "completed":
        return Outcome(run, "completed", seconds, f"score {r['score']:.2f}")
    if rc == 3:  # Busy: another live process trains this folder
        return Outcome(
            run, "skipped", seconds, f"being trained by another process: {_last_line(run.folder / 'train.log')}"
        )
    if mine and r["status"] == "cancelled":
        step = checkpoint.saved_step(run.folder, r["config_hash"])
        if step is not None:
            return Outcome(run, "cancelled", seconds, f"checkpointed at step {step}; rerun the sweep to resume")
        return Outcome(run, "cancelled", seconds, "stopped before its first checkpoint; rerun the sweep to restart it")
    if rc in (-signal.SIGTERM, -signal.SIGINT, 130):
        return Outcome(run, "cancelled", seconds, "stopped before training started; rerun the sweep to start it")
    if mine and r["status"] == "failed" and r.get("error"):
        return Outcome(run, "failed", seconds, r["error"])
    if rc < 0:
        hint = " (out of memory?)" if rc == -signal.SIGKILL else ""
        return Outcome(
            run, "failed", seconds, f"killed by {signal.Signals(-rc).name}{hint}; see {run.folder}/train.log"
        )
    return Outcome(run, "failed", seconds, f"exit {rc}: {_last_line(run.folder / 'train.log')}")


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    return lines[-1][:200] if lines else "no output"


def _done_elsewhere(run: "Run") -> Outcome | None:
    """A run another process completed or is training since the sweep listed it: not started."""
    now = status_of(run.folder, config_hash(run.cfg))
    if now.status == "completed" and not run.overwrite:
        return Outcome(run, "completed", 0.0, "completed by another process")
    if now.status == "running":
        return Outcome(run, "skipped", 0.0, now.note)
    return None


def run_local(name: str, runs: list["Run"], skipped: int, s: LocalSettings, console: "Console") -> Launched:
    """Run `runs` (all pending) with `s.slots` at a time; one Outcome per run that started.
    A stop signal (Ctrl-C, TERM, USR1) stops launching and is passed on to the running children,
    which checkpoint and stop; a second Ctrl-C is passed on too, and they stop at once."""
    queue = list(runs)
    active: dict[int, tuple["Run", subprocess.Popen, float]] = {}  # worker slot -> run
    outcomes: list[Outcome] = []
    base = dict(os.environ)
    forwarded = False
    with stop_on_signals() as stop, SweepView(name, len(runs), skipped, s.slots, console) as view:
        try:
            while queue or active:
                for slot in range(s.slots):
                    while slot not in active and queue and not stop.is_set():
                        run = queue.pop(0)
                        view.start(run)
                        early = _done_elsewhere(run)
                        if early is not None:
                            view.finish(run, early.status, early.detail)
                            outcomes.append(early)
                            continue
                        env = worker_env(slot, s.workers, base, s.runs_per_gpu)
                        active[slot] = (run, start(run, env), time.time())
                outcomes += _reap(active, view)
                if stop.is_set() and not forwarded:
                    forwarded = _forward(active, stop.signum or signal.SIGTERM, console)
                    queue.clear()
                time.sleep(POLL_S)
        except KeyboardInterrupt:  # the second Ctrl-C: the children stop at once too
            _forward(active, signal.SIGINT, console, again=True)
            for _, proc, _ in active.values():
                proc.wait()
            outcomes += _reap(active, view)
            raise
    return Launched(outcomes, stop.signum)


def _reap(active: dict, view: SweepView) -> list[Outcome]:
    """Outcomes of the children that have exited (removed from `active`)."""
    done = []
    for slot, (run, proc, t0) in list(active.items()):
        rc = proc.poll()
        if rc is not None:
            del active[slot]
            out = outcome_of(run, rc, time.time() - t0)
            view.finish(run, out.status, out.detail)
            done.append(out)
    return done


def _forward(active: dict, sig: int, console: "Console", again: bool = False) -> bool:
    if active:
        what = "stop now" if again else "checkpoint and stop"
        console.print(f"stopping: {len(active)} running run(s) {what} ({signal.Signals(sig).name})")
    for _, proc, _ in active.values():
        if proc.poll() is None:
            proc.send_signal(sig)
    return True
