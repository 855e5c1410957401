"""Sweeps: grid.py (sweep files -> validated runs with their status), runner.py (`peftx sweep`),
launchers/ (plug-ins that execute pending runs: local subprocesses, SLURM job arrays)."""
