"""The cases of the engine exercise: the student's topological_order and backward run the
backward pass of small graphs built from the library's Tensors, and are held to the library's
own backward on copies of the same graphs."""
import numpy

from autograd import Tensor

from .grading import Case, Mismatch
from .graders_ops import same

GRAPHS = {
    "(a * b + exp(b)) * a: leaves used twice": lambda a, b: (a * b + b.exp()) * a,
    "x * x": lambda a, b: a * a + b,
    "h * h, h = a + b: one op's output as both inputs": lambda a, b: (lambda h: h * h)(a + b),
    "a + b + a: one gradient array handed to two leaves": lambda a, b: a + b + a,
    "h = a @ b, h * h + h: an op's output used three times": lambda a, b: (
        lambda h: h * h + h)(a.reshape(3, 1) @ b.reshape(1, 3)),
}


def check_order(order, root):
    """Mismatch unless `order` lists every op-made tensor reachable from root once, each
    after its inputs."""
    seen, position = set(), {}
    for index, t in enumerate(order):
        if id(t) in position:
            raise Mismatch(f"topological_order lists a tensor twice (positions {position[id(t)]} "
                           f"and {index}): a tensor used by two ops must be visited once")
        position[id(t)] = index
    stack = [root]
    while stack:
        t = stack.pop()
        if id(t) in seen or t._node is None:
            continue
        seen.add(id(t))
        if id(t) not in position:
            raise Mismatch(f"topological_order left out a tensor of shape {t.shape} made by "
                           f"{t._node.function.__name__}")
        for parent in t._node.inputs:
            if parent._node is not None and position.get(id(parent), -1) > position[id(t)]:
                raise Mismatch(f"topological_order puts {t._node.function.__name__}'s output "
                               f"before its input made by {parent._node.function.__name__}")
            stack.append(parent)


def graph_case(label, build, m):
    def run(rng):
        a0, b0 = rng.standard_normal(3), rng.standard_normal(3)
        mine = [Tensor(a0.copy(), requires_grad=True), Tensor(b0.copy(), requires_grad=True)]
        ref = [Tensor(a0.copy(), requires_grad=True), Tensor(b0.copy(), requires_grad=True)]
        root = build(*mine)
        check_order(m.topological_order(root), root)
        upstream = rng.standard_normal(root.shape)
        m.backward(root, upstream)
        build(*ref).backward(upstream)
        for name, x, y in zip("ab", mine, ref):
            same(x.grad if x.grad is not None else numpy.zeros(3), y.grad,
                 f"{label}: gradient of leaf {name}")
    return Case(label, run, "gradients that meet at one tensor are ADDED (a tensor used twice "
                            "gets both shares); visit each tensor once, after every op that "
                            "used it has added its share (reverse topological order)")


def deep_case(m):
    def run(rng):
        x = Tensor(rng.standard_normal(2), requires_grad=True)
        y = x
        for _ in range(3000):
            y = y * 1.0 + 0.0
        m.backward(y, numpy.ones(2))
        same(x.grad, numpy.ones(2), "3000 ops deep: gradient of x")
    return Case("a chain 3000 ops deep", run,
                "use a loop with an explicit stack: recursion stops at Python's limit")


def accumulate_case(m):
    def run(rng):
        x = Tensor(rng.standard_normal(3), requires_grad=True)
        first, second = rng.standard_normal(3), rng.standard_normal(3)
        m.backward(x * 2.0, first)
        m.backward(x * 3.0, second)
        same(x.grad, 2 * first + 3 * second, "two backward() calls into one leaf: x.grad")
    return Case("two backward() calls into one leaf", run,
                "a leaf's .grad accumulates: copy the first gradient in, add (+=) the next ones")


def engine(m):
    return ([graph_case(label, build, m) for label, build in GRAPHS.items()]
            + [accumulate_case(m), deep_case(m)])
