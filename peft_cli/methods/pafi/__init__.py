"""PaFi and its mask machinery: method.py (the Method), select.py, store.py, fisher.py, sparse.py."""

from peft_cli.methods.pafi.method import PaFi

__all__ = ["PaFi"]
