"""One training step of a roberta-base-sized classifier: time and peak RSS per fine-tuning method.

    python scripts/bench/pafi_step.py        # all variants, CPU, 2 threads -> results/bench/pafi_step.{md,json}
    python scripts/bench/pafi_step.py --variants full pafi --steps 5 --warmup 1

Random-init RobertaForSequenceClassification(RobertaConfig(num_labels=2)) (base defaults), batch 8 x 128,
AdamW(lr=1e-4, weight_decay=0.01). Each variant runs in its own child process, so its peak RSS
(ru_maxrss, read right after the last step) covers model build + method setup + the steps, nothing else.
Step time = median over the steps after warm-up of forward+backward+optimizer.step+zero_grad; the
variants run interleaved in --rounds rounds and each reports its best round, because the 2 cores are
shared and other load comes in bursts (peak RSS: the largest over rounds).
After the steps the child rebuilds the initial model (same seed) and counts backbone entries that
changed outside the variant's chosen set (head excluded; full FT and LoRA: n/a by construction).

The PaFi mask (density 0.005, globally smallest |θ| over all backbone tensors) is built once in the
parent with peft_cli.methods.pafi.select.select and handed to the peftx and selective-optimizers children
(selective-optimizers selects its own budget-sized set the same way; its count is reported).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

VARIANTS = ("full", "bitfit", "pafi", "pafi_grouped", "pafi_pertensor", "supertuning", "selopt", "lora")
LABEL = {
    "full": "full fine-tuning",
    "bitfit": "BitFit (biases + head)",
    "pafi": "peftx PaFi (sparse.attach: grouped SDDMMs)",
    "pafi_grouped": "peftx PaFi, grouped SDDMMs (forced)",
    "pafi_pertensor": "peftx PaFi, one SDDMM per tensor (forced)",
    "supertuning": "peft Super-Tuning (bottom, 0.995, encoder Linear)",
    "selopt": "selective-optimizers 0.4 pafi",
    "lora": "peft LoRA r=8 query/value",
}
BATCH, SEQ = 8, 128


# ----------------------------------------------------------------------------- child


TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=200)


def _build(tiny: bool = False, seed: int = 0):
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    return RobertaForSequenceClassification(RobertaConfig(num_labels=2, **(TINY if tiny else {})))


def _backbone(named: dict) -> dict:
    return {n: p for n, p in named.items() if not n.startswith("classifier")}


def _child(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    model = _build(args.tiny)
    vocab = model.config.vocab_size
    chosen: dict[str, torch.Tensor] | None = None  # {backbone name: flat indices}; None = n/a
    info: dict = {}
    v = args.child

    def freeze_all():
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith("classifier"))

    opt_kw = dict(lr=1e-4, weight_decay=0.01)
    if v == "full":
        params = list(model.parameters())
        opt = torch.optim.AdamW(params, **opt_kw)
    elif v == "bitfit":
        freeze_all()
        chosen = {}
        for n, p in _backbone(dict(model.named_parameters())).items():
            if n.endswith(".bias"):
                p.requires_grad_(True)
                chosen[n] = torch.arange(p.numel())
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **opt_kw)
    elif v.startswith("pafi"):
        from peft_cli.methods.pafi import sparse
        from peft_cli.methods.pafi.sparse import attach

        forced = {"pafi_grouped": {"cpu", "cuda"}, "pafi_pertensor": set()}
        sparse.GROUPED_DEVICES = forced.get(v, sparse.GROUPED_DEVICES)  # this child process only

        mask = torch.load(args.mask)
        freeze_all()
        model.to(dev)
        sv = attach(model, mask)
        chosen = mask
        info["k"] = sv.k
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **opt_kw)
    elif v == "supertuning":
        from peft import SupertuningConfig, get_peft_model

        cfg = SupertuningConfig(
            target_modules=r".*encoder\.layer\.\d+\..*(query|key|value|dense)$",
            sparsity=0.995,
            select_top=False,
            modules_to_save=["classifier"],
        )
        model = get_peft_model(model, cfg)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **opt_kw)
    elif v == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"])
        model = get_peft_model(model, cfg)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **opt_kw)
    elif v == "selopt":
        from selective_optimizers.wrap import get_selective_optimizer

        mask = torch.load(args.mask)
        k = sum(int(i.numel()) for i in mask.values())
        del mask
        hp = [p for n, p in model.named_parameters() if n.startswith("classifier")]
        bp = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
        cls = get_selective_optimizer(torch.optim.AdamW, "pafi")
        # verify=False: otherwise it torch.saves a full CPU clone of the model to /tmp (+0.5 GB RSS)
        opt = cls(
            [{"params": bp}, {"params": hp, "choose_all": True}],
            budget=k + sum(p.numel() for p in hp), verify=False, **opt_kw,
        )  # fmt: skip
        names = [n for n, _ in model.named_parameters() if not n.startswith("classifier")]
        chosen = {
            n: m.reshape(-1).nonzero().reshape(-1)
            for n, m in zip(names, opt.param_groups[0]["chosen_masks"], strict=True)
        }
        info["k"] = sum(int(c.numel()) for c in chosen.values())
        info["note"] = "forces weight_decay=0 (prints so); dense grads, grad masking, dense Adam state"
    else:
        raise SystemExit(f"unknown variant {v}")
    model.to(dev).train()

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (args.batch, SEQ), generator=g)
    batch = dict(input_ids=ids.to(dev), attention_mask=torch.ones_like(ids).to(dev),
                 labels=torch.randint(0, 2, (args.batch,), generator=g).to(dev))  # fmt: skip
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16)
    times, cpu = [], []
    for _ in range(args.steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        with amp:
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)  # CPU seconds of this process: less hit by other load
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    out = dict(variant=v, step_s=statistics.median(times[args.warmup :]), step_times=times, peak_rss=rss,
               cpu_s=statistics.median(cpu[args.warmup :]), **info)  # fmt: skip
    if dev.type == "cuda":
        out["cuda_peak_alloc"] = torch.cuda.max_memory_allocated()
    out["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out["opt_state"] = sum(t.numel() for st in opt.state.values() for key, t in st.items()
                           if torch.is_tensor(t) and key != "step")  # fmt: skip

    # --- changed entries outside the chosen set (after the peak was read) ---
    if args.no_check:
        return out
    if v.startswith("pafi"):
        model.pafi_values.detach(model)
    if v == "supertuning":  # effective weights by hand: peft's merge_and_unload trips over modules_to_save here
        base = model.get_base_model()
        cur = {n.replace(".base_layer.", "."): p for n, p in base.named_parameters() if "supertuning_" not in n}
        chosen = {}
        with torch.no_grad():
            for n, m in base.named_modules():
                if hasattr(m, "supertuning_indices") and "default" in m.supertuning_indices:
                    cur[n + ".weight"] = m.get_base_layer().weight + m.get_delta_weight("default")
                    chosen[n + ".weight"] = m.supertuning_indices["default"].long().cpu()
    else:
        cur = dict(model.named_parameters())
    if chosen is None:
        out["changed_outside"] = None
    else:
        ref = _backbone(dict(_build(args.tiny).named_parameters()))
        cur = _backbone(cur)
        outside = inside = 0
        for n, p0 in ref.items():
            diff = cur[n].detach().cpu().reshape(-1) != p0.detach().reshape(-1)
            if n in chosen:
                sel = torch.zeros_like(diff)
                sel[chosen[n].long()] = True
                inside += int((diff & sel).sum())
                diff &= ~sel
            outside += int(diff.sum())
        out["changed_outside"], out["changed_inside"] = outside, inside
    return out


# ----------------------------------------------------------------------------- parent


def _mask(density: float, path: str, tiny: bool) -> dict:
    import torch

    model = _build(tiny)
    named = {n: p.detach() for n, p in _backbone(dict(model.named_parameters())).items()}
    try:
        from peft_cli.methods.pafi.select import MaskSpec, select

        idx, how = select(named, MaskSpec(strategy="smallest", density=density)), "peft_cli.methods.pafi.select.select"
    except ImportError:  # fallback: threshold = k-th smallest |θ| of all backbone entries (ties: first ones)
        allabs = torch.cat([t.abs().reshape(-1) for t in named.values()])
        k = round(density * allabs.numel())
        thr = allabs.kthvalue(k).values
        idx, left, how = {}, k, "kthvalue fallback"
        for n, t in named.items():
            i = (t.abs().reshape(-1) <= thr).nonzero().reshape(-1)[:left].to(torch.int32)
            if i.numel():
                idx[n], left = i, left - i.numel()
    torch.save(idx, path)
    return dict(how=how, k=sum(int(i.numel()) for i in idx.values()), tensors=len(idx),
                backbone=sum(t.numel() for t in named.values()))  # fmt: skip


def _fmt_gb(b: float) -> str:
    return f"{b / 1e9:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--steps", type=int, default=5, help="AdamW steps per variant (changed-entry check after them)")
    ap.add_argument("--warmup", type=int, default=1, help="first steps left out of the median")
    ap.add_argument("--rounds", type=int, default=2, help="runs of every variant, interleaved; best round counts")
    ap.add_argument("--density", type=float, default=0.005)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    ap.add_argument("--batch", type=int, default=BATCH, help="sequences of 128 tokens per step")
    ap.add_argument("--out", default=str(ROOT / "results/bench/pafi_step"), help="writes OUT.md and OUT.json")
    ap.add_argument("--tiny", action="store_true", help="smoke test: a tiny RoBERTa (numbers mean nothing)")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the .md next to a results .json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--no-check", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mask", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(_child(args)), flush=True)
        return
    if args.render:
        d = json.loads(Path(args.render).read_text())
        _render(d["meta"], d["results"], Path(args.render))
        return

    import peft
    import torch
    import transformers

    started, load0 = time.time(), os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="pafi_bench_")
    mask_path = os.path.join(tmp, "mask.pt")
    mask_info = _mask(args.density, mask_path, args.tiny)
    print(f"mask: k={mask_info['k']} over {mask_info['tensors']} tensors ({mask_info['how']})", flush=True)
    results = {}
    # Rounds interleave the variants, so a burst of other load on the machine hits one round of each
    # rather than all of one variant; a variant's time is its best round (median of steps within it).
    for rnd in range(args.rounds):
        for v in args.variants:
            if rnd and "error" in results[v]:
                continue
            cmd = [sys.executable, __file__, "--child", v, "--mask", mask_path, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--threads", str(args.threads), "--device", args.device,
                   "--batch", str(args.batch)]  # fmt: skip
            cmd += ["--bf16"] * args.bf16 + ["--tiny"] * args.tiny + ["--no-check"] * (rnd > 0)
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
            if p.returncode or line is None:
                err = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["?"]
                if rnd == 0:
                    results[v] = dict(variant=v, error=err)
                else:
                    results[v]["rounds"].append(dict(error=err))
                continue
            r = json.loads(line[7:])
            if rnd == 0:
                results[v] = dict(r, rounds=[])
            results[v]["rounds"].append({k: r[k] for k in ("step_s", "cpu_s", "peak_rss", "step_times")})
            best = results[v]
            ok = [x for x in best["rounds"] if "error" not in x]
            best["step_s"] = min(x["step_s"] for x in ok)
            best["cpu_s"] = min(x["cpu_s"] for x in ok)
            best["peak_rss"] = max(x["peak_rss"] for x in ok)  # same setup: should agree; keep worst
            print(
                f"round {rnd}", v, {k: r.get(k) for k in ("step_s", "cpu_s", "peak_rss", "changed_outside")}, flush=True
            )
    os.remove(mask_path)
    os.rmdir(tmp)

    try:
        import selective_optimizers  # noqa: F401

        selopt_ver = "0.4 (pip)"
    except ImportError:
        selopt_ver = "not installed"
    full = results.get("full", {})
    meta = dict(
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        nproc=os.cpu_count(), threads=args.threads, device=args.device, bf16=args.bf16,
        torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
        selective_optimizers=selopt_ver, python=platform.python_version(),
        batch=[args.batch, SEQ], steps=args.steps, warmup=args.warmup, rounds=args.rounds, density=args.density,
        mask=mask_info,
        wall_s=round(time.time() - started, 1), loadavg=[load0, os.getloadavg()[0]],
    )  # fmt: skip
    for r in results.values():
        if "step_s" in r and "step_s" in full:
            r["time_vs_full"] = r["step_s"] / full["step_s"]
            r["rss_vs_full"] = r["peak_rss"] / full["peak_rss"]
            if "cuda_peak_alloc" in r:
                r["cuda_vs_full"] = r["cuda_peak_alloc"] / full["cuda_peak_alloc"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, results=results), indent=1) + "\n")
    _render(meta, results, out)


def _render(meta: dict, results: dict, out: Path) -> None:
    """Write OUT.md from the run's meta + results (also `--render OUT.json`, to redo the page only)."""
    cuda = meta["device"].startswith("cuda")
    mem = "CUDA peak alloc GB" if cuda else "peak RSS GB"
    rows = [
        f"| variant | step s (median) | x full | CPU s/step | {mem} | x full | trainable | AdamW state "
        "| changed outside set |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v, r in results.items():
        if "error" in r:
            rows.append(f"| {LABEL[v]} | error: {r['error'][0][:80]} | | | | | | | |")
            continue
        ch = "n/a" if r.get("changed_outside") is None else str(r["changed_outside"])
        m, mr = (r["cuda_peak_alloc"], r.get("cuda_vs_full")) if cuda else (r["peak_rss"], r.get("rss_vs_full"))
        rows.append(
            f"| {LABEL[v]} | {r['step_s']:.3f} | {r.get('time_vs_full', float('nan')):.2f} | {r['cpu_s']:.2f} "
            f"| {_fmt_gb(m)} | {mr if mr is not None else float('nan'):.2f} | {r['trainable']:,} "
            f"| {r['opt_state']:,} | {ch} |"
        )
    mi = meta["mask"]
    load = meta.get("loadavg")
    load_txt = f" (1-min load average {load[0]:.1f} at the start, {load[1]:.1f} at the end)" if load else ""
    md = [
        "# PaFi training step: time and peak memory",
        "",
        f"`{meta['command']}`",
        "",
        f"{meta['date']} · nproc {meta['nproc']}, torch threads {meta['threads']}, device {meta['device']}"
        f"{' (bf16 autocast)' if meta['bf16'] else ' (fp32)'} · torch {meta['torch']}, transformers "
        f"{meta['transformers']}, peft {meta['peft']}, selective-optimizers {meta['selective_optimizers']}",
        "",
        f"Random-init RobertaForSequenceClassification (RobertaConfig() base defaults, num_labels=2), batch "
        f"{meta['batch'][0]}x{meta['batch'][1]}, AdamW lr 1e-4 weight_decay 0.01, {meta['steps']} steps, "
        f"median of the last "
        f"{meta['steps'] - meta['warmup']}; variants run interleaved in {meta.get('rounds', 1)} rounds, best round "
        f"reported. PaFi mask: globally smallest |θ| over the backbone, density {meta['density']}: "
        f"k={mi['k']:,} of {mi['backbone']:,} in {mi['tensors']} tensors ({mi['how']}). "
        "Each variant in its own process; peak RSS = ru_maxrss (model build + setup + steps). CPU s/step = "
        "process CPU time per step (all threads). x full = ratio to full FT in this same run. Changed outside "
        "set: backbone entries (head excluded) that differ from the initial model after the steps, outside the "
        "variant's chosen entries.",
        "",
        *rows,
        "",
        "Notes: Super-Tuning trains deltas (weight decay pulls the delta, not θ, to 0); selective-optimizers "
        "forces weight_decay=0 and keeps dense grads and dense Adam state (run with verify=False). LoRA's merged "
        "update is dense low-rank, so 'outside the set' does not apply.",
        "",
        f"Noise: the machine's 2 cores were shared with other jobs during this run{load_txt}. Absolute times "
        "are then several times a quiet machine's (there, full FT takes about 4.5 s/step) and vary between "
        "rounds by tens of %: read the ratios, which can still be 10-20% off (each round is in the .json).",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(rows))
    print(f"wrote {out.with_suffix('.md')} and .json ({meta['wall_s']} s)")


if __name__ == "__main__":
    main()
