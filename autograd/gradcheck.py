"""Gradient checking: is backward() right? Compare it with finite differences.

For a function f and an upstream gradient u of f's output shape, backward() computes
the vector-Jacobian product  g = u^T df/dx.  The same quantity is the derivative of the
scalar  s(x) = sum(f(x) * u), which central differences estimate one element at a time:

    g[i] ~ (s(x + eps e_i) - s(x - eps e_i)) / (2 eps)

u is random, never all ones: with u = 1 the check only sees d sum(f)/dx, and for some ops
that is identically zero whatever the backward pass does (training-mode batch norm:
sum(BN(x)) = N * sum(beta) does not depend on x), so a wrong gradient would pass.

Everything runs in float64: with eps = 1e-6, float32 rounding (about 1e-7 relative)
would swamp the difference being measured.

One element at a time is right for one op; a whole network has millions. directional_gradcheck
(below) checks every input at once along one random direction, in three passes, and then names
the inputs whose gradients are wrong; module_gradcheck applies it to a Module's parameters.
"""
import numpy

from .backend import array_module, to_numpy
from .function import no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    """backward() disagrees with finite differences; the message says where and by how much."""


def _checked_inputs(inputs):
    inputs = tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)
    for position, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"gradcheck: input {position} is a {type(t).__name__}; pass Tensors")
        if t.requires_grad and t.dtype != numpy.float64:
            raise TypeError(
                f"gradcheck: input {position} has dtype {t.dtype}; gradient checks need float64 "
                f"(finite differences with eps=1e-6 in float32 measure rounding noise, not the "
                f"derivative): use Tensor(x.astype('float64'), requires_grad=True)")
    if not any(t.requires_grad for t in inputs):
        raise ValueError("gradcheck: no input has requires_grad=True, so there is nothing to check")
    return inputs


def _scalar(fn, inputs, upstream):
    """s = sum(fn(*inputs) * upstream), as a Python float."""
    out = fn(*inputs)
    return float((out.data * upstream).sum())


def numerical_grad(fn, inputs, upstream, eps=1e-6):
    """Central-difference estimate of upstream^T d fn(*inputs) / d input, for each input.

    Returns a list with one array per input (None for inputs without requires_grad).
    Each element of each input is nudged by +eps and -eps in place, then restored.
    """
    inputs = tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)
    upstream = upstream.data if isinstance(upstream, Tensor) else upstream
    grads = []
    with no_grad():
        for t in inputs:
            if not t.requires_grad:
                grads.append(None)
                continue
            xp = array_module(t.data)
            grad = xp.zeros(t.shape, dtype=t.dtype)
            for index in numpy.ndindex(*t.shape):  # (works for non-contiguous arrays too)
                original = t.data[index].item()
                t.data[index] = original + eps
                plus = _scalar(fn, inputs, upstream)
                t.data[index] = original - eps
                minus = _scalar(fn, inputs, upstream)
                t.data[index] = original
                grad[index] = (plus - minus) / (2 * eps)
            grads.append(grad)
    return grads


