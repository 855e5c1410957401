"""`peftx sweep` with launcher=local: grid expansion and override precedence, idempotence (a second
sweep runs nothing), --retry-failed, --dry-run, fail-early validation, shared masks built once
before any run, and the per-worker environment.

Most tests replace the launcher's `start` (one `peftx train` subprocess per run) with an in-process
run of the same overrides: the same runs and files, without paying Python's import time per run.
The real subprocess path runs in test_resume.py's kill -9 test."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest

from peft_cli.core import files
from peft_cli.core.compose import compose
from peft_cli.core.errors import UserError
from peft_cli.run import record as results
from peft_cli.run.identity import config_hash
from peft_cli.sweep.grid import (
    MethodEntry,
    SweepConfig,
    TaskEntry,
    expand,
    grid_points,
    merge_overrides,
    sweep_config,
)
from peft_cli.sweep.launchers import local
from peft_cli.sweep.runner import run_sweep


class Finished:
    """What `local.start` returns, for a run that already ended (a subset of Popen)."""

    def __init__(self, rc: int) -> None:
        self.returncode = rc

    def poll(self) -> int:
        return self.returncode

    def wait(self) -> int:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        pass


@pytest.fixture
def launched(monkeypatch):
    """Run each started run in-process (real training); returns the list of started override lists.
    Set `launched.fail` to a method name to make that method's runs fail (status failed, exit 1)."""
    from peft_cli.run.train import train_run

    class Calls(list):
        fail: str | None = None

    calls = Calls()

    def start(run, env):
        calls.append(run.overrides)
        if run.cfg.method["name"] == calls.fail:
            files.write_json(
                run.folder / "result.json",
                {
                    "status": "failed",
                    "experiment": run.cfg.experiment,
                    "model": run.cfg.model.name,
                    "task": run.cfg.task.name,
                    "method": run.cfg.method["name"],
                    "method_tag": run.cfg.method["name"],
                    "seed": run.cfg.seed,
                    "metrics": {},
                    "score": None,
                    "params": {},
                    "stored_bytes": None,
                    "time": {},
                    "config_hash": config_hash(run.cfg),
                    "versions": {},
                    "error": "RuntimeError: simulated crash",
                },
            )
            return Finished(1)
        train_run(compose([*run.overrides, "train.progress=false"]))
        return Finished(0)

    monkeypatch.setattr(local, "start", start)
    monkeypatch.setattr(local, "POLL_S", 0.0)
    return calls


def smoke(glue, res, *extra: str) -> list[str]:
    """sweep=smoke (tiny-random) on the tiny GLUE folder: RTE x {full, bitfit} x seed 1 by default."""
    return [
        "sweep=smoke",
        f"data.glue_dir={glue}",
        f"results.dir={res}",
        "sweep.tasks=[rte]",
        "sweep.methods=[full,bitfit]",
        "sweep.seeds=[1]",
        *extra,
    ]


# --------------------------------------------------------------------------------------------
# grid


def test_grid_counts_order_and_precedence(tiny_glue, tmp_path):
    sweep = SweepConfig(
        name="t",
        experiment="smoke",
        seeds=[3, 4],
        tasks=[TaskEntry("rte"), TaskEntry("stsb", ["train.epochs=1"])],
        methods=[MethodEntry("full"), MethodEntry("bitfit", ["train.lr=0.01", "train.epochs=3"])],
        overrides=["train.lr=0.5", "train.batch_size=4", f"data.glue_dir={tiny_glue}"],
    )
    runs = expand(sweep, ["train.batch_size=2", f"results.dir={tmp_path}", "launcher.workers=3", "sweep.seeds=[9]"])
    assert len(runs) == 2 * 2 * 2
    # seed-major: a half-finished sweep has every cell with the first seed
    assert [(r.cfg.seed, r.cfg.task.name, r.cfg.method["name"]) for r in runs] == [
        (s, t, m) for s in (3, 4) for t in ("rte", "stsb") for m in ("full", "bitfit")
    ]
    for r in runs:
        bitfit, stsb = r.cfg.method["name"] == "bitfit", r.cfg.task.name == "stsb"
        assert r.cfg.train.batch_size == 2  # the user's command line beats the sweep's overrides
        assert r.cfg.train.lr == (0.01 if bitfit else 0.5)  # method entry beats the shared overrides
        assert r.cfg.train.epochs == (3 if bitfit else 1 if stsb else 2)  # method entry > task entry > experiment
        assert r.cfg.model.name == "tiny-random" and r.cfg.experiment == "smoke"  # from conf/experiment/smoke.yaml
        assert not any(o.startswith(("launcher", "sweep")) for o in r.overrides)  # not passed to `peftx train`
        assert r.status == "pending" and r.note == "new"
        # the folder names what the run sets beyond the experiment (smoke: batch 8, 2 epochs, lr from the method)
        setting = {"train.batch_size": 2, "train.lr": 0.01 if bitfit else 0.5}
        if bitfit or stsb:
            setting["train.epochs"] = 3 if bitfit else 1
        assert r.cfg.setting == setting
        tag = r.cfg.method["name"] + ("-bs2-ep3-lr0.01" if bitfit else "-bs2-ep1-lr0.5" if stsb else "-bs2-lr0.5")
        assert r.folder == tmp_path / "runs/smoke/tiny-random" / tag / r.cfg.task.name / f"seed{r.cfg.seed}"
    # seeds after the first two are copied from the first composition: they must equal a fresh one
    for r in runs:
        assert r.cfg.to_dict() == compose(r.overrides).to_dict()


