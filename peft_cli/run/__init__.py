"""One run, from config to result: identity (hash, tag, folder), assembly, the trainer, scoring,
checkpoints, result.json, and re-evaluation and export of a finished run."""
