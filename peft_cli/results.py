"""The results folder: run layout, result.json, atomic writes. The only writer of results/.

    results/runs/<experiment>/<model>/<method_tag>/<task>/seed<k>/
        result.json  config.yaml  artifact.safetensors  predictions.tsv  log.jsonl

Every file is written to a temporary name in the same folder and renamed into place, so a
reader sees the old file or the new one, never half of one. `result.json` is written last: a
run counts as done only when it says `"status": "completed"` with the expected `config_hash`.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import torch

STATUSES = ("completed", "failed", "cancelled", "running")
REQUIRED_KEYS = ("status", "experiment", "model", "task", "method", "method_tag", "seed", "metrics", "score",
                 "params", "stored_bytes", "time", "config_hash", "versions")


def run_dir(results_dir: str | Path, experiment: str, model: str, method_tag: str, task: str, seed: int) -> Path:
    return Path(results_dir) / "runs" / experiment / model / method_tag / task / f"seed{seed}"


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
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def save_tensors(path: Path, tensors: dict[str, "torch.Tensor"], metadata: dict[str, str]) -> int:
    """safetensors, atomically; returns the bytes on disk."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path.stat().st_size


def load_tensors(path: Path) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    from peft_cli.errors import UserError

    if not path.is_file():
        raise UserError(f"artifact not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e})") from None


def read_result(path: Path) -> dict[str, Any] | None:
    """A result.json as a dict, or None if it is missing, unreadable or lacks required keys.
    A half-written or foreign file is never mistaken for a result."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED_KEYS) or data["status"] not in STATUSES:
        return None
    return data


def is_completed(directory: Path, config_hash: str) -> bool:
    r = read_result(directory / "result.json")
    return r is not None and r["status"] == "completed" and r["config_hash"] == config_hash


def iter_results(results_dir: str | Path, pattern: str = "*/*/*/*/*") -> Iterator[tuple[Path, dict[str, Any]]]:
    """(run folder, result) for every readable result.json under runs/ matching `pattern`."""
    root = Path(results_dir) / "runs"
    for path in sorted(root.glob(f"{pattern}/result.json")):
        r = read_result(path)
        if r is not None:
            yield path.parent, r


def versions(device: str) -> dict[str, str]:
    """Package versions, the project's git commit and the device, for result.json."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for pkg in ("peftx", "torch", "transformers", "peft", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        here = Path(__file__).resolve().parent
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                           timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = "unknown"
    out["device"] = device
    return out
