"""The backward pass: reverse-mode differentiation over the recorded graph.

1. Order the graph topologically with an iterative depth-first search (a ResNet-50
   graph is thousands of nodes deep; recursion would hit Python's limit).
2. Walk it from the output back: each node's Function.backward turns the gradient of
   its output into gradients of its inputs, which are summed when a tensor feeds
   several ops, and accumulated (+=) into `.grad` of the leaves.
3. Free the graph as it goes: saved arrays are released as soon as they are used.

The engine touches gradient arrays in two ways of its own: two gradients that meet at a
tensor are summed (a + b), and a leaf's first gradient is copied into its `.grad` (the array
may alias another gradient). It runs no threads; faster passes are installed by an explicit
call to `set_gradient_passes`, never by an import: a training program calls
nn.runtime.use_threaded_gradients(), which installs passes that split the work over the CPU's
threads (a leaf's gradient can be as large as a batch of images).
"""


def _plain_sum(a, b):
    return a + b


def _plain_copy(a):
    return a.copy()


_passes = {"add": _plain_sum, "copy": _plain_copy}


def set_gradient_passes(add=None, copy=None):
    """Sum the gradients that meet at one tensor with add(a, b) -> a new array equal to a + b,
    and copy a leaf's gradient with copy(a) -> a new array equal to a (None: the plain NumPy or
    CuPy expression). Returns the previous (add, copy)."""
    previous = _passes["add"], _passes["copy"]
    _passes["add"] = add or _plain_sum
    _passes["copy"] = copy or _plain_copy
    return previous


class _FreedNode:
    """Marks a tensor whose graph an earlier backward() consumed."""


FREED = _FreedNode()


def topological_order(root):
    """Tensors made by ops, reachable from `root`, each after all of its inputs."""
    # course: begin topological-order
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        tensor, inputs_done = stack.pop()
        if inputs_done:
            order.append(tensor)
            continue
        if id(tensor) in visited:
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        for parent in tensor._node.inputs:
            if parent._node is FREED:
                raise RuntimeError(
                    "backward() reached a tensor whose graph was already freed by an earlier "
                    "backward(); run the forward pass again before calling backward() again")
            if parent._node is not None and id(parent) not in visited:
                stack.append((parent, False))
    return order
    # course: end topological-order


def backward(root, grad):
    """Accumulate d(sum(root * grad))/d(leaf) into every leaf's `.grad`."""
    grads = {id(root): grad}
    for tensor in reversed(topological_order(root)):
        node = tensor._node
        tensor._node = FREED
        grad_out = grads.pop(id(tensor), None)
        if grad_out is None:  # no path from this tensor to the root carries a gradient
            continue
        input_grads = node.function.backward(node.ctx, grad_out)
        if not isinstance(input_grads, tuple):
            input_grads = (input_grads,)
        name = node.function.__name__
        if len(input_grads) != len(node.inputs):
            raise RuntimeError(f"{name}.backward returned {len(input_grads)} gradients for "
                               f"{len(node.inputs)} inputs")
        node.ctx = None  # release the arrays saved for backward
        for position, (parent, g) in enumerate(zip(node.inputs, input_grads)):
            if g is None or not parent.requires_grad:
                continue
            if g.shape != parent.shape or g.dtype != parent.dtype:
                raise RuntimeError(
                    f"{name}.backward returned a gradient of shape {g.shape} and dtype {g.dtype} "
                    f"for input {position} of shape {parent.shape} and dtype {parent.dtype}")
            # course: begin accumulate
            if parent._node is None:  # a leaf: accumulate into .grad
                if parent.grad is None:
                    parent.grad = _passes["copy"](g)  # own it: g may alias another gradient
                else:
                    parent.grad += g
            elif id(parent) in grads:
                grads[id(parent)] = _passes["add"](grads[id(parent)], g)
            else:
                grads[id(parent)] = g
            # course: end accumulate
