#!/usr/bin/env bash
# Submit a peftx sweep to SLURM as one job array, from the shell.
#
#   scripts/slurm/submit.sh SWEEP [OVERRIDES...]
#   scripts/slurm/submit.sh paper_base launcher.partition=gpu launcher.account=myproj launcher.gres=gpu:1
#   scripts/slurm/submit.sh smoke data.glue_dir=$PWD/../shared/glue      # 4 tiny runs: try the cluster
#
# What happens (all of it is `peftx sweep sweep=SWEEP launcher=slurm OVERRIDES`):
#   1. every run of conf/sweep/SWEEP.yaml is composed and checked; completed runs (and runs still
#      queued from an earlier submission) are skipped;
#   2. shared PaFi masks are built here, before any job starts;
#   3. results/slurm/SWEEP/manifest-<time>.txt gets one `peftx train ...` line per run, and ONE
#      job array is submitted through scripts/slurm/sweep.sbatch (options: conf/launcher/slurm.yaml);
#   4. the job id is printed on stdout (logs: results/slurm/SWEEP/<job>_<task>.out|err).
# Rerun the same command any time: it submits only what is neither completed nor queued.
# Preview without submitting: add --dry-run.
#
# Needs peftx on PATH (activate its environment first), or PEFTX="python -m peft_cli.cli".
# From a pip install (no checkout), `peftx submit SWEEP [OVERRIDES...]` does the same.
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
  sed -n '2,20s/^# \{0,1\}//p' "$0"
  exit 2
fi
sweep=$1
shift
# shellcheck disable=SC2086  # PEFTX may be a multi-word command
exec ${PEFTX:-peftx} sweep "sweep=$sweep" launcher=slurm "$@"
