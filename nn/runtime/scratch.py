"""Scratch arrays that the CPU's convolutions reuse from call to call (and step to step), one
set per thread: a column matrix or a padded copy of a few images is allocated once, not at
every chunk of every layer. (A GPU's memory pool reuses freed memory by itself.)

What one call leaves in a scratch array for the next is safe only if the next call depends on
nothing it does not write itself, or on nothing the key does not fix. Three rules keep it so:

- An array is found again by everything its contents depend on: what it is for, its dtype
  and shape. Plain scratch arrays hold garbage, which every user overwrites before reading.
  A padded array keeps its zero border from call to call, so its key holds the padding as
  well: the border is then the same region at every call, which no call writes (the view
  handed out is read-only). Keyed by its shape alone, an array padded by 1 around 9x9 images
  and one padded by 2 around 7x7 images would be one array (both are 11x11), and the second
  would read the first's pixels as zeros.
- Each thread has arrays of its own (threading.local), whether it is one of
  threads.py's threads or a thread of the caller's: two threads never share one.
- An array is valid until the same thread asks for the same key again. Every user here takes
  it, fills it and reads it within one piece of work (one chunk of one convolution), and no
  view of one ends up in an op's output or in what it saves for backward. When a thread holds
  more than MAX_ARRAYS arrays it forgets them all: a view still in use keeps its memory alive
  (a view holds its base), and the next request allocates afresh.
"""
import threading

import numpy

MAX_ARRAYS = 64  # arrays per thread before they are all forgotten: a model's shapes, and more
_local = threading.local()  # .arrays: this thread's {key: array}


def _reused(key, make):
    """This thread's array for `key`, made by make() the first time."""
    arrays = getattr(_local, "arrays", None)
    if arrays is None:
        arrays = _local.arrays = {}
    array = arrays.get(key)
    if array is None:
        if len(arrays) >= MAX_ARRAYS:
            arrays.clear()
        array = arrays[key] = make()
    return array


def buffer(purpose, shape, dtype):
    """A scratch array of `shape` for `purpose`, reused by the calling thread from call to
    call. It holds garbage: the caller writes every element it reads."""
    key = ("scratch", purpose, str(dtype), shape)
    return _reused(key, lambda: numpy.empty(shape, dtype=dtype))


def padded_images(x, padding, capacity):
    """(n, H, W, C) -> (n, H+2ph, W+2pw, C) with zeros around each image, in a reused array
    of `capacity` images; n <= capacity. (windows.pad2d pads NCHW arrays into a new array,
    for the references; this is the kernels' channels-last padding, into reused memory.)
    The array starts as zeros and only its interior is ever written, so the zeros around it
    are written once, not once per call; it is found again by (padding, shape), which fixes
    where that border lies (see the module docstring)."""
    ph, pw = padding
    if ph == pw == 0:
        return x
    n, H, W, C = x.shape
    shape = (capacity, H + 2 * ph, W + 2 * pw, C)
    key = ("padded", (ph, pw), str(x.dtype), shape)
    padded = _reused(key, lambda: numpy.zeros(shape, dtype=x.dtype))
    padded[:n, ph:ph + H, pw:pw + W] = x
    images = padded[:n]
    images.flags.writeable = False  # the border stays zero: nobody can write through this view
    return images
