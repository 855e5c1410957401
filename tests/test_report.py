"""`peftx report` from result.json files written here by hand (no training): the golden Markdown
table, medians, seed marks, Avg, published rows, CSV/LaTeX/plot outputs, skipped-run counts,
determinism and the CLI."""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import statistics
from pathlib import Path

import pytest

from peft_cli.core.errors import UserError
from peft_cli.report.build import build_table, collect, report_config
from peft_cli.report.main import report_from_config
from peft_cli.report.reference import load_reference
from peft_cli.report.render import to_csv, to_latex, to_markdown
from peft_cli.report.table import Cell

HEADLINE = {
    "rte": "accuracy",
    "mrpc": "accuracy",
    "stsb": "pearson",
    "mnli": "accuracy",
    "cola": "matthews_correlation",
}


def write_result(
    root: Path,
    tag: str,
    task: str,
    seed: int,
    metrics: dict[str, float],
    *,
    trainable: int,
    stored: int,
    nbytes: int,
    status: str = "completed",
    model: str = "m",
    experiment: str = "tiny",
    protocol: str = "holdout",
) -> Path:
    d = root / "runs" / experiment / model / tag / task / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    r = {
        "status": status,
        "experiment": experiment,
        "model": model,
        "task": task,
        "method": tag.split("-")[0],
        "method_tag": tag,
        "seed": seed,
        "metrics": {"validation": {}, "test": metrics},
        "score": 100.0 * metrics[HEADLINE[task]],
        "params": {"backbone": 1000, "head": 7, "trainable": trainable, "stored": stored},
        "stored_bytes": nbytes,
        "time": {"train_s": 1.0, "eval_s": 0.1},
        "config_hash": f"{tag}{task}{seed}",
        "protocol": protocol,
        "versions": {"torch": "x"},
    }
    (d / "result.json").write_text(json.dumps(r), encoding="utf-8")
    return d


def write_runs(root: Path, experiment: str = "tiny") -> Path:
    """full: rte 60/70/65, mrpc acc 80/82/84 f1 85/88/86 (3 seeds); bitfit: rte 50/55 (2 seeds),
    mrpc 70/74/72, 80/81/79; lora: rte only, 61/62/63. Plus one failed, one running, one
    half-written result.json."""
    put = functools.partial(write_result, root, experiment=experiment)
    full, bitfit, lora = (
        dict(trainable=1000, stored=1000, nbytes=4100),
        dict(trainable=10, stored=10, nbytes=140),
        dict(trainable=5, stored=5, nbytes=1234),
    )
    for seed, acc in zip((1, 2, 3), (0.60, 0.70, 0.65), strict=True):
        put("full", "rte", seed, {"accuracy": acc}, **full)
    for seed, acc, f1 in zip((1, 2, 3), (0.80, 0.82, 0.84), (0.85, 0.88, 0.86), strict=True):
        put("full", "mrpc", seed, {"accuracy": acc, "f1": f1}, **full)
    for seed, acc in zip((1, 2), (0.50, 0.55), strict=True):
        put("bitfit", "rte", seed, {"accuracy": acc}, **bitfit)
    for seed, acc, f1 in zip((1, 2, 3), (0.70, 0.74, 0.72), (0.80, 0.81, 0.79), strict=True):
        put("bitfit", "mrpc", seed, {"accuracy": acc, "f1": f1}, **bitfit)
    for seed, acc in zip((1, 2, 3), (0.61, 0.62, 0.63), strict=True):
        put("lora-r8", "rte", seed, {"accuracy": acc}, **lora)
    # not completed: never in the table, but counted
    put("bitfit", "rte", 3, {"accuracy": 0.99}, **bitfit, status="failed")
    put("lora-r8", "mrpc", 1, {"accuracy": 0.99, "f1": 0.99}, **lora, status="running")
    half = put("lora-r8", "mrpc", 2, {"accuracy": 0.99, "f1": 0.99}, **lora) / "result.json"
    half.write_text(half.read_text()[:150])  # a half-written file
    return root


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return write_runs(tmp_path)