def _hint(analytic, numeric):
    """A guess at the kind of bug behind a mismatch, for the error message."""
    scale = float(numpy.abs(numeric).max())
    if not numpy.any(analytic):
        return "backward() gave all zeros: is a gradient dropped, or returned as None?"
    if scale > 0 and numpy.allclose(analytic, -numeric, rtol=1e-3, atol=1e-6 * scale):
        return "analytic = -numeric everywhere: a sign error in backward()."
    ratio = analytic.reshape(-1) @ numeric.reshape(-1) / max(numeric.reshape(-1) @ numeric.reshape(-1), 1e-300)
    if scale > 0 and numpy.allclose(analytic, ratio * numeric, rtol=1e-3, atol=1e-6 * scale):
        return (f"analytic = {ratio:.6g} x numeric everywhere: a constant factor is missing or "
                f"extra (a count, a 1/N, a 2 from a square?).")
    return ("the error is not a sign or a constant factor: check each term of the derivative, "
            "and the handling of broadcasting (unbroadcast) and of axes.")


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """Check fn's backward() against central finite differences, in float64.

    fn:      a function of the tensors `inputs` returning one Tensor.
    inputs:  Tensors; those with requires_grad=True are checked (they must be float64).
    An element passes when |analytic - numeric| <= atol + rtol * |numeric|.

    Returns True, or raises GradcheckError naming the input, the worst element's index,
    both values and the tolerance.
    """
    inputs = _checked_inputs(inputs)
    upstream, analytic = _backward_grads(fn, inputs, seed)
    numeric = numerical_grad(fn, inputs, upstream, eps)

    for position, (t, a, n) in enumerate(zip(inputs, analytic, numeric)):
        if a is None:
            continue
        a, n = to_numpy(a), to_numpy(n)
        excess = numpy.abs(a - n) - (atol + rtol * numpy.abs(n))
        if excess.max() > 0:
            worst = numpy.unravel_index(int(excess.argmax()), a.shape)
            bad = int((excess > 0).sum())
            raise GradcheckError(
                f"gradient of input {position} (shape {tuple(t.shape)}) is wrong at {bad} of "
                f"{a.size} elements.\n"
                f"  worst element {tuple(int(i) for i in worst)}: analytic (backward) "
                f"{a[worst]:.10g}, numeric (finite differences) {n[worst]:.10g}, "
                f"difference {abs(a[worst] - n[worst]):.3g}, "
                f"tolerance {atol + rtol * abs(n[worst]):.3g} (atol={atol} + rtol={rtol} * |numeric|)\n"
                f"  hint: {_hint(a, n)}")
    return True


# ----- the directional check: a whole network in a few passes ---------------------------------
#
# gradcheck above nudges one element at a time: two forward passes per element, fine for one op
# of a few dozen values, hopeless for a ResNet's millions of weights. The directional check asks
# one question of all the inputs at once. Pick a random upstream v (of the output's shape) and a
# random direction u = (u_1, ..., u_k) over every checked input, scaled to unit length. Then
#
#     analytic:  sum_i <g_i, u_i>, with g_i = v^T df/dx_i from one backward() pass
#     numeric:   (s(x + eps u) - s(x - eps u)) / (2 eps),  s(x) = sum(f(x) * v)
#
# are both v^T J u, the derivative of s along u, and a backward pass that is wrong anywhere
# changes the first but not the second (with probability 1 over u, since a wrong gradient
# g'_i != g_i has <g'_i - g_i, u_i> = 0 only on a set of measure zero). Three passes check
# everything; when they disagree, the same test along each input's own direction alone (two
# passes per input) names the inputs whose gradients are wrong.


def _backward_grads(fn, inputs, upstream_seed):
    """Run fn once, backward() from a random upstream v; return (v, [g_i]) with g_i = v^T
    df/dx_i (zeros where no gradient arrived, None for inputs not checked). The inputs' own
    .grad are left as they were."""
    out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn returned a {type(out).__name__}, expected a Tensor")
    xp = array_module(out.data)
    upstream = xp.asarray(numpy.random.default_rng(upstream_seed).standard_normal(out.shape))
    saved_grads = [t.grad for t in inputs]
    for t in inputs:
        t.grad = None
    try:
        if out.requires_grad:
            out.backward(upstream)
        grads = [None if not t.requires_grad else
                 (t.grad if t.grad is not None else xp.zeros(t.shape, dtype=t.dtype))
                 for t in inputs]
    finally:
        for t, g in zip(inputs, saved_grads):
            t.grad = g
    return upstream, grads


