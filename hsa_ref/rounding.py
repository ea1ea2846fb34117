"""How far may a correct evaluation of HSA in a given dtype be from the exact answer?

A running error analysis of the reference's own computation (``docs/TOLERANCE.md``): the
float64 reference is evaluated on :class:`Bounded` tensors, which carry beside every value a
bound (its *radius*) on how far a correct evaluation in dtype ``t`` may have drifted from it.
Every operation propagates the radii of its operands, as an interval enclosure does (for
``exp``, ``log``, division and ``logsumexp`` the exact worst case, not a first-order guess),
and adds its own rounding under the model of :class:`RoundingModel`:

- an elementwise result is stored in ``t``: relative error ``u_t`` (the unit roundoff,
  ``eps_t / 2``); ``exp``, ``log`` and the constants an evaluation derives itself (``log|C|``,
  the scale) are computed within ``TRANSCENDENTAL`` units of ``u_acc`` and then stored;
- a sum of ``n`` terms (a reduction, a dot product, an entry of a matrix product, the terms
  that ``index_add`` sends to one place) is accumulated in ``acc(t)`` (float32 for the half
  types, ``t`` itself otherwise) with an error of at most ``min(n, LAMBDA * sqrt(n)) *
  u_acc * sum|terms|``, then stored in ``t``;
- moving, selecting or copying values is exact.

The sum bound holds for pairwise and blocked summation whatever the data (their worst case
grows like ``log n`` and ``sqrt n``), and for plain sequential summation with probability at
least ``1 - 2 exp(-LAMBDA**2 / 2)`` per sum when rounding errors are independent (Higham and
Mary, SIAM J. Sci. Comput. 41(5), 2019). Autograd runs on :class:`Bounded` tensors too, so the
gradients come with radii from the backward's own operations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "LAMBDA",
    "TRANSCENDENTAL",
    "Bounded",
    "RoundingModel",
    "accumulation_dtype",
    "bounded",
]

LAMBDA = 5.0
"""Scale of the ``sqrt(n)`` growth of a sum's rounding error (a 5-sigma event per sum)."""
TRANSCENDENTAL = 4.0
"""``exp`` and ``log`` err by at most this many units of the roundoff of the precision they are
computed in (2 ulp): ``u_acc``, which for the half types is float32's."""

aten = torch.ops.aten


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where sums of ``dtype`` numbers are accumulated: float32 for the half types."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@dataclass(frozen=True)
class RoundingModel:
    """The unit roundoffs of an evaluation in ``dtype``: ``u`` for stored results, ``u_acc``
    for sums."""

    dtype: torch.dtype

    @property
    def u(self) -> float:
        return torch.finfo(self.dtype).eps / 2

    @property
    def underflow(self) -> float:
        """The absolute error of a result in the subnormal range (half its spacing there)."""
        return torch.finfo(self.dtype).tiny * self.u

    @property
    def u_acc(self) -> float:
        return torch.finfo(accumulation_dtype(self.dtype)).eps / 2

    @property
    def u_function(self) -> float:
        """The relative error of ``exp``, ``log`` or a derived constant: computed within
        ``TRANSCENDENTAL`` units of ``u_acc``, then stored in the dtype (``u`` more where
        that is coarser)."""
        return TRANSCENDENTAL * self.u_acc + (self.u if self.u > self.u_acc else 0.0)

    def sum_error(self, n: torch.Tensor | float) -> torch.Tensor | float:
        """The error of a sum of ``n`` terms (``n - 1`` additions), in units of
        ``sum|terms|``."""
        if isinstance(n, torch.Tensor):
            m = (n - 1).clamp_min(0)
            return torch.minimum(m, LAMBDA * m.sqrt()) * self.u_acc
        m = max(n - 1, 0)
        return min(m, LAMBDA * math.sqrt(m)) * self.u_acc

    def dot_error(self, n: float) -> float:
        """The error of a dot product of length ``n`` (``n`` products, ``n - 1`` additions),
        in units of ``sum|a_i b_i|``."""
        return min(n, LAMBDA * math.sqrt(n)) * self.u_acc


