"""Seeing the graph: the computation behind a Tensor as DOT text and as a PNG.

Every Tensor made by an op holds a Node (autograd/function.py): the op's Function and the input
Tensors. Following `tensor._node.inputs` from the output back to the leaves gives the whole
graph that backward() will walk. Each box shows one Tensor: the op that made it (or what kind of
leaf it is: a parameter, an input that requires a gradient, a constant), its shape and dtype,
and after backward the norm of the gradient that reached it.

backward() frees the graph as it goes (engine.py) and keeps gradients only on leaves, so the
graph is traced first and then differentiated through `Graph.backward()`, which runs the
engine's own backward pass with each op's Function wrapped to note the gradient of its output:

    graph = Graph(loss, names=model.named_parameters())
    graph.backward()
    open("graph.dot", "w").write(graph.dot())      # Graphviz: dot -Tpng graph.dot > graph.png
    graph.image().save("graph.png")                # or Pillow alone, up to MAX_DRAWN tensors
"""
import numpy

from autograd import Tensor, to_numpy
from autograd.engine import FREED
from nn import Parameter

from . import canvas

MAX_DRAWN = 120  # tensors: beyond this a picture of boxes and arrows is no longer readable


class Graph:
    """The tensors behind `root` (each after its inputs, leaves first), the edges between them,
    and after backward() the norm of each one's gradient.

    names: optional (name, Tensor) pairs or a dict name -> Tensor (e.g. model.named_parameters())
    to label the leaves (and any tensor) by name."""

    def __init__(self, root, names=None):
        if not isinstance(root, Tensor):
            raise TypeError(f"Graph: expected a Tensor, got a {type(root).__name__}")
        pairs = names.items() if isinstance(names, dict) else (names or ())
        self.names = {id(t): name for name, t in pairs}
        self.root = root
        self.tensors = _tensors_behind(root)
        self.index = {id(t): i for i, t in enumerate(self.tensors)}
        self.ops = [None if t._node is None else t._node.function.__name__ for t in self.tensors]
        self.edges = [(self.index[id(parent)], i, position)
                      for i, t in enumerate(self.tensors) if t._node is not None
                      for position, parent in enumerate(t._node.inputs)]
        self.grad_norms = None

    def backward(self, grad=None):
        """root.backward(grad), by the engine, noting the norm of the gradient that reaches each
        tensor (a leaf: its .grad's change). Afterwards the graph is freed, as always."""
        norms = [None] * len(self.tensors)

        def note(i, grad_out):
            norms[i] = _norm(grad_out)
        leaves_before = {i: (None if t.grad is None else t.grad.copy())
                         for i, t in enumerate(self.tensors) if t._node is None}
        for i, t in enumerate(self.tensors):
            if t._node is not None:
                t._node.function = _noting(t._node.function, note, i)
        self.root.backward(grad)
        for i, before in leaves_before.items():
            after = self.tensors[i].grad
            if after is not None:
                norms[i] = _norm(after if before is None else after - before)
        self.grad_norms = norms
        return self

    def kind(self, i):
        """'op', 'parameter', 'input' (a leaf that requires a gradient) or 'constant'."""
        t = self.tensors[i]
        if t._node is not None:
            return "op"
        if not t.requires_grad:
            return "constant"
        return "parameter" if isinstance(t, Parameter) else "input"

    def label(self, i):
        """The lines of tensor i's box: what it is, its shape and dtype, its gradient's norm."""
        t, name = self.tensors[i], self.names.get(id(self.tensors[i]))
        kind = self.kind(i)
        first = self.ops[i] if kind == "op" else kind
        if name is not None:
            first = f"{name} ({first})"
        lines = [first, f"{tuple(t.shape)} {t.dtype}"]
        if self.grad_norms is not None and kind != "constant":
            norm = self.grad_norms[i]
            lines.append("no gradient" if norm is None else f"|grad| = {norm:.4g}")
        return lines

    def dot(self):
        """The graph in Graphviz's DOT language: one box per tensor, an arrow from each input to
        the op's output (numbered by input position where an op takes several)."""
        fill = {"op": "white", "parameter": "#fde2c4", "input": "#dbe9f6", "constant": "#ececec"}
        lines = ["digraph computation {", "  rankdir=TB;",
                 '  node [shape=box, style="rounded,filled", fontname="Helvetica"];']
        for i in range(len(self.tensors)):
            text = "\\n".join(self.label(i)).replace('"', '\\"')
            lines.append(f'  t{i} [label="{text}", fillcolor="{fill[self.kind(i)]}"];')
        arity = {i: sum(1 for _, out, _ in self.edges if out == i)
                 for i in range(len(self.tensors))}
        for parent, child, position in self.edges:
            extra = f' [label="{position}"]' if arity[child] > 1 else ""
            lines.append(f"  t{parent} -> t{child}{extra};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def image(self):
        """The graph as a Pillow image: leaves in the top row, the output at the bottom."""
        if len(self.tensors) > MAX_DRAWN:
            raise ValueError(
                f"the graph has {len(self.tensors)} tensors, too many to draw readably (at most "
                f"{MAX_DRAWN}): write graph.dot() and render it with Graphviz, or draw a "
                f"smaller piece (one block of the network, or one op)")
        return _draw(self, _layers(self))


def _tensors_behind(root):
    """Every tensor that root was computed from, each after its inputs (iterative: no
    recursion limit), root last."""
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        tensor, inputs_done = stack.pop()
        if inputs_done:
            order.append(tensor)
            continue
        if id(tensor) in seen:
            continue
        if tensor._node is FREED:
            raise RuntimeError("this graph was freed by backward(): trace it before, with "
                               "Graph(tensor), then call graph.backward() instead")
        seen.add(id(tensor))
        stack.append((tensor, True))
        if tensor._node is not None:
            stack.extend((parent, False) for parent in reversed(tensor._node.inputs)
                         if id(parent) not in seen)
    return order


def _noting(function, note, i):
    """A subclass of `function` (same name) whose backward first notes its gradient."""
    def backward(ctx, grad_out):
        note(i, grad_out)
        return function.backward(ctx, grad_out)
    return type(function.__name__, (function,), {"backward": staticmethod(backward)})


def _norm(array):
    values = to_numpy(array).astype("float64", copy=False)
    return float(numpy.sqrt((values * values).sum()))


def _rows_of(graph):
    """The row of each tensor, the output's the last: every op one row below its lowest input,
    every leaf in the row just above the first op that reads it (the top of its branch)."""
    count = len(graph.tensors)
    row = [0] * count
    for i, t in enumerate(graph.tensors):  # inputs come first, so their rows are known
        if t._node is not None:
            row[i] = 1 + max((row[p] for p, c, _ in graph.edges if c == i), default=0)
    for i, t in enumerate(graph.tensors):
        readers = [row[c] for p, c, _ in graph.edges if p == i]
        if t._node is None and readers:
            row[i] = min(readers) - 1
    return [r - min(row) for r in row]


def _layers(graph):
    """Rows of items, top to bottom, and each edge's route through them. An item is a tensor
    index or, where an edge passes a row on its way down, a waypoint ("via", edge, row), so
    that long arrows run between boxes, not through them. Within a row the order is chosen so
    that arrows cross less: each item moves towards the mean position of its neighbours in the
    row above (sweeping down) or below (sweeping up), four sweeps."""
    row_of = _rows_of(graph)
    rows = [[] for _ in range(max(row_of) + 1)]
    for i, r in enumerate(row_of):
        rows[r].append(i)
    above, below, routes = {}, {}, []
    for e, (parent, child, _) in enumerate(graph.edges):
        route = [parent] + [("via", e, r) for r in range(row_of[parent] + 1, row_of[child])]
        for item in route[1:]:
            rows[item[2]].append(item)
        route.append(child)
        for upper, lower in zip(route, route[1:]):
            below.setdefault(upper, []).append(lower)
            above.setdefault(lower, []).append(upper)
        routes.append(route)
    for sweep in range(4):
        neighbours = above if sweep % 2 == 0 else below
        for row in (rows[1:] if sweep % 2 == 0 else rows[-2::-1]):
            place = {item: (x + 0.5) / len(r) for r in rows for x, item in enumerate(r)}
            row.sort(key=lambda item: numpy.mean([place[n] for n in neighbours[item]])
                     if neighbours.get(item) else place[item])
    return rows, routes


def _draw(graph, layout):
    """Boxes row by row, each row centred; arrows first (along their waypoints), boxes on top."""
    rows, routes = layout
    fills = {"op": canvas.OPERATION, "parameter": canvas.PARAMETER, "input": canvas.LEAF,
             "constant": canvas.CONSTANT}
    pad, gap_x, gap_y, via_width = 8, 18, 46, 6
    sizes = {i: canvas.text_size("\n".join(graph.label(i)), canvas.SMALL)
             for row in rows for i in row if not isinstance(i, tuple)}
    row_height = max(h for _, h in sizes.values()) + 2 * pad

    def width(item):
        return via_width if isinstance(item, tuple) else sizes[item][0] + 2 * pad
    widths = [sum(width(i) for i in row) + gap_x * (len(row) - 1) for row in rows]
    image_width = max(widths) + 2 * gap_x
    image, draw = canvas.blank(image_width, len(rows) * (row_height + gap_y) + gap_y)
    boxes = {}
    for r, row in enumerate(rows):
        x, y = (image_width - widths[r]) / 2, gap_y + r * (row_height + gap_y)
        for item in row:
            boxes[item] = (x, y, x + width(item), y + row_height)
            x = boxes[item][2] + gap_x
    arity = {child: position + 1 for _, child, position in graph.edges}
    for (_, child, position), route in zip(graph.edges, routes):
        start = boxes[route[0]]
        points = [((start[0] + start[2]) / 2, start[3])]
        for via in route[1:-1]:  # straight down through the row it crosses
            middle = (boxes[via][0] + boxes[via][2]) / 2
            points += [(middle, boxes[via][1]), (middle, boxes[via][3])]
        end = boxes[child]  # input k arrives at (k+1)/(arity+1) of the top edge
        points.append((end[0] + (end[2] - end[0]) * (position + 1) / (arity[child] + 1), end[1]))
        if len(points) > 2:
            draw.line(points[:-1], fill=canvas.LINE)
        canvas.arrow(draw, points[-2], points[-1])
    for i, box in boxes.items():
        if not isinstance(i, tuple):
            draw.rounded_rectangle(box, radius=6, fill=fills[graph.kind(i)], outline=canvas.LINE)
            canvas.draw_text(draw, ((box[0] + box[2]) / 2, box[1] + pad),
                             "\n".join(graph.label(i)), canvas.SMALL, centre=True)
    return image


# ----- small graphs to look at ----------------------------------------------------------------
DEMOS = ("conv", "mlp", "expression")


def demo_graph(kind="conv", reference=False, seed=0):
    """A small computation, traced and differentiated (float64):

    conv        images -> conv 3x3 -> batch norm (training) -> ReLU -> global mean -> linear ->
                cross-entropy: one stage of a ResNet and a classifier
    mlp         x -> linear -> ReLU -> linear -> cross-entropy
    expression  (a * b + exp(b)) * a on two numbers: a and b each feed two ops, so their
                gradients are sums of two paths (why backward accumulates with +=)

    reference=True runs every op by its reference (nn.functional.use_reference): batch norm then
    appears as the Tensor ops it is written with."""
    import nn.functional as F

    if kind not in DEMOS:
        raise ValueError(f"unknown demo {kind!r}: expected one of {', '.join(DEMOS)}")
    rng = numpy.random.default_rng(seed)
    if kind == "expression":
        a, b = (Tensor(numpy.array(v), requires_grad=True) for v in (0.5, -1.5))
        return Graph((a * b + b.exp()) * a, names={"a": a, "b": b}).backward()
    layers, x, forward = _demo_network(kind, rng)
    names = {"images" if kind == "conv" else "x": x}
    for prefix, layer in layers.items():
        names.update({f"{prefix}.{name}": p for name, p in layer.named_parameters()})
    with F.use_reference(reference):
        loss = F.cross_entropy(forward(x), numpy.arange(x.shape[0]) % 2)
        return Graph(loss, names=names).backward()


def _demo_network(kind, rng):
    """(named float64 layers, an input batch, the forward pass to the logits) of a demo."""
    import nn
    import nn.functional as F

    if kind == "mlp":
        layers = {"fc1": nn.Linear(3, 5, rng=rng), "fc2": nn.Linear(5, 2, rng=rng)}
        x = Tensor(rng.standard_normal((4, 3)))

        def forward(x):
            return layers["fc2"](F.relu(layers["fc1"](x)))
    else:
        layers = {"conv": nn.Conv2d(3, 4, 3, padding=1, bias=False, rng=rng),
                  "bn": nn.BatchNorm2d(4), "fc": nn.Linear(4, 2, rng=rng)}
        x = Tensor(rng.standard_normal((2, 3, 5, 5)))

        def forward(x):
            features = F.relu(layers["bn"](layers["conv"](x)))         # (N, 4, 5, 5)
            return layers["fc"](F.adaptive_avg_pool2d(features, 1).reshape(x.shape[0], 4))
    for layer in layers.values():
        layer.to(dtype="float64")
    return layers, x, forward
