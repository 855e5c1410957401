"""PaFi's trainable parameters: k selected entries of frozen pre-trained tensors.

`attach(model, indices)` freezes every masked tensor W and gives each one a value parameter
v = W.flatten()[idx] of shape (k_i,), registered in the submodule `model.pafi_values`, so
`model.parameters()` yields them and the optimizer's state is 2*k floats (AdamW's m and v),
never the size of the model. v holds the actual entry values, not a delta, so AdamW's decay
shrinks θ[idx] exactly as full fine-tuning restricted to the k entries would.

How v reaches the forward, and why (three paths, picked per masked tensor at attach time):

* Every path first does W.view(-1).index_copy_(0, idx, v) under no_grad, at each call of the
  owning module. O(k_i); it only ever writes masked positions, so the other entries stay
  bit-identical whatever the optimizer does, and because it runs at every forward the value
  params are the single source of truth: `v.data.copy_(saved)` needs no extra call.
  W's masked entries are thus a cache of v, fresh after each forward.
* `nn.Linear.weight` (the bulk: ~70% of a BERT): the module's `forward` is replaced (instance
  attribute; type unchanged) by `_SparseLinear`, a custom autograd Function. Its backward
  computes grad_input = gout @ W densely (as BitFit does) and the k_i selected entries of the
  weight gradient, g_e = sum_n gout[n, row_e] * x[n, col_e], as an SDDMM
  (`torch.sparse.sampled_addmm`, a CSR pattern sampled from gout^T @ x): no dense
  (out, in) gradient ever exists. It wants gout^T row-major and x column-major (one
  transposed fp32 copy of each; other layouts make the kernel copy anyway), then at density
  0.005 it is ~30x cheaper than the dense weight-grad GEMM (3072x768, 1024 tokens, CPU:
  0.7 ms vs 25 ms). Net, a PaFi step costs about a BitFit step (+~4% CPU, same process
  A/B on roberta-base). Devices whose sampled_addmm fails fall back to a chunked gather
  (memory ~ chunk x N). Selected grads are accumulated in fp32 (bf16 autocast included).
  Grouped (on the devices in GROUPED_DEVICES: CPU and CUDA by default): the backward does not
  compute g_e itself but hands (gout, x) to `SparseValues._defer`; Linears that saw the same N
  tokens are computed together in ONE sampled_addmm over a block-diagonal stacking of their
  patterns (`_grouped_grads`), when the staged operands reach GROUP_BYTES or when autograd
  finishes the backward (an engine callback); the result is written into v.grad. Same dot
  products, far fewer launches (a GPU step was bound by per-tensor launches). Consequence:
  `torch.autograd.grad(loss, values)` sees no grad for Linear values; use `.backward()` (as
  training does) or take the device out of GROUPED_DEVICES.
  Memory: x of every masked Linear is saved for backward (BitFit saves none; full FT and
  Super-Tuning do too): ~0.25 GB over BitFit for roberta-base at 8x128 tokens.
* `nn.Embedding.weight`: `_SparseEmbedding`'s backward expands each token into the selected
  entries of its row (CSR over vocab rows: ~k_i/V entries per token), gathers gout at those
  (token, column) pairs and index_adds them into the (k_i,) grad, so repeated ids accumulate
  and nothing of size (vocab, D), or even (tokens, D), is formed: O(tokens * k_i/V + k_i).
  The padding row gets zero grad, like native F.embedding.
* anything else (LayerNorm weight/bias, Linear biases, other modules' tensors): a forward
  pre-hook puts W_eff = W.index_put(idx, v) (plain autograd) in the module's `_parameters`
  for the duration of its call, and a post-hook (always_call) puts W back. These tensors are
  small, so their dense grad is cheap; any module type works, as long as it reads the tensor
  inside its own forward.

Limits (checked where cheap): tied (shared) parameters and Embeddings with max_norm (which
renorms W in place) are refused; a masked tensor read by code outside its owning module's
forward (e.g. nn.MultiheadAttention reading out_proj.weight) would get no gradient.
Patched forwards and hooks keep no tensor references (everything is looked up at call time
through `module._pafi`), so `.to(device)`, `.half()` and `copy.deepcopy` keep working.
`detach(model)` writes v into W and removes everything: a plain HF model again.
"""

