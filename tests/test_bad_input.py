"""Every entry point refuses bad input with a ValueError or TypeError naming the problem.

``hsa``, ``hsa_reference``, ``hsa_attention_matrix`` and ``hsa_sharded`` (on a one-rank gloo
group here; ``test_distributed.py`` checks that every rank of a larger group raises) share one
set of checks (``hsa_ref.validation``); the layer, the ``transformers`` backend and
``Hierarchy``'s constructors have their own. One test per input.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.distributed as dist

from hsa_fast import HierarchicalSelfAttention, hsa
from hsa_fast.distributed import hsa_sharded
from hsa_ref import Hierarchy, hsa_attention_matrix, hsa_reference, validation
from hsa_ref.hierarchy import MAX_JSON_DIGITS, MAX_NODES

H = Hierarchy.balanced(8, 3)


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """A process group of one gloo rank, for ``hsa_sharded``; torn down after the module."""
    store = tmp_path_factory.mktemp("gloo") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _call(entry: str, q, k, v, **kw):
    if entry == "hsa":
        return hsa(q, k, v, H, **kw)
    if entry == "hsa_reference":
        return hsa_reference(q, k, v, H, **kw)
    if entry == "hsa_attention_matrix":
        return hsa_attention_matrix(q, k, H, **kw)
    return hsa_sharded(q, k, v, H, **kw)


ENTRIES = ["hsa", "hsa_reference", "hsa_attention_matrix", "hsa_sharded"]


@pytest.fixture(params=ENTRIES)
def entry(request):
    if request.param == "hsa_sharded":
        request.getfixturevalue("one_rank")
    return request.param


def _qkv(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(8, 4, generator=g, dtype=torch.float64).to(dtype) for _ in "qkv")


# ----------------------------------------------------------------------- tensors and scale
@pytest.mark.parametrize("energy", ["dot", "distance"])
def test_float8_inputs(entry, energy):
    q, k, v = _qkv(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match=r"the dtype of q, k and v must be .*float8_e4m3fn"):
        _call(entry, q, k, v, energy=energy)


def test_float8_positions():
    q, k, v = _qkv()
    pos = torch.zeros(H.num_nodes, 2, dtype=torch.float8_e5m2)
    for fn in (hsa, hsa_reference):
        with pytest.raises(TypeError, match=r"the dtype of positions must be .*float8_e5m2"):
            fn(q, k, v, H, positions=pos)
    with pytest.raises(TypeError, match="the dtype of positions"):
        hsa_attention_matrix(q, k, H, positions=pos)


def test_the_accepted_dtypes_come_from_validation(entry, monkeypatch):
    """One home: narrowing ``hsa_ref.validation.DTYPES`` narrows every entry point."""
    q, k, v = (x.half() for x in _qkv())
    assert torch.isfinite(_call(entry, q, k, v)).all()
    monkeypatch.setattr(validation, "DTYPES", (torch.float64, torch.float32))
    with pytest.raises(TypeError, match=r"must be torch.float64 or torch.float32, got torch.f"):
        _call(entry, q, k, v)
    with pytest.raises(TypeError, match=r"dtype must be torch.float64 or torch.float32"):
        HierarchicalSelfAttention(16, 2, dtype=torch.float16)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("layout", ["sparse_coo", "sparse_csr"])
def test_sparse_inputs(entry, layout):
    q, k, v = (x.to_sparse() if layout == "sparse_coo" else x.to_sparse_csr() for x in _qkv())
    with pytest.raises(TypeError, match=rf"q must be a dense .* got layout torch.{layout}"):
        _call(entry, q, k, v)


@pytest.mark.parametrize("scale", [10**400, Fraction(10**400, 1), -(10**400)], ids=str)
def test_scale_too_large_for_a_float(entry, scale):
    with pytest.raises(ValueError, match="scale must be finite, got a number too large"):
        _call(entry, *_qkv(), scale=scale)


def test_scale_on_the_meta_device(entry):
    with pytest.raises(ValueError, match="scale is a tensor on the meta device"):
        _call(entry, *_qkv(), scale=torch.tensor(0.5, device="meta"))


def test_scale_tensor_of_several_values(entry):
    with pytest.raises(TypeError, match=r"one-element tensor .* got a tensor of shape \(2,\)"):
        _call(entry, *_qkv(), scale=torch.tensor([0.5, 0.5]))


# ----------------------------------------------------------------------------- hierarchy
def test_json_nested_too_deeply():
    with pytest.raises(ValueError, match="nested too deeply"):
        Hierarchy.from_json("[" * 100_000 + "]" * 100_000)


def test_json_that_is_not_utf8():
    text = b'{"format": "hsa-tree/1", "num_leaves": 1, "parent": [-1]}'
    assert Hierarchy.from_json(text).num_leaves == 1
    with pytest.raises(ValueError, match="hierarchy JSON bytes are not valid text"):
        Hierarchy.from_json(text[:-1] + b"\xff}")


@pytest.mark.parametrize("digits", [MAX_JSON_DIGITS + 1, 5_000])
def test_json_integers_with_too_many_digits(digits):
    text = '{"format": "hsa-tree/1", "num_leaves": 1%s, "parent": [-1]}' % ("0" * (digits - 1))
    with pytest.raises(
        ValueError, match=f"malformed hierarchy JSON: an integer of {digits} digits"
    ):
        Hierarchy.from_json(text)


def test_segments_longer_than_any_hierarchy():
    with pytest.raises(ValueError, match=r"from_segments.* more than MAX_NODES"):
        Hierarchy.from_segments([[10**30]])
    with pytest.raises(ValueError, match="more than MAX_NODES"):
        Hierarchy.from_segments([[MAX_NODES // 2] * 2])


@pytest.mark.parametrize(
    ("build", "what"),
    [
        (lambda: Hierarchy.balanced(10**12, 2), r"balanced\(1000000000000, 2\)"),
        (lambda: Hierarchy.balanced(MAX_NODES, 2), r"balanced\(2147483647, 2\)"),
        (lambda: Hierarchy.one_family(10**12), r"one_family\(1000000000000\)"),
        (lambda: Hierarchy.one_family(MAX_NODES), r"one_family\(2147483647\)"),
    ],
)
def test_constructors_beyond_max_nodes(build, what):
    with pytest.raises(ValueError, match=rf"{what} is too large: .* more than MAX_NODES"):
        build()


# --------------------------------------------------------------------------------- layer
def test_layer_with_an_integer_dtype():
    with pytest.raises(TypeError, match=r"dtype must be torch.float64, .* got torch.int64"):
        HierarchicalSelfAttention(16, 2, dtype=torch.int64)


@pytest.mark.parametrize("name", ["query", "key", "value"])
def test_layer_input_of_another_dtype(name):
    layer = HierarchicalSelfAttention(16, 2, dtype=torch.float64)
    x = {
        n: torch.randn(H.num_leaves, 1, 16, dtype=torch.float64) for n in ("query", "key", "value")
    }
    x[name] = x[name].float()
    with pytest.raises(TypeError, match=f"{name} has dtype torch.float32 but the layer's"):
        layer(**x, hierarchy=H)


def test_layer_with_sparse_input():
    layer = HierarchicalSelfAttention(16, 2)
    with pytest.raises(TypeError, match="query must be a dense"):
        layer(torch.randn(H.num_leaves, 16).to_sparse(), hierarchy=H)


def test_sharded_with_an_empty_batch(one_rank):
    q, k, v = (x.expand(0, 8, 4) for x in _qkv())
    out = hsa_sharded(q, k, v, H, energy="distance")
    assert out.shape == (0, 8, 4)
