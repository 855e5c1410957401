"""Operators launched per training step, PaFi against full fine-tuning and BitFit, from torch.profiler.
(Named op_count.py, not kernels.py: a script of that name would shadow the `kernels` package transformers imports.)

    python scripts/bench/op_count.py            # roberta-base size, CPU -> results/bench/kernels.{md,json}
    python scripts/bench/op_count.py --tiny     # smoke test

A device-independent stand-in for GPU kernel launches (no GPU was lent to this measurement): each
leaf ATen operator of a step (an aten:: event with no aten:: child) is about one kernel launch on
CUDA. One step = forward + backward + AdamW step + zero_grad on a random-init roberta-base-sized
classifier (batch 8 x 128), after one warm-up step; the count does not depend on the batch size.
PaFi (density 0.005, globally smallest |θ|, peft_cli.methods.pafi.sparse) is counted with the
grouped weight-gradient path (the default) and with one SDDMM per tensor (GROUPED_DEVICES empty).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

BATCH, SEQ = 8, 128
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=200)


def _model(tiny: bool):
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    return RobertaForSequenceClassification(RobertaConfig(num_labels=2, **(TINY if tiny else {})))


def _setup(variant: str, tiny: bool, density: float):
    import torch

    from peft_cli.methods.pafi import sparse
    from peft_cli.methods.pafi.select import MaskSpec, select

    model = _model(tiny)

    def head(n: str) -> bool:
        return n.startswith("classifier")

    if variant == "full":
        params = list(model.parameters())
    else:
        for n, p in model.named_parameters():
            p.requires_grad_(head(n))
        if variant == "bitfit":
            for n, p in model.named_parameters():
                if n.endswith(".bias"):
                    p.requires_grad_(True)
        else:
            sparse.GROUPED_DEVICES = {"cpu", "cuda"} if variant == "pafi" else set()
            backbone = {n: p.detach() for n, p in model.named_parameters() if not head(n)}
            attach_mask = select(backbone, MaskSpec(strategy="smallest", density=density))
            sparse.attach(model, {n: i for n, i in attach_mask.items() if i.numel()})
        params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, foreach=True)
    return model, opt


def count(variant: str, tiny: bool, density: float) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    model, opt = _setup(variant, tiny, density)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    batch = dict(
        input_ids=torch.randint(3, vocab, (BATCH, SEQ), generator=gen),
        attention_mask=torch.ones(BATCH, SEQ, dtype=torch.long),
        labels=torch.randint(0, 2, (BATCH,), generator=gen),
    )

    def step():
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: AdamW state, lazy inits
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    leaves = [e for e in events if not any(c.name.startswith("aten::") for c in e.cpu_children)]
    by_name = Counter(e.name for e in leaves)
    return {
        "leaf_ops": len(leaves),
        "all_aten_ops": len(events),
        "sddmm_calls": sum(e.name in ("aten::sparse_sampled_addmm", "aten::sampled_addmm") for e in events),
        "top": by_name.most_common(8),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["full", "bitfit", "pafi", "pafi_per_tensor"])
    ap.add_argument("--density", type=float, default=0.005)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "results/bench/kernels"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    results = {}
    for v in args.variants:
        results[v] = count(v, args.tiny, args.density)
        print(v, results[v]["leaf_ops"], results[v]["all_aten_ops"], results[v]["sddmm_calls"], flush=True)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python scripts/bench/op_count.py" + " --tiny" * args.tiny,
        "model": "tiny roberta" if args.tiny else "roberta-base size (RobertaConfig defaults), random init",
        "batch": [BATCH, SEQ],
        "density": args.density,
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    full = results.get("full", {}).get("leaf_ops")
    lines = [
        "# Operators per training step (torch.profiler, CPU)",
        "",
        f"`{meta['command']}` — {meta['model']}, batch {BATCH} x {SEQ}, torch {meta['torch']}, {meta['date']}.",
        "Leaf ATen operators per step (forward + backward + AdamW(foreach) + zero_grad), a stand-in for",
        "CUDA kernel launches; counted after one warm-up step.",
        "",
        "| variant | leaf ops / step | ratio to full | all aten ops | SDDMM calls | trainable |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for v, r in results.items():
        ratio = f"{r['leaf_ops'] / full:.2f}x" if full else "n/a"
        lines.append(
            f"| {v} | {r['leaf_ops']:,} | {ratio} | {r['all_aten_ops']:,} | {r['sddmm_calls']} | {r['trainable']:,} |"
        )
    lines += ["", "Most frequent leaf operators per variant:", ""]
    for v, r in results.items():
        lines.append(f"- {v}: " + ", ".join(f"{n} {c}" for n, c in r["top"]))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
