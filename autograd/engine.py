"""The backward pass: reverse-mode differentiation over the recorded graph.

1. Order the graph topologically with an iterative depth-first search (a ResNet-50
   graph is thousands of nodes deep; recursion would hit Python's limit).
2. Walk it from the output back: each node's Function.backward turns the gradient of
   its output into gradients of its inputs, which are summed when a tensor feeds
   several ops, and accumulated (+=) into `.grad` of the leaves.
3. Free the graph as it goes: saved arrays are released as soon as they are used.
"""
from . import parallel


class _FreedNode:
    """Marks a tensor whose graph an earlier backward() consumed."""


FREED = _FreedNode()


def topological_order(root):
    """Tensors made by ops, reachable from `root`, each after all of its inputs."""
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
            if parent._node is None:  # a leaf: accumulate into .grad
                if parent.grad is None:
                    parent.grad = parallel.copy(g)  # own it: g may alias another gradient
                else:
                    parent.grad += g
            elif id(parent) in grads:
                grads[id(parent)] = parallel.add(grads[id(parent)], g)  # a + b on all cores
            else:
                grads[id(parent)] = g
