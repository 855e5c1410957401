"""Atomic file writing and safetensors I/O: every file peftx writes goes through here.

Every file is written to a temporary name in the same folder, fsynced, and renamed into place,
so a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

from peft_cli.core.errors import UserError

if TYPE_CHECKING:
    import torch


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:  # on disk before the rename, so a crash leaves old or new, never empty
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are shared like any file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set it straight back
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def save_tensors(path: Path, tensors: dict[str, "torch.Tensor"], metadata: dict[str, str]) -> int:
    """safetensors, atomically; returns the bytes on disk."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path.stat().st_size


class Tensors(NamedTuple):
    tensors: dict[str, "torch.Tensor"]  # name -> tensor, on CPU
    metadata: dict[str, str]  # the safetensors header's string entries


def load_tensors(path: Path) -> Tensors:
    """(tensors, header metadata) of a safetensors file; UserError naming the file if it is
    missing or unreadable. Never unpickles anything."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise UserError(f"artifact not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return Tensors({k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {}))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e})") from None
