"""HierarchicalSelfAttention: shapes, agreement with hsa on projections, torch.compile."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hsa_fast import HierarchicalSelfAttention, hsa
from hsa_ref import Hierarchy

H = Hierarchy.from_segments([[3, 2, 4, 3], [2, 2]])  # 12 tokens


def _manual(layer: HierarchicalSelfAttention, x: torch.Tensor, h: Hierarchy) -> torch.Tensor:
    b, n, e = x.shape
    split = lambda t: t.view(b, n, layer.num_heads, -1).transpose(1, 2)  # noqa: E731
    y = hsa(split(layer.q_proj(x)), split(layer.k_proj(x)), split(layer.v_proj(x)), h)
    return layer.out_proj(y.transpose(1, 2).reshape(b, n, e))


def test_batch_first_and_sequence_first_agree():
    torch.manual_seed(0)
    layer = HierarchicalSelfAttention(16, 4, batch_first=True)
    x = torch.randn(3, 12, 16)
    out, weights = layer(x, hierarchy=H)
    assert weights is None
    assert out.shape == (3, 12, 16)
    torch.testing.assert_close(out, _manual(layer, x, H))
    seq_first = HierarchicalSelfAttention(16, 4)
    seq_first.load_state_dict(layer.state_dict())
    out_t, _ = seq_first(x.transpose(0, 1), hierarchy=H)
    torch.testing.assert_close(out_t.transpose(0, 1), out)
    single, _ = layer(x[0], hierarchy=H)  # unbatched (L, E)
    torch.testing.assert_close(single, out[0])


def _twins(seed: int = 1):
    """``nn.MultiheadAttention`` and a HierarchicalSelfAttention with the same weights."""
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(8, 2, batch_first=True, dtype=torch.float64)
    layer = HierarchicalSelfAttention(8, 2, batch_first=True, dtype=torch.float64)
    w = mha.in_proj_weight.detach().chunk(3)
    bias = mha.in_proj_bias.detach().chunk(3)
    with torch.no_grad():
        for proj, wi, bi in zip((layer.q_proj, layer.k_proj, layer.v_proj), w, bias, strict=True):
            proj.weight.copy_(wi)
            proj.bias.copy_(bi)
        layer.out_proj.load_state_dict(mha.out_proj.state_dict())
    return mha, layer


def test_one_family_matches_multihead_attention():
    mha, layer = _twins()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    flat = Hierarchy.one_family(7)
    expected, _ = mha(x, x, x, need_weights=False)
    torch.testing.assert_close(layer(x, hierarchy=flat)[0], expected)


def test_gradients_reach_every_parameter():
    layer = HierarchicalSelfAttention(8, 2, batch_first=True, energy="distance")
    layer(torch.randn(2, 12, 8), hierarchy=H)[0].square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


@pytest.mark.parametrize("average", [True, False])
def test_need_weights_match_multihead_attention_on_one_family(average):
    mha, layer = _twins(3)
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    flat = Hierarchy.one_family(7)
    expected = mha(x, x, x, need_weights=True, average_attn_weights=average)[1]
    _, weights = layer(x, hierarchy=flat, need_weights=True, average_attn_weights=average)
    assert weights.shape == expected.shape
    torch.testing.assert_close(weights, expected)
    single = layer(x[0], hierarchy=flat, need_weights=True, average_attn_weights=average)[1]
    torch.testing.assert_close(single, weights[0])


def test_need_weights_are_hsa_attention():
    torch.manual_seed(4)
    layer = HierarchicalSelfAttention(8, 2, batch_first=True)
    x = torch.randn(3, 12, 8)
    out, weights = layer(x, hierarchy=H, need_weights=True)
    assert weights.shape == (3, 12, 12)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 12))
    # out = out_proj(theta_h v_h), head by head
    v = layer.v_proj(x).view(3, 12, 2, 4).transpose(1, 2)
    theta = layer(x, hierarchy=H, need_weights=True, average_attn_weights=False)[1]
    y = (theta @ v).transpose(1, 2).reshape(3, 12, 8)
    torch.testing.assert_close(layer.out_proj(y), out, rtol=1e-5, atol=1e-6)
    assert layer(x, hierarchy=H)[1] is None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"embed_dim": 10, "num_heads": 3}, ValueError, "divisible"),
        ({"embed_dim": 8, "num_heads": 2, "energy": "x"}, ValueError, "energy"),
        ({"embed_dim": 16.0, "num_heads": 2}, TypeError, "embed_dim must be a positive int"),
        ({"embed_dim": 16, "num_heads": True}, TypeError, "num_heads must be a positive int"),
        ({"embed_dim": 0, "num_heads": 1}, ValueError, "embed_dim must be positive"),
        ({"embed_dim": 8, "num_heads": -2}, ValueError, "num_heads must be positive"),
        ({"embed_dim": 8, "num_heads": 2, "kdim": 0}, ValueError, "kdim must be positive"),
        ({"embed_dim": 8, "num_heads": 2, "vdim": 2.5}, TypeError, "vdim must be a positive"),
    ],
)
def test_bad_configuration(kwargs, error, match):
    with pytest.raises(error, match=match):
        HierarchicalSelfAttention(**kwargs)


def test_kdim_and_vdim():
    layer = HierarchicalSelfAttention(8, 2, batch_first=True, kdim=5, vdim=3)
    q, k, v = torch.randn(2, 12, 8), torch.randn(2, 12, 5), torch.randn(2, 12, 3)
    assert layer(q, k, v, hierarchy=H)[0].shape == (2, 12, 8)
    with pytest.raises(ValueError, match=r"key has embedding size 8 .* expected kdim = 5"):
        layer(q, q, v, hierarchy=H)
    with pytest.raises(ValueError, match=r"value has embedding size 5 .* expected vdim = 3"):
        layer(q, k, k, hierarchy=H)


def test_wrong_embedding_size_is_named():
    layer = HierarchicalSelfAttention(8, 2, batch_first=True)
    with pytest.raises(ValueError, match=r"query has embedding size 6 .* expected embed_dim = 8"):
        layer(torch.randn(2, 12, 6), hierarchy=H)
    with pytest.raises(TypeError, match=r"query must be a torch\.Tensor"):
        layer([[0.0] * 8] * 12, hierarchy=H)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attn_mask": torch.zeros(12, 12, dtype=torch.bool)}, "attn_mask and is_causal"),
        ({"is_causal": True}, "attn_mask and is_causal"),
    ],
)
def test_masks_are_refused_with_the_alternative(kwargs, match):
    layer = HierarchicalSelfAttention(8, 2, batch_first=True)
    with pytest.raises(ValueError, match=match):
        layer(torch.randn(2, 12, 8), hierarchy=H, **kwargs)


def test_wrong_sequence_length():
    layer = HierarchicalSelfAttention(8, 2, batch_first=True)
    with pytest.raises(ValueError, match="12 leaves"):
        layer(torch.randn(2, 11, 8), hierarchy=H)


def test_works_under_torch_compile():
    torch.manual_seed(2)
    torch._dynamo.reset()
    layer = HierarchicalSelfAttention(16, 2, batch_first=True)
    x = torch.randn(2, 12, 16)
    eager = layer(x, hierarchy=H)[0]
    compiled = torch.compile(layer)
    torch.testing.assert_close(compiled(x, hierarchy=H)[0], eager, rtol=1e-5, atol=1e-6)
    x.requires_grad_()
    compiled(x, hierarchy=H)[0].sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()


def test_key_padding_mask_makes_pads_one_leaf_trees():
    torch.manual_seed(5)
    layer = HierarchicalSelfAttention(8, 2, batch_first=True, dtype=torch.float64)
    x = torch.randn(3, 12, 8, dtype=torch.float64)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[1, 9:] = True  # the last segment of three tokens: its family goes
    mask[2, [0, 4, 5]] = True  # scattered pads; the segment of tokens 3-4 keeps one child
    out, weights = layer(x, hierarchy=H, key_padding_mask=mask, need_weights=True)
    torch.testing.assert_close(out[0], layer(x[:1], hierarchy=H)[0][0])
    alone = layer(x[1:2, :9], hierarchy=Hierarchy.from_segments([[3, 2, 4], [2, 1]]))[0][0]
    torch.testing.assert_close(out[1, :9], alone)
    pads = mask.nonzero().unbind(1)
    torch.testing.assert_close(out[pads], layer.out_proj(layer.v_proj(x[pads])))
    # pads change nothing else, and receive no attention
    x2 = x.clone()
    x2[pads] = torch.randn(len(pads[0]), 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x2, hierarchy=H, key_padding_mask=mask)[0][~mask], out[~mask])
    assert weights[mask.unsqueeze(1).expand(3, 12, 12) & ~mask.unsqueeze(2)].abs().max() == 0
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 12, dtype=torch.float64))
    torch.testing.assert_close(weights[0], layer(x[:1], hierarchy=H, need_weights=True)[1][0])


def test_key_padding_mask_with_positions_and_unbatched():
    torch.manual_seed(6)
    layer = HierarchicalSelfAttention(8, 2, dtype=torch.float64)  # sequence first
    x = torch.randn(12, 2, 8, dtype=torch.float64)
    pos = torch.randn(H.num_nodes, 3, dtype=torch.float64)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    out, _ = layer(x, hierarchy=H, positions=pos, key_padding_mask=mask)
    torch.testing.assert_close(out, layer(x, hierarchy=H, positions=pos)[0])
    single = layer(x[:, 0], hierarchy=H, key_padding_mask=mask[0], positions=pos)[0]
    torch.testing.assert_close(single, out[:, 0])


@pytest.mark.parametrize(
    ("mask", "error", "match"),
    [
        (torch.zeros(2, 12), TypeError, "bool tensor"),
        ([[False] * 12] * 2, TypeError, "torch.Tensor"),
        (torch.zeros(2, 11, dtype=torch.bool), ValueError, r"shape \(2, 12\)"),
    ],
)
def test_bad_key_padding_mask(mask, error, match):
    layer = HierarchicalSelfAttention(8, 2, batch_first=True)
    with pytest.raises(error, match=match):
        layer(torch.randn(2, 12, 8), hierarchy=H, key_padding_mask=mask)


@pytest.mark.parametrize("padded", [False, True], ids=["whole", "key_padding_mask"])
@pytest.mark.parametrize(
    "evaluate", [torch.inference_mode, torch.no_grad], ids=lambda p: p.__name__
)
def test_training_after_evaluation(evaluate, padded):
    """Evaluate first, then train on an equal hierarchy: the cached layouts are ordinary
    tensors, so the training call can save them for backward."""
    torch.manual_seed(7)
    layer = HierarchicalSelfAttention(8, 2, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    mask = None
    if padded:
        mask = torch.zeros(2, 13, dtype=torch.bool)
        mask[1, 4:6] = True
    evaluated = Hierarchy.from_segments([[4, 1, 3, 5], [1, 3]])  # kept alive, like a dataset's
    with evaluate():
        expected = layer(x, hierarchy=evaluated, key_padding_mask=mask)[0]
    out = layer(x, hierarchy=Hierarchy.from_segments([[4, 1, 3, 5], [1, 3]]), key_padding_mask=mask)
    out[0].square().sum().backward()
    torch.testing.assert_close(out[0].detach(), expected)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