_MODEL: list[RoundingModel] = []


def _model() -> RoundingModel:
    if not _MODEL:
        raise RuntimeError("Bounded arithmetic needs a rounding model: use `with bounded(dtype)`")
    return _MODEL[-1]


@contextmanager
def bounded(dtype: torch.dtype) -> Iterator[RoundingModel]:
    """``with bounded(dtype):`` :class:`Bounded` arithmetic models an evaluation in ``dtype``."""
    _MODEL.append(RoundingModel(dtype))
    try:
        yield _MODEL[-1]
    finally:
        _MODEL.pop()


class Bounded(torch.Tensor):
    """A float64 tensor ``value`` with a tensor ``radius >= 0`` of the same shape: a correct
    evaluation in the modelled dtype lies within ``radius`` of ``value``, entry by entry."""

    value: torch.Tensor
    radius: torch.Tensor

    @staticmethod
    def __new__(cls, value: torch.Tensor, radius: torch.Tensor | None = None) -> Bounded:
        if radius is None:
            radius = torch.zeros_like(value)
        out = torch.Tensor._make_wrapper_subclass(
            cls,
            value.shape,
            strides=value.stride(),
            dtype=value.dtype,
            device=value.device,
            requires_grad=False,
        )
        out.value, out.radius = value, radius
        return out

    def __repr__(self) -> str:
        return f"Bounded(value={self.value}, radius={self.radius})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _apply(func, args, kwargs or {})


_HANDLERS: dict[Any, Callable] = {}


def _apply(func, args, kwargs):
    handler = _HANDLERS.get(func)
    if handler is None:
        handler = _HANDLERS[func] = _handler(func)
    return handler(args, kwargs)


def _handler(func) -> Callable:
    """How an op is evaluated on :class:`Bounded` operands (decided once per op)."""
    name = func._schema.name.removeprefix("aten::")
    if name.endswith("_"):
        return lambda args, kwargs: _in_place(func, name, args, kwargs)
    packet = func.overloadpacket
    if packet in _STRUCTURAL:
        return lambda args, kwargs: _structural(func, args, kwargs)
    if packet in _CREATION:
        return lambda args, kwargs: _created(func(*_values(args), **_values(kwargs)))
    if packet in _VALUE_ONLY:
        return lambda args, kwargs: func(*_values(args), **_values(kwargs))
    rule = _RULES.get(func) or _RULES.get(packet)
    if rule is None:

        def refuse(args, kwargs):
            raise NotImplementedError(f"no rounding rule for {func}")

        return refuse
    return lambda args, kwargs: rule(*args, **kwargs)