def _random_direction(inputs, seed):
    """u_i ~ N(0, 1) elementwise for every checked input, all scaled by one number so that
    sum_i |u_i|^2 = 1 (None for inputs not checked)."""
    rng = numpy.random.default_rng(seed)
    host = [rng.standard_normal(t.shape) if t.requires_grad else None for t in inputs]
    norm = numpy.sqrt(sum(float((u * u).sum()) for u in host if u is not None))
    return [None if u is None else array_module(t.data).asarray(u / max(norm, 1e-300))
            for t, u in zip(inputs, host)]


def _moved_scalar(fn, inputs, direction, step, upstream):
    """s(x + step u) = sum(fn(x + step u) * v), each input moved in place and put back."""
    originals = [None if u is None else t.data.copy() for t, u in zip(inputs, direction)]
    try:
        for t, u, original in zip(inputs, direction, originals):
            if u is not None:
                t.data[...] = original + step * u
        with no_grad():
            return _scalar(fn, inputs, upstream)
    finally:
        for t, original in zip(inputs, originals):
            if original is not None:
                t.data[...] = original


def _along(fn, inputs, grads, direction, upstream, eps):
    """(analytic, numeric) derivatives of s along `direction`: sum_i <g_i, u_i> and the
    central difference."""
    analytic = sum(float((to_numpy(g) * to_numpy(u)).sum())
                   for g, u in zip(grads, direction) if u is not None)
    plus = _moved_scalar(fn, inputs, direction, eps, upstream)
    minus = _moved_scalar(fn, inputs, direction, -eps, upstream)
    return analytic, (plus - minus) / (2 * eps)


def _culprits(fn, inputs, names, grads, direction, upstream, eps, atol, rtol):
    """Each checked input alone, along its own part of u scaled to unit length: one line for
    each input whose derivative disagrees (in the order of `inputs`), and how many agreed."""
    failing, agreed = [], 0
    for position, (t, u) in enumerate(zip(inputs, direction)):
        if u is None:
            continue
        alone = [None] * len(inputs)
        alone[position] = u / max(float(numpy.sqrt((to_numpy(u) ** 2).sum())), 1e-300)
        analytic, numeric = _along(fn, inputs, grads, alone, upstream, eps)
        if abs(analytic - numeric) <= atol + rtol * abs(numeric):
            agreed += 1
            continue
        failing.append(f"{names[position]} (shape {tuple(t.shape)}): analytic {analytic:.10g}, "
                       f"numeric {numeric:.10g}, analytic / numeric {_ratio(analytic, numeric)}")
    return failing, agreed


def _ratio(analytic, numeric):
    return f"{analytic / numeric:.6g}" if numeric != 0 else "undefined (numeric is 0)"


def _input_names(inputs, names):
    if names is None:
        return [f"input {position}" for position in range(len(inputs))]
    names = list(names)
    if len(names) != len(inputs):
        raise ValueError(f"directional_gradcheck: {len(names)} names for {len(inputs)} inputs; "
                         f"give one name per input, or none")
    return [str(name) for name in names]


