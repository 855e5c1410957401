"""Benchmark: global PaFi mask selection on a roberta-sized model, peftx vs torch baselines.

Each variant runs in its own subprocess so its peak RSS (ru_maxrss) is its own: the child
builds `RobertaModel(config)` in fp32, refills every parameter in place with seeded randn,
then times the selection alone. The `model` row (build only) is the RSS floor of all rows.

    python scripts/bench/mask_build.py --model-size large        # writes results/bench/mask_build.{md,json}

Variants: model (reference), peftx (`peft_cli.methods.pafi.select.select`, streaming radix select),
sort (torch.cat of all |θ| + torch.sort), kthvalue (torch.cat + torch.kthvalue).
Each selection variant also reports its threshold |θ| so the rows check one another.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("model", "peftx", "sort", "kthvalue")
SIZES = {  # RobertaConfig kwargs; vocab 50265 and 514 positions for both, as the released models
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
TARGET_S, TARGET_GB = 5.0, 2.5  # peftx targets for a 0.5% mask on roberta-large


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(variant: str, size: str, density: float, repeat: int, seed: int, threads: int) -> dict:
    """Build the model, run one variant `repeat` times; returns the row (printed as json)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from transformers import RobertaConfig, RobertaModel

    sys.path.insert(0, str(ROOT))
    from peft_cli.methods.pafi.select import MaskSpec, select

    cfg = RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, **SIZES[size])
    model = RobertaModel(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(generator=g)  # in place: no second copy of the model
    named = {n: p for n, p in model.named_parameters()}
    n = sum(p.numel() for p in named.values())
    k = round(density * n)
    row = {
        "variant": variant,
        "threads": torch.get_num_threads(),
        "params": n,
        "tensors": len(named),
        "k": k,
        "model_peak_gb": _peak_gb(),
    }
    if variant == "model":
        return row | {"peak_gb": row["model_peak_gb"]}

    def run() -> float:  # -> threshold |θ| (largest selected)
        with torch.no_grad():
            if variant == "peftx":
                idx = select(named, MaskSpec("smallest", density))
                assert sum(v.numel() for v in idx.values()) == k
                return max(float(named[m].detach().reshape(-1)[v.long()].abs().max()) for m, v in idx.items())
            allv = torch.cat([p.detach().abs().reshape(-1) for p in named.values()])  # (n,) fp32
            if variant == "sort":
                return float(torch.sort(allv).values[k - 1])
            return float(torch.kthvalue(allv, k).values)

    walls, cpus = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), _cpu_s()
        thr = run()
        walls.append(time.perf_counter() - t)
        cpus.append(_cpu_s() - c)
    return row | {"wall_s": min(walls), "walls_s": walls, "cpu_s": min(cpus), "threshold": thr, "peak_gb": _peak_gb()}


def machine() -> dict:
    import torch
    import transformers

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def render(res: dict) -> str:
    m, rows = res["machine"], res["rows"]
    ref = next(r for r in rows if r["variant"] == "model")
    out = [
        f"# Mask build benchmark: roberta-{res['model_size']}, global smallest, density {res['density']}",
        "",
        f"- date: {res['date']}",
        f"- command: `{res['command']}`",
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), torch {m['torch']} ({m['torch_threads']} threads), "
        f"transformers {m['transformers']}, python {m['python']}",
        f"- load average at start / end: {', '.join(f'{x:.1f}' for x in m['loadavg_start'])} / "
        f"{', '.join(f'{x:.1f}' for x in res['loadavg_end'])} (the host is shared: wall times swing with "
        "other jobs, CPU s is the process's own user+sys time)",
        f"- model: {ref['params'] / 1e6:.1f}M params in {ref['tensors']} fp32 tensors, k = {ref['k']:,}",
        f"- each row is a fresh subprocess; selection timed alone (best of {res['repeat']}); "
        "peak RSS = ru_maxrss of that process, model build included; GB = 10^9 bytes",
        "",
        "| variant | torch threads | select wall s | select CPU s | peak RSS GB | over model GB | threshold abs(θ) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["variant"] == "model":
            out.append(f"| model alone (reference) | – | – | – | {r['peak_gb']:.2f} | – | – |")
            continue
        if "error" in r:
            out.append(f"| {r['variant']} | {r.get('threads', '?')} | failed: {r['error']} | | | | |")
            continue
        out.append(
            f"| {r['variant']} | {r['threads']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_gb']:.2f} | "
            f"{r['peak_gb'] - ref['peak_gb']:+.2f} | {r['threshold']:.6g} |"
        )
    for px in [r for r in rows if r["variant"] == "peftx" and "error" not in r]:
        ok_t, ok_m = px["wall_s"] < TARGET_S, px["peak_gb"] < TARGET_GB
        out += [
            "",
            f"Targets (peftx, {px['threads']} threads; set for roberta-large, d=0.005): wall < {TARGET_S:g} s: "
            f"{'met' if ok_t else 'NOT met'} ({px['wall_s']:.2f} s); peak RSS < {TARGET_GB:g} GB: "
            f"{'met' if ok_m else 'NOT met'} ({px['peak_gb']:.2f} GB).",
        ]
    thr = {r["variant"]: r["threshold"] for r in rows if "threshold" in r}
    same = len(set(thr.values())) == 1
    out += ["", f"Thresholds {'agree' if same else 'DIFFER'} across variants: {thr}."]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-size", choices=sorted(SIZES), default="large")
    ap.add_argument("--density", type=float, default=0.005)
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--repeat", type=int, default=1, help="timed selections per child (best is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[0],
        help="torch intra-op threads per child, one set of rows per value (0: torch's default)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench", help="dir for mask_build.{md,json}")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.model_size, a.density, a.repeat, a.seed, a.threads[0])))
        return

    variants = ["model"] + [v for v in a.variants if v != "model"]
    res = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model_size": a.model_size,
        "density": a.density,
        "repeat": a.repeat,
        "machine": machine(),
        "rows": [],
    }
    runs = [("model", 0)] + [(v, th) for th in a.threads for v in variants if v != "model"]
    for v, th in runs:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            v,
            "--model-size",
            a.model_size,
            "--density",
            str(a.density),
            "--repeat",
            str(a.repeat),
            "--seed",
            str(a.seed),
            "--threads",
            str(th),
        ]
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            err = (p.stderr.strip().splitlines() or ["?"])[-1]
            row = {"variant": v, "error": f"exit {p.returncode}: {err}"}
        else:
            row = json.loads(p.stdout.strip().splitlines()[-1])
        row["child_total_s"] = time.perf_counter() - t
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
    res["loadavg_end"] = os.getloadavg()
    a.out.mkdir(parents=True, exist_ok=True)
    md = render(res)
    (a.out / "mask_build.json").write_text(json.dumps(res, indent=1) + "\n")
    (a.out / "mask_build.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
