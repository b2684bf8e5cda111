"""The course kit's pictures: the computation graph (DOT and PNG) and NT-Xent for a small batch,
each checked for what it shows against values computed here by hand."""
import re

import numpy
import pytest
from PIL import Image

import nn
from autograd import Tensor
from course.__main__ import main
from course.graph import MAX_DRAWN, Graph, demo_graph
from course.pictures import nt_xent_picture, nt_xent_picture_data, demo_projections
from simclr.loss import nt_xent, nt_xent_reference


def small_graph():
    """e = mean(d * d), d = sum over axis 1 of a * b: a broadcast, a reduction, a tensor used
    twice by one op. Returns the tensors and the gradients of each, worked out by hand."""
    rng = numpy.random.default_rng(0)
    a_values, b_values = rng.standard_normal((2, 3)), rng.standard_normal(3)
    a, b = Tensor(a_values, requires_grad=True), Tensor(b_values, requires_grad=True)
    c = a * b
    d = c.sum(axis=1)
    e = (d * d).mean()
    d_values = (a_values * b_values).sum(axis=1)
    grad_d = d_values                                   # de/dd = 2 d / 2
    grad_c = numpy.repeat(grad_d[:, None], 3, axis=1)   # sum's gradient: copied along axis 1
    hand = {"a": grad_c * b_values, "b": (grad_c * a_values).sum(axis=0), "Mul c": grad_c,
            "Sum": grad_d, "Mul d*d": numpy.full(2, 0.5), "Mean": numpy.array(1.0)}
    return (a, b, e), {name: float(numpy.linalg.norm(g)) for name, g in hand.items()}


def test_dot_names_every_op_with_its_shape_and_gradient_norm():
    (a, b, e), norms = small_graph()
    graph = Graph(e, names={"a": a, "b": b}).backward()
    assert graph.ops == [None, None, "Mul", "Sum", "Mul", "Mean"]
    expected = [("a (input)", (2, 3), norms["a"]), ("b (input)", (3,), norms["b"]),
                ("Mul", (2, 3), norms["Mul c"]), ("Sum", (2,), norms["Sum"]),
                ("Mul", (2,), norms["Mul d*d"]), ("Mean", (), norms["Mean"])]
    for i, (first, shape, norm) in enumerate(expected):
        assert graph.grad_norms[i] == pytest.approx(norm, rel=1e-12)
        assert graph.label(i) == [first, f"{shape} float64", f"|grad| = {norm:.4g}"]
    dot = graph.dot()
    for i in range(6):
        lines = "\\n".join(graph.label(i))  # DOT's line break, a backslash and an n
        assert f't{i} [label="{lines}"' in dot
    edges = re.findall(r"(t\d+) -> (t\d+)(?: \[label=\"(\d)\"\])?;", dot)
    assert edges == [("t0", "t2", "0"), ("t1", "t2", "1"), ("t2", "t3", ""),
                     ("t3", "t4", "0"), ("t3", "t4", "1"), ("t4", "t5", "")]
    assert dot.startswith("digraph computation {") and dot.rstrip().endswith("}")


def test_tracing_changes_no_gradient_and_leaves_show_this_backward_only():
    (a, b, e), _ = small_graph()
    (a2, b2, e2), _ = small_graph()
    b.grad = numpy.ones(3)  # an earlier backward's gradient: the box shows only this one's
    graph = Graph(e, names={"a": a, "b": b}).backward()
    e2.backward()
    numpy.testing.assert_array_equal(a.grad, a2.grad)
    numpy.testing.assert_array_equal(b.grad, b2.grad + 1)
    assert graph.grad_norms[1] == pytest.approx(numpy.linalg.norm(b2.grad), rel=1e-12)


def test_parameters_constants_and_names_are_marked():
    layer = nn.Linear(3, 2, rng=0).to(dtype="float64")
    x = Tensor(numpy.ones((4, 3)))
    y = layer(x) * 2.0
    graph = Graph(y, names=layer.named_parameters())
    kinds = {graph.label(i)[0]: graph.kind(i) for i in range(len(graph.tensors))}
    assert kinds == {"constant": "constant", "weight (parameter)": "parameter",
                     "bias (parameter)": "parameter", "LinearThreaded": "op", "Mul": "op"}
    assert len(graph.label(0)) == 2  # before backward: no gradient line
    graph.backward(numpy.ones((4, 2)))
    constants = [i for i in range(len(graph.tensors)) if graph.kind(i) == "constant"]
    assert all(len(graph.label(i)) == 2 for i in constants)  # a constant has no gradient
    assert 'fillcolor="#fde2c4"' in graph.dot()


def test_a_graph_freed_by_backward_is_refused_with_what_to_do():
    (_, _, e), _ = small_graph()
    e.backward()
    with pytest.raises(RuntimeError, match=r"trace it before.*graph.backward\(\)"):
        Graph(e)


def test_png_opens_and_grows_with_the_graph(tmp_path):
    (a, b, e), _ = small_graph()
    image = Graph(e, names={"a": a, "b": b}).backward().image()
    image.save(tmp_path / "small.png")
    with Image.open(tmp_path / "small.png") as reopened:
        assert reopened.format == "PNG" and reopened.mode == "RGB"
        assert 200 <= reopened.width <= 600 and 400 <= reopened.height <= 900  # 5 rows of boxes
    wide = demo_graph("conv", reference=True).image()
    assert wide.height > image.height and wide.width < 1200