from __future__ import annotations

import types
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peft_cli.core.errors import UserError

ATTR = "pafi_values"  # submodule name under the model
_STATE = "_pafi"  # per owning module: a plain _ModuleState (not a Module: no state_dict entry)
_GATHER_CHUNK = 1 << 22  # fallback SDDMM: max elements of one (chunk, N) gathered block
# Device types whose Linear weight grads are deferred and computed in groups (one SDDMM per group);
# elsewhere one SDDMM per tensor. On CUDA a step was bound by per-tensor launches; on CPU the two
# are within noise (roberta-base, 8 x 128, 2 threads, best rounds: 3.03 vs 3.26 s and 3.24 vs
# 3.29 s per step, grouped vs per tensor, in two runs; results/bench/pafi_step_cpu*).
GROUPED_DEVICES: set[str] = {"cpu", "cuda"}
# bytes of fp32 operands one grouped SDDMM may stage ((out + in) x N per tensor): bounds the
# memory that deferral adds; GPUs have room for more tensors per call (fewer launches)
GROUP_BYTES = {"cpu": 64 << 20, "cuda": 512 << 20}

# sampled_addmm needs a CSR tensor; we build a valid one each backward, and don't want the
# one-time "beta state" warning in every run's log.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


@dataclass
class _ModuleState:
    sv: "SparseValues"
    weight_slot: int | None = None  # slot of a Linear/Embedding weight served by a custom Function
    generic: dict[str, int] = field(default_factory=dict)  # attr name -> slot, swapped in by hooks
    hook_ids: list[int] = field(default_factory=list)  # (pre, post) ids in the module's hook dicts
    stash: dict[str, nn.Parameter] = field(default_factory=dict)  # originals while swapped out


def _key(name: str) -> str:
    return name.replace(".", "__")  # parameter names cannot contain '.'


# ----------------------------------------------------------------------------- SDDMM


_SDDMM_BROKEN: set[str] = set()  # device types whose sampled_addmm raised once: use the gather


def _fall_back(dev: str, e: Exception) -> None:
    """sampled_addmm failed on `dev`: use the gather from now on, and say why once. Out of memory is
    not a missing kernel: it is raised (the gather would need as much memory, and hiding it would
    hide the real fault)."""
    if isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower():
        raise e
    _SDDMM_BROKEN.add(dev)
    warnings.warn(
        f"peftx: PaFi's sampled_addmm failed on {dev} ({type(e).__name__}: {e}); "
        "using the slower gather path for the rest of this process",
        RuntimeWarning,
        stacklevel=3,
    )