def directional_gradcheck(fn, inputs, names=None, eps=1e-6, atol=1e-8, rtol=1e-5, seed=0,
                          locate=True):
    """Check fn's backward() along one random direction through all its inputs, in float64.

    fn:      a function of the tensors `inputs` returning one Tensor (any shape).
    inputs:  Tensors; those with requires_grad=True are checked (they must be float64).
    names:   optional, one per input, used in the failure message (e.g. parameter names).
    The check passes when |analytic - numeric| <= atol + rtol * |numeric| for the derivative
    along u (see above). It costs one forward and backward pass and two forward passes,
    whatever the number of inputs; on failure, with locate=True, two more forward passes per
    input find the inputs whose gradients are wrong.

    Returns True, or raises GradcheckError with both numbers, the tolerance and the culprits.
    """
    inputs = _checked_inputs(inputs)
    labels = _input_names(inputs, names)
    upstream, grads = _backward_grads(fn, inputs, seed)
    direction = _random_direction(inputs, seed + 1)
    analytic, numeric = _along(fn, inputs, grads, direction, upstream, eps)
    allowed = atol + rtol * abs(numeric)
    if abs(analytic - numeric) <= allowed:
        return True
    checked = [t for t in inputs if t.requires_grad]
    lines = [
        f"directional gradient check failed: the derivative of s(x) = sum(f(x) * v), v a random "
        f"upstream, along a random unit direction u through all {len(checked)} checked inputs "
        f"({sum(t.size for t in checked)} values) disagrees.",
        f"  analytic (backward): v^T J u = sum_i <grad_i, u_i> = {analytic:.10g}",
        f"  numeric (central difference): (s(x + eps u) - s(x - eps u)) / (2 eps) = "
        f"{numeric:.10g}, eps={eps}",
        f"  difference {abs(analytic - numeric):.3g}, tolerance {allowed:.3g} "
        f"(atol={atol} + rtol={rtol} * |numeric|), analytic / numeric {_ratio(analytic, numeric)}"]
    lines += _locate_lines(fn, inputs, labels, grads, direction, upstream, eps, atol, rtol, locate)
    raise GradcheckError("\n".join(lines))


def _locate_lines(fn, inputs, labels, grads, direction, upstream, eps, atol, rtol, locate):
    """The failure message's last lines: which inputs are wrong, and where to look next."""
    if not locate:
        return ["  next: rerun with locate=True to check each input alone (two forward passes "
                "each), or check single ops element by element with gradcheck."]
    failing, agreed = _culprits(fn, inputs, labels, grads, direction, upstream, eps, atol, rtol)
    if not failing:
        return [f"  each of the {agreed} inputs alone, along its own direction, agrees within the "
                f"tolerance: either the error is spread thinly over many inputs (check single "
                f"ops element by element with gradcheck), or a ReLU or a max met its kink within "
                f"eps of x along u (rerun with another seed: a real error stays)."]
    shown = failing if len(failing) <= 12 else (
        failing[:5] + [f"... {len(failing) - 10} more ..."] + failing[-5:])
    last = failing[-1].split(" (shape")[0]
    return ([f"  each input alone, along its own direction: {len(failing)} disagree, "
             f"{agreed} agree. Wrong gradients:"]
            + [f"    {line}" for line in shown]
            + [f"  next: the op at fault is one that these inputs feed: a backward that is wrong "
               f"spoils the gradient of everything computed before it, so in a network look at "
               f"the ops just after the last of them ({last}, if the inputs are in the order "
               f"the forward pass uses them), and check each alone, element by element, with "
               f"gradcheck on small float64 inputs."])


def module_gradcheck(module, fn, inputs=(), **options):
    """directional_gradcheck of fn(*inputs) with respect to every parameter of `module` (an
    nn.Module, or anything with named_parameters()) and every input that requires a gradient.

    fn runs the module: e.g. module_gradcheck(model, lambda x: nt_xent(model(x)), [images]).
    The parameters must be float64 (module.to(dtype="float64")). They are named in the failure
    message as named_parameters() names them, the inputs as "input 0", "input 1", ... The
    module's buffers (batch norm's running statistics, which every training-mode forward pass
    updates) are put back as they were. `options` go to directional_gradcheck.
    """
    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    named = list(module.named_parameters())
    for name, p in named:
        if p.dtype != numpy.float64:
            raise TypeError(f"module_gradcheck: parameter {name!r} has dtype {p.dtype}; gradient "
                            f"checks need float64: call module.to(dtype='float64') first")
    buffers = [(b, b.copy()) for _, b in module.named_buffers()] \
        if hasattr(module, "named_buffers") else []
    names = [f"input {i}" for i in range(len(inputs))] + [name for name, _ in named]
    count = len(inputs)
    try:
        return directional_gradcheck(lambda *tensors: fn(*tensors[:count]),
                                     inputs + [p for _, p in named], names=names, **options)
    finally:
        for buffer, saved in buffers:
            buffer[...] = saved
