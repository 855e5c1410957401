"""launcher=slurm: a sweep's pending runs as ONE SLURM job array.

    <results.dir>/slurm/<sweep>/manifest-<stamp>.txt     one `peftx train ...` line per run (shell-quoted)
    <results.dir>/slurm/<sweep>/manifest-<stamp>.json    job id + run folders (to skip runs still queued)
    <results.dir>/slurm/<sweep>/manifest-<stamp>.setup.sh  launcher.setup lines, sourced by each task
    <results.dir>/slurm/<sweep>/%A_%a.out / .err         logs (appended across requeues)

`sbatch --array=0-(N-1)%P scripts/slurm/sweep.sbatch MANIFEST [SETUP]`: task i runs line i+1.
Every #SBATCH option comes from conf/launcher/slurm.yaml on the command line. With
`--signal=B:USR1@120` the batch shell gets USR1 two minutes before the time limit, forwards it
to `peftx train` (which checkpoints and exits as cancelled) and requeues the task; the restarted
task resumes from the checkpoint (sweep.sbatch has the details).
"""

from __future__ import annotations

import getpass
import json
import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from peft_cli.core.compose import conf_dir
from peft_cli.core.errors import UserError
from peft_cli.core.files import write_json, write_text
from peft_cli.run.record import read_result
from peft_cli.sweep.grid import Status
from peft_cli.sweep.launchers.base import Launched

if TYPE_CHECKING:
    from rich.console import Console

    from peft_cli.sweep.grid import Run


@dataclass
class SlurmSettings:
    name: str = "slurm"  # launcher=NAME picks conf/launcher/NAME.yaml
    partition: str | None = None  # sbatch --partition; null = the cluster's default
    account: str | None = None  # sbatch --account
    qos: str | None = None  # sbatch --qos
    gres: str | None = None  # e.g. gpu:1; null on CPU nodes
    cpus_per_task: int = 4  # sbatch --cpus-per-task
    mem: str | None = None  # e.g. 32G; null = the partition's default
    time: str = "04:00:00"  # per task; a run checkpoints on USR1 before it and requeues
    array_parallelism: int = 0  # %N: at most N tasks at once; 0 = no limit
    signal: str | None = "B:USR1@120"  # sbatch --signal: USR1 two minutes before the time limit
    requeue: bool = True  # requeue a task stopped by that signal (it resumes from its checkpoint)
    job_name: str | None = None  # null = peftx-<sweep>
    extra_sbatch: list[str] = field(default_factory=list)  # e.g. ["--constraint=a100"] or "#SBATCH --exclusive"
    setup: list[str] = field(default_factory=list)  # shell lines run in each task first (module load, activate)
    peftx: str = "peftx"  # the command on the compute nodes, e.g. "python -m peft_cli.cli"
    script: str | None = None  # null = scripts/slurm/sweep.sbatch of this checkout
    sbatch: str = "sbatch"  # the sbatch command (a path, or a wrapper)

    def __post_init__(self) -> None:
        if self.array_parallelism < 0 or self.cpus_per_task < 1:
            raise UserError(
                "config keys 'launcher.array_parallelism' (>= 0) and 'launcher.cpus_per_task' (>= 1) are out of range"
            )


class SlurmLauncher:
    """Submits the pending runs as one job array and returns; the runs' results land later."""

    name = "slurm"
    settings_cls = SlurmSettings

    def __init__(self, settings: SlurmSettings, results_dir: str, sweep: str) -> None:
        self.s, self.results_dir, self.sweep = settings, results_dir, sweep

    def status(self, runs: list["Run"]) -> dict[Path, Status]:
        out = {
            f: Status("running", f"queued as job {job}")
            for f, job in queued(self.results_dir, self.sweep, self.s).items()
        }
        for run in runs:
            if run.folder not in out and run.status == "pending":
                ended = ended_badly(run.folder, self.s)
                if ended is not None:
                    out[run.folder] = Status("failed", ended)
        return out

    def plan(self, todo: list["Run"]) -> list[str]:
        if not todo:
            return []
        _, cmd = submit(self.sweep, todo, self.results_dir, self.s, dry_run=True)
        return ["would submit: " + " ".join(cmd)]

    def launch(self, todo: list["Run"], skipped: int, console: "Console") -> Launched:
        if not todo:
            console.print("nothing to submit")
            return Launched(None)
        test_only(self.sweep, len(todo), self.results_dir, self.s)
        job, cmd = submit(self.sweep, todo, self.results_dir, self.s)
        logs = slurm_dir(self.results_dir, self.sweep)
        console.print(f"submitted job array {job} ({len(todo)} tasks): {' '.join(cmd)}")
        console.print(
            f"logs: {logs}/{job}_<task>.out|err   watch: squeue -j {job}   afterwards: peftx sweep "
            f"sweep={self.sweep} --dry-run"
        )
        print(job)  # stdout: the job id alone, for scripts
        return Launched(None)