def _selected_grad(g2: Tensor, x2: Tensor, crow: Tensor, col: Tensor) -> Tensor:
    """g2 (N, out), x2 (N, in) -> (k,) fp32: (g2^T @ x2)[row_e, col_e] for the CSR pattern (crow, col)."""
    n, out = g2.shape
    inn = x2.shape[1]
    k = col.numel()
    # one pass each: transpose + upcast (sampled_addmm has no bf16 kernel; fp32 accumulation anyway)
    gT = torch.empty(out, n, dtype=torch.float32, device=g2.device).copy_(g2.t())  # (out, N) row-major
    xT = torch.empty(inn, n, dtype=torch.float32, device=x2.device).copy_(x2.t())  # xT.t(): (N, in) col-major
    dev = g2.device.type
    if dev not in _SDDMM_BROKEN:
        try:
            pattern = torch.sparse_csr_tensor(
                crow, col, torch.zeros(k, dtype=torch.float32, device=g2.device), (out, inn), check_invariants=False
            )
            return torch.sparse.sampled_addmm(pattern, gT, xT.t(), beta=0.0).values()
        except (RuntimeError, NotImplementedError) as e:
            _fall_back(dev, e)
    rows = torch.repeat_interleave(torch.arange(out, device=g2.device), crow.diff())  # (k,)
    res = torch.empty(k, dtype=torch.float32, device=g2.device)
    step = max(1, _GATHER_CHUNK // max(n, 1))
    for s in range(0, k, step):  # (chunk, N) blocks of matching rows of gT and xT, dot per entry
        e = min(k, s + step)
        res[s:e] = (gT.index_select(0, rows[s:e]) * xT.index_select(0, col[s:e])).sum(1)
    return res


def _pattern(members: list[tuple[int, Tensor, Tensor]], sv: "SparseValues") -> tuple[Tensor, Tensor]:
    """The CSR pattern of a group: the members' patterns stacked block-diagonally, (sum out, sum in).
    Cached per member tuple (the same layers meet in the same groups at every step)."""
    key = tuple(slot for slot, _, _ in members)
    hit = sv._patterns.get(key)
    if hit is not None:
        return hit
    crows, cols, nnz, inn = [], [], 0, 0
    for slot, _, x2 in members:
        crow, col = sv.buf(slot, "crow"), sv.buf(slot, "col")
        crows.append(crow[:-1] + nnz)
        cols.append(col + inn)
        nnz += col.numel()
        inn += x2.shape[1]
    crows.append(torch.tensor([nnz], dtype=torch.int64, device=crows[0].device))
    sv._patterns[key] = (torch.cat(crows), torch.cat(cols))
    return sv._patterns[key]


def _grouped_grads(members: list[tuple[int, Tensor, Tensor]], sv: "SparseValues") -> list[Tensor]:
    """(k_i,) fp32 selected grads of several Linears that saw the same N tokens, in one SDDMM.

    members: (slot, g2 (N, out_i), x2 (N, in_i)). Stacking gout^T row-wise, (sum out, N), and x
    column-wise, (N, sum in), puts each member's g_i^T @ x_i on the diagonal block (i, i) of the
    product; the pattern samples only those blocks, so the off-diagonal ones are never computed.
    The entries are the same dot products as member by member (`_selected_grad`)."""
    n = members[0][1].shape[0]
    dev = members[0][1].device
    outs = [g.shape[1] for _, g, _ in members]
    ins = [x.shape[1] for _, _, x in members]
    gT = torch.empty(sum(outs), n, dtype=torch.float32, device=dev)  # row-major (sum out, N)
    xT = torch.empty(sum(ins), n, dtype=torch.float32, device=dev)  # xT.t(): column-major (N, sum in)
    o = i = 0
    for (_, g2, x2), out, inn in zip(members, outs, ins, strict=True):
        gT[o : o + out].copy_(g2.t())
        xT[i : i + inn].copy_(x2.t())
        o, i = o + out, i + inn
    crow, col = _pattern(members, sv)
    pattern = torch.sparse_csr_tensor(
        crow, col, torch.zeros(col.numel(), dtype=torch.float32, device=dev), (o, i), check_invariants=False
    )
    vals = torch.sparse.sampled_addmm(pattern, gT, xT.t(), beta=0.0).values()  # (sum k_i,)
    return list(vals.split([sv.buf(slot, "col").numel() for slot, _, _ in members]))


def _amp_dtype(x: Tensor) -> torch.dtype | None:
    """The autocast dtype F.linear would compute in for x, or None when autocast is off."""
    dev = x.device.type
    if not x.is_floating_point():
        return None
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    if dev == "cpu":  # older torch: per-device functions
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


class _SparseLinear(torch.autograd.Function):
    """y = x @ W^T + b, where W already holds the values at the masked positions.

    `values` is an input only so that autograd routes its gradient here; its data was copied into
    W just before. W is kept on ctx, not save_for_backward: its masked entries are rewritten in
    place at every forward (same data until the optimizer steps), and version checks would refuse
    grad accumulation over several forwards or checkpoint recomputation.
    """

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, weight: Tensor, bias: Tensor | None,
                crow: Tensor, col: Tensor, dtype: torch.dtype, sv: "SparseValues", slot: int) -> Tensor:  # fmt: skip
        wc = weight if weight.dtype == dtype else weight.to(dtype)  # autocast's cast, kept for grad_input like native
        ctx.weight, ctx.has_bias, ctx.sv, ctx.slot = wc, bias is not None, sv, slot
        ctx.save_for_backward(x, crow, col)
        return F.linear(x, wc, bias)

    @staticmethod
    def backward(ctx, gout: Tensor):
        x, crow, col = ctx.saved_tensors
        gx = gv = gb = None
        with torch.autocast(gout.device.type, enabled=False):
            g2 = gout.reshape(-1, gout.shape[-1])  # (N, out)
            if ctx.needs_input_grad[0]:
                gx = gout @ ctx.weight.to(gout.dtype)  # (..., in), dense like BitFit's
            if ctx.needs_input_grad[1]:
                x2 = x.reshape(-1, x.shape[-1])
                if g2.device.type in GROUPED_DEVICES and g2.device.type not in _SDDMM_BROKEN:
                    ctx.sv._defer(ctx.slot, g2, x2)  # v's grad is written when its group is computed
                else:
                    gv = _selected_grad(g2, x2, crow, col)  # (k,) fp32; autograd casts to v's dtype
            if ctx.has_bias and ctx.needs_input_grad[3]:
                gb = g2.sum(0)
        return gx, gv, None, gb, None, None, None, None, None


