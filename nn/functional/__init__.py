"""The functional API: neural-network ops on Tensors, named and ordered as
torch.nn.functional. Each op is a Function (forward and backward side by side).

Each op family's file starts with its math and its reference implementation; the fast kernels
are in cpu/, picked by one small dispatcher per op. `with use_reference():` runs every op by
its reference instead (choice.py)."""
from autograd import cat, stack

from .choice import use_reference
from .activation import log_softmax, logsumexp, relu
from .conv import conv2d
from .linear import linear
from .loss import cross_entropy
from .normalization import batch_norm, normalize
from .pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d

__all__ = ["linear", "conv2d", "batch_norm", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
           "relu", "log_softmax", "logsumexp", "cross_entropy", "normalize", "cat", "stack",
           "use_reference"]
