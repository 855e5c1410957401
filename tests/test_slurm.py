"""launcher=slurm.

Without a cluster (always run): the manifest and the sbatch command, built against a stand-in
`sbatch`/`squeue`; runs still queued are not submitted twice; sweep.sbatch's signal forwarding and
requeue, run by bash with a stand-in `scontrol`.

With a cluster (`@pytest.mark.slurm`, skipped unless `sinfo` answers; CI starts one with
`scripts/slurm/local_cluster.sh start`): a tiny sweep submitted through scripts/slurm/submit.sh
completes every run; a task preempted with USR1 (time-limit warning) or requeued by SLURM resumes
from its checkpoint and completes.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from peft_cli.run import record as results
from peft_cli.run.identity import config_hash
from peft_cli.sweep.grid import expand, sweep_config
from peft_cli.sweep.runner import run_sweep

SUBMIT = REPO / "scripts" / "slurm" / "submit.sh"
SBATCH_SCRIPT = REPO / "scripts" / "slurm" / "sweep.sbatch"
VENV_BIN = str(Path(sys.executable).parent)  # `peftx` on the compute node = this environment's
PEFTX_CMD = [sys.executable, "-m", "peft_cli.cli"]


def _smoke(glue, res, *extra: str) -> list[str]:
    return ["sweep=smoke", f"data.glue_dir={glue}", f"results.dir={res}", *extra]


def _runs(args: list[str]):
    from peft_cli.core.compose import compose_dict

    return expand(sweep_config(compose_dict(args)["sweep"]), args)


# --------------------------------------------------------------------------------------------
# no cluster needed


@pytest.fixture
def fake_slurm(tmp_path):
    """`sbatch` that records its argv and prints job id 4242; `squeue` that prints $FAKE_SQUEUE."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "sbatch").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/sbatch.args\necho "4242;cluster"\n')
    (bin_ / "squeue").write_text(f"#!/bin/sh\ncat {tmp_path}/squeue.out 2>/dev/null\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    return tmp_path


def test_manifest_and_sbatch_command(tiny_glue, tmp_path, fake_slurm, capsys):
    res = tmp_path / "res"
    args = _smoke(
        tiny_glue,
        res,
        "launcher=slurm",
        f"launcher.sbatch={fake_slurm}/bin/sbatch",
        "launcher.partition=gpu",
        "launcher.gres=gpu:1",
        "launcher.array_parallelism=3",
        "launcher.time=01:00:00",
        "launcher.extra_sbatch=['#SBATCH --constraint=a100']",
        "launcher.setup=['module load cuda','source /venv/bin/activate']",
        "train.max_steps=5",
    )
    assert run_sweep(args) == 0
    assert capsys.readouterr().out.strip() == "4242"  # stdout: the job id alone
    argv = (fake_slurm / "sbatch.args").read_text().splitlines()
    logs = res / "slurm" / "smoke"
    for expected in (
        "--array=0-3%3",
        "--partition=gpu",
        "--gres=gpu:1",
        "--time=01:00:00",
        "--requeue",
        "--signal=B:USR1@120",
        "--constraint=a100",
        "--open-mode=append",
        f"--output={logs}/%A_%a.out",
        f"--error={logs}/%A_%a.err",
        f"--chdir={Path.cwd()}",
    ):
        assert expected in argv, expected
    assert not any(a.startswith(("--account", "--qos", "--mem")) for a in argv)  # null = left out
    script, manifest, setup = argv[-3:]
    assert Path(script) == SBATCH_SCRIPT
    runs = _runs(args)
    lines = Path(manifest).read_text().splitlines()
    assert [shlex.split(line) for line in lines] == [["peftx", "train", *r.overrides] for r in runs]
    assert "train.max_steps=5" in lines[0] and "launcher" not in lines[0] and "sweep=" not in lines[0]
    assert Path(setup).read_text().splitlines()[1:] == ["module load cuda", "source /venv/bin/activate"]
    record = json.loads(Path(manifest).with_suffix(".json").read_text())
    assert record["job_id"] == "4242" and record["runs"] == [str(r.folder) for r in runs]

    # Still queued (task 0 pending, task 2 running): a second submission skips those two.
    (fake_slurm / "squeue.out").write_text("4242 0\n4242 2\n999 0\n")
    assert run_sweep(args, dry_run=True) == 0
    out = capsys.readouterr().out
    assert out.count("queued") >= 2 and "job 4242_0" in out and "job 4242_2" in out
    assert run_sweep(args) == 0
    argv = (fake_slurm / "sbatch.args").read_text().splitlines()
    assert "--array=0-1%3" in argv
    assert Path(argv[-2]).read_text().splitlines() == [lines[1], lines[3]]


def test_sbatch_failure_exits_2(tiny_glue, tmp_path, cli):
    bad = tmp_path / "sbatch"
    bad.write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n")
    bad.chmod(0o755)
    r = cli(
        "sweep", *_smoke(tiny_glue, tmp_path, "launcher=slurm", f"launcher.sbatch={bad}", "launcher.partition=nope")
    )
    assert r.exit_code == 2 and "invalid partition specified: nope" in r.output


def test_bad_data_exits_2_before_anything_is_submitted(tmp_path, fake_slurm, cli):
    """What a local sweep would fail on fails here, before sbatch is ever called."""
    res = tmp_path / "res"
    r = cli(
        "sweep",
        *_smoke(tmp_path / "nonexistent-glue", res, "launcher=slurm", f"launcher.sbatch={fake_slurm}/bin/sbatch"),
    )
    assert r.exit_code == 2 and "nonexistent-glue" in r.output
    assert not (fake_slurm / "sbatch.args").exists() and not (res / "slurm").exists()


def test_an_impossible_request_exits_2_with_slurms_reason(tiny_glue, tmp_path, cli):
    """`sbatch --test-only` refuses (e.g. more CPUs per task than any node has): nothing is submitted."""
    sbatch = tmp_path / "sbatch"
    sbatch.write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\ncase "$*" in *--test-only*) '
        'echo "allocation failure: Requested node configuration is not available" >&2; exit 1;; esac\n'
        "echo 77\n"
    )
    sbatch.chmod(0o755)
    res = tmp_path / "res"
    r = cli(
        "sweep", *_smoke(tiny_glue, res, "launcher=slurm", f"launcher.sbatch={sbatch}", "launcher.cpus_per_task=64")
    )
    assert r.exit_code == 2 and "Requested node configuration is not available" in r.output
    assert "cpus_per_task=64" in r.output
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 1 and "--test-only" in calls[0]  # tested, never submitted
    assert not list(res.glob("slurm/*/manifest-*.txt"))


