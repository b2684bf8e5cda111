"""Properties of the engine over random shapes (Hypothesis): broadcasting, reductions, indexing.

Each gradient is compared with an oracle that shares no code with the engine: every element of
an op's output is traced back to the input elements it read, by indexing an array of their
positions, `numpy.arange(x.size).reshape(x.shape)` broadcast or indexed as x is, and the
upstream gradient times the local derivative is summed into each position with numpy.bincount.
So "the gradient of a broadcast operand is the sum over the copies" and "a repeated index
accumulates" are checked as what they mean, not as the engine computes them.

The examples are drawn deterministically (derandomize=True): CI sees the same cases each run.
The last tests plant the classic bugs (by monkeypatch) and show each property failing on them.
"""
import numpy
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from autograd import Tensor, gradcheck
from autograd.ops import arithmetic, reduce, shape as shape_ops

FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                report_multiple_bugs=False)
seeds = st.integers(0, 2**32 - 1)


def positions(shape):
    """Each element's flat position, in an array of `shape`."""
    return numpy.arange(int(numpy.prod(shape))).reshape(shape)


def gathered(read, values, shape):
    """The gradient of an input of `shape`: values[j] summed into the element read[j] that
    output element j read (read and values have the output's shape)."""
    sums = numpy.bincount(read.reshape(-1), weights=values.reshape(-1),
                          minlength=int(numpy.prod(shape)))
    return sums.reshape(shape)


# ----- broadcasting ---------------------------------------------------------------------------
# op: (engine op, d out / d a, d out / d b), the partial derivatives taken elementwise
BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: 1 + 0 * a, lambda a, b: 1 + 0 * b),
    "sub": (lambda a, b: a - b, lambda a, b: 1 + 0 * a, lambda a, b: -1 + 0 * b),
    "mul": (lambda a, b: a * b, lambda a, b: b + 0 * a, lambda a, b: a + 0 * b),
    "div": (lambda a, b: a / b, lambda a, b: 1 / b + 0 * a, lambda a, b: -a / b**2),
    "pow": (lambda a, b: a ** b, lambda a, b: b * a ** (b - 1), lambda a, b: a ** b * numpy.log(a)),
}


@FAST
@given(op=st.sampled_from(sorted(BINARY)),
       shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=3),
       seed=seeds)
def test_binary_op_gradients_are_the_sums_over_the_broadcast_copies(op, shapes, seed):
    (shape_a, shape_b), out_shape = shapes
    rng = numpy.random.default_rng(seed)
    # positive operands, away from zero: div and pow are smooth there
    a_values, b_values = rng.uniform(0.5, 2.0, shape_a), rng.uniform(0.5, 2.0, shape_b)
    a, b = Tensor(a_values, requires_grad=True), Tensor(b_values, requires_grad=True)
    forward, d_a, d_b = BINARY[op]
    out = forward(a, b)
    assert out.shape == numpy.broadcast_shapes(shape_a, shape_b) == out_shape
    upstream = rng.standard_normal(out_shape)
    out.backward(upstream)
    assert a.grad.shape == shape_a and b.grad.shape == shape_b
    wide_a = numpy.broadcast_to(a_values, out_shape)
    wide_b = numpy.broadcast_to(b_values, out_shape)
    read_a = numpy.broadcast_to(positions(shape_a), out_shape)
    read_b = numpy.broadcast_to(positions(shape_b), out_shape)
    numpy.testing.assert_allclose(a.grad, gathered(read_a, upstream * d_a(wide_a, wide_b), shape_a),
                                  rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(b.grad, gathered(read_b, upstream * d_b(wide_a, wide_b), shape_b),
                                  rtol=1e-12, atol=1e-12)


@FAST
@given(batch=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3),
       sizes=st.tuples(*[st.integers(1, 3)] * 3), seed=seeds)
def test_matmul_broadcasts_its_batch_axes_and_passes_gradcheck(batch, sizes, seed):
    (batch_a, batch_b), _ = batch
    n, k, m = sizes
    rng = numpy.random.default_rng(seed)
    a = Tensor(rng.standard_normal(batch_a + (n, k)), requires_grad=True)
    b = Tensor(rng.standard_normal(batch_b + (k, m)), requires_grad=True)
    assert (a @ b).shape == numpy.broadcast_shapes(batch_a, batch_b) + (n, m)
    assert gradcheck(lambda a, b: a @ b, [a, b], seed=seed % 1000)


