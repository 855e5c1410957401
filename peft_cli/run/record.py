"""result.json: its schema, how a run's record is built, and how one is read back.

A run counts as done only when its result.json says `"status": "completed"` with the expected
`config_hash`; result.json is written last, atomically, so a half-written run is never counted.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Iterator

STATUSES = ("completed", "failed", "cancelled", "running")
REQUIRED_KEYS = (
    "status",
    "experiment",
    "model",
    "task",
    "method",
    "method_tag",
    "seed",
    "metrics",
    "score",
    "params",
    "stored_bytes",
    "time",
    "config_hash",
    "versions",
)


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
    """Whether `directory` holds a completed result of the config with this hash."""
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
        out["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = "unknown"
    out["device"] = device
    return out
