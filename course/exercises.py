"""The exercises, in the order a course teaches them: one op or one idea each.

Each exercise names the library code its handout file is cut from (`sources`: module and
top-level names, copied as they are), the marked regions a student writes (`blanks`: the lines
between `# course: begin NAME` and `# course: end NAME` in the library, with the name of what
they complete), the imports the file starts with, and the library names the student's file may
not use (`forbidden`: the op it is asked to write, under any of its names). `math` is what the
file says above its code: what to derive, in this project's words.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Exercise:
    name: str           # the file's name (after its number) and the grader's
    title: str
    math: str           # the derivation to do, written above the code
    imports: str        # the lines the file starts with
    sources: tuple      # ((module, (name, ...)), ...): copied from the library, in order
    blanks: tuple       # ((region, "what it completes"), ...)
    forbidden: tuple    # names (or dotted tails, "engine.backward") the file may not use
    drop: tuple = ()    # "Class.method" left out of a copied class

    def file_name(self, number):
        return f"{number:02d}_{self.name.replace('-', '_')}.py"


BROADCAST = """\
A binary op on arrays of different shapes first broadcasts them: numpy lines the shapes up on
the right, prepends axes of size 1 to the shorter one, and copies every axis of size 1 along the
other operand's axis. Forward, a value of b with shape (3, 1) is used by every column of
a + b with shape (2, 3, 4): it is read 2 * 4 times.

Derive: if one input value is read k times, its gradient is the sum of the k gradients that
reach those copies. So backward gets grad of the OUTPUT's shape and must sum it back down to
each input's shape: over the leading axes broadcasting added, then (keeping the axis) over every
axis where the input had size 1 and the output did not. That is unbroadcast(grad, shape).

    c = a + b:  dc/da = 1, dc/db = 1      ->  da = unbroadcast(g, a.shape), db = likewise
    c = a * b:  dc/da = b, dc/db = a      ->  da = unbroadcast(g * b, a.shape), db = ...

Write unbroadcast, Add.backward and Mul.backward. The checks use shapes with size-1 axes, a
missing leading axis, and x * x (one tensor as both inputs: the engine adds the two gradients).
"""

MATMUL = """\
C = A @ B for A (..., n, k), B (..., k, m): C[i, j] = sum_l A[i, l] B[l, j].

Derive, for an upstream G = dL/dC (..., n, m): A[i, l] is used in C[i, j] for every j, with
factor B[l, j], so dA[i, l] = sum_j G[i, j] B[l, j], that is dA = G B^T (n, m) @ (m, k). Likewise
dB[l, j] = sum_i A[i, l] G[i, j], dB = A^T G (k, n) @ (n, m). Check the shapes: each gradient has
its input's shape, and the transpose sits on the OTHER operand, on the side that makes the inner
sizes meet. Leading (batch) axes broadcast as in any binary op: sum them back (unbroadcast, given).

Write MatMul.backward. Checked on square and non-square shapes, a batch of matrices times one
matrix, and x @ x.
"""

REDUCTIONS = """\
A reduction reads many inputs into one output: y = sum over `axes` of x (or the mean, or the
maximum). Each input element feeds exactly one output element.

Derive: sum:  dx = g copied back along the reduced axes (each x contributes with factor 1).
        mean: dx = g / count copied back, count = the number of values averaged.
        max:  only the maximum moves y: dx = g where x is the maximum, 0 elsewhere. Where several
              elements tie for the maximum, y is not differentiable; this library (as torch.amax)
              splits g equally between the tied elements, so the gradients still add up to g.
"Copied back" is expand_to: put the reduced axes back with size 1 (unless keepdims kept them),
then broadcast to the input's shape.

Write expand_to, Mean.backward and Max.backward (Sum.backward is given; it uses your expand_to).
"""

EXP_LOG = """\
y = exp(x): dy/dx = exp(x) = y, so dx = g * y (save the output, not the input).
y = log(x): dy/dx = 1 / x, so dx = g / x.
log-softmax along an axis: y_i = x_i - log sum_j exp(x_j). Forward subtracts the maximum m first
(log sum exp(x) = m + log sum exp(x - m)), so exp never overflows. Derive: dy_i/dx_k =
[i = k] - softmax(x)_k, hence dx_k = g_k - softmax(x)_k * sum_i g_i, with softmax(x) = exp(y).

Write Exp.backward, Log.backward and LogSoftmax.backward.
"""

CROSS_ENTROPY = """\
For logits z (N, C) and class indices t (N,): L = -(1/N) sum_i log softmax(z_i)[t_i].