# ----- reductions -----------------------------------------------------------------------------
@st.composite
def reduction_cases(draw):
    """(shape, axis, keepdims): axis None, one axis or several, negative ones included."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    ndim = len(shape)
    axes = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    signed = tuple(a - ndim if draw(st.booleans()) else a for a in axes)
    axis = draw(st.sampled_from([None, signed[0], signed]))
    return shape, axis, draw(st.booleans())


def reduced_rows(x, axis):
    """x with the reduced axes moved last and flattened: one row per output element."""
    axes = tuple(range(x.ndim)) if axis is None else tuple(
        a % x.ndim for a in ((axis,) if isinstance(axis, int) else axis))
    kept = [a for a in range(x.ndim) if a not in axes]
    moved = numpy.transpose(x, kept + list(axes))
    return moved.reshape(moved.shape[:len(kept)] + (-1,)), kept + list(axes)


@FAST
@given(case=reduction_cases(), reduction=st.sampled_from(["sum", "mean", "max"]), seed=seeds)
def test_reductions_match_numpy_and_pass_gradcheck_over_random_axes(case, reduction, seed):
    shape, axis, keepdims = case
    rng = numpy.random.default_rng(seed)
    values = rng.permutation(int(numpy.prod(shape))).reshape(shape) / 7.0  # distinct: no ties
    x = Tensor(values, requires_grad=True)
    out = getattr(x, reduction)(axis=axis, keepdims=keepdims)
    expected = getattr(values, reduction)(axis=axis, keepdims=keepdims)
    numpy.testing.assert_allclose(out.data, expected, rtol=1e-12)
    assert gradcheck(lambda x: getattr(x, reduction)(axis=axis, keepdims=keepdims), [x],
                     seed=seed % 1000)


@FAST
@given(case=reduction_cases(), seed=seeds)
def test_max_splits_the_gradient_equally_between_tied_maxima(case, seed):
    shape, axis, keepdims = case
    rng = numpy.random.default_rng(seed)
    values = rng.integers(0, 3, shape).astype("float64")  # three values: ties are common
    x = Tensor(values, requires_grad=True)
    out = x.max(axis=axis, keepdims=keepdims)
    upstream = rng.standard_normal(out.shape)
    out.backward(upstream)
    rows, order = reduced_rows(values, axis)
    winners = rows == rows.max(axis=-1, keepdims=True)              # (kept..., reduced)
    share = upstream.reshape(rows.shape[:-1] + (1,)) * winners / winners.sum(axis=-1, keepdims=True)
    read, _ = reduced_rows(positions(shape), axis)
    numpy.testing.assert_allclose(x.grad, gathered(read, share, shape), rtol=1e-12, atol=1e-15)


# ----- indexing -------------------------------------------------------------------------------
@st.composite
def indexing_cases(draw):
    """(shape, index): basic slices (negative steps too), integer arrays with repeats, boolean
    masks, and an integer array beside a slice."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    rng = numpy.random.default_rng(draw(seeds))
    kinds = ["slices", "integers", "mask", "row mask"]
    kind = draw(st.sampled_from(kinds + (["integer pairs", "integers and slice"]
                                         if len(shape) >= 2 else [])))
    first = shape[0]
    repeated = rng.integers(-first, first, draw(st.integers(1, 2 * first + 1)))
    if kind == "slices":
        index = tuple(draw(st.slices(side)) for side in shape[:draw(st.integers(1, len(shape)))])
    elif kind == "integers":
        index = repeated
    elif kind == "integer pairs":
        index = (repeated, rng.integers(0, shape[1], repeated.shape))
    elif kind == "mask":
        index = rng.random(shape) < 0.5
    elif kind == "row mask":
        index = rng.random(first) < 0.5
    else:
        index = (repeated, slice(None, None, -1))
    return shape, index


@FAST
@given(case=indexing_cases(), seed=seeds)
def test_getitem_gradient_accumulates_over_repeated_indices(case, seed):
    shape, index = case
    rng = numpy.random.default_rng(seed)
    x = Tensor(rng.standard_normal(shape), requires_grad=True)
    out = x[index]
    numpy.testing.assert_array_equal(out.data, x.data[index])
    upstream = rng.standard_normal(out.shape)
    out.backward(upstream)
    expected = gathered(positions(shape)[index], upstream, shape)
    numpy.testing.assert_allclose(x.grad, expected, rtol=1e-12, atol=1e-15)


# ----- each property fails on the bug it is there to catch -------------------------------------
def unbroadcast_with_mean(grad, shape):
    """The reverse of broadcasting with a mean where the sum belongs."""
    while grad.ndim > len(shape):
        grad = grad.mean(axis=0)
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.mean(axis=stretched, keepdims=True) if stretched else grad


def max_to_every_tie(ctx, grad):
    """Max's backward sending the whole gradient to every tied maximum."""
    x, out = ctx.saved
    if not ctx.keepdims:
        grad = numpy.expand_dims(grad, ctx.axes)
    return grad * (x == out)


def mean_without_count(ctx, grad):
    """Mean's backward that forgets to divide by the number of elements averaged."""
    return reduce.expand_to(grad, ctx.axes, ctx.keepdims, ctx.shape)


PLANTED = [
    ("unbroadcast takes the mean", arithmetic, "unbroadcast", unbroadcast_with_mean,
     test_binary_op_gradients_are_the_sums_over_the_broadcast_copies),
    ("max's gradient to every tie", reduce.Max, "backward", staticmethod(max_to_every_tie),
     test_max_splits_the_gradient_equally_between_tied_maxima),
    ("mean's gradient not divided", reduce.Mean, "backward", staticmethod(mean_without_count),
     test_reductions_match_numpy_and_pass_gradcheck_over_random_axes),
    ("getitem overwrites repeats", shape_ops, "_is_advanced", lambda index: False,
     test_getitem_gradient_accumulates_over_repeated_indices),
]


@pytest.mark.parametrize("bug, owner, name, planted, prop", PLANTED, ids=[p[0] for p in PLANTED])
def test_each_property_fails_on_its_planted_bug(monkeypatch, bug, owner, name, planted, prop):
    monkeypatch.setattr(owner, name, planted)
    with pytest.raises(AssertionError):
        prop()
