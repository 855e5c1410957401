"""Inference latency of a roberta-base-sized classifier per deployment form, as a ratio to the base model.

    python scripts/bench/latency.py                 # CPU here; on a GPU machine: CUDA, fp32 and bf16
    python scripts/bench/latency.py --quick         # tiny model, few passes: a smoke run (-> /tmp)

Model: random-init RobertaForSequenceClassification with roberta-base's shapes (vocab 50265, 12 x 768,
FFN 3072, 2 labels). Variants, each built with peftx's own method code and moved off its zero init
(so no adapter is a no-op by value):
  base            the model itself
  hiwi_exported   HiWi on the FFN-in biases, merged (methods/hiwi.py merge): a plain model
  pafi_applied    0.5% of every Linear weight's entries changed in place: PaFi's deployed form is the
                  base graph with other values, so this is what it costs (no PaFi code involved)
  lora_unmerged   peft LoRA r=8 on query/value, B A computed on every forward
  lora_merged     the same, B A folded into W (methods/lora.py merge)
  houlsby         bottleneck adapters after attention and FFN (reduction 16)
  pfeiffer        bottleneck adapters after FFN only (reduction 16)

Timing: inputs (batch, 128) of random token ids, all positions attended; torch.inference_mode();
per (dtype, batch): a warm-up, then rounds in which every variant runs one forward pass, in a fresh
random order each round (drift and neighbour load hit all variants alike); CUDA is synchronised
around each pass. Reported: median ms per pass, its ratio to the base median of the same run, and
the base's interquartile range / median as the run's noise level.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

VARIANTS = ("base", "hiwi_exported", "pafi_applied", "lora_unmerged", "lora_merged", "houlsby", "pfeiffer")
SEQ = 128
ROBERTA_BASE = dict(
    vocab_size=50265,
    max_position_embeddings=514,
    type_vocab_size=1,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
)
TINY = dict(
    vocab_size=1000,
    max_position_embeddings=514,
    type_vocab_size=1,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
)


def build_variants(shape: dict, device) -> dict:
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from peft_cli.core.config import MaskConfig
    from peft_cli.methods import MethodContext, build_method
    from peft_cli.methods.base import freeze_backbone

    torch.manual_seed(0)
    base = RobertaForSequenceClassification(RobertaConfig(num_labels=2, **shape)).eval()
    ctx = MethodContext("bench", "none", Path("unused"), MaskConfig())

    def with_method(raw: dict):
        torch.manual_seed(1)  # adapter inits draw from the global RNG: the same raw -> the same model
        method = build_method(raw, ctx)
        model = copy.deepcopy(base)
        freeze_backbone(model)  # as the harness does before prepare
        model = method.prepare(model)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # move the zero-init up/B matrices off zero
            for n, p in model.named_parameters():
                if p.requires_grad and n.startswith("roberta."):
                    p.add_(0.01 * torch.randn(p.shape, generator=g))
        return method, model.eval()

    out = {"base": base}
    hiwi, model = with_method({"name": "hiwi"})
    out["hiwi_exported"] = hiwi.merge(model)
    pafi = copy.deepcopy(base)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in pafi.modules():
            if isinstance(m, torch.nn.Linear):
                flat = m.weight.view(-1)
                idx = torch.randperm(flat.numel(), generator=g)[: max(1, flat.numel() // 200)]
                flat[idx] += 0.01
    out["pafi_applied"] = pafi
    out["lora_unmerged"] = with_method({"name": "lora"})[1]
    lora, model = with_method({"name": "lora"})  # the same weights again, B A folded into W
    out["lora_merged"] = lora.merge(model)
    out["houlsby"] = with_method({"name": "adapter_houlsby", "activation": "swish"})[1]
    out["pfeiffer"] = with_method({"name": "adapter_pfeiffer"})[1]
    return {k: v.to(device) for k, v in out.items()}


def time_variants(models: dict, batch: int, rounds: int, warmup: int, device) -> dict[str, list[float]]:
    import torch

    g = torch.Generator().manual_seed(3)
    x = {
        "input_ids": torch.randint(3, models["base"].config.vocab_size, (batch, SEQ), generator=g).to(device),
        "attention_mask": torch.ones(batch, SEQ, dtype=torch.long, device=device),
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in models}
    order = list(models)
    rng = random.Random(4)
    with torch.inference_mode():
        for _ in range(warmup):
            for k in order:
                models[k](**x)
        sync()
        for _ in range(rounds):
            rng.shuffle(order)
            for k in order:
                t0 = time.perf_counter()
                models[k](**x)
                sync()
                times[k].append(time.perf_counter() - t0)
    return times


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def summarize(times: dict[str, list[float]]) -> dict:
    b25, base, b75 = quartiles(times["base"])
    return {
        "rounds": len(times["base"]),
        "noise_iqr_over_median": (b75 - b25) / base,
        "variants": {
            k: {"median_ms": 1000 * statistics.median(v), "ratio": statistics.median(v) / base}
            for k, v in times.items()
        },
    }


def statement(cells: list[dict]) -> str:
    """Numbers only: every variant's ratio per (dtype, batch)."""
    lines = []
    for c in cells:
        r = {k: v["ratio"] for k, v in c["variants"].items()}
        lines.append(
            f"- {c['dtype']}, batch {c['batch']} (base {c['variants']['base']['median_ms']:.1f} ms, "
            f"base IQR/median {c['noise_iqr_over_median']:.2f}): HiWi exported {r['hiwi_exported']:.2f}x, "
            f"PaFi applied {r['pafi_applied']:.2f}x, LoRA merged {r['lora_merged']:.2f}x, "
            f"LoRA unmerged {r['lora_unmerged']:.2f}x, Houlsby {r['houlsby']:.2f}x, "
            f"Pfeiffer {r['pfeiffer']:.2f}x the base model's median latency."
        )
    return "\n".join(lines)


