"""The bottom layer: errors, config schemas and composition, file writing, runtime, signals.
Nothing here imports another layer of peftx."""