def test_grid_points_are_runs_of_their_own(tiny_glue, tmp_path):
    sweep = sweep_config(
        {
            "name": "g",
            "experiment": "smoke",
            "tasks": ["rte"],
            "methods": [
                {"method": "full", "grid": {"train.lr": [1e-5, 3e-3]}},
                {"method": "bitfit", "overrides": ["train.weight_decay=0.1"], "grid": {"train.warmup_ratio": [0.0]}},
            ],
            "grid": {"train.weight_decay": [0.0, 0.02], "train.warmup_ratio": [0.1, 0.2]},
            "seeds": [1, 2],
            "overrides": [f"data.glue_dir={tiny_glue}"],
        }
    )
    runs = expand(sweep, [f"results.dir={tmp_path}"])
    # full: 2 lrs x 2 wd x 2 warmups; bitfit: its warmup list replaces the sweep's, its fixed wd beats
    # the sweep-wide wd grid (both points compose to one run), so 1 point; x 2 seeds
    assert len(runs) == (8 + 1) * 2 and len({r.folder for r in runs}) == len(runs)
    full = [r for r in runs if r.cfg.method["name"] == "full" and r.cfg.seed == 1]
    assert {(r.cfg.train.lr, r.cfg.train.weight_decay, r.cfg.train.warmup_ratio) for r in full} == {
        (lr, wd, wu) for lr in (1e-5, 3e-3) for wd in (0.0, 0.02) for wu in (0.1, 0.2)
    }
    assert all(r.cfg.setting["train.lr"] in (1e-5, 3e-3) for r in full)
    assert any(r.folder.parent.parent.name == "full-lr1e-05-wu0.1-wd0.0" for r in full)
    bitfit = [r for r in runs if r.cfg.method["name"] == "bitfit"]
    assert {(r.cfg.train.weight_decay, r.cfg.train.warmup_ratio) for r in bitfit} == {(0.1, 0.0)}
    assert all(r.stage == "" for r in runs)
    # the user's command line still wins over a grid: its points collapse into one run
    assert (
        len(expand(sweep, [f"results.dir={tmp_path}", "train.lr=0.1", "train.weight_decay=0", "train.warmup_ratio=0"]))
        == 2 * 2
    )
    # a true duplicate is refused: two entries, two configs, one folder (method.lr is not in the folder name)
    clash = dataclasses.replace(sweep, grid={}, methods=[MethodEntry("full", grid={"method.lr": [0.1, 0.2]})])
    with pytest.raises(UserError, match="share the folder"):
        expand(clash, [f"results.dir={tmp_path}"])
    with pytest.raises(UserError, match="sweep.methods\\[0\\].grid.train.lr"):
        sweep_config(
            {
                "name": "x",
                "experiment": "smoke",
                "tasks": ["rte"],
                "methods": [{"method": "full", "grid": {"train.lr": []}}],
                "seeds": [1],
            }
        )


def test_merge_overrides_last_of_each_key_wins():
    assert merge_overrides(["a=1", "+b=2", "task=rte"], ["b=3", "c=4"], ["task=mrpc"]) == [
        "a=1",
        "b=3",
        "c=4",
        "task=mrpc",
    ]