Forward, stably: subtract each row's maximum (the softmax does not change, exp cannot overflow),
then log softmax(z_i)[t] = shifted[i, t] - log sum_c exp(shifted[i, c]). Derive the backward:
dL/dz_ic = (softmax(z_i)_c - [c = t_i]) / N, times the upstream g (a scalar).

Write CrossEntropy's forward (from the max subtraction to the mean; save what backward needs)
and its backward. Checked with logits of size 1000 (an unshifted exp overflows), a batch of 1,
and upstream gradients other than 1.
"""

LINEAR = """\
y = x W^T + b for x (M, in), W (out, in), b (out,); leading axes of x beyond one are flattened
into the M rows. Derive, for g = dL/dy (M, out):

    dx = g W          (M, out) @ (out, in)
    dW = g^T x        (out, M) @ (M, in): a sum over the rows of the batch
    db = sum_m g_m    (out,): the bias is broadcast over the rows, so its gradient is summed

Write LinearReference.backward (return one gradient per input: two without a bias).
"""

RELU = """\
y = max(x, 0). dy/dx = 1 where x > 0 and 0 where x < 0; at x = 0 it is not differentiable and
this library (as PyTorch) takes 0. So dx = g where x > 0, else 0: forward saves the mask.

Write ReLU.backward.
"""

IM2COL = """\
A convolution reads each kh x kw window of the zero-padded input x_padded (N, C, Hp, Wp),
windows `stride` apart, Ho x Wo of them. im2col copies every window into a column:

    cols[n, (c, i, j), (p, q)] = x_padded[n, c, sh*p + i, sw*q + j]     (N, C*kh*kw, Ho*Wo)

so that the convolution becomes one matrix product. Loop over the kh*kw offsets (i, j), not over
pixels: for one offset, the pixels it reads in every window form a strided slice
(window_slices gives it). col2im is im2col's adjoint, used by backward: every column entry goes
back to the pixel it was copied from, and where windows overlap (stride < kernel) a pixel was
copied several times, so its entries are ADDED. Adjoint means <im2col(x), c> = <x, col2im(c)>
for every x and c: the grader checks exactly that.

Write im2col and col2im.
"""

CONV2D = """\
out[n, f, p, q] = b[f] + sum_{c,i,j} W[f, c, i, j] x_padded[n, c, sh*p + i, sw*q + j], computed
as out[n] = W (F, C*kh*kw) @ cols[n] (C*kh*kw, Ho*Wo). Derive, for G = dL/dout as (N, F, Ho*Wo):

    dW    = sum_n G[n] @ cols[n]^T        (F, C*kh*kw): the same filter at every image: sum over n
    db    = sum_{n, p, q} G[n, f, p, q]   (F,)
    dcols = W^T @ G[n] for each n         (N, C*kh*kw, Ho*Wo)
    dx    = col2im(dcols), the padding cut off

im2col, col2im and the helpers _columns and _image are given. Write Conv2dReference.backward.
Checked with stride 2 and padding, odd sizes, a batch of 1, and without a bias.
"""

MAX_POOL = """\
out[n, c, p, q] = max over the window of x_padded (padded with -inf). Forward saves, for each
window, the offset of its maximum (argmax, the first maximum in row-major order, as PyTorch).

Derive: only the maximum moves the output, so the window's gradient goes to that one pixel.
Windows overlap when stride < kernel: a pixel that is the maximum of several windows receives
the SUM of their gradients. Loop over the kh*kw offsets, as im2col does: for offset (i, j), add
g where argmax == i*kw + j onto that offset's strided slice of dx_padded; then cut the padding.

