"""GLUE data: reading and splitting (glue.py), tokenized batches (encode.py), metrics (metrics.py)."""
