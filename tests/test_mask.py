"""peft_cli.mask: exact k, the right entries (vs a brute-force sort), ties, files, fingerprints.

Every selection test (`code_path` fixture) runs the three code paths: one chunk per tensor with the bucket resolved
in memory (default), tiny chunks (entries of one tensor split over chunks), and the 3-pass
fallback (`_CAND_CAP = 0`, used when the threshold bucket is huge, e.g. many equal values).
"""

import json

import pytest
import torch

from peft_cli.core.errors import UserError
from peft_cli.methods.pafi import select as M
from peft_cli.methods.pafi.select import MaskSpec


@pytest.fixture(params=["default", "small_chunks", "three_pass"])
def code_path(request, monkeypatch):
    if request.param == "small_chunks":
        monkeypatch.setattr(M, "_CHUNK", 7)
    if request.param == "three_pass":
        monkeypatch.setattr(M, "_CAND_CAP", 0)
    return request.param


def _named(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (6, 5), "a.bias": (6,), "b.weight": (4, 3, 2), "c.weight": (11,)}
    return {n: torch.randn(s, generator=g) for n, s in shapes.items()}


def _offsets(named):
    out, o = {}, 0
    for n, t in named.items():
        out[n] = o
        o += t.numel()
    return out


def _brute(named, score, k, descending):
    """Reference: full stable sort over the concatenation (ties -> lower tensor, lower index)."""
    allv = torch.cat([score[n].reshape(-1).double() for n in named])
    order = torch.sort(-allv if descending else allv, stable=True).indices[:k]
    off = _offsets(named)
    return {n: sorted(i - off[n] for i in order.tolist() if off[n] <= i < off[n] + named[n].numel()) for n in named}


def _as_lists(idx, named):
    return {n: idx[n].tolist() if n in idx else [] for n in named}


@pytest.mark.usefixtures("code_path")
@pytest.mark.parametrize("density", [0.01, 0.1, 0.37, 0.5, 1.0])
@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_exact_k_int32_sorted(density, scope):
    named = _named()
    idx = M.select(named, MaskSpec("smallest", density, scope=scope))
    if scope == "global":
        assert sum(v.numel() for v in idx.values()) == round(density * sum(t.numel() for t in named.values()))
    else:
        for n, t in named.items():
            assert (idx[n].numel() if n in idx else 0) == round(density * t.numel())
    assert list(idx) == [n for n in named if n in idx]  # input order
    for v in idx.values():
        assert v.dtype == torch.int32 and v.dim() == 1 and v.numel() > 0
        assert bool((v[1:] > v[:-1]).all())


@pytest.mark.usefixtures("code_path")
@pytest.mark.parametrize("strategy", ["smallest", "largest", "fisher"])
@pytest.mark.parametrize("density", [0.05, 0.3])
def test_matches_bruteforce(strategy, density):
    named = _named(1)
    before = {n: t.clone() for n, t in named.items()}
    scores = {n: torch.randn_like(t) for n, t in named.items()} if strategy == "fisher" else None
    score = scores if strategy == "fisher" else {n: t.abs() for n, t in named.items()}
    desc = strategy != "smallest"
    k = round(density * sum(t.numel() for t in named.values()))
    got = M.select(named, MaskSpec(strategy, density), scores=scores)
    assert _as_lists(got, named) == _brute(named, score, k, desc)
    # per_tensor: the same, tensor by tensor
    got = M.select(named, MaskSpec(strategy, density, scope="per_tensor"), scores=scores)
    for n, t in named.items():
        want = _brute({n: t}, {n: score[n]}, round(density * t.numel()), desc)[n]
        assert (got[n].tolist() if n in got else []) == want
    assert all(torch.equal(named[n], before[n]) for n in named)  # inputs untouched


@pytest.mark.usefixtures("code_path")
def test_negative_and_signed_zero_fisher_scores():
    named = {"w": torch.zeros(6)}
    scores = {"w": torch.tensor([-1.0, -0.0, 0.0, 2.0, -3.0, float("inf")])}
    got = M.select(named, MaskSpec("fisher", 4 / 6), scores=scores)["w"].tolist()
    assert got == [1, 2, 3, 5]  # inf, 2, then the two zeros (-0 == +0); -1, -3 lose


@pytest.mark.usefixtures("code_path")
def test_random_is_seeded_and_chunk_independent(monkeypatch):
    named = _named()
    a = M.select(named, MaskSpec("random", 0.3, seed=1))
    b = M.select(named, MaskSpec("random", 0.3, seed=1))
    c = M.select(named, MaskSpec("random", 0.3, seed=2))
    assert _as_lists(a, named) == _as_lists(b, named) != _as_lists(c, named)
    assert sum(v.numel() for v in a.values()) == round(0.3 * 71)
    # blocks of 4 entries straddle chunks of 3: the stream (and mask) must not depend on chunking
    monkeypatch.setattr(M, "_RAND_BLOCK", 4)
    monkeypatch.setattr(M, "_CHUNK", 1 << 22)
    ref = _as_lists(M.select(named, MaskSpec("random", 0.3, seed=1)), named)
    monkeypatch.setattr(M, "_CHUNK", 3)
    assert _as_lists(M.select(named, MaskSpec("random", 0.3, seed=1)), named) == ref