def _created(value: Any) -> Any:
    """A constant made from sizes and fill values: exact."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return Bounded(value, torch.zeros_like(value))
    return value


def _in_place(func, name, args, kwargs):
    """An in-place op: its out-of-place twin, whose value and radius ``args[0]`` then holds."""
    target = args[0]
    if name == "copy_":
        source = args[1]
        value = _value(source).to(target.value.dtype).expand_as(target.value).clone()
        radius = torch.as_tensor(_radius(source), dtype=value.dtype, device=value.device)
        result = Bounded(value, radius.expand_as(value).clone())
    elif name in ("zero_", "fill_"):
        value = func(target.value.clone(), *_values(args[1:]), **_values(kwargs))
        result = Bounded(value, torch.zeros_like(value))
    else:
        twin = getattr(aten, name[:-1])
        overload = getattr(twin, func._overloadname, None) or twin.default
        result = _apply(overload, args, kwargs)
    target.value, target.radius = result.value, result.radius
    return target


# ---------------------------------------------------------------------------- helpers
def _value(x: Any) -> Any:
    return x.value if isinstance(x, Bounded) else x


def _radius(x: Any) -> torch.Tensor | float:
    """The radius of an operand. A constant that the modelled dtype cannot hold exactly (the
    scale, ``log|C|``, ``|B| / |A|``) is one an evaluation derives and rounds itself: within
    ``u_function`` of its value."""
    if isinstance(x, Bounded):
        return x.radius
    m = _model()
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            return x
        inexact = x.to(m.dtype).to(x.dtype) != x
        return torch.where(inexact, m.u_function * x.abs(), 0)
    if isinstance(x, float) and float(torch.tensor(x, dtype=m.dtype)) != x:
        return m.u_function * abs(x)
    return 0.0


def _map(f: Callable[[Any], Any], tree: Any) -> Any:
    """``f`` applied to the arguments of an op: a tuple, list or dict of values and of lists
    of values (tensor lists of ``cat`` and ``stack``, index lists of ``index``)."""
    if isinstance(tree, dict):
        return {key: _one(f, x) for key, x in tree.items()} if tree else tree
    return type(tree)(_one(f, x) for x in tree)


def _one(f: Callable[[Any], Any], x: Any) -> Any:
    return type(x)(f(y) for y in x) if isinstance(x, (tuple, list)) else f(x)


def _values(tree: Any) -> Any:
    return _map(_value, tree)


def _wrap(value: torch.Tensor, radius: torch.Tensor) -> Bounded:
    return Bounded(
        value, radius.expand_as(value).clone() if radius.shape != value.shape else radius
    )


def _stored(value: torch.Tensor, radius: Any, rounded: Any = True) -> Bounded:
    """``value`` rounded to the modelled dtype: ``radius`` plus ``u |value|`` (where
    ``rounded``: a result copied from one exact term is not rounded)."""
    m = _model()
    rounding = value.abs().mul_(m.u).add_(m.underflow)
    if rounded is not True:
        rounding = torch.where(torch.as_tensor(rounded), rounding, 0)
    return _wrap(value, radius + rounding)


def _tensor_radius(x: Any) -> Any:
    """What stands for ``x`` when an op is applied to the radii: its radius for a floating
    tensor, ``x`` itself for anything else (sizes, dims, indices)."""
    if isinstance(x, Bounded):
        return x.radius
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return torch.zeros_like(x)
    return x


def _structural(func, args, kwargs):
    """Ops that move, select or copy values: exact, applied alike to values and radii."""
    values = func(*_values(args), **_values(kwargs))
    radii = func(*_map(_tensor_radius, args), **_map(_tensor_radius, kwargs))
    if isinstance(values, torch.Tensor):
        return Bounded(values, radii) if values.is_floating_point() else values
    return type(values)(
        Bounded(v, r) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for v, r in zip(values, radii, strict=True)
    )


def _where(condition, a, b):
    value = torch.where(_value(condition), _value(a), _value(b))
    ra, rb = _radius(a), _radius(b)
    return _wrap(value, torch.where(_value(condition), torch.as_tensor(ra), torch.as_tensor(rb)))


def _masked_fill(a, mask, fill):
    return _wrap(a.value.masked_fill(mask, _value(fill)), a.radius.masked_fill(mask, 0.0))


def _index_fill(a, dim, index, fill):
    value = a.value.index_fill(dim, index, _value(fill))
    return _wrap(value, a.radius.index_fill(dim, index, 0.0))


_STRUCTURAL = {
    aten.view, aten._unsafe_view, aten.reshape, aten.t, aten.transpose, aten.permute,
    aten.expand, aten.unsqueeze, aten.squeeze, aten.select, aten.slice, aten.diagonal,
    aten.diag_embed, aten.clone, aten.alias, aten.detach, aten.index_select, aten.index,
    aten.cat, aten.stack, aten.unbind, aten.split, aten.split_with_sizes, aten.narrow,
    aten._to_copy, aten.lift_fresh, aten.select_backward, aten.slice_backward,
    aten.diagonal_backward, aten.contiguous, aten.squeeze_copy, aten.view_copy,
    aten.expand_copy, aten.unsqueeze_copy, aten.permute_copy, aten.flip, aten.roll,
    aten.masked_select, aten.gather, aten.index_copy, aten.unfold,
}  # fmt: skip

_CREATION = {
    aten.new_zeros, aten.new_ones, aten.new_empty, aten.new_full, aten.zeros_like,
    aten.ones_like, aten.empty_like, aten.full_like, aten.fill, aten.scalar_tensor,
    aten.new_empty_strided, aten.empty_strided,
}  # fmt: skip
"""Ops that make constants from nothing but sizes and fill values: exact, radius 0."""

_VALUE_ONLY = {
    aten.isfinite, aten.isnan, aten.isinf, aten.eq, aten.ne, aten.lt, aten.le, aten.gt, aten.ge,
    aten.any, aten.all, aten.nonzero, aten.argmax, aten.argmin, aten._local_scalar_dense,
    aten.is_nonzero, aten.equal, aten.sign, aten.logical_not,
}  # fmt: skip
"""Ops whose result is not a floating-point value (comparisons, indices, Python numbers)."""


# ---------------------------------------------------------------------------- arithmetic
def _add(a, b, *, alpha=1):
    value = _value(a) + alpha * _value(b)
    return _stored(value, _radius(a) + abs(alpha) * _radius(b))


def _sub(a, b, *, alpha=1):
    value = _value(a) - alpha * _value(b)
    return _stored(value, _radius(a) + abs(alpha) * _radius(b))


def _rsub(a, b, *, alpha=1):
    return _sub(b, a, alpha=alpha)


def _neg(a):
    return _wrap(-a.value, a.radius)


def _abs(a):
    return _wrap(a.value.abs(), a.radius)  # exact, and 1-Lipschitz


def _abs_of(x: Any) -> Any:
    v = _value(x)
    return v.abs() if isinstance(v, torch.Tensor) else abs(v)


def _mul(a, b):
    ra, rb = _radius(a), _radius(b)
    value = _value(a) * _value(b)
    return _stored(value, _abs_of(a) * rb + ra * _abs_of(b) + ra * rb)


def _div(a, b):
    """``a / b``: the exact worst case of ``(a +- ra) / (b +- rb)`` (infinite when ``b`` may
    vanish)."""
    ra, rb = _radius(a), _radius(b)
    va, vb = _value(a), _value(b)
    value = va / vb
    slack = _abs_of(b) - rb
    slack = slack.clamp_min(0) if isinstance(slack, torch.Tensor) else max(slack, 0.0)
    radius = (ra + _abs_of(value) * rb) / slack
    return _stored(value, radius)


def _exp(a):
    value = a.value.exp()
    # exp(x + r) - exp(x) = exp(x) (exp(r) - 1): the worst case, not a first-order guess
    m = _model()
    radius = value * torch.expm1(a.radius) + m.u_function * value + m.underflow
    return _wrap(value, radius)


def _log(a):
    value = a.value.log()
    relative = a.radius / a.value.abs()
    radius = -torch.log1p(-relative.clamp_max(1))  # |log(x - r) - log(x)|, infinite at r >= x
    return _wrap(value, radius + _model().u_function * value.abs())


def _pow(a, exponent):
    """``x ** p`` for ``p >= 1``: by the mean value theorem the change is at most
    ``p (|x| + r)^(p - 1) r`` (no difference of nearly equal powers, which float64 would lose)."""
    if not isinstance(exponent, (int, float)) or exponent < 1:
        raise NotImplementedError(f"no rounding rule for x ** {exponent!r}")
    value = a.value**exponent
    slope = exponent * (a.value.abs() + a.radius) ** (exponent - 1)
    return _stored(value, slope * a.radius)


def _sum_terms(terms: torch.Tensor, count: torch.Tensor | float) -> torch.Tensor:
    return _model().sum_error(count) * terms


def _reduce(a, dim=None, keepdim=False, *, dtype=None, mean=False):
    """``sum`` (or ``mean``) of ``a`` over ``dim``."""
    v, r = a.value, a.radius
    dims = list(range(v.dim())) if dim is None or dim == [] else dim
    n = 1
    for d in [dims] if isinstance(dims, int) else dims:
        n *= v.shape[d]
    value = v.sum(dims, keepdim=keepdim)
    radius = r.sum(dims, keepdim=keepdim) + _sum_terms(v.abs().sum(dims, keepdim=keepdim), n)
    if mean:
        value, radius = value / n, radius / n
    return _stored(value, radius, rounded=n > 1)


def _sum(a, dim=None, keepdim=False, *, dtype=None):
    return _reduce(a, dim, keepdim)


def _mean(a, dim=None, keepdim=False, *, dtype=None):
    return _reduce(a, dim, keepdim, mean=True)


def _product(op: Callable, a, b) -> Bounded:
    """A matrix product: every entry is a sum of ``n`` products (``n`` the inner size)."""
    va, vb = _value(a), _value(b)
    ra, rb = _radius(a), _radius(b)
    value = op(va, vb)
    propagated = op(va.abs(), rb) + op(ra, vb.abs()) + op(ra, rb)
    local = _model().dot_error(va.shape[-1]) * op(va.abs(), vb.abs())
    return _stored(value, propagated + local)


def _mm(a, b):
    return _product(torch.mm, a, b)


def _bmm(a, b):
    return _product(torch.bmm, a, b)


def _dot(a, b):
    return _product(torch.dot, a, b)


def _mv(a, b):
    return _product(torch.mv, a, b)


def _logsumexp(a, dim, keepdim=False):
    """``L = log sum exp(x)``: ``|L(x + d) - L(x)| <= log sum_i p_i exp(r_i)`` for
    ``|d_i| <= r_i`` (``p`` the softmax of ``x``), plus the rounding of ``x - max``, of
    ``exp``, of the sum of ``n`` positive terms, of ``log`` and of adding the maximum back."""
    v, r = a.value, a.radius
    m = _model()
    value = torch.logsumexp(v, dim, keepdim=True)
    p = torch.exp(v - value)
    top = v.amax(dim, keepdim=True)
    top = torch.where(torch.isfinite(top), top, 0)
    n = 1
    for d in [dim] if isinstance(dim, int) else dim:
        n *= v.shape[d]
    p = p / p.sum(dim, keepdim=True)
    inherited = _log_mean_exp(p, r, dim)
    spread = torch.where(p > 0, p * (v - top).abs(), 0).sum(dim, keepdim=True)
    local = (
        m.u * spread
        + m.u_function
        + m.sum_error(float(n))
        + m.u_function * (value - top).abs()
        + m.u * value.abs()
    )
    radius = inherited + local
    if not keepdim:
        dims = [dim] if isinstance(dim, int) else dim
        value = value.squeeze(dims)
        radius = radius.squeeze(dims)
    return _wrap(value, radius)


def _log_mean_exp(p: torch.Tensor, r: torch.Tensor, dim) -> torch.Tensor:
    """``log sum_i p_i exp(r_i)`` for weights ``p`` summing to one, accurate for tiny ``r``
    (``log1p`` of the weighted ``expm1``): a radius is not lost to the rounding of ``sum p``."""
    return torch.log1p(torch.where(p > 0, p * torch.expm1(r), 0).sum(dim, keepdim=True))


def _log_softmax(a, dim, half_to_float=False):
    """``x - L(x)`` along ``dim``: for ``|d_C| <= r_C`` the exact worst case of entry ``B``,
    ``r_B - log(p_B e^{r_B} + sum_{C != B} p_C e^{-r_C})`` upwards and ``r_B + log(p_B
    e^{-r_B} + sum_{C != B} p_C e^{r_C})`` downwards (``p`` the softmax), so that an entry
    that dominates its row inherits little of its own radius; plus the rounding of
    :func:`_logsumexp` and of the subtraction."""
    v, r = a.value, a.radius
    value = torch.log_softmax(v, dim)
    p = value.exp()
    p = p / p.sum(dim, keepdim=True)

    def moved(sign: float) -> torch.Tensor:
        """``p_C expm1(sign r_C)``: what each entry adds to the row's log-mean-exp."""
        return torch.where(p > 0, p * torch.expm1(sign * r), 0)

    lower, upper = moved(-1.0), moved(1.0)
    all_lower, all_upper = lower.sum(dim, keepdim=True), upper.sum(dim, keepdim=True)
    up = r - torch.log1p(all_lower - lower + upper)
    down = r + torch.log1p(all_upper - upper + lower)
    exact_lse = Bounded(v, torch.zeros_like(v))
    local = _logsumexp(exact_lse, dim, keepdim=True).radius  # rounding of L alone
    return _stored(value, torch.maximum(up, down).clamp_min(0) + local)