def test_sweep_file_shorthand_and_errors():
    cfg = sweep_config(
        {
            "name": "x",
            "experiment": "smoke",
            "tasks": ["rte", {"task": "mrpc", "overrides": ["seed=1"]}],
            "methods": ["full"],
            "seeds": [1],
        }
    )
    assert cfg.tasks == [TaskEntry("rte"), TaskEntry("mrpc", ["seed=1"])] and cfg.methods == [MethodEntry("full")]
    with pytest.raises(UserError, match="sweep=NAME"):
        sweep_config(None)
    with pytest.raises(UserError, match="sweep.seeds"):
        sweep_config({"name": "x", "experiment": "smoke", "tasks": ["rte"], "methods": ["full"], "seeds": []})
    base = {"name": "x", "experiment": "smoke", "tasks": ["rte"], "methods": ["full"]}
    staged = sweep_config({**base, "seeds": {"search": [0], "final": [1, 0, 2]}})
    assert staged.two_stage and staged.search_seeds == [0] and staged.all_seeds == [0, 1, 2]
    for seeds, message in (
        ({"search": [0], "final": []}, "sweep.seeds.final' is empty"),
        ({"search": [0]}, "sweep.seeds.final' is missing"),
        ({"search": [0], "finale": [1]}, "sweep.seeds.finale"),
        ("1,2", "give a list"),
        ([1, "a"], "sweep.seeds"),
    ):
        with pytest.raises(UserError, match=message):
            sweep_config({**base, "seeds": seeds})
    with pytest.raises(UserError, match="sweep.taks"):
        sweep_config({"name": "x", "experiment": "smoke", "taks": ["rte"], "methods": ["full"], "seeds": [1]})


def _shipped() -> list[str]:
    from peft_cli.core.compose import conf_dir

    return sorted(p.stem for p in (conf_dir() / "sweep").glob("*.yaml"))


def test_shipped_sweeps_exist():
    shipped = set(_shipped())
    assert {
        "quickstart",
        "cpu_minilm",
        "cpu_minilm_grid",
        "gpu_minilm",
        "paper_base",
        "paper_large",
        "smoke",
    } <= shipped
    assert "pafi_embeddings" in shipped


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow if n.startswith(("paper", "cpu_minilm", "gpu_minilm")) else ())
        for n in _shipped()
    ],
)
def test_shipped_sweep_expands(name, tmp_path):
    """Every run of every conf/sweep/*.yaml composes and validates (exit 2 would be a shipped bug)
    and has a folder of its own. The paper grids compose ~100 runs each: slow."""
    runs = expand(sweep_config(_root(name)["sweep"]), [f"sweep={name}", f"results.dir={tmp_path}"])
    sweep = sweep_config(_root(name)["sweep"])
    points = sum(len(grid_points(sweep, m)) for m in sweep.methods)
    assert len(runs) == len(sweep.tasks) * points * len(sweep.all_seeds)  # final seeds at every point, before selection
    assert len({r.folder for r in runs}) == len(runs)


def _root(name: str) -> dict:
    from peft_cli.core.compose import compose_dict

    return compose_dict([f"sweep={name}"])


# --------------------------------------------------------------------------------------------
# idempotence, failures, dry run


def test_second_sweep_runs_nothing(tiny_glue, tmp_path, launched, capsys):
    args = smoke(tiny_glue, tmp_path)
    assert run_sweep(args) == 0
    assert [o[1:3] for o in launched] == [["task=rte", "method=full"], ["task=rte", "method=bitfit"]]
    found = list(results.iter_results(tmp_path))
    assert sorted(r["method"] for _, r in found) == ["bitfit", "full"]
    assert all(r["status"] == "completed" for _, r in found)
    launched.clear()
    assert run_sweep(args) == 0
    assert launched == []  # every run completed with the same config_hash: skipped
    assert "skipped 2" in capsys.readouterr().err
    # a different config of the same cell is a different run in its own folder: it runs, and the first results stay
    assert run_sweep(args + ["train.epochs=1"]) == 0
    folders = sorted(f.parent.parent.name for f, _ in results.iter_results(tmp_path))
    assert len(launched) == 2 and folders == ["bitfit", "bitfit-ep1", "full", "full-ep1"]


