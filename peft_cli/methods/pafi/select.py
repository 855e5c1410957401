"""Task-agnostic sparse masks (PaFi: the globally smallest-|θ| pre-trained entries are trainable).

A mask is built once per (model, spec) and shared by every task. It is stored as a safetensors
file of int32 1-D tensors of sorted flat indices, one per parameter with >= 1 selected entry,
plus a sidecar `.json` with the metadata (`build_meta`). Pure library: no CLI, no model loading.

How selection scales (roberta-large: 355M entries, 391 tensors). Sorting or concatenating all
scores needs ~10 GB; instead every score is mapped to an int32 *key* whose integer order equals
the wanted order (ascending = selected first), and the k-th smallest key is found by radix
select over the key bits, streaming the tensors in chunks of `_CHUNK` entries:

  pass 1  histogram of the top 16 key bits          -> bucket B holding the k-th key
  pass 2  collect keys below B plus B's candidates   -> exact threshold among a few entries
          (if B is huge, e.g. a sea of equal values: histogram the low 16 bits of B instead,
          which gives the exact threshold T, then pass 3 collects key < T plus the first ties)

Memory beyond the inputs is O(_CHUNK + k). Ties at the threshold go to the lower (tensor order,
flat index), so a mask depends only on the scores and the candidate order.

Keys: for a float32 score s >= 0 the IEEE bit pattern read as int32 is monotone in s. Signed
scores (fisher) flip the low 31 bits of negatives; descending orders take the bitwise NOT
(~x = -x-1 reverses int32 order exactly). So all keys are exact: no float ties are invented.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Iterator, NamedTuple

import torch
from torch import Tensor

from peft_cli.core.errors import UserError
from peft_cli.core.files import save_tensors, write_text

FORMAT_VERSION = 1  # bump when the file layout or the selection rule (incl. random streams) changes
STRATEGIES = ("smallest", "largest", "random", "fisher")
SCOPES = ("global", "per_tensor")
MODULE_TYPES = ("embeddings", "attention", "ffn", "layernorm", "bias", "other")

_CHUNK = 1 << 22  # entries per streamed chunk (16 MB of int32 keys); any value gives the same mask
_RAND_BLOCK = 1 << 20  # random keys are drawn per (seed, tensor position, block): chunk-independent
_CAND_CAP = 1 << 22  # max entries in the threshold bucket to resolve in memory (else a third pass)
_NBUCKET = 1 << 16  # 16 key bits per radix level
_I32_MAX = (1 << 31) - 1


@dataclass(frozen=True)
class MaskSpec:
    strategy: str  # "smallest" (PaFi) | "largest" | "random" | "fisher"
    density: float  # fraction of candidate entries selected, 0 < d <= 1
    scope: str = "global"  # "global": one ranking over all candidates | "per_tensor": same density per tensor
    include: tuple[str, ...] = (".*",)  # regexes (re.search) over parameter names; a name must match one
    exclude: tuple[str, ...] = ()  # ... and none of these
    seed: int = 0  # random strategy only

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserError(f"mask.strategy={self.strategy!r} is unknown: use one of {', '.join(STRATEGIES)}")
        if self.scope not in SCOPES:
            raise UserError(f"mask.scope={self.scope!r} is unknown: use one of {', '.join(SCOPES)}")
        d = self.density
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not (0 < d <= 1):
            raise UserError(f"mask.density={d!r} is out of range: use a fraction with 0 < density <= 1")


# ----------------------------------------------------------------------------- candidates


def _compile(patterns: tuple[str, ...] | list[str], key: str) -> list[re.Pattern]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise UserError(f"{key} pattern {p!r} is not a valid regex ({e}): fix or remove it") from None
    return out


def candidates(named: dict[str, Tensor], include: tuple[str, ...], exclude: tuple[str, ...]) -> list[str]:
    """Names (input order) of floating-point tensors matching one `include` regex and no `exclude`."""
    inc, exc = _compile(include, "mask.include"), _compile(exclude, "mask.exclude")
    names = [
        n
        for n, t in named.items()
        if t.is_floating_point() and any(p.search(n) for p in inc) and not any(p.search(n) for p in exc)
    ]
    if not names:
        raise UserError(
            f"no parameter matches mask.include={list(include)} minus mask.exclude={list(exclude)} "
            f"(of {len(named)} tensors, e.g. {next(iter(named), '<none>')!r}): loosen the patterns"
        )
    return names


# ----------------------------------------------------------------------------- keys


def _mix(*xs: int) -> int:
    # splitmix64-style mixing of (seed, tensor position, block) into a 63-bit generator seed
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (x & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class _Keys:
    """Streams int32 keys (ascending = selected first) of the candidate tensors, chunk by chunk."""

    def __init__(self, named: dict[str, Tensor], names: list[str], spec: MaskSpec, scores: dict[str, Tensor] | None):
        self.spec = spec
        self.pos = {n: i for i, n in enumerate(names)}  # global position: seeds random streams
        src = scores if spec.strategy == "fisher" else named
        if spec.strategy == "fisher":
            if scores is None:
                raise ValueError("strategy 'fisher' needs scores={name: tensor} from the caller")
            for n in names:
                if n not in scores or scores[n].shape != named[n].shape:
                    got = tuple(scores[n].shape) if n in scores else "missing"
                    raise ValueError(f"fisher scores for {n!r}: {got}, expected shape {tuple(named[n].shape)}")
        self.src = {n: src[n] for n in names}
        for n, t in self.src.items():
            if t.numel() > _I32_MAX:
                raise ValueError(f"{n!r} has {t.numel()} entries: int32 flat indices cannot address it")

    def chunks(self, names: list[str], check: bool = False) -> Iterator[tuple[int, int, Tensor]]:
        """Yield (tensor number within `names`, flat offset, int32 keys (c,)) in (tensor, index) order."""
        strat = self.spec.strategy
        for j, n in enumerate(names):
            t = self.src[n]
            flat = t.detach().reshape(-1)  # (numel,); a view for contiguous params
            numel = flat.numel()
            for off in range(0, numel, _CHUNK):
                c = flat[off : off + _CHUNK]
                if strat == "random":
                    yield j, off, self._random(n, off, c.numel(), numel)
                    continue
                if check and torch.isnan(c).any():
                    what = "fisher scores" if strat == "fisher" else "weights"
                    raise UserError(f"{what} of {n!r} contain NaN: the mask is undefined; check the model/scores")
                if strat == "fisher":
                    s = c.float() + 0.0  # new tensor (never the caller's); -0.0 -> +0.0
                    b = s.view(torch.int32)
                    key = b ^ ((b >> 31) & _I32_MAX)  # negatives: flip the low 31 bits -> monotone signed
                else:
                    key = c.float().abs().view(torch.int32)  # abs() is a new tensor; |θ| >= 0: bits monotone
                if strat in ("largest", "fisher"):
                    key.bitwise_not_()  # descending: ~x reverses int32 order
                yield j, off, key

    def _random(self, name: str, off: int, n: int, numel: int) -> Tensor:
        # uniform int32 keys in [0, 2^31-1), drawn per fixed block so the chunking never matters
        g, parts = torch.Generator(), []
        b0, b1 = off // _RAND_BLOCK, (off + n - 1) // _RAND_BLOCK
        for b in range(b0, b1 + 1):
            g.manual_seed(_mix(self.spec.seed, self.pos[name], b))
            size = min(_RAND_BLOCK, numel - b * _RAND_BLOCK)
            parts.append(torch.randint(0, _I32_MAX, (size,), generator=g, dtype=torch.int32))
        r = torch.cat(parts) if len(parts) > 1 else parts[0]
        return r[off - b0 * _RAND_BLOCK :][:n]


# ----------------------------------------------------------------------------- radix select


def _bucket(hist: Tensor, k: int) -> tuple[int, int]:
    """First bucket where the cumulative count reaches k (1 <= k <= hist.sum()); count below it."""
    cum = hist.cumsum(0)
    b = int(torch.searchsorted(cum, torch.tensor([k], dtype=cum.dtype, device=cum.device))[0])
    return b, int(cum[b] - hist[b])


def _select_k(keys: _Keys, names: list[str], k: int) -> dict[str, Tensor]:
    """The k smallest keys over `names` (ties: lower tensor then lower index) -> sorted int32 indices.

    Everything that outlives a chunk (results, candidates) goes into buffers sized before the
    chunk loop: interleaving small long-lived tensors with the chunk temporaries fragments the
    heap (measured: +3 GB RSS on roberta-large), a fixed set of buffers does not."""
    if k <= 0:
        return {}
    # pass 1: histogram of the top 16 bits; (key >> 16) in [-2^15, 2^15) -> shift to [0, 2^16)
    hist = None  # (2^16,) int64, on the keys' device
    for _, _, key in keys.chunks(names, check=True):
        h = torch.bincount((key >> 16).add_(1 << 15), minlength=_NBUCKET)
        hist = h if hist is None else hist.add_(h)
    b, below = _bucket(hist, k)
    lo = (b - (1 << 15)) << 16  # smallest key in bucket b
    hi = lo + 0xFFFF  # largest key in bucket b
    need = k - below  # entries to take from bucket b, >= 1
    dev = hist.device

    def put(buf: Tensor, pos: int, src: Tensor) -> int:
        buf[pos : pos + src.numel()] = src  # int64 -> int32 on copy
        return pos + src.numel()

    spans: list[tuple[int, int]] = []  # per tensor: [start, end) of its entries in `buf`
    nb = int(hist[b])
    if nb <= _CAND_CAP:
        # pass 2: keys < lo are in (`buf`); the nb bucket-b entries are candidates, resolved below
        buf = torch.empty(below, dtype=torch.int32, device=dev)  # (below,) flat indices
        cidx = torch.empty(nb, dtype=torch.int32, device=dev)  # (nb,) candidates' flat indices
        ckey = torch.empty(nb, dtype=torch.int32, device=dev)  # (nb,) their keys
        cspans: list[tuple[int, int]] = []
        p = q = 0
        for j, off, key in keys.chunks(names):
            while len(spans) <= j:
                spans.append((p, p))
                cspans.append((q, q))
            idx = torch.nonzero(key <= hi).squeeze(1)  # (m,) int64, ascending
            if idx.numel():
                kv = key[idx]
                inb = kv >= lo
                p = put(buf, p, idx[~inb] + off)
                c = idx[inb]
                ckey[q : q + c.numel()] = kv[inb]
                q = put(cidx, q, c + off)
            spans[j], cspans[j] = (spans[j][0], p), (cspans[j][0], q)
        assert p == below and q == nb, (p, below, q, nb)
        win = torch.zeros(nb, dtype=torch.bool, device=dev)
        win[torch.sort(ckey, stable=True).indices[:need]] = True  # stable: ties keep (tensor, index) order
        res = {}
        for j, ((p0, p1), (q0, q1)) in enumerate(zip(spans, cspans, strict=True)):
            sel = torch.cat([buf[p0:p1], cidx[q0:q1][win[q0:q1]]])
            if sel.numel():
                res[names[j]] = torch.sort(sel).values
        return res
    # pass 2': histogram of the low 16 bits inside bucket b -> exact threshold key t
    hist2 = torch.zeros(_NBUCKET, dtype=torch.int64, device=dev)
    for _, _, key in keys.chunks(names):
        sel = key[(key >= lo) & (key <= hi)]
        if sel.numel():
            hist2.add_(torch.bincount(sel.sub_(lo), minlength=_NBUCKET))
    b2, below2 = _bucket(hist2, need)
    t, ties = lo + b2, need - below2  # take all keys < t and the first `ties` keys == t
    # pass 3: collect into one (k,) buffer
    buf = torch.empty(k, dtype=torch.int32, device=dev)
    p = 0
    for j, off, key in keys.chunks(names):
        while len(spans) <= j:
            spans.append((p, p))
        m = key < t
        if ties > 0:
            eq = torch.nonzero(key == t).squeeze(1)[:ties]
            m[eq] = True
            ties -= eq.numel()
        p = put(buf, p, torch.nonzero(m).squeeze(1) + off)
        spans[j] = (spans[j][0], p)
    assert p == k, (p, k)
    return {names[j]: buf[p0:p1].clone() for j, (p0, p1) in enumerate(spans) if p1 > p0}


@torch.no_grad()
def select(named: dict[str, Tensor], spec: MaskSpec, scores: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """{name: sorted int32 flat indices} of the selected entries, candidate tensors in input order
    (tensors with nothing selected are left out). global: k = round(density * #candidate entries)
    in total; per_tensor: round(density * numel) in every tensor. Inputs are not modified."""
    names = candidates(named, spec.include, spec.exclude)
    keys = _Keys(named, names, spec, scores)
    if spec.scope == "global":
        k = round(spec.density * sum(named[n].numel() for n in names))
        res = _select_k(keys, names, k)
    else:
        res = {}
        for n in names:
            res.update(_select_k(keys, [n], round(spec.density * named[n].numel())))
    return {n: res[n].cpu() for n in names if n in res}


# ----------------------------------------------------------------------------- reporting


def module_type(name: str) -> str:
    """Module type of a BERT/RoBERTa parameter name. Rule, first match wins:
    bias (`*.bias`, whatever its module) > layernorm (`LayerNorm`, incl. embeddings' and
    attention.output's) > embeddings (`embeddings.`) > attention (`attention.`, incl. its
    output.dense) > ffn (`intermediate.`, `output.dense`) > other (pooler, heads, ...)."""
    parts = name.split(".")
    if parts[-1] == "bias":
        return "bias"
    if any(p.lower() in ("layernorm", "layer_norm", "ln") for p in parts):
        return "layernorm"
    if "embeddings" in parts:
        return "embeddings"
    if "attention" in parts:
        return "attention"
    if "intermediate" in parts or ".output.dense." in f".{name}.":
        return "ffn"
    return "other"


def breakdown(indices: dict[str, Tensor]) -> dict[str, int]:
    """Selected entries per module type (`module_type`), all six keys present."""
    out = dict.fromkeys(MODULE_TYPES, 0)
    for n, idx in indices.items():
        out[module_type(n)] += int(idx.numel())
    return out


def _fmt_density(d: float) -> str:
    # 12 significant digits drop float noise (0.1+0.2 -> 0.3); Decimal avoids exponents (1e-05)
    s = format(Decimal(f"{d:.12g}").normalize(), "f")
    return s


def mask_filename(spec: MaskSpec) -> str:
    """`<strategy>-d<density>[-s<seed>].safetensors`, e.g. `smallest-d0.005.safetensors`."""
    name = f"{spec.strategy}-d{_fmt_density(spec.density)}"
    if spec.strategy == "random":
        name += f"-s{spec.seed}"
    return name + ".safetensors"


def build_meta(named: dict[str, Tensor], spec: MaskSpec, indices: dict[str, Tensor], fingerprint: str) -> dict:
    """The sidecar json of a mask built by `select(named, spec)`."""
    names = candidates(named, spec.include, spec.exclude)
    return {
        "format": "peftx-mask",
        "format_version": FORMAT_VERSION,
        "model_fingerprint": fingerprint,
        "strategy": spec.strategy,
        "scope": spec.scope,
        "density": spec.density,
        "k": sum(int(v.numel()) for v in indices.values()),
        "candidates": sum(named[n].numel() for n in names),
        "include": list(spec.include),
        "exclude": list(spec.exclude),
        "breakdown": breakdown(indices),
        "seed": spec.seed if spec.strategy == "random" else None,
        "shapes": {n: list(named[n].shape) for n in names},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------- files


def _json_path(path: Path) -> Path:
    return path.with_suffix(".json")


def save_mask(path: Path, indices: dict[str, Tensor], meta: dict) -> None:
    """Write `path` (safetensors, int32 per param) then `path.json`. The json goes last and any old
    one is removed first, so a mask without its json is an interrupted build."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _json_path(path).unlink(missing_ok=True)
    tensors = {n: v.detach().to("cpu", torch.int32).contiguous() for n, v in indices.items()}
    header = {"format": "peftx-mask", "format_version": str(FORMAT_VERSION)}
    save_tensors(path, tensors, header)
    text = json.dumps(meta, indent=1, sort_keys=False) + "\n"
    write_text(_json_path(path), text)


class LoadedMask(NamedTuple):
    indices: dict[str, Tensor]  # parameter name -> sorted int32 flat indices
    meta: dict  # the sidecar json


def load_mask(path: Path) -> LoadedMask:
    """Read a mask written by `save_mask` and check it: k, dtype, sortedness, range (if shapes known)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path, jpath = Path(path), _json_path(Path(path))
    if not path.is_file():
        raise UserError(f"mask file {path} not found: build the mask first or fix mask.path")
    if not jpath.is_file():
        raise UserError(
            f"mask {path} is incomplete ({jpath.name} missing, build interrupted?): delete {path} and rebuild"
        )
    try:
        meta = json.loads(jpath.read_text())
        indices = load_file(path)
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as e:
        raise UserError(f"mask {path} or {jpath.name} is corrupt ({e}): delete both and rebuild") from None

    def bad(why: str) -> UserError:
        return UserError(f"mask {path} is invalid ({why}): delete {path} and {jpath.name} and rebuild")

    if not isinstance(meta, dict) or "k" not in meta:
        raise bad("json has no 'k'")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise bad(f"format_version {meta['format_version']} is newer than this peftx ({FORMAT_VERSION})")
    shapes = meta.get("shapes") or {}
    for n, v in indices.items():
        if v.dtype != torch.int32 or v.dim() != 1:
            raise bad(f"{n!r} is {v.dtype} {tuple(v.shape)}, expected 1-D int32")
        if v.numel() > 1 and not bool((v[1:] > v[:-1]).all()):
            raise bad(f"indices of {n!r} are not strictly increasing")
        if v.numel() and n in shapes and (int(v[0]) < 0 or int(v[-1]) >= math.prod(shapes[n])):
            raise bad(f"indices of {n!r} out of range for shape {shapes[n]}")
    k = sum(int(v.numel()) for v in indices.values())
    if k != meta["k"]:
        raise bad(f"{k} indices but json says k={meta['k']}")
    return LoadedMask(indices, meta)


def verify(meta: dict, fingerprint: str, path: Path) -> None:
    """UserError unless the mask in `path` was built for the model with this fingerprint."""
    got = meta.get("model_fingerprint")
    if got != fingerprint:
        raise UserError(
            f"mask {path} was built for another model (fingerprint {got}, this model {fingerprint}): "
            f"delete {path} (and its .json) to rebuild it, or set mask.path to a mask built for this model"
        )
