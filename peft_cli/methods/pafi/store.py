"""The shared PaFi mask of a model: build it once, reuse it for every task.

    results/masks/<model>/<strategy>-d<density>[-s<seed>].safetensors  (+ .json)

`ensure_mask` is the only way runs get a task-agnostic mask: it loads the file if it exists
(checking that it was built for this backbone and this spec), else selects and saves it.
Concurrent builders (sweep workers, array tasks) are safe: both write the same bytes through
atomic renames. FISH masks are task-specific and never stored here (fisher.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from peft_cli.core.config import MaskConfig, RunConfig
from peft_cli.core.errors import UserError
from peft_cli.methods.pafi.select import MaskSpec, build_meta, load_mask, mask_filename, save_mask, select, verify
from peft_cli.models import backbone_parameters, fingerprint, load_model

if TYPE_CHECKING:
    import torch
    from torch import nn


class MaskBuild(NamedTuple):
    """What `ensure_mask` found or made."""

    indices: dict[str, "torch.Tensor"]  # parameter name -> sorted int32 flat indices, model order
    meta: dict  # the mask's sidecar json (k, candidates, breakdown, ...)
    path: Path  # the mask file
    built: bool  # True: selected now; False: an existing file was reused


def spec_of(mask: MaskConfig) -> MaskSpec:
    """The selection spec of the top-level `mask.*` config."""
    return MaskSpec(
        strategy=mask.strategy,
        density=mask.density,
        scope=mask.scope,
        include=tuple(mask.include),
        exclude=tuple(mask.exclude),
        seed=mask.seed,
    )


def mask_path(results_dir: Path, model_name: str, mask: MaskConfig) -> Path:
    """Where the shared mask of (model, mask config) lives: `mask.path`, or a file under results_dir/masks."""
    if mask.path:
        return Path(mask.path).expanduser()
    name = mask_filename(spec_of(mask))
    if mask.scope != "global" or list(mask.include) != [".*"] or mask.exclude:
        name = name.replace(".safetensors", f"-{variant(mask)}.safetensors")  # ablations get their own file
    return Path(results_dir) / "masks" / model_name / name


def variant(mask: MaskConfig) -> str:
    """A short, stable suffix for non-default candidate sets / scopes."""
    text = f"{mask.scope}|{list(mask.include)}|{list(mask.exclude)}"
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def in_model_order(model: "nn.Module", indices: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """Mask order is the model's parameter order. safetensors files come back sorted by name, so
    every mask read from disk is put back in this order before values are laid out along it."""
    order = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    unknown = [n for n in indices if n not in order]
    if unknown:
        raise UserError(f"mask names {unknown[:3]} are not parameters of this model: was it built for another model?")
    return dict(sorted(indices.items(), key=lambda kv: order[kv[0]]))


def digest(indices: dict[str, "torch.Tensor"]) -> str:
    """Identity of a mask's content: artifacts record it, so values are never applied to another mask."""
    h = hashlib.blake2b(digest_size=16)
    for name, idx in indices.items():
        h.update(name.encode() + b":")
        h.update(idx.to("cpu").contiguous().numpy())
    return h.hexdigest()


def ensure_mask(
    model: "nn.Module", model_name: str, mask: MaskConfig, results_dir: Path, model_fingerprint: str
) -> MaskBuild:
    """The shared mask of `model` for `mask`: the file under `results_dir` (or `mask.path`) when it
    exists, checked against this backbone and spec; else selected now and saved. Never rebuilds."""
    if mask.strategy == "fisher":
        raise UserError(
            "mask.strategy=fisher is task-specific: it is built inside `peftx train method=pafi`, not by `peftx mask`"
        )
    path = mask_path(results_dir, model_name, mask)
    if path.is_file():
        indices, meta = load_mask(path)
        verify(meta, model_fingerprint, path)
        indices = in_model_order(model, indices)
        _check_spec(meta, mask, path)
        return MaskBuild(indices, meta, path, False)
    if mask.path:
        raise UserError(f"mask.path={mask.path} does not exist; unset mask.path to build the mask under results.dir")
    import torch

    spec = spec_of(mask)
    named = {n: p.detach() for n, p in backbone_parameters(model).items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the streaming select is memory-bound; extra threads only contend (bench/mask_build)
    try:
        indices = select(named, spec)
    finally:
        torch.set_num_threads(threads)
    meta = build_meta(named, spec, indices, model_fingerprint)
    save_mask(path, indices, meta)
    return MaskBuild(indices, meta, path, True)


def _check_spec(meta: dict, mask: MaskConfig, path: Path) -> None:
    """A mask given by mask.path must match the configured selection, or the tag would lie."""
    keys = ["strategy", "density", "scope", "include", "exclude"] + (["seed"] if mask.strategy == "random" else [])
    for key in keys:
        if meta.get(key) != getattr(mask, key):
            raise UserError(
                f"mask {path} has {key}={meta.get(key)!r} but the config says mask.{key}="
                f"{getattr(mask, key)!r}; set mask.{key} to match or use another mask file"
            )


def build_for_config(cfg: RunConfig) -> MaskBuild:
    """`peftx mask` and sweeps: load ${model}, build or reuse its shared mask."""
    model = load_model(cfg.model, cfg.task)
    return ensure_mask(model, cfg.model.name, cfg.mask, Path(cfg.results.dir), fingerprint(model))
