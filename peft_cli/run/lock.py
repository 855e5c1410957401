"""One trainer per run folder: `<run>/.lock` names the process that trains it.

    {"host": "node12", "pid": 4242, "pid_start": "81234567", "slurm_job": "1234", "since": "2026-12-01T..."}

Taking the lock: the holder's record is written to a temporary file, then hard-linked to `.lock`
(link() fails if `.lock` exists: atomic on local disks and on NFS, the classic NFS-safe lock).
A lock whose holder is dead is taken over; dead means:
  * on this host: its pid is gone, or now belongs to another process (pid_start differs);
  * elsewhere, with a SLURM job id: `squeue` no longer lists that job (or lists it as ended);
    a job id equal to ours is our own earlier incarnation (a requeued task), also dead;
  * elsewhere without a job id: we cannot tell, so it counts as alive (the message says how to
    remove the lock by hand).
Checks and takeovers happen under `flock` on `<run>/.lock.guard`, so two processes on one host
never take over the same stale lock twice. Across hosts this relies on the shared file system's
atomic link() and on its locks (NFSv4, Lustre, GPFS and BeeGFS have both; a file system without
working flock can let two hosts take over one stale lock at the same moment).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from peft_cli.core.errors import Busy

LOCK = ".lock"


def me() -> dict[str, Any]:
    """This process as a lock holder."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _start_time(os.getpid()),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after "(comm)": state is field 3, starttime 22


def holder(folder: Path) -> dict[str, Any] | None:
    """Who holds the lock of `folder` (its record), or None when nobody does."""
    try:
        data = json.loads((folder / LOCK).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def alive(h: dict[str, Any]) -> bool:
    """Whether the lock holder `h` may still be running (see the module docstring)."""
    if h.get("host") == socket.gethostname():
        start = _start_time(int(h.get("pid", -1)))
        return start is not None and start == h.get("pid_start")
    job = h.get("slurm_job")
    if job:
        if job == os.environ.get("SLURM_JOB_ID"):
            return False  # our own job before a requeue
        return _slurm_job_alive(str(job))
    return True


def _slurm_job_alive(job: str) -> bool:
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return True  # SLURM is not reachable from here: assume the holder lives
    if out.returncode != 0:
        return "Invalid job id" not in out.stderr  # squeue forgets ended jobs after MinJobAge
    return any(
        s in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED") for s in out.stdout.split()
    )


def describe(h: dict[str, Any]) -> str:
    """'host node12 pid 4242 (SLURM job 1234) since ...' for messages."""
    job = f" (SLURM job {h['slurm_job']})" if h.get("slurm_job") else ""
    return f"host {h.get('host')} pid {h.get('pid')}{job} since {h.get('since')}"


@contextmanager
def _guard(folder: Path) -> Iterator[None]:
    with open(folder / f"{LOCK}.guard", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def acquire(folder: Path) -> dict[str, Any]:
    """Take the lock of `folder` for this process, taking over a dead holder's. Returns our record.
    Raises Busy naming the live holder."""
    folder.mkdir(parents=True, exist_ok=True)
    record = me()
    tmp = folder / f"{LOCK}.{record['pid']}.tmp"
    tmp.write_text(json.dumps(record))
    try:
        with _guard(folder):
            for _ in range(3):
                try:
                    os.link(tmp, folder / LOCK)
                    return record
                except FileExistsError:
                    h = holder(folder)
                    if h is not None and alive(h):
                        raise Busy(
                            f"{folder} is being trained by {describe(h)}; skipped (if that process is "
                            f"gone and cannot be checked from here, delete {folder / LOCK})"
                        ) from None
                    (folder / LOCK).unlink(missing_ok=True)  # a dead holder's, or a torn record
            raise Busy(f"could not take the lock {folder / LOCK}")
    finally:
        tmp.unlink(missing_ok=True)


def release(folder: Path, record: dict[str, Any]) -> None:
    """Give the lock back, if it is still ours."""
    with _guard(folder):
        h = holder(folder)
        if h is not None and h.get("pid") == record["pid"] and h.get("host") == record["host"]:
            (folder / LOCK).unlink(missing_ok=True)


@contextmanager
def locked(folder: Path) -> Iterator[dict[str, Any]]:
    """`with locked(folder):` trains it alone (Busy if another live process does)."""
    record = acquire(folder)
    try:
        yield record
    finally:
        release(folder, record)
