#!/usr/bin/env bash
# Every GPU measurement of issue 12 in one short run (about 8 minutes on one H100/H200); not yet run:
# no GPU was lent when it was written. Writes results/bench/throughput_cuda.{md,json},
# results/bench/pafi_step_cuda_b32.{md,json} and results/bench/gpu_check.log.
#
#   scripts/bench/gpu_check.sh [GLUE_DIR]      (default ../shared/glue; PYTHON=... to pick the interpreter)
#
# 1. peftx vs HF Trainer (run_glue-configured and tuned), MiniLM-L6, bf16, per method: examples/s and
#    peak GPU memory, ratios to run_glue's Trainer measured in the same run (goal: peftx >= 1.5x).
# 2. PaFi (grouped sparse path) vs full fine-tuning vs BitFit vs LoRA, one step at roberta-base size,
#    batch 32 x 128, bf16 (goal: PaFi step <= 1.0x full, memory <= 0.6x).
# 3. Model-FLOPs utilization of (2)'s full fine-tuning step (goal: >= 35%, reported either way).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
glue=${1:-../shared/glue}
py=${PYTHON:-python}
log=results/bench/gpu_check.log
mkdir -p results/bench
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
  timeout 330 "$py" scripts/bench/throughput.py --device cuda --steps 60 --glue "$glue" --threads 4
  echo "throughput rc=$?"
  timeout 150 "$py" scripts/bench/pafi_step.py --device cuda --bf16 --batch 32 --variants full bitfit pafi lora \
      --steps 12 --warmup 3 --rounds 1 --out results/bench/pafi_step_cuda_b32
  echo "pafi_step rc=$?"
  "$py" - <<'PY'
import json, pathlib
import torch
r = json.loads(pathlib.Path("results/bench/pafi_step_cuda_b32.json").read_text())
full = r["results"]["full"]
B, S = r["meta"]["batch"]
L, d, ffn = 12, 768, 3072
n = L * (4 * d * d + 2 * d * ffn)  # roberta-base matmul weights (embeddings do no matmul FLOPs)
tokens = B * S
flops = 6 * n * tokens + 12 * L * d * S * tokens  # forward + backward: weights, and attention scores/values
name = torch.cuda.get_device_name(0)
peak = 989e12  # dense bf16 tensor-core peak of H100 SXM and H200 (NVIDIA datasheets); PCIe H100: 756e12
if "PCIe" in name:
    peak = 756e12
mfu = flops / full["step_s"] / peak
print(f"MFU {name}: full fine-tuning step {full['step_s'] * 1e3:.1f} ms at {B}x{S} = "
      f"{flops / full['step_s'] / 1e12:.0f} TFLOP/s of {peak / 1e12:.0f} = {100 * mfu:.1f}% (goal >= 35%)")
PY
} 2>&1 | tee "$log"
