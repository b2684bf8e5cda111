"""The mistakes students make, as data: each one a small edit of an exercise's solution.

Read it as a list for instructors: what goes wrong in each backward pass, and what the grader
says when it does. The kit's tests (tests/test_course_catalogue.py) apply every edit to the
solutions handout and assert that `check` fails that exercise with a message containing the
expected words, so that each mistake here is one the grader is known to catch and explain.

Each Mistake: the exercise, what the student did, the edits ((find, replace), ...; each `find`
occurs once in the solution file), and words the verdict (what was checked, the message and
the hint together) must contain.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Mistake:
    exercise: str
    what: str
    edits: tuple
    expect: tuple


M = Mistake
MISTAKES = (
    M("broadcast", "Mul's backward without unbroadcast: the gradient keeps the output's shape",
      (("grad_a = unbroadcast(grad * b, a.shape)", "grad_a = grad * b"),),
      ("mul of shapes", "Mul.backward returned a gradient of shape")),
    M("broadcast", "unbroadcast sums the leading axes but not the axes of size 1",
      (("    if stretched:\n        grad = grad.sum(axis=stretched, keepdims=True)\n", ""),),
      ("unbroadcast (2, 3, 4) -> (3, 1)", "shape")),
    M("broadcast", "unbroadcast sums the axes of size 1 away instead of keeping them",
      (("grad.sum(axis=stretched, keepdims=True)", "grad.sum(axis=stretched)"),),
      ("unbroadcast", "shape")),
    M("broadcast", "Mul's gradient multiplied by its own input instead of the other one",
      (("unbroadcast(grad * b, a.shape)", "unbroadcast(grad * a, a.shape)"),),
      ("mul of shapes", "gradient of input 0")),
    M("matmul", "the transpose on the wrong side of dA: B^T @ dC instead of dC @ B^T",
      (("unbroadcast(grad @ b.swapaxes(-1, -2), a.shape)",
        "unbroadcast(b.swapaxes(-1, -2) @ grad, a.shape)"),),
      ("(3, 4) @ (4, 5)", "02_matmul.py, line")),
    M("matmul", "dB as dC^T @ A: the product of the right matrices in the wrong order",
      (("a.swapaxes(-1, -2) @ grad, b.shape", "grad.swapaxes(-1, -2) @ a, b.shape"),),
      ("(3, 4) @ (4, 5)", "MatMul.backward returned a gradient of shape")),
    M("reductions", "mean's gradient not divided by the count",
      (("expand_to(grad / ctx.count,", "expand_to(grad,"),),
      ("mean over axis", "constant factor")),
    M("reductions", "max's gradient sent to every tied maximum",
      (("        winners /= winners.sum(axis=ctx.axes, keepdims=True)\n", ""),),
      ("tied maxima",)),
    M("reductions", "max's gradient sent to none of the tied maxima",
      (("winners /= winners.sum(axis=ctx.axes, keepdims=True)",
        "winners *= winners.sum(axis=ctx.axes, keepdims=True) == 1"),),
      ("tied maxima",)),
    M("reductions", "expand_to forgets to put the reduced axes back before broadcasting",
      (("    if not keepdims:\n        grad = xp.expand_dims(grad, axes)\n", ""),),
      ("sum over axis 1", "03_reductions.py, line")),
    M("exp-log", "exp's backward forgets the upstream gradient",
      (("return grad * out  # d e^x / dx = e^x", "return out"),),
      ("exp of shape", "gradient of input 0")),
    M("exp-log", "log's derivative taken as x instead of 1 / x",
      (("return grad / x", "return grad * x"),), ("log of shape", "gradient of input 0")),
    M("exp-log", "log-softmax's backward without the softmax term",
      (("return grad - softmax * grad.sum(axis=ctx.dim, keepdims=True)", "return grad"),),
      ("log-softmax", "gradient of input 0")),
    M("cross-entropy", "no maximum subtracted: exp overflows on logits of 1000",
      (("shifted = logits - logits.max(axis=1, keepdims=True)", "shifted = logits"),),
      ("size 1000", "yours is inf")),
    M("cross-entropy", "the backward ignores the upstream gradient",
      (("return grad_logits * (grad / n)", "return grad_logits / n"),),
      ("constant factor",)),
    M("cross-entropy", "the backward forgets the 1/N of the mean",
      (("return grad_logits * (grad / n)", "return grad_logits * grad"),),
      ("constant factor",)),
    M("linear", "the bias's gradient averaged over the rows instead of summed",
      (("grad_bias = rows.sum(axis=0)", "grad_bias = rows.mean(axis=0)"),),
      ("a bias", "gradient of input 2")),
    M("linear", "dW as x^T g: the transpose of the weight's gradient",
      (("grad_weight = rows.T @ x.reshape(-1, weight.shape[1])",
        "grad_weight = x.reshape(-1, weight.shape[1]).T @ rows"),),
      ("LinearReference.backward returned a gradient of shape",)),
    M("linear", "the leading axes of x not flattened into rows",
      (("rows = grad.reshape(-1, weight.shape[0])", "rows = grad"),), ("x (2, 3, 4)",)),
    M("relu", "ReLU's backward returns the mask, not the masked gradient",
      (("return grad * positive", "return positive"),), ("relu of shape", "gradient")),
    M("relu", "the gradient at x = 0 taken as 1 (x >= 0)",
      (("ctx.save_for_backward(x > 0)", "ctx.save_for_backward(x >= 0)"),),
      ("relu at x = 0",)),
    M("im2col", "col2im overwrites where overlapping windows must add",
      (("x_padded[window] += cols[:, :, i, j]", "x_padded[window] = cols[:, :, i, j]"),),
      ("col2im",)),
    M("im2col", "im2col reads the windows one pixel apart whatever the stride",
      (("cols[:, :, i, j] = x_padded[window]",
        "cols[:, :, i, j] = x_padded[(Ellipsis, slice(i, i + Ho), slice(j, j + Wo))]"),),
      ("stride 2", "im2col")),
    M("conv2d", "the weight's gradient from the first image only, without the sum over the batch",
      (("xp.tensordot(grad, _columns(x, ctx), axes=((0, 2), (0, 2)))",
        "grad[0] @ _columns(x, ctx)[0].T"),),
      ("gradient of input 1",)),
    M("conv2d", "the bias's gradient summed over the pixels but not over the batch",
      (("grad_bias = grad.sum(axis=(0, 2))", "grad_bias = grad.sum(axis=2)"),),
      ("Conv2dReference.backward returned a gradient of shape",)),
    M("max-pool", "each offset's slice overwritten instead of added",
      (("grad_padded[window] += grad * (argmax", "grad_padded[window] = grad * (argmax"),),
      ("kernel 3, stride 2", "gradient of input 0")),
    M("max-pool", "the padding not cut off the gradient",
      (("return crop2d(grad_padded, padding)", "return grad_padded"),),
      ("padding 1", "returned a gradient of shape")),
    M("batch-norm", "backward missing the mean-of-gradient term sum(g)",
      (("(n * grad - sum_g - x_hat * sum_g_x_hat)", "(n * grad - x_hat * sum_g_x_hat)"),),
      ("training", "gradient of input 0 (x", "without its -sum(g) term")),
    M("batch-norm", "backward missing the x_hat sum(g x_hat) term (sigma's dependence on x)",
      (("(n * grad - sum_g - x_hat * sum_g_x_hat)", "(n * grad - sum_g)"),),
      ("training", "without its -x_hat sum(g x_hat) term")),
    M("batch-norm", "backward counts n - 1 values (the unbiased variance) where forward used n",
      (("n = grad.size // grad.shape[1]", "n = grad.size // grad.shape[1] - 1"),),
      ("training", "n - 1 values per channel")),
    M("batch-norm", "the fused ReLU's mask forgotten in backward",
      (("            grad = grad * (out > 0)", "            pass"),),
      ("residual and ReLU", "before the ReLU's mask")),
    M("batch-norm", "evaluation mode differentiated as if the statistics were the batch's",
      (("if ctx.use_batch_stats:    #", "if True:    #"),), ("evaluation",)),
    M("nt-xent", "NT-Xent without the positive's second appearance (D u instead of (D + D^T) u)",
      (("(d_logits + d_logits.T) @ u", "d_logits @ u"),), ("temperature", "gradient of input 0")),
    M("nt-xent", "the normalisation's Jacobian forgotten: dz = du / ||z||",
      (("return (d_u - u * along_u) / norm", "return d_u / norm"),), ("gradient of input 0",)),
    M("nt-xent", "the temperature left out of du",
      (("@ u / ctx.temperature", "@ u"),), ("gradient of input 0",)),
    M("sgd", "momentum applied before weight decay",
      (("        if self.weight_decay:\n            direction = direction + self.weight_decay * "
        "param.data\n", ""),
       ("            direction = direction + self.momentum * buffer if self.nesterov else buffer\n",
        "            direction = direction + self.momentum * buffer if self.nesterov else buffer\n"
        "        if self.weight_decay:\n            direction = direction + self.weight_decay * "
        "param.data\n")),
      ("weight_decay=0.01", "after step 2")),
    M("sgd", "nesterov ignored",
      (("if self.nesterov else buffer", "if False else buffer"),), ("nesterov=True",)),
    M("lars", "LARS applied to biases and batch norm (nothing excluded)",
      (("    return param.data.ndim <= 1", "    return False"),), ("'fc.bias'",)),
    M("lars", "weight decay added to the excluded parameters",
      (("        if excluded:\n            scaled_lr = self.lr",
        "        if excluded:\n            grad = grad + self.weight_decay * weight\n"
        "            scaled_lr = self.lr"),), ("'fc.bias'",)),
    M("lars", "the trust ratio computed from the gradient before weight decay",
      (("            grad = grad + self.weight_decay * weight\n            scaled_lr = self.lr * "
        "trust_ratio(weight, grad, self.eta)",
        "            scaled_lr = self.lr * trust_ratio(weight, grad, self.eta)\n"
        "            grad = grad + self.weight_decay * weight"),), ("'conv.weight'",)),
    M("engine", "the topological sort by recursion (as micrograd's): a deep graph overflows",
      (("    order, visited = [], set()\n    stack = [(root, False)]\n",
        "    order, visited = [], set()\n\n    def visit(tensor):\n"
        "        if id(tensor) in visited or tensor._node is None:\n            return\n"
        "        visited.add(id(tensor))\n        for parent in tensor._node.inputs:\n"
        "            visit(parent)\n        order.append(tensor)\n"
        "    visit(root)\n    return order\n    stack = [(root, False)]\n"),),
      ("3000 ops deep", "RecursionError", "explicit stack")),
    M("engine", "the topological sort visits a shared node twice",
      (("        if id(tensor) in visited:\n            continue\n", ""),), ("twice",)),
    M("engine", "gradients meeting at a tensor overwrite each other instead of adding",
      (('grads[id(parent)] = _passes["add"](grads[id(parent)], g)', "grads[id(parent)] = g"),),
      ("one op's output", "gradient of leaf a")),
    M("engine", "a leaf's gradient assigned (=) instead of accumulated (+=)",
      (("parent.grad += g", "parent.grad = g"),), ("leaves used twice",)),
    M("engine", "a leaf's first gradient stored without a copy (two leaves share one array)",
      (('parent.grad = _passes["copy"](g)', "parent.grad = g"),), ("handed to two leaves",)),
)