def cfg(results_dir: Path, **report) -> dict:
    return {
        "experiment": "tiny",
        "results": {"dir": str(results_dir)},
        "report": {"runs": None, "spread": "std", "references": [], **report},
    }


def table_of(results_dir: Path, refs: list[str] = (), spread: str = "std", pattern: str = "tiny/*/*/*/*"):
    runs, counts = collect(results_dir, pattern)
    return build_table("tiny", runs, counts, [load_reference(n) for n in refs], spread)


GOLDEN = """\
**Experiment tiny: GLUE test scores in %, median over seeds; model m; split protocol: holdout.**

| Method | MRPC acc | MRPC F1 | RTE | Avg | % trainable | % stored | Size/task |
|:---|---:|---:|---:|---:|---:|---:|---:|
| full | 82.00 | 86.00 | 65.00 | 73.50 | 100.00 | 100.00 | 4.1 KB |
| bitfit | 72.00 | 80.00 | 52.50† | 62.25† | 1.00 | 1.00 | 140 B |
| lora-r8 | — | — | 62.00 | — | 0.50 | 0.50 | 1.23 KB |

Avg: mean over the 2 tasks of each row's per-task median headline score (MRPC acc, RTE); — when the row \
lacks a task. % trainable / % stored: parameters updated in training / written to the artifact, over the \
backbone's parameters (task head excluded). Size/task: median bytes on disk of one run's artifact (head included).

† fewer seeds: bitfit RTE n=2 of 3. An Avg is marked † when one of its medians is.

Runs: 14 completed result.json read; skipped: 1 failed, 0 cancelled, 1 running, 1 unreadable.
"""


def test_golden_markdown(results):
    assert to_markdown(table_of(results)) == GOLDEN


def test_medians_odd_and_even_n(results):
    assert Cell([3.0, 1.0, 2.0]).median == 2.0
    assert Cell([1.0, 2.0, 3.0, 10.0]).median == 2.5  # even n: mean of the two middle values
    rows = {r.method_tag: r for r in table_of(results).rows}
    assert rows["full"].cells[("rte", "accuracy")].median == pytest.approx(65.0)  # 60, 70, 65
    assert rows["bitfit"].cells[("rte", "accuracy")].median == pytest.approx(52.5)  # 50, 55
    assert rows["full"].cells[("mrpc", "f1")].median == pytest.approx(86.0)  # 85, 88, 86


def test_missing_seed_marked_and_avg(results):
    t = table_of(results)
    rows = {r.method_tag: r for r in t.rows}
    assert t.n_max == 3
    assert t.marked(rows["bitfit"], rows["bitfit"].cells[("rte", "accuracy")])
    assert not t.marked(rows["bitfit"], rows["bitfit"].cells[("mrpc", "accuracy")])
    assert t.avg_marked(rows["bitfit"]) and not t.avg_marked(rows["full"])
    # Avg = mean over tasks of the per-task median headline score
    assert rows["full"].avg == pytest.approx((65.0 + 82.0) / 2)
    assert rows["bitfit"].avg == pytest.approx((52.5 + 72.0) / 2)
    # lora has no MRPC: no Avg at all, not its RTE score alone
    assert rows["lora-r8"].avg is None


def test_counts_skip_failed_running_unreadable(results):
    runs, counts = collect(results, "tiny/*/*/*/*")
    assert counts == {"completed": 14, "failed": 1, "cancelled": 0, "running": 1, "unreadable": 1}
    assert all(r["status"] == "completed" for r in runs)
    assert not any(r["score"] == 99.0 for r in runs)  # the failed/running runs' scores never enter


