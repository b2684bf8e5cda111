"""Scratch arrays that the convolutions reuse from call to call (and step to step), one set
per thread: a column matrix or a padded copy of a few images is allocated once, not at every
chunk of every layer."""
from autograd import array_module, parallel

_buffers = {}  # (purpose, module, dtype, shape, thread) -> array


def buffer(purpose, xp, shape, dtype):
    """A scratch array of `shape` for `purpose`, reused across calls by the calling thread.
    "padded" buffers start as zeros, and their users only ever write the interior, so the
    zero border is written once, not once per call; all others hold garbage."""
    key = (purpose, xp.__name__, str(dtype), shape, parallel.thread_index())
    if key not in _buffers:
        if len(_buffers) > 64 * parallel.get_num_threads():  # a model's shapes, per thread
            _buffers.clear()
        _buffers[key] = (xp.zeros if purpose == "padded" else xp.empty)(shape, dtype=dtype)
    return _buffers[key]


def pad(x, padding, capacity):
    """(n, H, W, C) -> (n, H+2ph, W+2pw, C) with zeros around each image, in a reused buffer
    of `capacity` images."""
    ph, pw = padding
    if ph == pw == 0:
        return x
    n, H, W, C = x.shape
    padded = buffer("padded", array_module(x), (capacity, H + 2 * ph, W + 2 * pw, C), x.dtype)
    padded[:n, ph:ph + H, pw:pw + W] = x
    return padded[:n]
