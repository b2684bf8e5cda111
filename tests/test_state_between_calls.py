"""State that one call could leave for the next, one case at a time: the collisions that were
bugs (a scratch array found again by its shape alone gave a convolution another one's pixels
as its zero padding), two threads of the caller's, a split that fails, no_grad() across threads,
and running statistics updated in place between a forward pass and its backward.
tests/test_compositions.py runs random chains of ops for the same reason."""
import threading
import time

import numpy
import pytest

import nn.functional as F
from autograd import Tensor, gradcheck, no_grad
from nn.functional.conv import Conv2dReference
from nn.runtime import threads as cpu_threads
from helpers import relative_error


# ----- the collisions that were bugs, one by one -------------------------------------------

def test_a_convolution_does_not_read_another_convolutions_pixels_as_its_padding():
    """conv(padding=1) of a 9x9 map pads it to 11x11; the backward of conv(padding=0) of its
    7x7 output pads the output gradient by 2, to 11x11 as well. With the padded array found
    by its shape alone, the second read the first's pixels as its zero border."""
    rng = numpy.random.default_rng(0)
    x, wa, wb = (Tensor(rng.standard_normal(s) * .1, requires_grad=grad)
                 for s, grad in [((2, 16, 9, 9), True), ((16, 16, 3, 3), False),
                                 ((16, 16, 3, 3), False)])
    assert gradcheck(lambda a, b, c: F.conv2d(F.conv2d(a, b, padding=1), c, padding=0),
                     [x, wa, wb])


def test_two_paddings_that_reach_one_padded_shape_in_one_forward_pass():
    """A 5x5 conv with padding 1 of a 3x3 map, then a 5x5 conv with padding 2 of its 1x1
    output: both pad to 5x5, in one forward pass, and the second must see zeros around its
    pixel. Checked against the reference, which allocates its padded copies afresh."""
    rng = numpy.random.default_rng(1)
    x, wa, wb = (Tensor(rng.standard_normal(s)) for s in [(2, 3, 3, 3), (3, 3, 5, 5),
                                                         (3, 3, 5, 5)])
    ours = F.conv2d(F.conv2d(x, wa, padding=1), wb, padding=2)
    reference = Conv2dReference.apply(Conv2dReference.apply(x, wa, padding=(1, 1)), wb,
                                   padding=(2, 2))
    assert relative_error(ours.data, reference.data) <= 1e-13


def test_convolutions_in_two_python_threads_do_not_share_scratch_arrays():
    """Two threads of the caller's (not the pool's) convolving images of one shape at once:
    each must have scratch arrays of its own, or one copies its columns over the other's."""
    rng = numpy.random.default_rng(2)
    weight = Tensor(rng.standard_normal((8, 8, 3, 3)))
    inputs = [Tensor(rng.standard_normal((4, 8, 20, 20))) for _ in range(2)]
    expected = [Conv2dReference.apply(x, weight, padding=(1, 1)).data for x in inputs]
    errors = [[], []]

    def convolve(which):
        for _ in range(30):
            out = F.conv2d(inputs[which], weight, padding=1)
            errors[which].append(relative_error(out.data, expected[which]))
    threads = [threading.Thread(target=convolve, args=(which,)) for which in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(errors[0] + errors[1]) <= 1e-13


# ----- other state that one call could leave for the next ----------------------------------

def test_a_failed_split_returns_only_when_every_piece_has_finished(monkeypatch):
    """The calling thread's piece fails at once while the pool's piece is still running: run
    must not return (or raise) before it ends, or it would write into the failed call's arrays
    while the next call runs."""
    before = cpu_threads.get_num_threads()
    cpu_threads.set_num_threads(2)
    try:
        if cpu_threads.get_num_threads() != 2:
            pytest.skip("NumPy's BLAS is not OpenBLAS here: the CPU kernels run one thread")
        finished = threading.Event()

        def piece(start, stop):
            if start == 0:
                raise ArithmeticError("the caller's piece")
            time.sleep(0.2)
            finished.set()
        with pytest.raises(ArithmeticError):
            cpu_threads.run(piece, [(0, 1), (1, 2)])
        assert finished.is_set()
    finally:
        cpu_threads.set_num_threads(before)


def test_no_grad_in_one_thread_leaves_the_others_recording():
    """no_grad() is the calling thread's: another thread, inside its own no_grad() block and
    leaving it while this one is inside, changes nothing here."""
    entered, left = threading.Event(), threading.Event()

    def other():
        with no_grad():
            entered.set()
            left.wait()
    thread = threading.Thread(target=other)
    thread.start()
    entered.wait()
    x = Tensor(numpy.ones(3), requires_grad=True)
    recorded = (x * 2).requires_grad
    with no_grad():
        left.set()
        thread.join()
        inside = (x * 2).requires_grad
    assert recorded and not inside and (x * 2).requires_grad


def test_evaluation_batch_norm_differentiates_with_the_statistics_of_its_forward_pass():
    """An evaluation-mode batch norm, then a training-mode one that updates the same running
    statistics in place before the first one's backward: the first must keep what it
    normalised with (a view of running_mean would give dgamma for the updated mean)."""
    rng = numpy.random.default_rng(4)
    x = rng.standard_normal((4, 3, 2, 2))

    def gamma_grad(update_in_between):
        mean, var = numpy.arange(3.0), numpy.ones(3)
        gamma = Tensor(numpy.full(3, 1.5), requires_grad=True)
        y = F.batch_norm(Tensor(x), mean, var, gamma, Tensor(numpy.zeros(3)), training=False)
        if update_in_between:
            F.batch_norm(Tensor(5 * x + 3), mean, var, training=True)
        y.backward(numpy.random.default_rng(5).standard_normal(y.shape))
        return gamma.grad
    numpy.testing.assert_array_equal(gamma_grad(True), gamma_grad(False))
