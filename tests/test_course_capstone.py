"""The capstone (the student's ops train SimCLR) and the switch it uses,
nn.functional.use_implementation: a Function of one's own in place of an op family's reference."""
import importlib
import os
import shutil
import threading

import numpy
import pytest

import nn.functional as F
from autograd import Tensor
from course import capstone
from course.__main__ import main
from course.handout import write_handout
from nn.functional import conv, normalization


@pytest.fixture(scope="module")
def solutions(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("capstone") / "solutions")
    write_handout(folder, solutions=True)
    return folder


def test_the_solutions_reproduce_the_librarys_run_to_float64_rounding(solutions):
    batches = capstone.views()
    library = capstone.train({}, batches)
    parts, _ = capstone.student_parts(solutions)
    mine = capstone.train(parts, batches)
    assert len(mine[0]) == capstone.STEPS == 3
    for a, b in zip(mine[0], library[0]):
        assert abs(a - b) <= capstone.TOLERANCE * abs(b)
    assert capstone.differences(mine, library) == ""
    assert library[0][0] != library[0][-1]          # the weights moved: three real steps


def test_capstone_passes_on_the_solutions_from_the_command_line(solutions, capsys):
    assert main(["check", solutions, "capstone"]) == 0
    assert "PASS  capstone" in capsys.readouterr().out


def test_a_planted_batch_norm_mistake_fails_the_capstone_naming_batch_norm(solutions, tmp_path,
                                                                            capsys):
    student = tmp_path / "student"
    shutil.copytree(solutions, student)
    path = student / "11_batch_norm.py"
    text = path.read_text()
    assert text.count("(n * grad - sum_g - x_hat * sum_g_x_hat)") == 1
    path.write_text(text.replace("(n * grad - sum_g - x_hat * sum_g_x_hat)",
                                 "(n * grad - x_hat * sum_g_x_hat)"))
    assert main(["check", str(student), "capstone"]) == 1
    out = capsys.readouterr().out
    named = out.split("when it alone is yours:")[1]
    assert "batch_norm (exercise batch-norm" in named and "11_batch_norm.py" in named
    for other in ("conv2d (", "linear (", "nt_xent (", "lars ("):
        assert other not in named


def test_the_capstone_on_the_blank_handout_names_the_op_not_yet_written(tmp_path, capsys):
    write_handout(str(tmp_path / "blank"))
    assert main(["check", str(tmp_path / "blank"), "capstone"]) == 1
    out = capsys.readouterr().out
    assert "raised NotImplementedError at" in out and "exercise" in out
    assert "Traceback" not in out


def test_the_capstone_says_which_file_is_missing(solutions, tmp_path, capsys):
    shutil.copytree(solutions, tmp_path / "s")
    os.remove(tmp_path / "s" / "09_conv2d.py")
    assert main(["check", str(tmp_path / "s"), "capstone"]) == 1
    assert "09_conv2d.py: no such file" in capsys.readouterr().out


REFERENCE_CONV = conv.Conv2dReference
LINEAR_REFERENCE = importlib.import_module("nn.functional.linear").LinearReference


class CountingConv(REFERENCE_CONV):
    calls = 0

    @staticmethod
    def forward(ctx, *args, **kwargs):
        CountingConv.calls += 1
        return REFERENCE_CONV.forward(ctx, *args, **kwargs)


def test_use_implementation_runs_the_given_function_and_restores_the_reference():
    x = Tensor(numpy.random.default_rng(0).standard_normal((2, 3, 5, 5)))
    w = Tensor(numpy.random.default_rng(1).standard_normal((4, 3, 3, 3)))
    reference = conv.Conv2dReference
    with F.use_implementation(conv2d=CountingConv):
        assert conv.implementation(x, w, (1, 1), (1, 1)) is CountingConv
        assert normalization.implementation(x) is normalization.BatchNormReference
        F.conv2d(x, w, padding=1)
    assert CountingConv.calls == 1
    assert conv.Conv2dReference is reference
    assert conv.implementation(x, w, (1, 1), (1, 1)) is not CountingConv


def test_use_implementation_refuses_unknown_families_and_non_functions_and_is_the_threads_own():
    with pytest.raises(ValueError, match="no op family 'conv3d'"):
        with F.use_implementation(conv3d=CountingConv):
            pass
    with pytest.raises(TypeError, match="is not a Function subclass"):
        with F.use_implementation(conv2d=lambda x: x):
            pass
    x = Tensor(numpy.zeros((1, 3, 5, 5)))
    w = Tensor(numpy.zeros((4, 3, 3, 3)))
    seen = {}

    def other_thread():  # runs the library's own conv2d while this thread swaps its own in
        seen["other"] = conv.implementation(x, w, (1, 1), (1, 1))
        with F.use_implementation(linear=LINEAR_REFERENCE):
            seen["other swapped"] = conv.implementation(x, w, (1, 1), (1, 1))
    with F.use_implementation(conv2d=CountingConv):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        seen["this"] = conv.implementation(x, w, (1, 1), (1, 1))
    assert seen["this"] is CountingConv
    assert seen["other"] is not CountingConv and seen["other"] is not conv.Conv2dReference
    assert seen["other swapped"] is conv.Conv2dReference
    assert conv.Conv2dReference.__name__ == "Conv2dReference"
