"""Can the results folder be trusted under overlap and crashes? Two experiments on tiny real runs
(experiment=smoke: the tiny random BERT, 64 training examples of real GLUE):

  1. two `peftx sweep` processes started together over one results folder: how many times was each
     run trained (log.jsonl start events), and is every run completed?
  2. `kill -9` of a sweep and all its children at N random moments, each followed by a rerun, then a
     final rerun: exactly one completed result per run, none torn (every result.json parses, every
     artifact loads), and metrics equal to those of an uninterrupted sweep.

    python scripts/bench/results_trust.py --glue ../shared/glue    -> results/bench/results_trust.{md,json}
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEFTX = [sys.executable, "-m", "peft_cli.cli"]


def sweep_args(glue: Path, results: Path, seeds: str) -> list[str]:
    return ["sweep", "sweep=smoke", f"data.glue_dir={glue}", f"results.dir={results}", f"sweep.seeds={seeds}"]


def runs_of(results: Path) -> list[Path]:
    return sorted(p.parent for p in results.glob("runs/*/*/*/*/*/config.yaml"))


def starts(folder: Path) -> int:
    log = folder / "log.jsonl"
    if not log.is_file():
        return 0
    return sum(json.loads(line).get("event") == "start" for line in log.read_text().splitlines() if line.strip())


def check(folder: Path) -> dict:
    """One run folder: its status, whether its files are whole, its test metrics."""
    from peft_cli.core.files import load_tensors

    try:
        r = json.loads((folder / "result.json").read_text())
    except (OSError, ValueError) as e:
        return {"status": "torn", "error": str(e)}
    whole = True
    if r["status"] == "completed":
        try:
            load_tensors(folder / "artifact.safetensors")
        except Exception:  # noqa: BLE001 - any unreadable artifact is a torn run
            whole = False
    return {
        "status": r["status"],
        "whole": whole,
        "metrics": r["metrics"]["test"],
        "starts": starts(folder),
        "config_hash": r["config_hash"],
    }


def two_sweeps(glue: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp)
        args = sweep_args(glue, res, "[1,2]")
        t0 = time.time()
        procs = [
            subprocess.Popen(PEFTX + args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        errs = [p.communicate()[1] for p in procs]
        runs = {str(f.relative_to(res)): check(f) for f in runs_of(res)}
        return {
            "runs": len(runs),
            "wall_s": round(time.time() - t0, 1),
            "trained_once": sum(r["starts"] == 1 for r in runs.values()),
            "trained_twice_or_more": sum(r["starts"] > 1 for r in runs.values()),
            "completed": sum(r["status"] == "completed" for r in runs.values()),
            "exit_codes": [p.returncode for p in procs],
            "skipped_lines": [sum("skipped" in ln for ln in e.splitlines()) for e in errs],
        }


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its children (a sweep's runs live in sessions of their own)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for p in [pid, *map(int, children)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kills(glue: Path, n: int, seed: int, max_delay: float) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        res, ref = Path(a), Path(b)
        args = sweep_args(glue, res, "[1,2,3]")
        moments = []
        for _ in range(n):
            proc = subprocess.Popen(PEFTX + args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            delay = rng.uniform(0.5, max_delay)
            time.sleep(delay)
            done = proc.poll() is not None
            kill_tree(proc.pid)
            proc.wait()
            completed = sum(check(f)["status"] == "completed" for f in runs_of(res))
            moments.append({"after_s": round(delay, 2), "sweep_had_ended": done, "completed_so_far": completed})
            time.sleep(1.0)  # let orphaned locks' holders be gone: a dead pid is taken over on rerun
        final = subprocess.run(PEFTX + args, cwd=ROOT, capture_output=True, text=True)
        clean = subprocess.run(PEFTX + sweep_args(glue, ref, "[1,2,3]"), cwd=ROOT, capture_output=True, text=True)
        got = {str(f.relative_to(res)): check(f) for f in runs_of(res)}
        want = {str(f.relative_to(ref)): check(f) for f in runs_of(ref)}
        return {
            "kills": n,
            "moments": moments,
            "final_exit": final.returncode,
            "clean_exit": clean.returncode,
            "runs": len(got),
            "completed": sum(r["status"] == "completed" for r in got.values()),
            "torn": sum(r["status"] == "torn" or not r.get("whole", True) for r in got.values()),
            "equal_to_uninterrupted": sum(got[k].get("metrics") == want.get(k, {}).get("metrics") for k in got),
        }


def render(out: dict) -> str:
    t, k = out["two_sweeps"], out["kill9"]
    return "\n".join(
        [
            "# Results folder under overlap and crashes",
            "",
            f"`python scripts/bench/results_trust.py` on {out['host']}, load {out['load']} at start; tiny runs of "
            "experiment=smoke (tiny random BERT, 64 real training examples per task).",
            "",
            "## Two sweeps started together over one folder",
            "",
            f"- {t['runs']} runs; trained exactly once: {t['trained_once']}; "
            f"more than once: {t['trained_twice_or_more']}; completed: {t['completed']};",
            f"  exit codes {t['exit_codes']}; wall {t['wall_s']} s.",
            "",
            f"## `kill -9` of the sweep and its runs at {k['kills']} random moments, each followed by a rerun",
            "",
            f"- {k['runs']} runs after the final rerun: {k['completed']} completed, {k['torn']} torn; "
            f"{k['equal_to_uninterrupted']} with test metrics equal to an uninterrupted sweep's.",
            "- kill moments (s after start): " + ", ".join(str(m["after_s"]) for m in k["moments"]),
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glue", type=Path, default=ROOT.parent / "shared" / "glue")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-delay", type=float, default=20.0, help="latest kill moment, s after a sweep starts")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "results_trust")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from peft_cli.core.files import write_json, write_text

    out = {
        "host": os.uname().nodename,
        "load": [round(x, 2) for x in os.getloadavg()],
        "two_sweeps": two_sweeps(args.glue.resolve()),
        "kill9": kills(args.glue.resolve(), args.kills, args.seed, args.max_delay),
    }
    write_json(args.out.with_suffix(".json"), out)
    write_text(args.out.with_suffix(".md"), render(out))
    print(render(out))


if __name__ == "__main__":
    main()