class _SparseEmbedding(torch.autograd.Function):
    """out = W[ids] (W holds the values); grad only for the selected entries of rows in the batch."""

    @staticmethod
    def forward(ctx, ids: Tensor, values: Tensor, weight: Tensor, crow: Tensor, col: Tensor,
                padding_idx: int | None) -> Tensor:  # fmt: skip
        ctx.padding_idx, ctx.vdtype = padding_idx, values.dtype
        ctx.save_for_backward(ids, crow, col)
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, gout: Tensor):
        ids, crow, col = ctx.saved_tensors
        gv = None
        if ctx.needs_input_grad[1]:
            ids = ids.reshape(-1)  # (N,)
            g2 = gout.reshape(ids.numel(), -1)  # (N, D)
            start = crow[ids]  # (N,) first selected entry of each token's row
            cnt = crow[ids + 1] - start  # (N,) selected entries in that row (~k_i/V, mostly 0..10)
            if ctx.padding_idx is not None:
                cnt = cnt.masked_fill(ids == ctx.padding_idx, 0)  # native: no grad for the padding row
            tok = torch.repeat_interleave(torch.arange(ids.numel(), device=ids.device), cnt)  # (M,) token per pair
            first = torch.cumsum(cnt, 0) - cnt  # (N,) offset of each token's run in the M pairs
            ent = (start - first).repeat_interleave(cnt) + torch.arange(tok.numel(), device=ids.device)  # (M,)
            # (token, entry) pairs: M ~ N * k_i / V; a repeated token id adds into the same entry
            gv = torch.zeros(col.numel(), dtype=torch.float32, device=gout.device)
            gv.index_add_(0, ent, g2[tok, col[ent]].float())
            gv = gv.to(ctx.vdtype)
        return None, gv, None, None, None, None


# ----------------------------------------------------------------------------- module patches


def _sync(sv: "SparseValues", slot: int, w: Tensor) -> Tensor:
    """Copy v into W's masked entries (O(k_i), masked positions only); return v."""
    v = sv.value(slot)
    with torch.no_grad():
        w.view(-1).index_copy_(0, sv.buf(slot, "idx"), v.detach())
    return v


def _linear_forward(self: nn.Linear, x: Tensor) -> Tensor:
    st: _ModuleState = self.__dict__[_STATE]
    sv, i = st.sv, st.weight_slot
    w = self.weight
    v = _sync(sv, i, w)
    if not (torch.is_grad_enabled() and v.requires_grad):
        return F.linear(x, w, self.bias)  # eval: the plain op (autocast applies as usual)
    amp = _amp_dtype(x)  # autocast is off inside the Function: cast like F.linear would
    dt = amp or w.dtype  # no autocast: a dtype mismatch fails in F.linear, as natively
    b = self.bias
    if amp is not None:
        x = x.to(dt)
        b = b.to(dt) if b is not None else None
    with torch.autocast(x.device.type, enabled=False):
        return _SparseLinear.apply(x, v, w, b, sv.buf(i, "crow"), sv.buf(i, "col"), dt, sv, i)