def script_path(s: SlurmSettings) -> Path:
    """The sbatch script to submit: launcher.script, else the copy shipped inside the package (a
    wheel install: peft_cli/slurm/sweep.sbatch), else scripts/slurm/sweep.sbatch of a checkout."""
    if s.script:
        candidates = [Path(s.script).expanduser()]
    else:
        package = Path(__file__).resolve().parents[2]  # peft_cli/
        candidates = [package / "slurm" / "sweep.sbatch", conf_dir().parent / "scripts" / "slurm" / "sweep.sbatch"]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise UserError(
        f"launcher.script: {candidates[0]} not found; set launcher.script=/path/to/sweep.sbatch "
        f"(it is scripts/slurm/sweep.sbatch in the peftx repository)"
    )


def manifest_line(run: "Run", s: SlurmSettings) -> str:
    """One run's line in the manifest: a `peftx train` command."""
    extra = ["--overwrite"] if run.overwrite else []
    return f"{s.peftx} train {shlex.join([*extra, *run.overrides])}"


# SLURM job states (sacct / scontrol) of a job that ended without completing its run
DEAD = ("OUT_OF_MEMORY", "NODE_FAIL", "TIMEOUT", "CANCELLED", "FAILED", "BOOT_FAIL", "DEADLINE", "PREEMPTED")


def ended_badly(folder: Path, s: SlurmSettings) -> str | None:
    """For a run whose result.json still says "running" under a SLURM job that is gone: mark it
    failed with the job's state (OUT_OF_MEMORY, NODE_FAIL, TIMEOUT, ...) and return that error."""
    r = read_result(folder / "result.json")
    job = (r or {}).get("where", {}).get("slurm_job_id")
    if r is None or r["status"] != "running" or not job:
        return None
    state = job_state(str(job), s)
    if state is None or not state.startswith(DEAD):
        return None
    where = r["where"]
    array = f"{where['slurm_array_job_id']}_{where['slurm_array_task_id']}" if "slurm_array_job_id" in where else job
    error = f"SLURM job {array} ended {state} on {where.get('slurm_node', where.get('host'))}"
    write_json(folder / "result.json", {**r, "status": "failed", "error": error})
    return error


def job_state(job: str, s: SlurmSettings) -> str | None:
    """The state of SLURM job `job` ("OUT_OF_MEMORY", "CANCELLED by 0", "RUNNING", ...): from sacct,
    or from scontrol where accounting is off (it knows recent jobs only); None if neither knows."""
    bindir = s.sbatch.removesuffix("sbatch")
    sacct = _run([bindir + "sacct", "-n", "-P", "-X", "-j", job, "-o", "State"])
    if sacct:
        return sacct.splitlines()[0].strip() or None
    shown = _run([bindir + "scontrol", "show", "job", job])
    found = re.search(r"JobState=(\S+)", shown or "")
    return found.group(1) if found else None


def _run(cmd: list[str]) -> str | None:
    """stdout of a SLURM query, or None when it fails (no accounting, unknown job, no SLURM)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def sbatch_command(s: SlurmSettings, sweep: str, n: int, manifest: Path, setup: Path | None, logs: Path) -> list[str]:
    """The sbatch command line for an array of `n` runs (every option from launcher.*)."""
    array = f"0-{n - 1}" + (f"%{s.array_parallelism}" if s.array_parallelism else "")
    cmd = [
        s.sbatch,
        "--parsable",
        f"--job-name={s.job_name or f'peftx-{sweep}'}",
        f"--array={array}",
        f"--output={logs}/%A_%a.out",
        f"--error={logs}/%A_%a.err",
        "--open-mode=append",
        f"--chdir={Path.cwd()}",
        f"--cpus-per-task={s.cpus_per_task}",
        f"--time={s.time}",
        "--requeue" if s.requeue else "--no-requeue",
    ]
    for flag, value in (
        ("partition", s.partition),
        ("account", s.account),
        ("qos", s.qos),
        ("gres", s.gres),
        ("mem", s.mem),
        ("signal", s.signal),
    ):
        if value not in (None, ""):
            cmd.append(f"--{flag}={value}")
    cmd += [e.removeprefix("#SBATCH").strip() for e in s.extra_sbatch]
    return cmd + [str(manifest.resolve())] + ([str(setup.resolve())] if setup else [])


def slurm_dir(results_dir: str | Path, sweep: str) -> Path:
    """Where a sweep's manifests and logs go."""
    return Path(results_dir) / "slurm" / sweep


