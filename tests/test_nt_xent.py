"""NT-Xent: matches a row-by-row cross-entropy, has a correct gradient, and behaves as the paper says."""
import math

import numpy
import pytest

from autograd import Tensor, gradcheck
from helpers import randn
from simclr.loss import nt_xent, nt_xent_reference


@pytest.mark.parametrize("n, d, temperature", [(2, 3, 0.5), (5, 8, 0.1), (8, 4, 1.0)])
def test_nt_xent_matches_brute_force_cross_entropy(xp, n, d, temperature):
    z = randn(xp, 2 * n, d, seed=n)
    ours = float(nt_xent(z, temperature).data)
    assert abs(ours - nt_xent_reference(z.numpy(), temperature)) < 1e-12


def test_nt_xent_gradient(xp):
    z = randn(xp, 6, 4, requires_grad=True)
    assert gradcheck(lambda z: nt_xent(z, 0.5), [z])


def test_nt_xent_of_random_projections_is_near_log_of_2n_minus_1(xp):
    n = 64
    z = randn(xp, 2 * n, 512, seed=3)  # random high-dimensional rows are nearly orthogonal
    assert abs(float(nt_xent(z, 0.5).data) - math.log(2 * n - 1)) < 0.05


def test_nt_xent_is_low_when_views_agree(xp):
    views = randn(xp, 8, 16, seed=4).data
    z = Tensor(xp.concatenate([views, views + 0.01 * views]))
    assert float(nt_xent(z, 0.1).data) < 0.1


def test_nt_xent_float32_stays_float32(xp):
    z = randn(xp, 8, 5, dtype="float32", requires_grad=True)
    loss = nt_xent(z, 0.5)
    loss.backward()
    assert loss.dtype == numpy.float32 and z.grad.dtype == numpy.float32


def test_nt_xent_rejects_an_odd_batch():
    with pytest.raises(ValueError, match=r"\(2N, d\).*\(5, 3\)"):
        nt_xent(Tensor(numpy.ones((5, 3))))