def test_failed_runs_skipped_unless_retry_failed(tiny_glue, tmp_path, launched, capsys):
    args = smoke(tiny_glue, tmp_path)
    launched.fail = "bitfit"
    assert run_sweep(args) == 1  # one failed run
    launched.clear()
    launched.fail = None
    assert run_sweep(args) == 1  # still failed: not retried, still counted
    assert launched == []
    capsys.readouterr()
    assert run_sweep(args, dry_run=True) == 0
    out = capsys.readouterr().out
    assert _statuses(out) == {"full": "completed", "bitfit": "failed"}
    assert run_sweep(args, dry_run=True, retry_failed=True) == 0
    assert "retried (--retry-failed)" in capsys.readouterr().out and launched == []
    assert run_sweep(args, retry_failed=True) == 0
    assert [o[2] for o in launched] == ["method=bitfit"]
    assert all(r["status"] == "completed" for _, r in results.iter_results(tmp_path))


def _statuses(out: str) -> dict[str, str]:
    """method -> status from --dry-run's table."""
    rows = [
        line.split()
        for line in out.splitlines()[1:]
        if line.split() and line.split()[0] in ("pending", "completed", "failed", "queued")
    ]
    return {row[2]: row[0] for row in rows}


def test_dry_run_lists_runs_and_runs_nothing(tiny_glue, tmp_path, launched, capsys):
    args = smoke(tiny_glue, tmp_path, "sweep.tasks=[rte,mrpc]")
    assert run_sweep(args, dry_run=True) == 0
    out = capsys.readouterr().out
    assert launched == [] and not (tmp_path / "runs").exists()
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["status", "task", "run", "seed", "folder"]
    assert len(lines) == 1 + 4 + 1
    for line, (task, method) in zip(
        lines[1:5], [("rte", "full"), ("rte", "bitfit"), ("mrpc", "full"), ("mrpc", "bitfit")], strict=True
    ):
        status, t, m, seed, folder = line.split()[:5]
        assert (status, t, m, seed) == ("pending", task, method, "1")
        assert folder == str(tmp_path / "runs/smoke/tiny-random" / method / task / "seed1")
    assert "would run 4 with launcher=local" in lines[-1]


def test_interrupted_run_is_pending_and_resumes(tiny_glue, tmp_path, launched, capsys):
    """A run left 'running' (killed) or 'cancelled' with a checkpoint is rerun; the listing says where it resumes."""
    from peft_cli.core.errors import Interrupted
    from peft_cli.run.train import train_run
    from peft_cli.run.trainer import Trainer

    args = smoke(tiny_glue, tmp_path, "sweep.methods=[bitfit]")
    [run] = expand(sweep_config(_root("smoke")["sweep"] | {"tasks": ["rte"], "methods": ["bitfit"]}), args)
    cfg = compose(run.overrides)  # the sweep's run, started by hand and stopped after step 4

    real_step, n = Trainer._step, [0]

    def step(*a, **k):
        n[0] += 1
        if n[0] == 4:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_step(*a, **k)

    Trainer._step = step
    try:
        with pytest.raises(Interrupted):
            train_run(cfg, progress=False)
    finally:
        Trainer._step = real_step
    assert run_sweep(args, dry_run=True) == 0
    assert "cancelled, resumes at step 4" in capsys.readouterr().out
    assert run_sweep(args) == 0 and len(launched) == 1
    assert results.is_completed(run.folder, config_hash(cfg))


# --------------------------------------------------------------------------------------------
# fail early


@pytest.mark.parametrize(
    "bad, message",
    [
        ("sweep.methods=[full,nosuchmethod]", "nosuchmethod"),
        ("sweep.tasks=[rte,nosuchtask]", "nosuchtask"),
        ("sweep.seeds=[1,x]", "sweep.seeds"),
    ],
)
def test_config_error_in_one_cell_exits_2_before_any_run(tiny_glue, tmp_path, launched, cli, bad, message):
    r = cli("sweep", *smoke(tiny_glue, tmp_path), bad)
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1  # one line naming the problem
    assert launched == [] and not (tmp_path / "runs").exists()


def test_no_sweep_selected_exits_2(cli):
    r = cli("sweep", "task=rte")
    assert r.exit_code == 2 and "sweep=NAME" in r.output


# --------------------------------------------------------------------------------------------
# shared masks, workers


