"""A tokenized split and its batches (dynamic padding: each batch is padded to its longest row)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader

    from peft_cli.data.glue import Example


class Encoded:
    """A tokenized split: ragged input ids kept as lists, padded per batch (dynamic padding)."""

    def __init__(self, examples: list["Example"], tokenizer: Any, max_length: int, regression: bool) -> None:
        a = [e["text_a"] for e in examples]
        b = [e["text_b"] for e in examples] if examples and examples[0]["text_b"] is not None else None
        self.features = tokenizer(a, b, truncation=True, max_length=max_length)
        self.labels = [e["label"] for e in examples]
        self.idx = [e["idx"] for e in examples]
        self.regression = regression
        self.pad_id = tokenizer.pad_token_id

    def __len__(self) -> int:
        return len(self.labels)

    def collate(self, rows: list[int]) -> dict[str, "torch.Tensor"]:
        import torch

        width = max(len(self.features["input_ids"][r]) for r in rows)
        batch: dict[str, torch.Tensor] = {}
        for key, values in self.features.items():
            pad = self.pad_id if key == "input_ids" else 0
            batch[key] = torch.tensor([values[r] + [pad] * (width - len(values[r])) for r in rows])
        dtype = torch.float32 if self.regression else torch.long
        batch["labels"] = torch.tensor([self.labels[r] for r in rows], dtype=dtype)
        return batch

    def loader(self, batch_size: int, order: "torch.Tensor | None" = None, skip: int = 0) -> "DataLoader":
        """Batches over `order` (a permutation; None = file order), starting after `skip` batches
        (resuming mid-epoch replays the same order without the batches already done)."""
        from torch.utils.data import DataLoader

        rows = list(range(len(self))) if order is None else order.tolist()
        chunks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)][skip:]
        return DataLoader(chunks, batch_size=None, collate_fn=self.collate)
