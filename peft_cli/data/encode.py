"""A tokenized split held as tensors, and its batches (dynamic padding: each batch is padded to
its longest row).

Tokenized once into one right-padded (N, L) int tensor per feature plus the (N,) lengths, so a
batch is two tensor ops (index rows, slice to the batch's width) instead of Python list padding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peft_cli.data.batching import chunks

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader

    from peft_cli.data.glue import Example


class Encoded:
    """A tokenized split: padded feature tensors, lengths, labels (see module docstring)."""

    def __init__(self, examples: list["Example"], tokenizer: Any, max_length: int, regression: bool) -> None:
        import torch

        a = [e["text_a"] for e in examples]
        b = [e["text_b"] for e in examples] if examples and examples[0]["text_b"] is not None else None
        features = tokenizer(a, b, truncation=True, max_length=max_length) if examples else {"input_ids": []}
        ids = features["input_ids"]
        self.lengths = torch.tensor([len(r) for r in ids], dtype=torch.long)  # (N,)
        width = int(self.lengths.max()) if len(ids) else 0
        self.tensors: dict[str, torch.Tensor] = {}  # feature -> (N, width), right-padded
        for key, values in features.items():
            pad = tokenizer.pad_token_id if key == "input_ids" else 0
            t = torch.full((len(values), width), pad, dtype=torch.long)
            for i, row in enumerate(values):
                t[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            self.tensors[key] = t
        self.labels = [e["label"] for e in examples]
        self.label_tensor = torch.tensor(self.labels, dtype=torch.float32 if regression else torch.long)  # (N,)
        self.idx = [e["idx"] for e in examples]
        self.regression = regression

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int) -> "Encoded":
        """The first `n` rows, sharing this split's tensors (timing and checks)."""
        sub = object.__new__(Encoded)
        sub.lengths, sub.tensors = self.lengths[:n], {k: t[:n] for k, t in self.tensors.items()}
        sub.labels, sub.label_tensor, sub.idx = self.labels[:n], self.label_tensor[:n], self.idx[:n]
        sub.regression = self.regression
        return sub

    def collate(self, rows: "list[int] | torch.Tensor") -> dict[str, "torch.Tensor"]:
        """The batch of `rows`, padded to its longest row: feature tensors (B, width), labels (B,)."""
        import torch

        rows = torch.as_tensor(rows, dtype=torch.long)
        width = int(self.lengths[rows].max())  # CPU tensor: no device sync
        batch = {key: t[rows, :width] for key, t in self.tensors.items()}
        batch["labels"] = self.label_tensor[rows]
        return batch

    def collate_micro(self, micro_rows: list[list[int]]) -> list[dict[str, "torch.Tensor"]]:
        """One training batch as its micro-batches (gradient accumulation), each padded on its own."""
        return [self.collate(r) for r in micro_rows]

    def loader(self, batch_size: int, order: "torch.Tensor | None" = None, skip: int = 0) -> "DataLoader":
        """Batches over `order` (a permutation; None = file order), starting after `skip` batches."""
        rows = list(range(len(self))) if order is None else order.tolist()
        return self.batch_loader(chunks(rows, batch_size)[skip:])

    def batch_loader(self, batches: list, micro: bool = False, pin: bool = False) -> "DataLoader":
        """Collated `batches` (lists of rows; with `micro`, lists of micro-batches' rows). `pin`:
        page-locked batches, so copies to a CUDA device can be non-blocking."""
        from torch.utils.data import DataLoader

        fn = self.collate_micro if micro else self.collate
        return DataLoader(batches, batch_size=None, collate_fn=fn, pin_memory=pin)