def _log_softmax_backward(grad, output, dim, input_dtype):
    """The backward of ``log_softmax``, as a correct evaluation computes it:
    ``grad - exp(output) * sum(grad)``."""
    return grad - torch.exp(output) * grad.sum(dim, keepdim=True)


def _counts_into(dest_shape, dim, index, source: torch.Tensor) -> torch.Tensor:
    """How many nonzero entries of ``source`` ``index_add`` sends to each destination."""
    nonzero = (source != 0).to(torch.float64)
    return torch.zeros(dest_shape, dtype=torch.float64, device=source.device).index_add(
        dim, index, nonzero
    )


def _index_add(a, dim, index, source, *, alpha=1):
    """``index_add``: each destination is the sum of what was there and the terms sent to it."""
    va, vs = _value(a), _value(source)
    ra, rs = _radius(a), _radius(source)
    value = va.index_add(dim, index, vs, alpha=alpha)
    propagated = ra + torch.zeros_like(va).index_add(dim, index, rs * abs(alpha))
    terms = va.abs().index_add(dim, index, vs.abs() * abs(alpha))
    count = _counts_into(va.shape, dim, index, vs) + (va != 0).to(torch.float64)
    return _stored(value, propagated + _sum_terms(terms, count), rounded=count > 1)


def _index_put(a, indices, values, accumulate=False):
    """``index_put``: a copy of what is put, or with ``accumulate`` a sum at each place."""
    put = aten.index_put.default
    va, vv = _value(a), _value(values)
    ra, rv = _radius(a), torch.as_tensor(_radius(values), dtype=va.dtype)
    if not accumulate:
        return _wrap(put(va, indices, vv), put(ra, indices, rv.expand_as(vv)))
    value = put(va, indices, vv, True)
    propagated = put(ra, indices, rv.expand_as(vv), True)
    terms = put(va.abs(), indices, vv.abs(), True)
    nonzero = (vv != 0).to(torch.float64).expand_as(vv)
    count = put((va != 0).to(torch.float64), indices, nonzero, True)
    return _stored(value, propagated + _sum_terms(terms, count), rounded=count > 1)