def queued(results_dir: str | Path, sweep: str, s: SlurmSettings) -> dict[Path, str]:
    """Run folders of earlier submissions of this sweep whose array task is still pending or running
    ({folder: "JOB_TASK"}), so submitting again does not start a second copy of a run."""
    records = []
    for path in sorted(slurm_dir(results_dir, sweep).glob("manifest-*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    if not records:
        return {}
    squeue = s.sbatch.removesuffix("sbatch") + "squeue"  # beside sbatch when that is a full path
    try:
        out = subprocess.run(
            [squeue, "-h", "-r", "-u", getpass.getuser(), "-o", "%F %K"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError(f"cannot list your queued jobs with squeue ({e}); is SLURM reachable from here?") from None
    live = {tuple(line.split()) for line in out.splitlines() if len(line.split()) == 2}
    found = {}
    for rec in records:
        for i, folder in enumerate(rec["runs"]):
            if (str(rec["job_id"]), str(i)) in live:
                found[Path(folder)] = f"{rec['job_id']}_{i}"
    return found


def test_only(sweep: str, n: int, results_dir: str | Path, s: SlurmSettings) -> None:
    """`sbatch --test-only` with the array's options: UserError with SLURM's reason when the request
    can never run (no such partition, more CPUs or memory than any node has, ...). Submits nothing."""
    logs = slurm_dir(results_dir, sweep)
    manifest = logs / "manifest-test-only.txt"  # never written: sbatch only reads the script
    cmd = sbatch_command(s, sweep, n, manifest, None, logs)
    cmd[1] = "--test-only"  # in place of --parsable
    cmd.insert(-1, str(script_path(s)))
    proc = _sbatch(cmd, s)
    if proc.returncode != 0:
        raise UserError(
            f"SLURM would never run this array ({_reason(proc)}; sbatch --test-only); check "
            f"launcher.partition/cpus_per_task={s.cpus_per_task}/mem/gres/time against `sinfo`"
        )


def _sbatch(cmd: list[str], s: SlurmSettings) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise UserError(
            f"launcher=slurm: '{s.sbatch}' not found; submit from a SLURM login node "
            f"(or set launcher.sbatch=/path/to/sbatch)"
        ) from None


def _reason(proc: subprocess.CompletedProcess) -> str:
    """sbatch's last line of complaint (or its exit status)."""
    lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


class Submission(NamedTuple):
    job_id: str | None  # the array's job id (None: a dry run)
    command: list[str]  # the sbatch command line


def submit(
    sweep: str, runs: list["Run"], results_dir: str | Path, s: SlurmSettings, dry_run: bool = False
) -> "Submission":
    """Write the manifest and submit the array. Dry run: submit nothing, write nothing, return
    the command that would run (job_id None)."""
    logs = slurm_dir(results_dir, sweep)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    manifest = logs / f"manifest-{stamp}.txt"
    setup = logs / f"manifest-{stamp}.setup.sh" if s.setup else None
    cmd = sbatch_command(s, sweep, len(runs), manifest, setup, logs)
    cmd.insert(-1 - bool(setup), str(script_path(s)))
    if dry_run:
        return Submission(None, cmd)
    write_text(manifest, "".join(manifest_line(r, s) + "\n" for r in runs))
    if setup:
        write_text(
            setup,
            "# sourced by sweep.sbatch before its manifest line (launcher.setup)\n"
            + "".join(line + "\n" for line in s.setup),
        )
    proc = _sbatch(cmd, s)
    if proc.returncode != 0:
        raise UserError(
            f"sbatch refused the array ({_reason(proc)}); "
            f"check partition/account/qos/gres/time in conf/launcher/slurm.yaml"
        )
    job_id = proc.stdout.strip().split(";")[0]
    write_json(
        manifest.with_suffix(".json"),
        {"job_id": job_id, "sweep": sweep, "submitted": stamp, "command": cmd, "runs": [str(r.folder) for r in runs]},
    )
    return Submission(job_id, cmd)