@pytest.mark.parametrize(
    "sig, requeue, state, requeued",
    [
        ("USR1", 1, "RUNNING", True),  # time-limit warning: checkpoint, then requeue
        ("TERM", 1, "RUNNING", True),  # preemption signal while still running: same
        ("TERM", 1, "CANCELLED", False),  # scancel: a cancelled job stays cancelled
        ("USR1", 0, "RUNNING", False),  # submitted with --no-requeue
    ],
)
def test_sweep_sbatch_forwards_signal_and_requeues(tmp_path, sig, requeue, state, requeued):
    """bash runs sweep.sbatch as SLURM would (array task 1), with a stand-in scontrol; the manifest
    line is a Python process that exits 1 when it gets the forwarded signal, as `peftx train` does."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "scontrol").write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\n'
        f'[ "$1" = show ] && echo "JobId=77 JobState={state} Requeue={requeue}"\nexit 0\n'
    )
    (bin_ / "scontrol").chmod(0o755)
    child = (
        f"{shlex.quote(sys.executable)} -c 'import signal, sys, time; "
        f'signal.signal(signal.SIG{sig}, lambda *a: (open("{tmp_path}/got", "w").write("{sig}"), sys.exit(1))); '
        f'open("{tmp_path}/ready", "w").close(); time.sleep(60)\''
    )
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("echo wrong line\n" + child + "\n")
    env = {
        **os.environ,
        "PATH": f"{bin_}:{os.environ['PATH']}",
        "SLURM_ARRAY_TASK_ID": "1",
        "SLURM_ARRAY_JOB_ID": "76",
        "SLURM_JOB_ID": "77",
    }
    proc = subprocess.Popen(
        ["bash", str(SBATCH_SCRIPT), str(manifest)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 30
    while not (tmp_path / "ready").exists():
        assert time.time() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    proc.send_signal(getattr(signal, f"SIG{sig}"))
    out, _ = proc.communicate(timeout=30)
    assert (tmp_path / "got").read_text() == sig, out  # forwarded to the run
    assert "peftx exited with status 1" in out
    log = (tmp_path / "scontrol.log").read_text().splitlines()
    assert ("requeue 77" in log) == requeued, out
    assert proc.returncode == (0 if requeued else 1)


# --------------------------------------------------------------------------------------------
# a real cluster


def _cluster_up() -> bool:
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and any(s.strip() in ("idle", "mix", "alloc") for s in out.stdout.splitlines())


@pytest.fixture
def cluster():
    if not _cluster_up():
        pytest.skip("no SLURM cluster answers (sudo scripts/slurm/local_cluster.sh start)")


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}  # jobs inherit it (sbatch --export=ALL)


def _submit(glue, res, *extra: str) -> str:
    r = subprocess.run(
        [
            str(SUBMIT),
            "smoke",
            f"data.glue_dir={glue}",
            f"results.dir={res}",
            "launcher.cpus_per_task=1",
            "launcher.time=00:15:00",
            *extra,
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


def _state(job: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%K %T"], capture_output=True, text=True, timeout=30)
    return out.stdout.split("\n") if out.returncode == 0 and out.stdout.strip() else []


def _wait(job: str, timeout: float, until=None) -> None:
    """Poll squeue until the array has left the queue (or `until()` holds)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if until is not None and until():
            return
        if until is None and not _state(job):
            return
        time.sleep(2)
    subprocess.run(["scancel", job], timeout=30)
    raise AssertionError(f"job {job} not done after {timeout:.0f}s: {_state(job)}")