def _embedding_forward(self: nn.Embedding, ids: Tensor) -> Tensor:
    st: _ModuleState = self.__dict__[_STATE]
    sv, i = st.sv, st.weight_slot
    v = _sync(sv, i, self.weight)
    if not (torch.is_grad_enabled() and v.requires_grad):
        return F.embedding(ids, self.weight, self.padding_idx)
    return _SparseEmbedding.apply(ids, v, self.weight, sv.buf(i, "crow"), sv.buf(i, "col"), self.padding_idx)


def _swap_in(module: nn.Module, args: tuple) -> None:
    st: _ModuleState = module.__dict__[_STATE]
    for name, i in st.generic.items():
        w = module._parameters[name]
        v = _sync(st.sv, i, w)
        st.stash[name] = w
        # W_eff (shape of W): dense tensor, but small; autograd gives grad_v = grad_W_eff[idx]
        module._parameters[name] = w.detach().reshape(-1).index_put((st.sv.buf(i, "idx"),), v).view_as(w)


def _swap_out(module: nn.Module, args: tuple, out: object) -> None:
    st: _ModuleState = module.__dict__[_STATE]
    for name, w in st.stash.items():
        module._parameters[name] = w
    st.stash.clear()


# ----------------------------------------------------------------------------- public API


class SparseValues(nn.Module):
    """k trainable entries of frozen pre-trained tensors. One nn.Parameter of shape (k_i,) per masked tensor,
    holding the ACTUAL entry values θ[idx] (so AdamW decay acts like full FT restricted to the k entries).

    Built by `attach`, which registers it as `model.pafi_values`. Parameters are named after the
    masked tensor with '.' -> '__' (e.g. `pafi_values.bert__encoder__layer__0__output__dense__weight`),
    in mask order. Index buffers (int64, non-persistent) move with the model.
    """

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []  # masked parameter names, mask order
        self._requires_grad: dict[str, bool] = {}  # original flags, restored by detach
        # deferred Linear weight grads of the running backward: (N, device) -> [(slot, g2, x2)]
        self._pending: dict[tuple[int, str], list[tuple[int, Tensor, Tensor]]] = {}
        self._pending_bytes: dict[tuple[int, str], int] = {}
        self._task: int | None = None  # the backward (graph task id) whose end will flush the pending grads
        self._patterns: dict[tuple[int, ...], tuple[Tensor, Tensor]] = {}  # group -> stacked CSR (crow, col)

    # -- grouped weight grads (see _grouped_grads) --
    def _defer(self, slot: int, g2: Tensor, x2: Tensor) -> None:
        """Hold a Linear's (gout, x) until its group is full or the backward ends. Linears that saw
        the same N tokens group together, whatever their shapes."""
        task = torch._C._current_graph_task_id()
        if task != self._task:  # first deferral of this backward: flush when the engine finishes it
            self._pending.clear()  # left by a backward that raised: its grads were never wanted
            self._pending_bytes.clear()
            torch.autograd.Variable._execution_engine.queue_callback(self._flush_all)
            self._task = task
        key = (g2.shape[0], str(g2.device))
        self._pending.setdefault(key, []).append((slot, g2, x2))
        self._pending_bytes[key] = self._pending_bytes.get(key, 0) + 4 * g2.shape[0] * (g2.shape[1] + x2.shape[1])
        if self._pending_bytes[key] >= GROUP_BYTES.get(g2.device.type, GROUP_BYTES["cpu"]):
            self._flush(key)

    def _flush(self, key: tuple[int, str]) -> None:
        members = self._pending.pop(key, [])
        self._pending_bytes.pop(key, None)
        if not members:
            return
        dev, grads = members[0][1].device.type, None
        if dev not in _SDDMM_BROKEN:  # a group flushed after another failed in this backward: gather at once
            try:
                grads = _grouped_grads(members, self)
            except (RuntimeError, NotImplementedError) as e:  # out of memory: raised; no kernel: said once
                _fall_back(dev, e)
        if grads is None:  # member by member, through the gather
            grads = [_selected_grad(g2, x2, self.buf(s, "crow"), self.buf(s, "col")) for s, g2, x2 in members]
        with torch.no_grad():
            for (slot, _, _), g in zip(members, grads, strict=True):
                v = self.value(slot)
                g = g.to(v.dtype)
                if v.grad is None:
                    v.grad = g
                else:
                    v.grad += g  # several forwards before one backward, or accumulation steps

    def _flush_all(self) -> None:
        self._task = None
        for key in list(self._pending):
            self._flush(key)

    # -- per-slot access (used by the patched forwards) --
    def value(self, i: int) -> nn.Parameter:
        return self._parameters[_key(self.names[i])]

    def buf(self, i: int, kind: str) -> Tensor:
        return self._buffers[f"{_key(self.names[i])}__{kind}"]

    @property
    def k(self) -> int:
        return sum(p.numel() for p in self._parameters.values())

    def extra_repr(self) -> str:
        return f"k={self.k}, tensors={len(self.names)}"

    def flat(self) -> Tensor:
        """All values, concatenated in mask order: (k,), detached, on CPU."""
        vals = [p.detach().reshape(-1).cpu() for p in self._parameters.values()]
        return torch.cat(vals) if vals else torch.empty(0)

    def load_flat(self, values: Tensor) -> None:
        """Inverse of `flat`: copy (k,) values (any float dtype, any device) into the value params."""
        if not torch.is_tensor(values) or not values.is_floating_point():
            raise UserError(f"PaFi values must be a floating-point tensor, got {type(values).__name__}")
        if values.numel() != self.k:
            raise UserError(f"PaFi values have {values.numel()} entries but the mask selects k={self.k}: wrong mask?")
        values = values.reshape(-1)
        o = 0
        with torch.no_grad():
            for p in self._parameters.values():
                p.copy_(values[o : o + p.numel()])  # copy_ casts dtype (fp16/bf16 -> fp32) and device
                o += p.numel()

    def detach(self, model: nn.Module) -> nn.Module:
        """Write the values into the weights for good and remove every trace: a plain model again."""
        if getattr(model, ATTR, None) is not self:
            raise UserError("detach: this SparseValues is not attached to that model")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for i, name in enumerate(self.names):
                params[name].view(-1).index_copy_(0, self.buf(i, "idx"), self.value(i).detach())
        for m in model.modules():
            st = m.__dict__.pop(_STATE, None)
            if st is None:
                continue
            m.__dict__.pop("forward", None)  # back to the class's forward
            if st.hook_ids:
                m._forward_pre_hooks.pop(st.hook_ids[0], None)
                m._forward_hooks.pop(st.hook_ids[1], None)
                m._forward_hooks_always_called.pop(st.hook_ids[1], None)
        for name, flag in self._requires_grad.items():
            params[name].requires_grad_(flag)
        delattr(model, ATTR)
        return model