def render(runs: dict) -> str:
    out = [
        "# Inference latency relative to the base model",
        "",
        "Reproduce: `python scripts/bench/latency.py` (CPU; on a CUDA machine the same command measures the GPU "
        "in fp32 and bf16). Ratios are medians of the variant over the base model's median in the same run; "
        "HiWi exported and PaFi applied run the base model's graph with other values.",
        "",
    ]
    for run in runs.values():
        out += [
            f"## {run['device']}",
            "",
            f"{run['date']}, torch {run['torch']}, transformers {run['transformers']}, {run['threads']} threads, "
            f"sequence length {SEQ}, command `{run['command']}`",
            "",
        ]
        header = "| variant | " + " | ".join(f"{c['dtype']} b{c['batch']} ms | ratio" for c in run["cells"]) + " |"
        out += [header, "|---|" + "---:|---:|" * len(run["cells"])]
        for v in VARIANTS:
            cols = [f"{c['variants'][v]['median_ms']:.2f} | {c['variants'][v]['ratio']:.2f}" for c in run["cells"]]
            out.append(f"| {v} | " + " | ".join(cols) + " |")
        rounds = ", ".join(f"{c['dtype']} b{c['batch']}: {c['rounds']}" for c in run["cells"])
        out += ["", f"Passes per variant: {rounds}.", "", statement(run["cells"]), ""]
    return "\n".join(out)


def command(argv: list[str]) -> str:
    """The reproducing command line; --out (where this copy was written) does not change the numbers."""
    kept = [a for i, a in enumerate(argv) if a != "--out" and (i == 0 or argv[i - 1] != "--out")]
    return " ".join(["python scripts/bench/latency.py", *kept])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, 3 passes: a smoke run")
    ap.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument(
        "--rounds",
        type=int,
        nargs="+",
        default=None,
        help="passes per variant for each batch size (default CPU 40 12, GPU 300 200)",
    )
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--dtypes", nargs="+", default=None, help="fp32 bf16 (default: fp32 on CPU, both on CUDA)")
    ap.add_argument("--out", default=None, help="stem of the .md/.json written (default results/bench/latency)")
    args = ap.parse_args(argv)

    import torch
    import transformers

    from peft_cli.core import files
    from peft_cli.core.runtime import device_name

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    cuda = device.type == "cuda"
    dtypes = args.dtypes or (["fp32", "bf16"] if cuda else ["fp32"])
    rounds = args.rounds or ([3] * len(args.batches) if args.quick else ([300, 200] if cuda else [40, 12]))
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else (10 if cuda else 2))
    stem = Path(args.out or ("/tmp/peftx-latency-quick" if args.quick else ROOT / "results/bench/latency"))

    models = build_variants(TINY if args.quick else ROBERTA_BASE, device)
    cells = []
    for dtype in dtypes:
        if dtype == "bf16":
            models = {k: m.to(torch.bfloat16) for k, m in models.items()}
        for batch, n in zip(args.batches, rounds, strict=True):
            t0 = time.time()
            cell = {"dtype": dtype, "batch": batch, **summarize(time_variants(models, batch, n, warmup, device))}
            cells.append(cell)
            print(f"{dtype} batch {batch}: {n} rounds in {time.time() - t0:.0f}s", file=sys.stderr)
    key = f"{device.type}{'-quick' if args.quick else ''}"
    run = {
        "device": device_name(device),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "command": command(sys.argv[1:]),
        "cells": cells,
    }
    json_path = stem.with_suffix(".json")
    runs = json.loads(json_path.read_text())["runs"] if json_path.is_file() else {}
    runs[key] = run  # one entry per device kind: a GPU run adds to the CPU one
    files.write_json(json_path, {"runs": runs})
    files.write_text(stem.with_suffix(".md"), render(runs))
    print(statement(cells))


if __name__ == "__main__":
    main()