def test_csv_n_and_spread(results):
    rows = list(csv.DictReader(io.StringIO(to_csv(table_of(results)))))
    get = lambda tag, task, metric: next(  # noqa: E731
        r
        for r in rows
        if r["method_tag"] == tag
        and r["task"] == task  # noqa: E731
        and r["metric"] == metric
    )
    full_rte = get("full", "rte", "accuracy")
    assert (full_rte["median"], full_rte["n"], full_rte["fewer_seeds"]) == ("65.0000", "3", "0")
    assert float(full_rte["std"]) == pytest.approx(statistics.stdev([60.0, 70.0, 65.0]))
    bit_rte = get("bitfit", "rte", "accuracy")
    assert (bit_rte["median"], bit_rte["n"], bit_rte["fewer_seeds"]) == ("52.5000", "2", "1")
    assert get("lora-r8", "all", "avg")["median"] == ""  # undefined, not a one-task average
    assert get("bitfit", "all", "stored_pct")["median"] == "1.000000"
    assert get("full", "mrpc", "stored_bytes")["median"] == "4100"

    minmax = list(csv.DictReader(io.StringIO(to_csv(table_of(results, spread="minmax")))))
    r = next(r for r in minmax if r["method_tag"] == "full" and r["task"] == "rte" and r["metric"] == "accuracy")
    assert (r["min"], r["max"]) == ("60.0000", "70.0000") and "std" not in r


def test_reference_rows_apart(results):
    t = table_of(results, refs=["roberta_base_lora"])
    md = to_markdown(t)
    measured_md = to_markdown(table_of(results))
    # measured rows are untouched by the references
    for line in measured_md.splitlines()[4:7]:
        assert line in md
    lines = md.splitlines()
    sep = lines.index("| *published* |  |  |  |  |  |  |  |")
    assert sep == 7  # right after the three measured rows
    assert lines[8] == "| full FT (roberta-base) [1] | 90.20 | — | 78.70 | 84.45 | 100.00 | 100.00 | — |"
    assert lines[9] == "| LoRA (roberta-base) [1] | 89.70 | — | 86.60 | 88.15 | 0.24 | 0.24 | — |"
    assert "[1] published, not measured here (roberta-base, dev split): LoRA repository README table" in md
    assert "full FT 86.40, LoRA 87.24" in md
    assert t.n_max == 3  # a published cell (one value) never sets or gets seed marks
    assert not any(t.marked(r, c) for r in t.references for c in r.cells.values())
    kinds = {r["kind"] for r in csv.DictReader(io.StringIO(to_csv(t))) if r["row"].startswith(("full FT", "LoRA"))}
    assert kinds == {"published"}


def test_reference_avg_matches_published():
    """With the references alone, the table spans their 8 tasks; LoRA's Avg recomputes to the
    published 87.24 (full FT's published 86.40 is not the mean of its rounded cells, 86.35)."""
    t = build_table("ref", [], {}, [load_reference("roberta_base_lora")])
    assert [c.label for c in t.columns][:3] == ["CoLA", "SST-2", "MRPC acc"]
    avg = {r.method_tag: r.avg for r in t.references}
    assert round(avg["LoRA"], 2) == 87.24 and round(avg["full FT"], 2) == 86.35


def test_columns_from_task_conf(tmp_path):
    """Report metrics and labels come from conf/task/*.yaml, in GLUE order."""
    kw = dict(trainable=1, stored=1, nbytes=10)
    write_result(tmp_path, "full", "mnli", 1, {"accuracy": 0.8, "accuracy_mm": 0.81}, **kw)
    write_result(tmp_path, "full", "stsb", 1, {"pearson": 0.9, "spearmanr": 0.89}, **kw)
    write_result(tmp_path, "full", "cola", 1, {"matthews_correlation": 0.5}, **kw)
    t = table_of(tmp_path)
    assert [c.label for c in t.columns] == ["CoLA", "STS-B Pearson", "STS-B Spearman", "MNLI acc", "MNLI acc-mm"]
    assert t.rows[0].avg == pytest.approx((50.0 + 90.0 + 80.0) / 3)


