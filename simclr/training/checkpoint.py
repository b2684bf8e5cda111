"""Checkpoints: one .npz file with the model, the optimiser state and the training position.

What a checkpoint promises, and how:
- Whole or absent: written by simclr.atomic_files.atomic_write (a temporary file in the same folder,
  flushed to disk, renamed over the old one). A crash, a Ctrl-C, a full disk or a kill while
  writing leaves the previous checkpoint whole; the temporary a kill leaves behind is removed
  by the next run into that folder.
- Finite. A model whose weights, batch-norm statistics or momentum buffers hold an inf or a NaN
  is not worth continuing, and writing it would replace the last good one: save_checkpoint
  refuses (NonFiniteState), and load_checkpoint refuses such a file made by anything else.
- Readable only as data. numpy.load runs without pickle, so a checkpoint cannot run code.
- Like the other outputs of a run: read-write for its owner, readable by others as the umask
  allows (atomic_write gives it open()'s permissions, not a temporary file's 0600).
"""
import json
import os
import zipfile

import numpy

from simclr.cli import UsageError
from simclr.atomic_files import atomic_write


class TrainingDiverged(RuntimeError):
    """Training stopped: the loss, or the model, became NaN or infinite."""


FORMAT_VERSION = 1


class CheckpointError(UsageError, ValueError):
    """A file that is not a checkpoint of this program, or a damaged or non-finite one."""


class NonFiniteState(RuntimeError):
    """The state to save holds inf or NaN: training diverged."""


def non_finite(arrays):
    """The names of the floating-point arrays of a name -> array dict that hold inf or NaN."""
    return [name for name, array in arrays.items()
            if array.dtype.kind == "f" and not numpy.isfinite(array).all()]


def _arrays_to_save(model, optimizer, meta):
    arrays = {f"model/{name}": value for name, value in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for index, buffer in optimizer_state["momentum_buffers"].items():
        arrays[f"optimizer/momentum/{index}"] = buffer
    header = {"format": FORMAT_VERSION, "meta": meta,
              "optimizer": {key: value for key, value in optimizer_state.items()
                            if key != "momentum_buffers"}}
    return arrays, header


def save_checkpoint(path, model, optimizer, meta):
    """Write model.state_dict(), optimizer.state_dict() and the JSON-able dict `meta` to `path`,
    atomically. Raises NonFiniteState, writing nothing, if any of the arrays holds inf or NaN."""
    arrays, header = _arrays_to_save(model, optimizer, meta)
    bad = non_finite(arrays)
    if bad:
        raise NonFiniteState(f"{len(bad)} arrays hold inf or NaN ({', '.join(bad[:3])}"
                             f"{', ...' if len(bad) > 3 else ''})")
    arrays["header"] = numpy.frombuffer(json.dumps(header).encode(), dtype=numpy.uint8)

    with atomic_write(path) as file:
        numpy.savez(file, **arrays)


def checkpoint_path(path):
    """A checkpoint's path from what a user passes: the .npz file, or a run folder holding one."""
    return os.path.join(path, "checkpoint.npz") if os.path.isdir(path) else path


def load_checkpoint(path, flag="--resume"):
    """Read a checkpoint: returns (model_state, optimizer_state, meta). `flag` names the option
    that gave the path, for messages. Raises CheckpointError for anything that is not a whole,
    finite checkpoint of this program."""
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or "."
        what = f"{folder} holds no checkpoint.npz" if os.path.basename(path) == "checkpoint.npz" \
            and os.path.isdir(folder) else f"{path} does not exist"
        raise CheckpointError(f"{flag}: {what}; expected the --out folder of a training run "
                              f"(it holds checkpoint.npz) or the path of that file")
    try:
        archive = numpy.load(path, allow_pickle=False)
        if not isinstance(archive, numpy.lib.npyio.NpzFile):
            raise ValueError("it holds one array (.npy), not an archive of arrays")
        with archive:
            arrays = {key: archive[key] for key in archive.files}
        if "header" not in arrays:
            raise ValueError("it has no checkpoint header")
        if not all(isinstance(value, numpy.ndarray) for value in arrays.values()):
            raise ValueError("it holds files that are not arrays")
        header = json.loads(arrays.pop("header").tobytes().decode())
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as error:
        reason = "not a NumPy archive (.npz)" if "pickle" in str(error) else str(error)
        raise CheckpointError(f"{flag} {path}: not a checkpoint of simclr.train ({reason})") \
            from error
    if header.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{flag} {path}: checkpoint format {header.get('format')!r}, "
                              f"this version reads format {FORMAT_VERSION}")
    if not isinstance(header.get("meta"), dict) or not isinstance(header.get("optimizer"), dict) \
            or "config" not in header["meta"] or "step" not in header["meta"]:
        raise CheckpointError(f"{flag} {path}: the checkpoint's header lacks its settings or "
                              f"its step: not a checkpoint of simclr.train")
    bad = non_finite(arrays)
    if bad:
        raise CheckpointError(f"{flag} {path}: {len(bad)} arrays hold inf or NaN (first: "
                              f"{bad[0]}): the run it comes from diverged; use an earlier "
                              f"checkpoint")
    model_state = {key[len("model/"):]: value for key, value in arrays.items()
                   if key.startswith("model/")}
    optimizer_state = dict(header["optimizer"])
    optimizer_state["momentum_buffers"] = {
        int(key.rsplit("/", 1)[1]): value for key, value in arrays.items()
        if key.startswith("optimizer/momentum/")}
    return model_state, optimizer_state, header["meta"]