def test_a_graph_too_big_to_read_is_refused_and_its_dot_still_written():
    x = Tensor(numpy.ones(2), requires_grad=True)
    y = x
    for _ in range(MAX_DRAWN):
        y = y * 1.0
    graph = Graph(y)
    with pytest.raises(ValueError, match=rf"has {2 * MAX_DRAWN + 1} tensors.*at most {MAX_DRAWN}"
                                         rf".*graph.dot\(\)"):
        graph.image()
    assert graph.dot().count(" -> ") == 2 * MAX_DRAWN


def test_expression_demo_sums_the_two_paths_into_each_input():
    graph = demo_graph("expression")
    a, b = 0.5, -1.5                                    # f = (a b + e^b) a
    by_name = {graph.label(i)[0]: graph.grad_norms[i] for i in range(len(graph.tensors))}
    assert by_name["a (input)"] == pytest.approx(abs(2 * a * b + numpy.exp(b)), rel=1e-12)
    assert by_name["b (input)"] == pytest.approx(abs(a * a + a * numpy.exp(b)), rel=1e-12)


@pytest.mark.parametrize("kind", ["conv", "mlp"])
def test_network_demos_name_every_parameter_and_reach_them_with_gradients(kind):
    graph = demo_graph(kind)
    parameters = [i for i in range(len(graph.tensors)) if graph.kind(i) == "parameter"]
    assert len(parameters) == {"conv": 5, "mlp": 4}[kind]
    assert all(graph.grad_norms[i] > 0 for i in parameters)
    assert graph.ops[-1] == "CrossEntropy"


# ----- NT-Xent ------------------------------------------------------------------------------
def test_nt_xent_picture_data_matches_a_hand_computation():
    z, temperature, n = demo_projections(images=3, dim=5, seed=1), 0.3, 3
    data = nt_xent_picture_data(z, temperature)
    for i in range(n):
        assert data["positives"][i] == i + n and data["positives"][i + n] == i
    numpy.testing.assert_array_equal(data["masked"], numpy.eye(2 * n, dtype=bool))
    u = z / numpy.linalg.norm(z, axis=1, keepdims=True)
    for i in range(2 * n):
        others = [k for k in range(2 * n) if k != i]
        weights = {k: numpy.exp(u[i] @ u[k] / temperature) for k in others}
        for k in others:
            assert data["similarity"][i, k] == pytest.approx(u[i] @ u[k], abs=1e-14)
            assert data["softmax"][i, k] == pytest.approx(weights[k] / sum(weights.values()),
                                                          rel=1e-12)
        assert data["softmax"][i, i] == 0.0
    numpy.testing.assert_allclose(data["softmax"].sum(axis=1), 1.0, rtol=1e-14)
    assert data["loss"] == pytest.approx(nt_xent_reference(z, temperature), rel=1e-12)


def test_nt_xent_gradient_of_the_similarities_gives_autograds_gradient_of_z():
    z_values, temperature = demo_projections(images=4, dim=6, seed=2), 0.5
    data = nt_xent_picture_data(z_values, temperature)
    z = Tensor(z_values, requires_grad=True)
    loss = nt_xent(z, temperature)
    loss.backward()
    assert loss.item() == pytest.approx(data["loss"], rel=1e-12)
    g = data["gradient"]
    assert (numpy.diag(g) == 0).all()
    norms = numpy.linalg.norm(z_values, axis=1, keepdims=True)
    u = z_values / norms
    grad_u = (g + g.T) @ u                           # s = u u^T: each pair appears twice
    grad_z = (grad_u - u * (u * grad_u).sum(axis=1, keepdims=True)) / norms  # through u = z/|z|
    numpy.testing.assert_allclose(z.grad, grad_z, rtol=1e-10, atol=1e-14)


def test_nt_xent_picture_is_one_png_of_three_panels(tmp_path):
    image = nt_xent_picture(demo_projections(images=4), row=5)
    assert 900 <= image.width <= 1600 and 300 <= image.height <= 600
    with pytest.raises(ValueError, match=r"row must be in 0..7"):
        nt_xent_picture(demo_projections(images=4), row=8)
    with pytest.raises(ValueError, match=r"shape \(2N, d\)"):
        nt_xent_picture_data(numpy.ones((3, 4)))


# ----- the command line -----------------------------------------------------------------------
def test_graph_and_nt_xent_commands_write_their_files(tmp_path, capsys):
    png, dot = tmp_path / "g.png", tmp_path / "g.dot"
    assert main(["graph", "--out", str(png), "--dot", str(dot), "--demo", "mlp"]) == 0
    assert Image.open(png).size[0] > 100 and dot.read_text().startswith("digraph")
    assert main(["nt-xent", "--out", str(tmp_path / "n.png"), "--images", "3"]) == 0
    assert Image.open(tmp_path / "n.png").size[0] > 500
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["graph", "--out", "g.png", "--demo", "resnet"], "argument --demo: invalid choice"),
    (["nt-xent", "--out", "n.png", "--images", "1"], "--images must be at least 2"),
    (["nt-xent", "--out", "n.png", "--row", "8"], r"--row must be in 0..7"),
    (["nt-xent", "--out", "n.png", "--temperature", "0"], "invalid positive number value: '0'"),
    (["nt-xent", "--out", "n.jpg"], "--out must name a .png file"),
    (["nt-xent", "--out", "no/such/folder/n.png"], "cannot write it"),
    ([], "required: VERB"),
])
def test_a_mistake_on_the_command_line_is_one_line_and_exit_status_2(argv, expected, capsys,
                                                                     tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m course: error: ")
    assert re.search(expected, err), err