@pytest.mark.usefixtures("code_path")
@pytest.mark.parametrize("strategy", ["smallest", "largest", "random"])
def test_all_equal_ties_take_lowest_indices_in_tensor_order(strategy, monkeypatch):
    if strategy == "random":  # constant random keys: only the tie rule decides
        monkeypatch.setattr(M._Keys, "_random", lambda self, n, off, c, numel: torch.full((c,), 5, dtype=torch.int32))
    named = {"x": torch.full((3, 4), 0.5), "y": torch.full((5,), -0.5), "z": torch.full((2, 2), 0.5)}
    got = M.select(named, MaskSpec(strategy, 15 / 21))
    assert _as_lists(got, named) == {"x": list(range(12)), "y": [0, 1, 2], "z": []}
    got = M.select(named, MaskSpec(strategy, 0.5, scope="per_tensor"))
    assert _as_lists(got, named) == {"x": list(range(6)), "y": [0, 1], "z": [0, 1]}  # round(2.5) == 2


@pytest.mark.usefixtures("code_path")
def test_mixed_ties_at_threshold():
    # |θ|: 0.1 x2 are in for sure; 0.2 occurs 5 times over two tensors, 3 more are needed
    named = {"p": torch.tensor([0.3, 0.2, -0.1, 0.2, 0.9]), "q": torch.tensor([0.2, 0.1, -0.2, 0.2, 0.5])}
    got = M.select(named, MaskSpec("smallest", 0.5))
    assert _as_lists(got, named) == {"p": [1, 2, 3], "q": [0, 1]}


def test_nan_fails_early():
    with pytest.raises(UserError, match="'b' contain NaN"):
        M.select({"a": torch.ones(3), "b": torch.tensor([1.0, float("nan")])}, MaskSpec("smallest", 0.5))


def test_spec_validation():
    with pytest.raises(UserError, match="mask.density"):
        MaskSpec("smallest", 0.0)
    with pytest.raises(UserError, match="mask.strategy"):
        MaskSpec("tiny", 0.1)
    with pytest.raises(UserError, match="mask.scope"):
        MaskSpec("smallest", 0.1, scope="layer")


def test_include_exclude():
    named = _named()
    assert M.candidates(named, (r"\.weight$",), (r"^b\.",)) == ["a.weight", "c.weight"]
    idx = M.select(named, MaskSpec("smallest", 1.0, include=(r"\.weight$",), exclude=(r"^b\.",)))
    assert list(idx) == ["a.weight", "c.weight"] and idx["c.weight"].numel() == 11
    with pytest.raises(UserError, match=r"nomatch"):
        M.candidates(named, ("nomatch",), ())
    with pytest.raises(UserError, match=r"mask.exclude pattern '\('"):
        M.candidates(named, (".*",), ("(",))


def test_breakdown_bert_names():
    names = {
        "embeddings.word_embeddings.weight": 5,
        "embeddings.LayerNorm.weight": 1,
        "embeddings.LayerNorm.bias": 1,
        "encoder.layer.0.attention.self.query.weight": 4,
        "encoder.layer.0.attention.self.query.bias": 2,
        "encoder.layer.0.attention.output.dense.weight": 3,
        "encoder.layer.0.attention.output.LayerNorm.weight": 1,
        "encoder.layer.0.intermediate.dense.weight": 7,
        "encoder.layer.0.output.dense.weight": 6,
        "encoder.layer.0.output.dense.bias": 1,
        "pooler.dense.weight": 2,
    }
    got = M.breakdown({n: torch.arange(c, dtype=torch.int32) for n, c in names.items()})
    assert got == {"embeddings": 5, "attention": 7, "ffn": 13, "layernorm": 2, "bias": 4, "other": 2}


def test_mask_filename():
    assert M.mask_filename(MaskSpec("smallest", 0.005)) == "smallest-d0.005.safetensors"
    assert M.mask_filename(MaskSpec("random", 0.1 + 0.2, seed=3)) == "random-d0.3-s3.safetensors"
    assert M.mask_filename(MaskSpec("largest", 1.0)) == "largest-d1.safetensors"
    assert M.mask_filename(MaskSpec("fisher", 1e-5)) == "fisher-d0.00001.safetensors"


def test_save_load_roundtrip_and_verify(tmp_path):
    named = _named()
    spec = MaskSpec("smallest", 0.2)
    idx = M.select(named, spec)
    meta = M.build_meta(named, spec, idx, "fp-1")
    path = tmp_path / "m" / M.mask_filename(spec)
    M.save_mask(path, idx, meta)
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, path.with_suffix(".json").name]
    )  # no tmp left
    got, gmeta = M.load_mask(path)
    assert _as_lists(got, named) == _as_lists(idx, named)
    assert gmeta == json.loads(json.dumps(meta))
    keys = {
        "model_fingerprint",
        "strategy",
        "scope",
        "density",
        "k",
        "candidates",
        "include",
        "exclude",
        "breakdown",
        "seed",
        "shapes",
        "created",
        "format_version",
    }
    assert keys <= set(gmeta)
    assert gmeta["k"] == 14 and gmeta["candidates"] == 71 and gmeta["shapes"]["b.weight"] == [4, 3, 2]
    M.verify(gmeta, "fp-1", path)
    with pytest.raises(UserError, match="built for another model.*mask.path"):
        M.verify(gmeta, "fp-2", path)


def test_load_errors(tmp_path):
    named = _named()
    spec = MaskSpec("smallest", 0.2)
    idx = M.select(named, spec)
    path = tmp_path / "x.safetensors"
    with pytest.raises(UserError, match="not found"):
        M.load_mask(path)
    M.save_mask(path, idx, M.build_meta(named, spec, idx, "fp"))
    jpath = path.with_suffix(".json")
    good = jpath.read_text()
    jpath.unlink()
    with pytest.raises(UserError, match=r"x\.safetensors is incomplete"):
        M.load_mask(path)
    jpath.write_text(good.replace('"k": 14', '"k": 15'))
    with pytest.raises(UserError, match="k=15"):
        M.load_mask(path)
    path.write_bytes(b"garbage")
    jpath.write_text(good)
    with pytest.raises(UserError, match="corrupt"):
        M.load_mask(path)
