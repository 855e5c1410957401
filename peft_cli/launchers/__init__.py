"""Launchers: how a sweep's pending runs get executed. `launcher=local` (subprocesses on this
machine, launchers/local.py) or `launcher=slurm` (one job array, launchers/slurm.py). Both run
the same `peftx train <overrides>` per run, so a run behaves the same wherever it executes."""