@pytest.mark.slurm
@pytest.mark.timeout(1500)  # polls squeue for up to 15 min; pyproject's 600 s is per ordinary test
def test_array_completes_every_run(cluster, tiny_glue, tmp_path, capfd):
    res = tmp_path / "res"
    job = _submit(tiny_glue, res)
    _wait(job, 900)
    runs = _runs(_smoke(tiny_glue, res))
    assert len(runs) == 4  # 2 tasks x 2 methods
    for i, r in enumerate(runs):
        assert results.is_completed(r.folder, config_hash(r.cfg)), (r.folder / "result.json").read_text()
        where = results.read_result(r.folder / "result.json")["where"]  # which job and node ran it
        assert where["slurm_array_job_id"] == job and where["slurm_array_task_id"] == str(i)
        assert where["slurm_node"] and where["slurm_job_id"]
    logs = res / "slurm" / "smoke"
    for i in range(4):
        out = (logs / f"{job}_{i}.out").read_text()
        assert f"job {job}_{i}" in out and "peftx exited with status 0" in out
    # everything done: submitting again submits nothing
    again = subprocess.run(
        [str(SUBMIT), "smoke", f"data.glue_dir={tiny_glue}", f"results.dir={res}"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and "nothing to submit" in again.stderr and not again.stdout.strip()
    assert len(list(logs.glob("manifest-*.txt"))) == 1


@pytest.mark.slurm
@pytest.mark.timeout(1500)  # polls squeue for up to 15 min; pyproject's 600 s is per ordinary test
@pytest.mark.parametrize("how", ["usr1", "requeue"])
def test_preempted_task_resumes_and_completes(cluster, tiny_glue, tmp_path, how):
    """`scancel --signal=USR1 --batch` is what --signal=B:USR1@120 does before a time limit;
    `scontrol requeue` is what preemption with requeue does (SIGTERM, then back to the queue)."""
    res = tmp_path / "res"
    steps = 2000  # ~20 s of training: the signal must land mid-run, not after it (300 steps took ~4 s)
    job = _submit(
        tiny_glue, res, "sweep.tasks=[rte]", "sweep.methods=[bitfit]", f"train.max_steps={steps}", "train.log_every=1"
    )
    [run] = _runs(
        _smoke(
            tiny_glue,
            res,
            "sweep.tasks=[rte]",
            "sweep.methods=[bitfit]",
            f"train.max_steps={steps}",
            "train.log_every=1",
        )
    )
    log = run.folder / "log.jsonl"

    def training() -> bool:
        return log.is_file() and any('"loss"' in line for line in log.read_text().splitlines())

    _wait(job, 300, until=training)
    if how == "usr1":
        subprocess.run(["scancel", "--signal=USR1", "--batch", f"{job}_0"], check=True, timeout=30)
    else:
        subprocess.run(["scontrol", "requeue", f"{job}_0"], check=True, timeout=30)
    _wait(job, 900)
    r = results.read_result(run.folder / "result.json")
    assert r is not None and r["status"] == "completed" and r["steps"] == steps
    events = [json.loads(line) for line in log.read_text().splitlines()]
    resumes = [e for e in events if e.get("event") == "resume"]
    assert len(resumes) == 1 and 0 < resumes[0]["step"] < steps  # resumed mid-training, not from zero
    out = (res / "slurm" / "smoke" / f"{job}_0.out").read_text()
    assert "restart 1" in out and "got SIG" in out
    assert not (run.folder / "checkpoint").exists()


@pytest.mark.slurm
@pytest.mark.timeout(1500)  # polls squeue for up to 15 min; pyproject's 600 s is per ordinary test
def test_scancel_stays_cancelled_and_resubmitting_resumes(cluster, tiny_glue, tmp_path):
    """scancel: the run checkpoints on SIGTERM but is NOT requeued; submitting the sweep again
    submits just that run, which resumes from the checkpoint."""
    res = tmp_path / "res"
    extra = ("sweep.tasks=[rte]", "sweep.methods=[bitfit]", "train.max_steps=2000", "train.log_every=1")
    job = _submit(tiny_glue, res, *extra)
    [run] = _runs(_smoke(tiny_glue, res, *extra))
    log = run.folder / "log.jsonl"
    _wait(job, 300, until=lambda: log.is_file() and '"loss"' in log.read_text())
    subprocess.run(["scancel", job], check=True, timeout=30)
    _wait(job, 120)
    r = results.read_result(run.folder / "result.json")
    assert r["status"] == "cancelled" and r["resumable"] is True
    out = (res / "slurm" / "smoke" / f"{job}_0.out").read_text()
    assert "not requeueing after SIGTERM" in out and "restart 1" not in out
    job2 = _submit(tiny_glue, res, *extra)
    assert job2 != job
    _wait(job2, 900)
    assert results.is_completed(run.folder, config_hash(run.cfg))
    assert sum('"resume"' in line for line in log.read_text().splitlines()) == 1


def _accounting() -> bool:
    out = subprocess.run(["sacct", "-n", "-X", "-S", "now-1minute"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0


@pytest.mark.slurm
def test_an_impossible_request_is_refused_by_the_real_scheduler(cluster, tiny_glue, tmp_path):
    nodes = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, timeout=30).stdout.split()
    too_many = max(int(n.rstrip("+")) for n in nodes) + 1
    r = subprocess.run(
        [
            str(SUBMIT),
            "smoke",
            f"data.glue_dir={tiny_glue}",
            f"results.dir={tmp_path}",
            f"launcher.cpus_per_task={too_many}",
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "sbatch --test-only" in r.stderr and not r.stdout.strip(), r.stderr
    assert not list(tmp_path.glob("slurm/*/manifest-*.txt"))


@pytest.mark.slurm
@pytest.mark.timeout(1500)
def test_a_task_killed_for_memory_is_failed_with_the_reason_then_retried(cluster, tiny_glue, tmp_path):
    """A task that outgrows --mem is killed by SLURM without warning; its result.json still says
    running. The sweep asks sacct, reports it failed (OUT_OF_MEMORY), and --retry-failed completes it.
    The memory goes to a process the task's setup starts once training runs (a leak, as far as SLURM
    can tell: the job's cgroup holds both); it pauses peftx first and makes it the OOM killer's
    choice, so peftx is the one killed, mid-run, however fast the machine trains."""
    if not _accounting():
        pytest.skip("SLURM accounting (slurmdbd) is off: sacct cannot answer")
    res = tmp_path / "res"
    one = ["sweep.tasks=[rte]", "sweep.methods=[bitfit]", "train.max_steps=300", "train.log_every=1"]
    [run] = _runs(_smoke(tiny_glue, res, *one))
    hog = tmp_path / "hog.sh"
    hog.write_text(
        f"while ! grep -qs loss {run.folder}/log.jsonl; do sleep 0.2; done\n"
        # pause this test's peftx (a fast machine could otherwise finish the run before the memory runs
        # out) and make it the OOM killer's first choice (raising a score needs no privilege; lowering
        # the hog's own does, and a job may not have it)
        f"for p in $(pgrep -f 'results.dir={res}'); do kill -STOP $p; echo 1000 > /proc/$p/oom_score_adj; done\n"
        f"exec {sys.executable} -c 'x = bytearray(1200 << 20); import time; time.sleep(300)'\n"
    )
    job = _submit(
        tiny_glue, res, *one, "launcher.mem=1500M", "launcher.requeue=false", f"launcher.setup=['bash {hog} &']"
    )
    _wait(job, 900)
    state = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", job + "_0", "-o", "State"], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    assert state == "OUT_OF_MEMORY", state
    args = [f"data.glue_dir={tiny_glue}", f"results.dir={res}", *one]
    listing = subprocess.run(
        [*PEFTX_CMD, "sweep", "sweep=smoke", "launcher=slurm", "--dry-run", *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = next(ln for ln in listing.stdout.splitlines() if str(run.folder) in ln)
    assert line.startswith("failed") and "OUT_OF_MEMORY" in line, listing.stdout
    r = results.read_result(run.folder / "result.json")
    assert r["status"] == "failed" and "OUT_OF_MEMORY" in r["error"] and f"{job}_0" in r["error"]
    retry = _submit(tiny_glue, res, *one, "--retry-failed", "launcher.mem=2G")  # the same run, more memory
    _wait(retry, 900)
    assert results.is_completed(run.folder, config_hash(run.cfg))