def test_shared_masks_built_once_before_any_run(tiny_glue, tmp_path, monkeypatch):
    """One build per distinct (model, mask) among pending runs that need one; none for FISH or bitfit."""
    from types import SimpleNamespace

    from peft_cli.methods.pafi import method as pafi_method

    events: list[str] = []
    monkeypatch.setattr(
        pafi_method,
        "build_for_config",
        lambda cfg: events.append(f"mask {cfg.model.name} {cfg.mask.strategy}") or SimpleNamespace(path=tmp_path / "m"),
    )
    monkeypatch.setattr(local, "start", lambda run, env: events.append(f"run {run.label}") or Finished(1))
    monkeypatch.setattr(local, "POLL_S", 0.0)
    methods = (
        "[pafi,{method:pafi,overrides:['mask.strategy=random']},"
        "{method:pafi,overrides:['mask.strategy=fisher']},bitfit]"
    )
    run_sweep(smoke(tiny_glue, tmp_path, "sweep.tasks=[rte,mrpc]", "sweep.seeds=[1,2]", f"sweep.methods={methods}"))
    masks = [e for e in events if e.startswith("mask")]
    assert masks == ["mask tiny-random smallest", "mask tiny-random random"]
    assert events[:2] == masks and len(events) == 2 + 2 * 2 * 4


def test_worker_env_is_the_childs():
    base = {"CUDA_VISIBLE_DEVICES": "3,5", "PATH": "/bin"}
    before = dict(os.environ)
    assert local.worker_env(0, 1, base) == base  # one worker: untouched
    assert [local.worker_env(i, 2, base)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["3", "5", "3"]
    assert base["CUDA_VISIBLE_DEVICES"] == "3,5" and dict(os.environ) == before
    # runs_per_gpu=2 with 2 workers: slots 0,1 on the first GPU, 2,3 on the second
    assert [local.worker_env(i, 2, base, 2)["CUDA_VISIBLE_DEVICES"] for i in range(4)] == ["3", "3", "5", "5"]
    assert local.worker_env(1, 1, base, 3)["CUDA_VISIBLE_DEVICES"] == "3"  # one GPU, three runs on it
    cpu = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/bin"}
    import torch

    if not torch.cuda.is_available():  # no GPU: the cores are shared out among the runs
        assert local.worker_env(0, 1, cpu, 2)["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))


# --------------------------------------------------------------------------------------------
# two stages


def two_stage(glue, res) -> list[str]:
    """RTE x full at two learning rates; search seed 1, final seeds 2 and 3."""
    return [
        "sweep=smoke",
        f"data.glue_dir={glue}",
        f"results.dir={res}",
        "sweep.tasks=[rte]",
        "sweep.methods=[{method:full,grid:{train.lr:[0.001,0.1]}}]",
        "~sweep.seeds",
        "+sweep.seeds={search:[1],final:[2,3]}",
    ]


def test_two_stage_sweep_runs_search_then_selected_final_once(tiny_glue, tmp_path, launched, capsys):
    from peft_cli.selection.rule import choose

    args = two_stage(tiny_glue, tmp_path)
    assert run_sweep(args, dry_run=True) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[1:-1]] == ["pending", "pending", "waiting", "waiting"]
    assert [ln.split()[3] for ln in lines[1:-1]] == ["1", "1", "2", "3"]
    assert "2 waiting for the search stage" in lines[-1] and "would run 2" in lines[-1]

    assert run_sweep(args) == 0  # one command: the search stage, then the final stage
    seeds = [next(o for o in run if o.startswith("seed=")) for run in launched]
    assert seeds == ["seed=1", "seed=1", "seed=2", "seed=3"]
    search = [r for _, r in results.iter_results(tmp_path) if r["seed"] == 1]
    chosen = choose(search, "accuracy").setting["train.lr"]
    finals = [r for _, r in results.iter_results(tmp_path) if r["seed"] != 1]
    assert sorted(r["seed"] for r in finals) == [2, 3] and {r["setting"]["train.lr"] for r in finals} == {chosen}
    # the report applies the same rule: its cell is the chosen setting over the final seeds
    from peft_cli.report.build import build_table, collect

    table = build_table("smoke", *collect(tmp_path, "smoke/*/*/*/*"), [])
    assert [c.setting for c in table.choices.values()] == [{"train.lr": chosen}]
    assert table.rows[0].cells[("rte", "accuracy")].n == 2 and table.rows[0].chosen == {"rte": {"train.lr": chosen}}

    launched.clear()
    capsys.readouterr()
    assert run_sweep(args) == 0 and launched == []  # idempotent
    assert run_sweep(args, dry_run=True) == 0
    out = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in out[1:-1]] == ["completed"] * 4 and "would run 0" in out[-1]
