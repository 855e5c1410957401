#!/usr/bin/env bash
# GPU smoke test: full fine-tuning of MiniLM-L6 on RTE for one epoch on CUDA with bf16 autocast,
# then the training throughput in examples per second.
#
#   scripts/gpu_smoke.sh [GLUE_DIR] [OVERRIDES...]      (default GLUE_DIR: ../shared/glue)
#
# PEFTX overrides the command (default: peftx), e.g. PEFTX="python -m peft_cli.cli".
# Throughput = steps x batch size / train_s, where train_s includes the epoch's validation pass.
set -euo pipefail
glue=${1:-../shared/glue}
[ $# -gt 0 ] && shift
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
${PEFTX:-peftx} train model=minilm-l6 task=rte method=full "data.glue_dir=$glue" train.epochs=1 \
    train.precision=bf16 train.device=cuda "results.dir=$out" train.progress=false "$@"
python3 - "$out" <<'PY'
import json, pathlib, sys
r = json.loads(next(pathlib.Path(sys.argv[1]).rglob("result.json")).read_text())
cfg = (next(pathlib.Path(sys.argv[1]).rglob("config.yaml"))).read_text()
bs = int(next(l for l in cfg.splitlines() if l.strip().startswith("batch_size:")).split(":")[1])
print(f"gpu_smoke: {r['versions']['device']}: {r['steps']} steps x batch {bs} in {r['time']['train_s']:.1f} s "
      f"= {r['steps'] * bs / r['time']['train_s']:.0f} train examples/s (incl. one validation pass); "
      f"test accuracy {r['score']:.2f}")
PY
