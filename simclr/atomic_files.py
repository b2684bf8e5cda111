"""Writing a file so that a crash, a kill, a Ctrl-C or a full disk never leaves it half-written.

The new contents go to a temporary file beside the target (`.NAME.XXXXXX.part`, in the same
folder, so on the same file system), are flushed to the disk, and the temporary is renamed over
the target: a rename within one file system is atomic, so a reader sees the old file or the new
one, never a mix. On an error the temporary is removed; a kill leaves it behind, and
remove_temporaries clears such leftovers once nothing else can be writing them.
"""
import contextlib
import glob
import os
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_folder(folder):
    """Flush a folder's entries (a rename) to the disk, where the file system allows it."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """`with atomic_write(path) as file:` write `file`; on leaving the block without an error it
    replaces `path` whole (mode "wb" or "w"). The file gets the permissions open() would give
    it (0666 less the umask), not the 0600 of a temporary file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                                             suffix=".part")
    try:
        os.fchmod(descriptor, 0o666 & ~_umask())
        with os.fdopen(descriptor, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if isinstance(error, OSError) and error.errno is not None:  # say which file, and that
            raise OSError(error.errno, f"{error.strerror}; the file as it was before is kept",
                          path) from error                          # nothing was lost
        raise
    _sync_folder(folder)


def remove_temporaries(path):
    """Remove the temporaries that killed atomic_write calls for `path` left behind; only safe
    while nothing else writes `path` (a training run holds its folder's lock). Returns them."""
    pattern = os.path.join(glob.escape(os.path.dirname(os.path.abspath(path))),
                           "." + glob.escape(os.path.basename(path)) + ".*.part")
    removed = []
    for temporary in glob.glob(pattern):
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
            removed.append(temporary)
    return removed
