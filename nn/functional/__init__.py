"""The functional API: neural-network ops on Tensors, named and ordered as
torch.nn.functional. Each op is a Function (forward and backward side by side).

Each op family's file starts with its math and its reference implementation, and ends with
one dispatcher, `implementation()`, of the same shape in every file (dispatch.py): the
reference inside `with use_reference():`, else the kernel of the input's device, from the
CPU room (cpu/) or the CUDA room (cuda/)."""
from autograd import cat, stack

from .dispatch import use_implementation, use_reference
from .activation import log_softmax, logsumexp, relu
from .conv import conv2d
from .linear import linear
from .loss import cross_entropy
from .normalization import batch_norm, normalize
from .pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d

__all__ = ["linear", "conv2d", "batch_norm", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
           "relu", "log_softmax", "logsumexp", "cross_entropy", "normalize", "cat", "stack",
           "use_reference", "use_implementation"]
