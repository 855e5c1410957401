"""Training throughput: peftx's engine against HF Trainer on the same work, per method.

    python scripts/bench/throughput.py                       # CPU -> results/bench/throughput.{md,json}
    python scripts/bench/throughput.py --device cuda         # -> results/bench/throughput_cuda.{md,json}
    python scripts/bench/throughput.py --methods full --steps 8 --tiny   # smoke test

The same work: MiniLM-L6 (conf/model/minilm-l6.yaml) on the first STEPS x 16 examples of real RTE
training data (data.max_train_examples, split seed 42: real GLUE lengths, max_length 128), the
method's own lr, weight decay 0.01, linear warmup over 6% of STEPS steps then linear decay, grad
clip 1.0. Every variant gets the model prepared by peftx's method plug-in (same trainable tensors),
so the comparison is of the training loops:

    peftx          `peftx train` (run/train.py), train.group_by_length off, then on
    hf_run_glue    transformers.Trainer configured as examples/pytorch/text-classification/run_glue.py:
                   DataCollatorWithPadding (dynamic padding), AdamW (adamw_torch), linear schedule,
                   logging every 500 steps, no evaluation, bf16 on CUDA
    hf_tuned       the same Trainer plus length grouping (train_sampling_strategy="group_by_length",
                   LengthGroupedSampler) and the fused AdamW (adamw_torch_fused)

Examples/s count training only: peftx's `time.train_examples_per_s` (validation passes excluded),
Trainer's `train_samples_per_second` (no evaluation configured). Every variant runs in its own child
process (peak RSS = ru_maxrss of the child: model, data and training; on CUDA, peak allocated GPU
memory), children of one method run back to back, and the table reports ratios to hf_run_glue of the
same method, measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

METHODS = ("full", "bitfit", "pafi", "hiwi", "lora")
VARIANTS = ("hf_run_glue", "hf_tuned", "peftx_ungrouped", "peftx_grouped")
BATCH = 16


def _overrides(args, method: str, results: str, grouped: bool) -> list[str]:
    return [
        "experiment=default",
        f"model={'tiny-random' if args.tiny else 'minilm-l6'}",
        f"task={args.task}",
        f"method={method}",
        f"data.glue_dir={args.glue}",
        f"data.max_train_examples={args.steps * BATCH}",
        f"train.max_steps={args.steps}",
        f"train.batch_size={BATCH}",
        "train.max_length=128",
        f"train.group_by_length={str(grouped).lower()}",
        f"train.device={args.device}",
        "train.progress=false",
        f"results.dir={results}",
    ]


def _peak(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _child_peftx(args, tmp: str) -> dict:
    from peft_cli.core.compose import compose
    from peft_cli.run.train import train_run
    from peft_cli.run.trainer import Trainer

    # CPU seconds of fit() minus those of its validation pass(es): the training part, as for Trainer
    spent = {"fit": 0.0, "val": 0.0}

    def timed(name: str, fn):
        def wrapper(*a, **k):
            c = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.process_time() - c

        return wrapper

    Trainer.fit = timed("fit", Trainer.fit)
    Trainer._validate = timed("val", Trainer._validate)
    cfg = compose(_overrides(args, args.method, tmp, args.variant == "peftx_grouped"))
    t0 = time.perf_counter()
    r = train_run(cfg)
    return {
        "examples_per_s": r["time"]["train_examples_per_s"],
        "examples_per_cpu_s": round(r["steps"] * BATCH / (spent["fit"] - spent["val"]), 2),
        "wall_s": round(time.perf_counter() - t0, 2),
        "steps": r["steps"],
    }


def _child_hf(args, tmp: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from peft_cli.core.compose import compose
    from peft_cli.core.runtime import resolve_device, seed_everything
    from peft_cli.methods.base import freeze_backbone
    from peft_cli.models import load_tokenizer
    from peft_cli.run.assemble import assemble
    from peft_cli.run.optim import learning_rate

    cfg = compose(_overrides(args, args.method, tmp, False))
    device = resolve_device(cfg.train)
    seed_everything(cfg.seed)
    a = assemble(cfg, device)
    freeze_backbone(a.model)  # what peftx's Trainer does before training: the same trainable tensors
    model = a.method.prepare(a.model).to(device)
    for p in a.head.values():
        p.requires_grad_(True)
    enc = a.data.train  # the same tokenized examples, as ragged lists (run_glue's tokenized dataset)
    cols = {k: [t[i, : int(n)].tolist() for i, n in enumerate(enc.lengths)] for k, t in enc.tensors.items()}
    cols["labels"] = enc.labels
    tuned = args.variant == "hf_tuned"
    cuda = device.type == "cuda"
    targs = TrainingArguments(
        output_dir=tmp,
        per_device_train_batch_size=BATCH,
        max_steps=args.steps,
        learning_rate=learning_rate(cfg),
        weight_decay=cfg.train.weight_decay,
        warmup_steps=int(cfg.train.warmup_ratio * args.steps),  # as peftx: int(ratio x total steps)
        lr_scheduler_type="linear",
        max_grad_norm=cfg.train.grad_clip,
        optim="adamw_torch_fused" if tuned else "adamw_torch",
        train_sampling_strategy="group_by_length" if tuned else "random",  # transformers 5: was group_by_length
        bf16=cuda,
        use_cpu=not cuda,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=500,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        seed=cfg.seed,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=Dataset.from_dict(cols),
        data_collator=DataCollatorWithPadding(load_tokenizer(cfg.model)),
    )
    t0, c0 = time.perf_counter(), time.process_time()
    out = trainer.train()
    torch.cuda.synchronize() if cuda else None
    return {
        "examples_per_s": round(out.metrics["train_samples_per_second"], 2),
        "examples_per_cpu_s": round(out.global_step * BATCH / (time.process_time() - c0), 2),
        "wall_s": round(time.perf_counter() - t0, 2),
        "steps": out.global_step,
    }


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="peftx-bench-") as tmp:
        res = (_child_hf if args.variant.startswith("hf") else _child_peftx)(args, tmp)
    res["peak_bytes"] = _peak(args.device)
    res["torch_threads"] = torch.get_num_threads()  # after training: nothing may have raised it
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--steps", type=int, default=16, help="optimizer steps of 16 examples per variant")
    ap.add_argument("--task", default="rte")
    ap.add_argument("--glue", default=str(ROOT.parent / "shared" / "glue"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="1: CPU time is then a fair measure on a shared box")
    ap.add_argument("--tiny", action="store_true", help="smoke test: tiny random BERT (numbers mean nothing)")
    ap.add_argument("--out", default=None, help="writes OUT.md and OUT.json (default results/bench/throughput[_cuda])")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    out = Path(
        args.out or ROOT / "results/bench" / ("throughput_cuda" if args.device.startswith("cuda") else "throughput")
    )
    results: dict[str, dict[str, dict]] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    for m in args.methods:
        results[m] = {}
        for v in args.variants:
            cmd = [sys.executable, __file__, "--child", f"--method={m}", f"--variant={v}", f"--steps={args.steps}",
                   f"--task={args.task}", f"--glue={args.glue}", f"--device={args.device}",
                   f"--threads={args.threads}"] + ["--tiny"] * args.tiny  # fmt: skip
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                results[m][v] = {"error": (p.stderr or p.stdout).strip().splitlines()[-1:]}
            else:
                results[m][v] = json.loads(line[7:])
            print(m, v, results[m][v], flush=True)
    import torch

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python scripts/bench/throughput.py " + " ".join(sys.argv[1:]),
        "device": args.device,
        "threads": args.threads,
        "steps": args.steps,
        "batch": BATCH,
        "task": args.task,
        "model": "tiny-random" if args.tiny else "minilm-l6",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "load_avg": os.getloadavg(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    render(meta, results, out)
    print(out.with_suffix(".md").read_text())


def render(meta: dict, results: dict, out: Path) -> None:
    mem = "peak GPU memory" if meta["device"].startswith("cuda") else "peak RSS"
    lines = [
        f"# Training throughput: peftx vs HF Trainer ({meta['device']})",
        "",
        f"`{meta['command'].strip()}` — {meta['date']}, {meta['model']} on {meta['task'].upper()} (real lengths, "
        f"max_length 128), {meta['steps']} steps x {meta['batch']}, torch {meta['torch']}, "
        f"{meta['threads']} threads, load average at the end {', '.join(f'{x:.1f}' for x in meta['load_avg'])}.",
        "Training examples/s (evaluation excluded; wall clock) and training examples per CPU-second of the",
        "process (on a shared box the wall clock mostly measures the other load; CPU time, at 1 thread, the",
        "work), each with its ratio to the run_glue-configured Trainer of the same method; "
        f"{mem} and its ratio likewise.",
        "Variants are described in scripts/bench/throughput.py.",
        "",
        f"| method | variant | examples/s | ratio | examples/CPU-s | ratio | {mem} | ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m, by in results.items():
        base = by.get("hf_run_glue", {})
        for v, r in by.items():
            if "error" in r:
                lines.append(f"| {m} | {v} | error: {' '.join(r['error'])[:80]} | | | | | |")
                continue
            ratio = f"{r['examples_per_s'] / base['examples_per_s']:.2f}x" if base.get("examples_per_s") else ""
            cpu = r.get("examples_per_cpu_s")
            cratio = f"{cpu / base['examples_per_cpu_s']:.2f}x" if cpu and base.get("examples_per_cpu_s") else ""
            mratio = f"{r['peak_bytes'] / base['peak_bytes']:.2f}x" if base.get("peak_bytes") else ""
            lines.append(
                f"| {m} | {v} | {r['examples_per_s']:.1f} | {ratio} | {cpu or 0:.1f} | {cratio} "
                f"| {r['peak_bytes'] / 2**30:.2f} GiB | {mratio} |"
            )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