def lookup(model: nn.Module, indices: dict[str, Tensor]) -> dict[str, tuple[nn.Parameter, Tensor]]:
    """Validate names and indices; return {name: (param, idx int64 on param's device)} in mask order."""
    params = dict(model.named_parameters())
    unknown = [n for n in indices if n not in params]
    if unknown:
        raise UserError(
            f"mask names {unknown[:3]}{' ...' if len(unknown) > 3 else ''} are not parameters of the model "
            f"(e.g. {next(iter(params), '<none>')!r}): was the mask built for another model?"
        )
    out = {}
    for name, idx in indices.items():
        p = params[name]
        if not torch.is_tensor(idx) or idx.dim() != 1 or idx.is_floating_point() or idx.is_complex():
            raise UserError(f"mask entry {name!r} must be a 1-D integer tensor of flat indices")
        idx = idx.to(device=p.device, dtype=torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= p.numel()):
            raise UserError(
                f"mask entry {name!r} has indices in [{int(idx.min())}, {int(idx.max())}] but the tensor has "
                f"{p.numel()} entries {tuple(p.shape)}: was the mask built for another model?"
            )
        if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise UserError(f"mask entry {name!r}: indices must be sorted and unique")
        if not p.is_floating_point() or not p.is_contiguous():
            raise UserError(f"mask entry {name!r}: only contiguous floating-point tensors can be masked")
        out[name] = (p, idx)
    return out


