"""peft_cli.sparse: PaFi's k trainable entries.

Gradients equal dense autograd gathered at idx (every path: Linear SDDMM and its gather fallback, Embedding with
repeated/padding ids, generic LayerNorm/bias); frozen entries bit-identical under AdamW decay; optimizer state 2k;
the copy_ invariant; detach/apply_values round trips; bf16 autocast; no dense weight grad. Tiny models only.
"""

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

from peft_cli.core.errors import UserError
from peft_cli.methods.pafi import sparse as S
from peft_cli.methods.pafi.sparse import apply_values, attach

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=200,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support")
ARCH = {
    "bert": (BertConfig, BertForSequenceClassification),
    "roberta": (RobertaConfig, RobertaForSequenceClassification),
}


def _model(arch: str = "bert", seed: int = 0):
    cfg_cls, model_cls = ARCH[arch]
    torch.manual_seed(seed)
    m = model_cls(cfg_cls(**TINY, num_labels=2))
    with torch.no_grad():  # random biases/LayerNorm so that nothing is a trivial 0/1
        for n, p in m.named_parameters():
            if p.dim() == 1:
                p.normal_(0, 0.1).add_(1.0 if "LayerNorm.weight" in n else 0.0)
    return m


def _mask(model, density: float = 0.1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random sorted int32 indices for every backbone tensor (head excluded), incl. padding-row entries."""
    g = torch.Generator().manual_seed(seed)
    pad = model.config.pad_token_id
    out = {}
    for n, p in model.named_parameters():
        if n.startswith("classifier"):
            continue
        k = max(1, int(p.numel() * density))
        idx = torch.randperm(p.numel(), generator=g)[:k]
        if "word_embeddings" in n:  # two entries of the padding row: their grad must be 0
            idx = torch.cat([idx, torch.tensor([pad * p.shape[1], pad * p.shape[1] + 3])])
        out[n] = idx.unique().sort().values.to(torch.int32)
    return out


def _batch(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 20, (3, 10), generator=g)  # small id range: ids repeat within and across rows
    pad = model.config.pad_token_id
    ids[0, 7:] = pad
    att = (ids != pad).long()
    return dict(input_ids=ids, attention_mask=att, labels=torch.tensor([0, 1, 1]))


def _freeze_backbone(model):
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("classifier"))


def _setup(arch="bert", density=0.1):
    model = _model(arch)
    ref = copy.deepcopy(model)
    idx = _mask(model, density)
    _freeze_backbone(model)
    sv = attach(model, idx)
    return model, ref, idx, sv


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("sddmm", [True, False])
def test_grads_equal_dense_gathered(arch, sddmm, monkeypatch):
    if not sddmm:
        monkeypatch.setattr(S, "_SDDMM_BROKEN", {"cpu"})
        monkeypatch.setattr(S, "_GATHER_CHUNK", 50)  # several chunks
    model, ref, idx, sv = _setup(arch)
    b1, b2 = _batch(model, 0), _batch(model, 1)
    # two forwards before one backward: grad accumulation must work despite the in-place sync
    (model(**b1).loss + model(**b2).loss).backward()
    (ref(**b1).loss + ref(**b2).loss).backward()
    refp = dict(ref.named_parameters())
    kinds = set()
    for i, name in enumerate(sv.names):
        want = refp[name].grad.reshape(-1)[idx[name].long()]
        torch.testing.assert_close(sv.value(i).grad, want, rtol=1e-5, atol=1e-6, msg=name)
        kinds.add("emb" if "embeddings." in name and "LayerNorm" not in name else name.rsplit(".", 1)[-1])
    assert kinds == {"emb", "weight", "bias"}  # Embedding, Linear+LayerNorm weights, biases all covered
    w = dict(model.named_parameters())
    pad = model.config.pad_token_id
    word = next(n for n in sv.names if "word_embeddings" in n)
    j = sv.names.index(word)
    at_pad = idx[word].long() // w[word].shape[1] == pad
    assert at_pad.any() and (sv.value(j).grad[at_pad] == 0).all()
    assert refp[word].grad[pad].abs().sum() == 0  # same convention as native
    assert ("cpu" in S._SDDMM_BROKEN) == (not sddmm)  # the path under test really ran
    head = dict(model.named_parameters())
    for n, p in refp.items():
        if n.startswith("classifier"):
            torch.testing.assert_close(head[n].grad, p.grad, rtol=1e-5, atol=1e-6)


def test_frozen_bit_identical_and_optimizer_state_2k():
    model, ref, idx, sv = _setup("roberta")
    assert sv.k == sum(v.numel() for v in idx.values())
    opt = torch.optim.AdamW(sv.parameters(), lr=1e-2, weight_decay=0.01)
    before = sv.flat().clone()
    for s in range(5):
        model(**_batch(model, s)).loss.backward()
        opt.step()
        opt.zero_grad()
    state = [t for st in opt.state.values() for key, t in st.items() if key != "step"]
    assert sum(t.numel() for t in state) == 2 * sv.k
    assert (sv.flat() != before).float().mean() > 0.9  # masked entries moved
    with torch.no_grad():
        model(**_batch(model))  # sync the cache of the last step's values into the weights
    refp, cur = dict(ref.named_parameters()), dict(model.named_parameters())
    flat = sv.flat()
    o = 0
    for n, p0 in refp.items():
        keep = torch.ones(p0.numel(), dtype=torch.bool)
        if n in idx:
            keep[idx[n].long()] = False
            k_i = idx[n].numel()
            assert torch.equal(cur[n].detach().reshape(-1)[idx[n].long()], flat[o : o + k_i])
            o += k_i
        assert torch.equal(cur[n].detach().reshape(-1)[keep], p0.detach().reshape(-1)[keep]), n
        assert n.startswith("classifier") or not cur[n].requires_grad


def test_no_dense_weight_grad_custom_functions_used():
    model, _, idx, sv = _setup("bert")
    loss = model(**_batch(model)).loss
    names, seen, todo = [], set(), [loss.grad_fn]
    while todo:  # walk the autograd graph
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.append(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    n_lin = sum(1 for n in idx if n.endswith(".weight") and isinstance(model.get_submodule(n[:-7]), torch.nn.Linear)
                and not n.startswith("classifier"))  # fmt: skip
    assert names.count("_SparseLinearBackward") == n_lin == 13  # 2 layers x 6 + pooler
    assert names.count("_SparseEmbeddingBackward") == 3
    loss.backward()
    for n, p in model.named_parameters():
        if n in idx:
            assert p.grad is None and not p.requires_grad


def test_parameters_and_names():
    model, _, idx, sv = _setup("bert")
    ids = {id(p) for p in model.parameters()}
    assert all(id(p) in ids for p in sv.parameters())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert f"{S.ATTR}.bert__encoder__layer__0__attention__self__query__weight" in trainable
    assert len([n for n in trainable if n.startswith(S.ATTR)]) == len(idx)


def test_copy_invariant_restores_logits():
    model, _, _, sv = _setup("roberta")
    opt = torch.optim.AdamW(sv.parameters(), lr=1e-2, weight_decay=0.01)
    x = _batch(model)

    def step():
        model(**x).loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    saved = [p.detach().clone() for p in sv.parameters()]
    with torch.no_grad():
        logits = model(**x).logits
    step(), step()
    with torch.no_grad():
        assert not torch.equal(model(**x).logits, logits)
    for p, s in zip(sv.parameters(), saved, strict=True):
        p.data.copy_(s)  # what best-epoch restore does; no other call
    with torch.no_grad():
        assert torch.equal(model(**x).logits, logits)
    sv.load_flat(torch.cat(saved).bfloat16())  # accepted, cast up
    assert sv.flat().dtype == torch.float32


def test_detach_plain_model_and_apply_values():
    model, ref, idx, sv = _setup("bert")
    opt = torch.optim.AdamW(sv.parameters(), lr=1e-2, weight_decay=0.01)
    x = _batch(model)
    for _ in range(2):
        model(**x).loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        want = model(**x).logits
    flat = sv.flat()
    fresh = copy.deepcopy(ref)
    plain = sv.detach(model)
    assert list(plain.state_dict()) == list(ref.state_dict())
    assert [type(m) for m in plain.modules()] == [type(m) for m in ref.modules()]
    assert all(m.__dict__.get("forward") is None and not m._forward_hooks and not m._forward_pre_hooks
               for m in plain.modules())  # fmt: skip
    assert all(p.requires_grad == n.startswith("classifier") for n, p in plain.named_parameters())  # flags back
    with torch.no_grad():
        torch.testing.assert_close(plain(**x).logits, want, rtol=0, atol=1e-6)
        apply_values(fresh, idx, flat)
        fresh.classifier.load_state_dict(plain.classifier.state_dict())
        torch.testing.assert_close(fresh(**x).logits, want, rtol=0, atol=1e-6)


def test_deepcopy_and_eval_modes():
    model, _, _, sv = _setup("bert")
    x = _batch(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        sv.load_flat(sv.flat() + 0.05)
        a = model(**x).logits
        b = twin(**x).logits  # the copy keeps its own (unchanged) values
    assert not torch.equal(a, b)
    with torch.inference_mode():
        assert torch.equal(model(**x).logits, a)
    twin.pafi_values.load_flat(sv.flat())
    with torch.no_grad():
        assert torch.equal(twin(**x).logits, a)


def test_bf16_autocast_close_to_fp32():
    model, _, _, sv = _setup("roberta")
    x = _batch(model)
    model(**x).loss.backward()
    g32 = [p.grad.clone() for p in sv.parameters()]
    sv.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**x).loss
    loss.backward()
    for p, g in zip(sv.parameters(), g32, strict=True):
        assert p.grad.dtype == torch.float32
        assert (p.grad - g).norm() <= 0.05 * g.norm() + 1e-4


def test_user_errors():
    model = _model("bert")
    good = _mask(model)
    with pytest.raises(UserError, match="not parameters"):
        attach(model, {"bert.nope.weight": torch.tensor([0], dtype=torch.int32)})
    with pytest.raises(UserError, match="entries"):
        attach(model, {"bert.pooler.dense.bias": torch.tensor([32], dtype=torch.int32)})
    with pytest.raises(UserError, match="sorted"):
        attach(model, {"bert.pooler.dense.bias": torch.tensor([3, 1], dtype=torch.int32)})
    sv = attach(model, good)
    with pytest.raises(UserError, match="already attached"):
        attach(model, good)
    with pytest.raises(UserError, match="k="):
        sv.load_flat(torch.zeros(sv.k + 1))
    with pytest.raises(UserError, match="attached"):
        apply_values(model, good, sv.flat())
    with pytest.raises(UserError, match="k="):
        apply_values(_model("bert"), good, torch.zeros(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", [False, True])
def test_cuda_grads_and_frozen(amp):
    model, ref, idx, sv = _setup("roberta")
    model.cuda(), ref.cuda()
    x = {k: v.cuda() for k, v in _batch(model).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        loss, ref_loss = model(**x).loss, ref(**x).loss
    loss.backward(), ref_loss.backward()
    assert "cuda" not in S._SDDMM_BROKEN
    refp = dict(ref.named_parameters())
    for i, name in enumerate(sv.names):
        want = refp[name].grad.reshape(-1)[idx[name].long().cuda()]
        got = sv.value(i).grad
        assert got.dtype == torch.float32
        if amp:  # native bf16 grads are themselves rounded: compare in norm
            assert (got - want).norm() <= 0.05 * want.norm() + 1e-4, name
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)
    opt = torch.optim.AdamW(sv.parameters(), lr=1e-2, weight_decay=0.01)
    for s in range(5):
        opt.step()
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = model(**{k: v.cuda() for k, v in _batch(model, s).items()}).loss
        loss.backward()
    cur = dict(model.named_parameters())
    for n, p0 in refp.items():
        keep = torch.ones(p0.numel(), dtype=torch.bool, device="cuda")
        if n in idx:
            keep[idx[n].long().cuda()] = False
        assert torch.equal(cur[n].detach().reshape(-1)[keep], p0.detach().reshape(-1)[keep]), n


def _fail_sddmm(monkeypatch, error: Exception) -> None:
    def broken(*a, **k):
        raise error

    monkeypatch.setattr(S, "_SDDMM_BROKEN", set())
    monkeypatch.setattr(torch.sparse, "sampled_addmm", broken)


def test_out_of_memory_in_the_sparse_kernel_is_raised_not_swallowed(monkeypatch):
    model, _, _, _ = _setup()
    _fail_sddmm(monkeypatch, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(torch.OutOfMemoryError):
        model(**_batch(model, 0)).loss.backward()
    assert S._SDDMM_BROKEN == set()  # not mistaken for a missing kernel


def test_a_missing_kernel_falls_back_with_one_warning_and_the_same_gradients(monkeypatch):
    model, ref, idx, sv = _setup()
    _fail_sddmm(monkeypatch, NotImplementedError("sampled_addmm: no kernel for this backend"))
    with pytest.warns(RuntimeWarning, match="no kernel for this backend") as caught:
        model(**_batch(model, 0)).loss.backward()
        model(**_batch(model, 1)).loss.backward()
    assert len([w for w in caught if "sampled_addmm failed" in str(w.message)]) == 1  # once, with the reason
    ref(**_batch(ref, 0)).loss.backward()
    ref(**_batch(ref, 1)).loss.backward()
    refp = dict(ref.named_parameters())
    for i, name in enumerate(sv.names):
        want = refp[name].grad.reshape(-1)[idx[name].long()]
        torch.testing.assert_close(sv.value(i).grad, want, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("budget", [1 << 30, 1])  # all Linears in one SDDMM; a flush after every deferral
def test_grouped_weight_grads_equal_per_tensor_and_launch_less(budget, monkeypatch):
    calls = [0]
    real = torch.sparse.sampled_addmm

    def counting(*a, **k):
        calls[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(torch.sparse, "sampled_addmm", counting)
    monkeypatch.setitem(S.GROUP_BYTES, "cpu", budget)
    grads = {}
    for grouped in (False, True):
        monkeypatch.setattr(S, "GROUPED_DEVICES", {"cpu"} if grouped else set())
        model, ref, idx, sv = _setup("bert")
        calls[0] = 0
        for s in range(2):  # two backwards into the same .grad: accumulation across steps
            model(**_batch(model, s)).loss.backward()
        grads[grouped] = ([p.grad.clone() for p in sv.parameters()], calls[0])
    (per_tensor, n_per), (grouped, n_grouped) = grads[False], grads[True]
    for a, b in zip(per_tensor, grouped, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    assert n_per == 2 * 13  # 13 masked Linears (2 layers x 6 + pooler), per backward
    # one call per token count (encoder: N = B x L; pooler: N = B), or one per Linear with no budget
    assert n_grouped == (2 * 2 if budget > 1 else n_per)