_RULES: dict[Any, Callable] = {
    aten.where.self: _where,
    aten.where.ScalarSelf: _where,
    aten.where.ScalarOther: _where,
    aten.where.Scalar: _where,
    aten.masked_fill.Scalar: _masked_fill,
    aten.masked_fill.Tensor: _masked_fill,
    aten.index_fill.int_Scalar: _index_fill,
    aten.index_fill.int_Tensor: _index_fill,
    aten.add.Tensor: _add,
    aten.add.Scalar: _add,
    aten.sub.Tensor: _sub,
    aten.sub.Scalar: _sub,
    aten.rsub.Tensor: _rsub,
    aten.rsub.Scalar: _rsub,
    aten.neg.default: _neg,
    aten.abs.default: _abs,
    aten.mul.Tensor: _mul,
    aten.mul.Scalar: _mul,
    aten.div.Tensor: _div,
    aten.div.Scalar: _div,
    aten.exp.default: _exp,
    aten.log.default: _log,
    aten.pow.Tensor_Scalar: _pow,
    aten.sum.default: _sum,
    aten.sum.dim_IntList: _sum,
    aten.mean.default: _mean,
    aten.mean.dim: _mean,
    aten.mm.default: _mm,
    aten.bmm.default: _bmm,
    aten.dot.default: _dot,
    aten.mv.default: _mv,
    aten.logsumexp.default: _logsumexp,
    aten._log_softmax.default: _log_softmax,
    aten._log_softmax_backward_data.default: _log_softmax_backward,
    aten.index_add.default: _index_add,
    aten.index_put.default: _index_put,
}
