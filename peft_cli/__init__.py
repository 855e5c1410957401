"""peftx: PaFi, HiWi and the PEFT baselines on GLUE. The CLI lives in `peft_cli.cli`."""

__version__ = "0.1.0"
