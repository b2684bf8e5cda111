"""Where downloaded and decoded data live. Cache files are written with
simclr.atomic_files.atomic_write, so an interrupted run never leaves a half-written file under the
final name."""
import hashlib
import os
import zipfile
from pathlib import Path

import numpy

from simclr.atomic_files import atomic_write

CACHE_SUBDIR = "simclr-from-scratch"


def default_cache_dir():
    """$XDG_CACHE_HOME/simclr-from-scratch, or ~/.cache/simclr-from-scratch."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / CACHE_SUBDIR


def fingerprint(*parts):
    """A short hex digest of `parts` (their repr), used to name cache files."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def save_arrays(path, arrays):
    """Write a dict of arrays to an uncompressed .npz at `path`, atomically. Uncompressed,
    because reading 150 MB of raw bytes is faster than inflating them."""
    with atomic_write(path) as file:
        numpy.savez(file, **arrays)


def load_arrays(path):
    """The dict of arrays saved at `path`, or None when the file is missing or unreadable (a
    cache that cannot be read is rebuilt, not reported)."""
    try:
        with numpy.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