def attach(model: nn.Module, indices: dict[str, Tensor]) -> SparseValues:
    """Make the k masked entries trainable (see module docstring); returns `model.pafi_values`."""
    if hasattr(model, ATTR) or any(_STATE in m.__dict__ for m in model.modules()):
        raise UserError("PaFi values are already attached to this model: detach() first")
    found = lookup(model, indices)

    owners: dict[int, list[tuple[nn.Module, str]]] = {}  # id(param) -> every (module, attr) holding it
    for m in model.modules():
        for a, p in m._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((m, a))

    sv = SparseValues()
    states: dict[int, _ModuleState] = {}  # id(module) -> state
    for name, (p, idx) in found.items():
        if idx.numel() == 0:
            continue  # nothing trainable in this tensor
        own = owners[id(p)]
        if len(own) > 1:
            raise UserError(f"mask entry {name!r} is a tied parameter (shared by {len(own)} modules): not supported")
        m, a = own[0]
        i, key = len(sv.names), _key(name)
        sv.names.append(name)
        sv._requires_grad[name] = p.requires_grad
        sv.register_parameter(key, nn.Parameter(p.detach().reshape(-1)[idx].clone()))  # (k_i,) = θ[idx]
        sv.register_buffer(f"{key}__idx", idx, persistent=False)
        st = states.setdefault(id(m), _ModuleState(sv))
        if type(m) is nn.Embedding and a == "weight":
            if m.max_norm is not None or m.sparse or m.scale_grad_by_freq:
                raise UserError(
                    f"mask entry {name!r}: Embedding with max_norm/sparse/scale_grad_by_freq is not supported"
                )
            st.weight_slot = i
        elif type(m) is nn.Linear and a == "weight":
            st.weight_slot = i
        if st.weight_slot == i:  # CSR pattern of the selected entries: row pointers + column of each entry
            rows, cols = p.shape
            crow = torch.zeros(rows + 1, dtype=torch.int64, device=p.device)
            crow[1:] = torch.bincount(idx // cols, minlength=rows).cumsum(0)
            sv.register_buffer(f"{key}__crow", crow, persistent=False)
            sv.register_buffer(f"{key}__col", idx % cols, persistent=False)
        else:
            st.generic[a] = i
        p.requires_grad_(False)

    for m in model.modules():
        st = states.get(id(m))
        if st is None:
            continue
        m.__dict__[_STATE] = st
        if st.weight_slot is not None:
            fwd = _linear_forward if type(m) is nn.Linear else _embedding_forward
            m.forward = types.MethodType(fwd, m)  # instance attribute shadows the class's forward
        if st.generic:
            pre = m.register_forward_pre_hook(_swap_in)
            post = m.register_forward_hook(_swap_out, always_call=True)
            st.hook_ids = [pre.id, post.id]
    model.add_module(ATTR, sv)
    return sv


def apply_values(model: nn.Module, indices: dict[str, Tensor], values: Tensor) -> None:
    """Write flat values (mask order, as from `SparseValues.flat`) into a plain model's weights, in place."""
    if hasattr(model, ATTR):
        raise UserError("apply_values: the model has PaFi values attached; use model.pafi_values.load_flat")
    found = lookup(model, indices)
    if not torch.is_tensor(values) or not values.is_floating_point():
        raise UserError("PaFi values must be a floating-point tensor")
    k = sum(idx.numel() for _, idx in found.values())
    if values.numel() != k:
        raise UserError(f"PaFi values have {values.numel()} entries but the mask selects k={k}: wrong mask?")
    values = values.reshape(-1)
    o = 0
    with torch.no_grad():
        for p, idx in found.values():
            n = idx.numel()
            p.view(-1).index_copy_(0, idx, values[o : o + n].to(device=p.device, dtype=p.dtype))
            o += n