Write MaxPool2dReference.backward. Checked with kernel 3 stride 2 padding 1 (overlaps), odd
sizes and a batch of 1, and on an image of ties, where the first maximum alone gets g.
"""

BATCH_NORM = """\
Training mode, per channel over its n = N*H*W values: mu = mean(x), var = mean((x - mu)^2)
(biased: divided by n, not n - 1), sigma = sqrt(var + eps), x_hat = (x - mu) / sigma,
y = gamma x_hat + beta [+ residual] [then ReLU]. Derive the backward in closed form, not by
chaining the small ops: with g = dL/dy (masked by the ReLU's derivative when relu=True)

    dbeta  = sum(g)          dgamma = sum(g * x_hat)
    dx = gamma / (n sigma) * (n g - sum(g) - x_hat * sum(g * x_hat))

The last two terms exist because mu and sigma depend on every x of the channel: drop them and
the check fails. In evaluation mode mu and var are constants: dx = gamma g / sigma. The
residual's gradient is the masked g. Hint: sum(BN(x)) = n * sum(beta) does not depend on x, so a
check with an upstream of all ones sees nothing; the grader's upstream gradients are random.

Write BatchNormReference.backward (return dx, dgamma, dbeta, and the residual's when there is one).
"""

NT_XENT = """\
SimCLR's loss for projections z (2N, d); rows i and i+N are two views of one image.
u_i = z_i / ||z_i||, logits s_ik = u_i . u_k / T with s_ii masked, p_ik the softmax of row i,
L = -(1/2N) sum_i log p_{i, pos(i)} with pos(i) = i + N mod 2N (a cross-entropy per row).

Derive: D = dL/ds = g (p - onehot(pos)) / (2N). Each u_i appears in row i (as the query) AND in
column i of every other row (as a key): ds_ik/du_i = u_k / T and ds_ki/du_i = u_k / T, so
dL/du = (D + D^T) u / T. Then through the normalisation: dz_i = (du_i - u_i (u_i . du_i)) / ||z_i||
(moving z_i along itself does not change u_i).

Write NTXent.backward. Checked against the library's nt_xent (simclr/loss.py).
"""

SGD = """\
SGD with momentum, as torch.optim.SGD. For a parameter w with gradient g:

    d = g + weight_decay * w          weight decay first: it is part of the gradient
    b = d (first step), else b = momentum * b + d       the buffer, kept between steps
    d = d + momentum * b (nesterov) else d = b
    w = w - lr * d                    in place, on w's array

No derivative here: the grader runs your update and the library's for several steps and
compares the weights. Write SGD.update (the buffer lives in self.momentum_buffers[index]).
"""

LARS = """\
LARS as in SimCLR's official code. For a parameter w with gradient g:

    excluded (biases and batch norm's gamma and beta: at most one dimension):  trust = 1
    otherwise:   g = g + weight_decay * w;   trust = eta ||w|| / ||g||  (1 if a norm is 0)
    v = momentum * v + lr * trust * g       (v starts at 0; lr inside the buffer, unlike SGD)
    w = w - v

The layer-wise trust ratio lets every layer move by about eta of its own size. Write
one_dimensional (the default exclusion rule) and LARS.update; trust_ratio is given.
"""

ENGINE = """\
backward() of a loss visits every op of the graph once, from the loss back to the leaves, and
an op may only run its backward when the gradient of its output is complete: when every op that
USED that output has already added its share. Order the graph topologically (each tensor after
all of its inputs; backward walks that list reversed), with an explicit stack, not recursion
(a ResNet's graph is thousands of ops deep), and a visited set so that a tensor used twice
(x * x, a residual) appears once. Then accumulate: when gradients from two uses meet at one
tensor they are ADDED; a leaf adds into .grad (+=), so that gradients of two backward() calls
add up, and copies the first one (the array may be another tensor's gradient too).

A tensor made by an op has `_node` with `.inputs`; a leaf has `_node` None; FREED marks a graph
that an earlier backward consumed. Write topological_order and the accumulation in backward.
"""

EXERCISES = (
    Exercise("broadcast", "Broadcasting and unbroadcast", BROADCAST,
             "from autograd import Function\n"
             "from autograd.ops.arithmetic import check_same_float_dtype",
             (("autograd.ops.arithmetic", ("unbroadcast", "Add", "Mul")),),
             (("unbroadcast", "unbroadcast"), ("add-backward", "Add.backward"),
              ("mul-backward", "Mul.backward")),
             ("unbroadcast", "Add", "Mul", "Sub", "Div")),
    Exercise("matmul", "Matrix multiplication", MATMUL,
             "from autograd import Function\n"
             "from autograd.ops.arithmetic import check_same_float_dtype, unbroadcast",
             (("autograd.ops.arithmetic", ("MatMul",)),),
             (("matmul-backward", "MatMul.backward"),), ("MatMul", "matmul")),
    Exercise("reductions", "Sum, mean and max over axes", REDUCTIONS,
             "from autograd.backend import array_module\nfrom autograd.function import Function\n"
             "from autograd.ops.reduce import normalize_axes",
             (("autograd.ops.reduce", ("expand_to", "Sum", "Mean", "Max")),),
             (("expand-to", "expand_to"), ("mean-backward", "Mean.backward"),
              ("max-backward", "Max.backward")),
             ("expand_to", "Sum", "Mean", "Max")),
    Exercise("exp-log", "exp, log and log-softmax", EXP_LOG,
             "from autograd import Function, array_module",
             (("autograd.ops.elementwise", ("Exp", "Log")),
              ("nn.functional.activation", ("LogSoftmax",))),
             (("exp-backward", "Exp.backward"), ("log-backward", "Log.backward"),
              ("log-softmax-backward", "LogSoftmax.backward")),
             ("Exp", "Log", "LogSoftmax", "log_softmax", "LogSumExp", "logsumexp")),
    Exercise("cross-entropy", "A numerically stable cross-entropy", CROSS_ENTROPY,
             "from autograd import Function, array_module",
             (("nn.functional.loss", ("CrossEntropy",)),),
             (("cross-entropy-forward", "CrossEntropy.forward"),
              ("cross-entropy-backward", "CrossEntropy.backward")),
             ("CrossEntropy", "cross_entropy", "CrossEntropyCuda", "LogSoftmax", "log_softmax")),
    Exercise("linear", "The linear layer", LINEAR,
             "from autograd import Function\n"
             "from autograd.ops.arithmetic import check_same_float_dtype",
             (("nn.functional.linear", ("LinearReference",)),),
             (("linear-backward", "LinearReference.backward"),),
             ("LinearReference", "LinearThreaded", "LinearCuda", "linear", "Linear")),
    Exercise("relu", "ReLU", RELU, "from autograd import Function, array_module",
             (("nn.functional.activation", ("ReLU",)),),
             (("relu-backward", "ReLU.backward"),), ("ReLU", "relu")),
    Exercise("im2col", "im2col and its adjoint col2im", IM2COL,
             "from autograd import array_module\nfrom nn.functional.windows import window_slices",
             (("nn.functional.conv", ("im2col", "col2im")),),
             (("im2col", "im2col"), ("col2im", "col2im")),
             ("im2col", "col2im", "Conv2dReference", "sliding_window_view")),
    Exercise("conv2d", "Convolution by im2col", CONV2D,
             "from autograd import Function, array_module\n"
             "from nn.functional.conv import col2im, im2col\n"
             "from nn.functional.windows import check_conv_inputs, crop2d, output_size, pad2d",
             (("nn.functional.conv", ("Conv2dReference", "_columns", "_image")),),
             (("conv2d-backward", "Conv2dReference.backward"),),
             ("Conv2dReference", "Conv2dGemm", "Conv2dWinograd", "Conv2dCuda", "conv2d", "Conv2d")),
    Exercise("max-pool", "Max pooling", MAX_POOL,
             "from autograd import Function, array_module\n"
             "from nn.functional.windows import check_pool_window, crop2d, pad2d, window_slices",
             (("nn.functional.pooling", ("MaxPool2dReference",)),),
             (("max-pool-backward", "MaxPool2dReference.backward"),),
             ("MaxPool2dReference", "MaxPool2dChannelsLast", "MaxPool2dCuda", "max_pool2d",
              "MaxPool2d")),
    Exercise("batch-norm", "Batch norm in training mode", BATCH_NORM,
             "from autograd import Function, array_module",
             (("nn.functional.normalization", ("BatchNormReference", "_update_running_stats")),),
             (("batch-norm-backward", "BatchNormReference.backward"),),
             ("BatchNormReference", "BatchNormBlocked", "BatchNormCuda", "batch_norm",
              "batch_norm_reference", "BatchNorm1d", "BatchNorm2d")),
    Exercise("nt-xent", "NT-Xent, SimCLR's loss", NT_XENT,
             "from autograd import Function, array_module",
             (("course.references", ("MASK", "NTXent")),),
             (("nt-xent-backward", "NTXent.backward"),),
             ("NTXent", "nt_xent", "nt_xent_reference", "cross_entropy", "CrossEntropy",
              "normalize", "Normalize")),
    Exercise("sgd", "SGD with momentum", SGD,
             "from nn.optim.optimizer import Optimizer, non_negative",
             (("nn.optim.sgd", ("SGD",)),), (("sgd-update", "SGD.update"),), ("SGD",)),
    Exercise("lars", "LARS", LARS,
             "from autograd.backend import array_module\n"
             "from nn.optim.optimizer import Optimizer, non_negative",
             (("nn.optim.lars", ("trust_ratio", "one_dimensional", "LARS")),),
             (("lars-exclusion", "one_dimensional"), ("lars-update", "LARS.update")),
             ("LARS", "lars_step"), drop=("LARS.step",)),
    Exercise("engine", "The backward pass: topological order and accumulation", ENGINE,
             "from autograd.engine import FREED, _passes",
             (("autograd.engine", ("topological_order", "backward")),),
             (("topological-order", "topological_order"), ("accumulate", "backward")),
             ("topological_order", "engine.backward", "Tensor.backward")),
)

BY_NAME = {exercise.name: exercise for exercise in EXERCISES}


def numbered():
    """(number, exercise) in teaching order, numbered from 1."""
    return list(enumerate(EXERCISES, start=1))
