#!/usr/bin/env bash
# The device check behind results/bench/gpu_device_check.log, as run on a lent H200 through the
# device tool: the repo plus a .gpu/ folder (hydra/omegaconf/antlr4 sources in .gpu/site, MiniLM as
# fp16 safetensors + tokenizer in .gpu/minilm, the GLUE TSVs in .gpu/glue), with $OUT for the bench files.
export PYTHONPATH=$PWD:$PWD/.gpu/site PYTHONUNBUFFERED=1
nvidia-smi -L
python3 - <<'PY'
import shutil, os
from safetensors.torch import load_file, save_file
os.makedirs("/tmp/minilm", exist_ok=True)
t = load_file(".gpu/minilm/model.fp16.safetensors")
save_file({k: (v.float() if v.is_floating_point() else v) for k, v in t.items()}, "/tmp/minilm/model.safetensors", metadata={"format": "pt"})
for f in os.listdir(".gpu/minilm"):
    if not f.startswith("model."): shutil.copy(".gpu/minilm/" + f, "/tmp/minilm/" + f)
PY
M="model.source=hub model.id=/tmp/minilm"
echo "== gpu_smoke"; PEFTX="python3 -m peft_cli.cli" timeout 100 scripts/gpu_smoke.sh .gpu/glue $M 2>&1 | tail -3
echo "== pafi cuda bf16"; timeout 100 python3 -m peft_cli.cli train model=minilm-l6 $M task=rte method=pafi data.glue_dir=.gpu/glue train.epochs=1 train.precision=bf16 results.dir=/tmp/res train.progress=false 2>&1 | tail -2
timeout 40 python3 -m peft_cli.cli eval /tmp/res/runs/default/minilm-l6/pafi-smallest-d0.005/rte/seed42 2>&1 | tail -2
echo "== sparse cuda tests"; timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_sparse.py -k cuda 2>&1 | tail -3
echo "== pafi_step cuda"; timeout 120 python3 scripts/bench/pafi_step.py --device cuda --bf16 --variants full bitfit pafi lora --steps 6 --out $OUT/pafi_step_cuda 2>&1 | tail -12
echo "== latency cuda"; timeout 150 python3 scripts/bench/latency.py --device cuda --out $OUT/latency_cuda 2>&1 | tail -25
