"""What conf/sweep/paper_base.yaml costs on one GPU, extrapolated from a measured rate (not a run).

    python scripts/bench/paper_base_cost.py [--glue ../shared/glue] [--step-s 0.038 --step-tokens 1024]
        -> results/bench/paper_base_cost.{md,json}

Training examples: each task's GLUE train size under the holdout protocol (large tasks: 1,000 held
out) x its epochs (20 small, 3 large) x 8 methods x 5 seeds. Padded tokens per example at batch 32,
max_length 256, with and without length grouping (peft_cli.sweep.estimate.padded_per_example) from
the real length distribution of the tasks in GLUE_DIR (MiniLM's WordPiece tokenizer stands in for
RoBERTa's BPE; similar lengths); tasks absent there use the mean of those present. Rate: the
measured H200 bf16 full fine-tuning step at roberta-base size (0.038 s per 8 x 128 tokens, issue 12,
results/bench/pafi_step_cuda.md), i.e. tokens/s held constant whatever the batch shape: an
extrapolation, to be replaced by scripts/bench/gpu_check.sh's figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TRAIN = {"rte": 2490, "mrpc": 3668, "stsb": 5749, "cola": 8551, "sst2": 67349, "qnli": 104743, "qqp": 363846,
         "mnli": 392702}  # fmt: skip
LARGE = {"sst2", "qnli", "qqp", "mnli"}
RUNS_PER_TASK = 8 * 5  # methods x seeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glue", default=str(ROOT.parent / "shared" / "glue"))
    ap.add_argument("--step-s", type=float, default=0.038)
    ap.add_argument("--step-tokens", type=int, default=8 * 128)
    args = ap.parse_args()

    from peft_cli.core.compose import compose
    from peft_cli.sweep.estimate import padded_per_example, task_shape

    pads = {}
    for task in TRAIN:
        cfg = compose([f"task={task}", "model=minilm-l6", f"data.glue_dir={args.glue}", "train.max_length=256"])
        try:
            sh = task_shape(cfg)
        except Exception as e:  # noqa: BLE001 - the task's data is absent here
            print(f"{task}: no data ({type(e).__name__}); uses the mean of the others", flush=True)
            continue
        pads[task] = {g: padded_per_example(sh.lengths_train, 32, g) for g in (False, True)}
        print(task, pads[task], flush=True)
    mean = {g: sum(p[g] for p in pads.values()) / len(pads) for g in (False, True)}
    rate = args.step_tokens / args.step_s  # tokens/s
    rows, totals = [], {"examples": 0, False: 0.0, True: 0.0}
    for task, n in TRAIN.items():
        n_train = n - 1000 if task in LARGE else n
        examples = n_train * (3 if task in LARGE else 20) * RUNS_PER_TASK
        p = pads.get(task, mean)
        hours = {g: examples * p[g] / rate / 3600 for g in (False, True)}
        rows.append((task, examples, p, hours, task in pads))
        totals["examples"] += examples
        for g in (False, True):
            totals[g] += hours[g]
    at128 = totals["examples"] * 128 / rate / 3600
    out = ROOT / "results/bench/paper_base_cost"
    out.with_suffix(".json").write_text(json.dumps({
        "rate_tokens_per_s": rate, "rows": [{"task": t, "examples": e, "padded": {str(g): v for g, v in p.items()},
        "hours": {str(g): v for g, v in h.items()}, "measured_lengths": m} for t, e, p, h, m in rows],
        "total_examples": totals["examples"], "hours_ungrouped": totals[False], "hours_grouped": totals[True],
        "hours_at_128_tokens": at128}, indent=1) + "\n")  # fmt: skip
    lines = [
        "# paper_base on one GPU: extrapolated cost",
        "",
        "`python scripts/bench/paper_base_cost.py` (see its docstring). Rate: "
        f"{rate:,.0f} training tokens/s (H200, bf16, roberta-base full fine-tuning, measured step "
        f"{args.step_s} s per {args.step_tokens} tokens). Training only (validation and test passes excluded).",
        "",
        "| task | training examples (40 runs) | padded tokens/example, plain | grouped | GPU-hours plain | grouped |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for t, e, p, h, m in rows:
        star = "" if m else " *"
        lines.append(f"| {t}{star} | {e:,} | {p[False]:.1f} | {p[True]:.1f} | {h[False]:.1f} | {h[True]:.1f} |")
    lines += [
        f"| total | {totals['examples']:,} | | | {totals[False]:.1f} | {totals[True]:.1f} |",
        "",
        f"\\* lengths not available here: mean of the measured tasks. Padded to 128 tokens per example (the "
        f"benchmark's batches) the same examples would take {at128:.0f} GPU-hours.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