def test_several_models_and_glob(results):
    write_result(results, "full", "rte", 1, {"accuracy": 0.5}, trainable=1, stored=1, nbytes=1, model="m2")
    assert {r.label for r in table_of(results).rows} == {"full (m)", "bitfit (m)", "lora-r8 (m)", "full (m2)"}
    t = table_of(results, pattern="tiny/m/*/rte/*")
    assert [c.label for c in t.columns] == ["RTE"] and {r.model for r in t.rows} == {"m"}
    # the same run twice (e.g. a glob over two experiments) would count a seed twice: refused
    write_result(results, "full", "rte", 1, {"accuracy": 0.5}, trainable=1, stored=1, nbytes=1, experiment="other")
    with pytest.raises(UserError, match="two completed runs of m/full/holdout/rte/1"):
        table_of(results, pattern="*/m/*/*/*")


def test_latex_booktabs(results):
    tex = to_latex(table_of(results, refs=["roberta_base_lora"]))
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrrrrrrr}"):
        assert rule in tex
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    assert r"52.50$^\dagger$" in tex and r"\% trainable" in tex and r"\textit{published}" in tex
    assert "—" not in tex and "†" not in tex


def test_report_files_plot_and_determinism(results):
    paths = report_from_config(cfg(results, references=["roberta_base_lora"]))
    names = sorted(p.name for p in paths)
    assert names == ["tiny.csv", "tiny.md", "tiny.pdf", "tiny.png", "tiny.seeds.csv", "tiny.settings.csv", "tiny.tex"]
    assert all(p.parent == results / "tables" for p in paths)
    png = (results / "tables" / "tiny.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert (results / "tables" / "tiny.pdf").read_bytes().startswith(b"%PDF")
    first = {p.name: p.read_bytes() for p in paths}
    report_from_config(cfg(results, references=["roberta_base_lora"]))
    again = {p.name: p.read_bytes() for p in paths}
    assert first == again  # md, csv, tex and the plot: byte-identical reruns
    assert not list((results / "tables").glob(".*.tmp"))


def test_config_is_strict(results):
    with pytest.raises(UserError, match="report.sprad"):
        report_config({**cfg(results), "report": {"sprad": "std"}})
    with pytest.raises(UserError, match="report.spread"):
        report_config(cfg(results, spread="iqr"))
    with pytest.raises(UserError, match="report.references"):
        report_from_config(cfg(results, references=["nosuch"]))


def test_cli_report(cli, tmp_path):
    # `experiment=NAME` selects conf/experiment/NAME.yaml, which sets the `experiment` key; only
    # `default` exists in conf/ here, so the runs are written under that experiment
    results = write_runs(tmp_path / "res", experiment="default")
    r = cli("report", f"results.dir={results}", "experiment=default")
    assert r.exit_code == 0, r.output
    assert str(results / "tables" / "default.md") in r.output and "bitfit" in r.output  # paths + console table
    assert (results / "tables" / "default.md").read_text() == GOLDEN.replace("Experiment tiny", "Experiment default")
    empty = cli("report", f"results.dir={tmp_path / 'none'}", "experiment=default")
    assert empty.exit_code == 2 and "no completed result.json" in empty.output
    bad = cli("report", f"results.dir={results}", "report.spread=iqr")
    assert bad.exit_code == 2 and "report.spread" in bad.output


COMMITTED = Path(__file__).resolve().parents[1] / "results"


@pytest.mark.parametrize("experiment", ["cpu_minilm", "cpu_minilm_grid"])
def test_committed_tables_rebuild(cli, tmp_path, experiment):
    """`peftx report experiment=NAME` over the committed result.json files gives the committed
    tables byte for byte (the plot is left out: its bytes depend on the matplotlib version). The
    first reproduction (cpu_minilm) committed md, csv and tex only."""
    import shutil

    if not (COMMITTED / "runs" / experiment).is_dir():
        pytest.skip(f"no committed {experiment} runs")
    shutil.copytree(
        COMMITTED / "runs" / experiment,
        tmp_path / "runs" / experiment,
        ignore=shutil.ignore_patterns("*.safetensors", "checkpoint", "*.log"),
    )
    r = cli("report", f"experiment={experiment}", f"results.dir={tmp_path}")
    assert r.exit_code == 0, r.output
    for ext in ("md", "csv", "tex", "settings.csv", "seeds.csv"):
        committed = COMMITTED / "tables" / f"{experiment}.{ext}"
        if ext in ("md", "csv", "tex") or committed.exists():
            assert (tmp_path / "tables" / f"{experiment}.{ext}").read_bytes() == committed.read_bytes(), ext


def test_plot_labels_at_one_point_do_not_overlap(tmp_path):
    # three masks at one density with nearly equal scores: their labels are stacked, not drawn on top
    from peft_cli.report.plot import LABEL_GAP, figure

    for tag, acc in (("pafi-smallest", 0.700), ("pafi-random", 0.701), ("pafi-largest", 0.699), ("full", 0.75)):
        n = 1000 if tag == "full" else 5
        write_result(tmp_path, tag, "rte", 1, {"accuracy": acc}, trainable=n, stored=n, nbytes=40 * n)
    fig = figure(table_of(tmp_path))
    ax = fig.axes[0]
    pos = {t.get_text(): t.get_window_extent().y0 * 72.0 / fig.dpi for t in ax.texts if t.get_text().startswith("pafi")}
    ys = sorted(pos.values())
    assert len(ys) == 3 and all(b - a >= LABEL_GAP - 0.01 for a, b in itertools.pairwise(ys))
    order = sorted(pos, key=pos.get)
    assert order == ["pafi-largest", "pafi-smallest", "pafi-random"]  # stacked in score order (69.9, 70.0, 70.1)


# --------------------------------------------------------------------------------------------
# grids: selection on validation, settings and per-seed CSVs, report options


def write_grid_run(root: Path, tag: str, lr: float, seed: int, val: float, test: float, task: str = "rte") -> Path:
    """A run of a grid point: its setting (train.lr) names its folder, validation and test accuracy."""
    d = write_result(root, f"{tag}-lr{lr!r}", task, seed, {"accuracy": test}, trainable=10, stored=10, nbytes=100)
    r = json.loads((d / "result.json").read_text())
    r.update(method_tag=tag, setting={"train.lr": lr}, run_tag=f"{tag}-lr{lr!r}")
    r["metrics"]["validation"] = {"accuracy": val}
    (d / "result.json").write_text(json.dumps(r))
    return d


def grid_results(root: Path) -> Path:
    """bitfit on RTE, two-stage: search seed 0 at lr 0.1 (val 0.70) and 0.01 (val 0.60, but the
    better test score); final seeds 1-3 at 0.1 only. lora-r8: a one-stage grid, seeds 1-2."""
    write_grid_run(root, "bitfit", 0.1, 0, val=0.70, test=0.50)
    write_grid_run(root, "bitfit", 0.01, 0, val=0.60, test=0.90)
    for seed, test in ((1, 0.61), (2, 0.63), (3, 0.65)):
        write_grid_run(root, "bitfit", 0.1, seed, val=0.1, test=test)
    for lr, vals in ((0.001, (0.5, 0.6)), (0.002, (0.7, 0.7))):
        for seed, val in zip((1, 2), vals, strict=True):
            write_grid_run(root, "lora-r8", lr, seed, val=val, test=val - 0.1)
    return root


def test_grid_cells_use_the_setting_selected_on_validation(tmp_path):
    t = table_of(grid_results(tmp_path))
    rows = {r.method_tag: r for r in t.rows}
    assert rows["bitfit"].cells[("rte", "accuracy")].values == pytest.approx([61.0, 63.0, 65.0])  # final seeds
    assert rows["lora-r8"].cells[("rte", "accuracy")].values == pytest.approx([60.0, 60.0])  # lr 0.002, both seeds
    assert rows["bitfit"].chosen == {"rte": {"train.lr": 0.1}} and t.selected
    md = to_markdown(t)
    assert "best median validation score" in md and "Test scores play no part" in md
    assert "Chosen settings (all settings in the .settings.csv file): bitfit: RTE lr 0.1; lora-r8: RTE lr 0.002." in md
    # every test metric changed: the same settings are chosen
    for p in tmp_path.glob("runs/**/result.json"):
        r = json.loads(p.read_text())
        r["metrics"]["test"]["accuracy"] = 1.0 - r["metrics"]["test"]["accuracy"]
        r["score"] = 100 * r["metrics"]["test"]["accuracy"]
        p.write_text(json.dumps(r))
    again = table_of(tmp_path)
    assert {r.method_tag: r.chosen for r in again.rows} == {r.method_tag: r.chosen for r in t.rows}
    assert again.choices == t.choices


def test_settings_and_seeds_csv(tmp_path):
    from peft_cli.report.render import to_seeds_csv, to_settings_csv

    t = table_of(grid_results(tmp_path))
    settings = list(csv.DictReader(io.StringIO(to_settings_csv(t))))
    assert [(s["method_tag"], s["setting"], s["chosen"], s["n"]) for s in settings] == [
        ("bitfit", '{"train.lr": 0.01}', "0", "1"),
        ("bitfit", '{"train.lr": 0.1}', "1", "4"),
        ("lora-r8", '{"train.lr": 0.001}', "0", "2"),
        ("lora-r8", '{"train.lr": 0.002}', "1", "2"),
    ]
    chosen = settings[1]
    assert chosen["seeds"] == "0 1 2 3" and chosen["selection_seeds"] == "0"
    assert float(chosen["selection_validation_median"]) == pytest.approx(70.0)
    assert float(chosen["test_median"]) == pytest.approx(62.0)  # all four seeds: 50, 61, 63, 65
    assert float(settings[2]["validation_median"]) == pytest.approx(55.0) and settings[2]["validation_std"]
    seeds = list(csv.DictReader(io.StringIO(to_seeds_csv(t))))
    assert len(seeds) == 9 * 2  # every run, validation and test accuracy
    reported = {(s["method_tag"], s["setting"], s["seed"]) for s in seeds if s["reported"] == "1"}
    assert reported == {("bitfit", '{"train.lr": 0.1}', s) for s in "123"} | {
        ("lora-r8", '{"train.lr": 0.002}', s) for s in "12"
    }


def test_stat_mean_spread_and_display_names(results):
    from peft_cli.report.build import ReportOptions

    runs, counts = collect(results, "tiny/*/*/*/*")
    opts = ReportOptions(stat="mean", show_spread=True, display_names=True, names={"lora-r8": "LoRA r=8"})
    t = build_table("tiny", runs, counts, [], options=opts)
    md = to_markdown(t)
    assert "GLUE test scores in %, mean ± sample std over seeds" in md
    assert "| Full FT | 82.00 ± 2.00 | 86.33 ± 1.53 | 65.00 ± 5.00 | 73.50 ± 3.12 |" in md
    assert "| BitFit | 72.00 ± 2.00 | 80.00 ± 1.00 | 52.50 ± 3.54† | 62.25 ± 3.18† |" in md  # seeds 1, 2: Avgs 60, 64.5
    assert "| LoRA r=8 | — | — | 62.00 ± 1.00 |" in md
    assert r"82.00 $\pm$ 2.00" in to_latex(t)
    assert "Full FT,measured,m,full,holdout" in to_csv(t)  # the tag stays in the CSV
    minmax = to_markdown(
        build_table("tiny", runs, counts, [], options=ReportOptions(spread="minmax", show_spread=True))
    )
    assert "| full | 82.00 (80.00–84.00) |" in minmax and "median (min–max) over seeds" in minmax


def test_error_bars_in_the_plot(results):
    from peft_cli.report.build import ReportOptions
    from peft_cli.report.plot import error_bar, figure

    runs, counts = collect(results, "tiny/*/*/*/*")
    plain = build_table("tiny", runs, counts, [])
    assert all(error_bar(plain, r) is None for r in plain.rows)
    t = build_table("tiny", runs, counts, [], options=ReportOptions(show_spread=True))
    full = next(r for r in t.rows if r.method_tag == "full")
    assert full.avg_values == pytest.approx([70.0, 76.0, 74.5])  # per seed: (rte + mrpc acc) / 2
    sd = statistics.stdev(full.avg_values)
    assert error_bar(t, full) == pytest.approx((sd, sd))
    ax = figure(t).axes[0]
    assert len(ax.containers) == 2  # full and bitfit (lora has no Avg)


def test_report_runs_writes_under_its_own_name(results):
    report_from_config(cfg(results))
    whole = (results / "tables" / "tiny.md").read_text()
    paths = report_from_config(cfg(results, runs="tiny/*/*/rte/*"))
    assert paths[0] == results / "tables" / "tiny-tiny_rte.md"
    assert (results / "tables" / "tiny.md").read_text() == whole  # the experiment's full table is untouched
    named = report_from_config(cfg(results, runs="tiny/*/*/rte/*", name="rte_only"))
    assert named[0] == results / "tables" / "rte_only.md"
    with pytest.raises(UserError, match="report.name"):
        report_config(cfg(results, name="../x"))
    with pytest.raises(UserError, match="report.stat"):
        report_config(cfg(results, stat="mode"))


def test_cli_report_options(cli, tmp_path):
    results = write_runs(tmp_path / "res", experiment="default")
    args = ["report", f"results.dir={results}", "experiment=default", "report.stat=mean", "report.show_spread=true"]
    r = cli(*args, "report.display_names=true", "report.runs=default/*/*/rte/*")
    assert r.exit_code == 0, r.output
    md = (results / "tables" / "default-default_rte.md").read_text()
    assert "| Full FT | 65.00 ± 5.00 |" in md and not (results / "tables" / "default.md").exists()
    assert cli(*args, "report.stat=mode").exit_code == 2


def test_committed_runs_are_where_their_sweep_looks():
    """Every committed cpu_minilm run sits in the folder its sweep names and carries the hash its
    sweep computes: `peftx sweep sweep=cpu_minilm` finds all of them completed, trains nothing and
    never adds a second copy of a cell that the report would count twice."""
    from peft_cli.core.compose import compose_dict
    from peft_cli.run.record import iter_results
    from peft_cli.sweep.grid import expand, sweep_config, with_status

    if not (COMMITTED / "runs" / "cpu_minilm").is_dir():
        pytest.skip("no committed cpu_minilm runs")
    overrides = ["sweep=cpu_minilm", f"results.dir={COMMITTED}"]
    runs = [with_status(r) for r in expand(sweep_config(compose_dict(overrides)["sweep"]), overrides)]
    committed = {folder for folder, _ in iter_results(COMMITTED, "cpu_minilm/*/*/*/*")}
    assert {r.folder for r in runs} == committed and len(committed) == 135
    assert {r.status for r in runs} == {"completed"}, [(r.folder, r.status) for r in runs if r.status != "completed"]


def test_committed_grid_runs_complete_both_stages(cli, shared_glue):
    """The committed cpu_minilm_grid runs are every run of both stages: the search runs and the
    final seeds at the settings selected from them, so `peftx sweep` over them would train nothing."""
    if not (COMMITTED / "runs" / "cpu_minilm_grid").is_dir():
        pytest.skip("no committed cpu_minilm_grid runs")
    r = cli("sweep", "--dry-run", "sweep=cpu_minilm_grid", f"results.dir={COMMITTED}", f"data.glue_dir={shared_glue}")
    assert r.exit_code == 0, r.output
    assert "270 runs; 270 completed, 0 failed, 0 pending" in " ".join(r.output.split()), r.output[-2000:]
