"""Which rows go in which training batch: the epoch's order and (optionally) length grouping.

A batch is padded to its longest row, so a batch of similar lengths wastes little compute on
padding. `length_grouped` (as HF's LengthGroupedSampler): shuffle, cut the shuffled rows into
mega-batches of `MEGA` batches, sort each mega-batch by length (longest first), cut it into
batches, then shuffle the batches. Batches stay random across the epoch (no curriculum) while
their rows have similar lengths. Every draw comes from one generator seeded by (seed, epoch), so
the order is a function of those alone and a resumed run replays it exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MEGA = 50  # batches per mega-batch (HF's value): larger groups tighter, smaller keeps more randomness


def epoch_generator(seed: int, epoch: int) -> "torch.Generator":
    """The one generator of an epoch's order (the same formula since the first peftx release)."""
    import torch

    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def epoch_batches(
    lengths: "torch.Tensor", batch_size: int, seed: int, epoch: int, group_by_length: bool
) -> list[list[int]]:
    """Row indices of each batch of one epoch. `lengths` (N,) int: tokens per row."""
    import torch

    gen = epoch_generator(seed, epoch)
    order = torch.randperm(len(lengths), generator=gen)
    if not group_by_length:
        return chunks(order.tolist(), batch_size)
    mega = batch_size * MEGA
    batches: list[list[int]] = []
    for s in range(0, len(order), mega):
        chunk = order[s : s + mega]
        # stable sort: equal lengths keep the shuffled order, so ties are random yet deterministic
        chunk = chunk[torch.sort(lengths[chunk], descending=True, stable=True).indices].tolist()
        batches += chunks(chunk, batch_size)
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm]


def split_micro(rows: list[int], micro: int) -> list[list[int]]:
    """One batch's rows cut into `micro` near-equal micro-batches (gradient accumulation)."""
    n = len(rows)
    bounds = [round(i * n / micro) for i in range(micro + 1)]
    return [rows[bounds[i] : bounds[i + 1]] for i in range(micro) if bounds[i + 1] > bounds[i]]


def longest_first(lengths: "torch.Tensor") -> "torch.Tensor":
    """Evaluation order: row indices (N,), longest first (stable), so each batch pads little."""
    import torch

    return torch.sort(lengths, descending=True, stable=True).indices


def chunks(rows: list[int], size: int) -> list[list[int]]:
    """`rows` cut into consecutive batches of `size` (the last may be shorter)."""
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def padded_tokens(lengths: "torch.Tensor", batches: list[list[int]]) -> int:
    """Tokens the `batches` process, each padded to its longest row."""
    return sum(len(b) * int(lengths[b].max()) for b in batches if b)
