"""Checkpoints: one .npz file with the model, the optimiser state and the training position.

Written atomically: to a temporary file in the same folder, flushed to disk, then renamed over
the old one. A crash, a Ctrl-C or a full disk while writing leaves the previous checkpoint whole.
"""
import json
import os
import tempfile

import numpy

FORMAT_VERSION = 1


def save_checkpoint(path, model, optimizer, meta):
    """Write model.state_dict(), optimizer.state_dict() and the JSON-able dict `meta` to `path`."""
    arrays = {f"model/{name}": value for name, value in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for index, buffer in optimizer_state["momentum_buffers"].items():
        arrays[f"optimizer/momentum/{index}"] = buffer
    header = {"format": FORMAT_VERSION, "meta": meta,
              "optimizer": {key: value for key, value in optimizer_state.items()
                            if key != "momentum_buffers"}}
    arrays["header"] = numpy.frombuffer(json.dumps(header).encode(), dtype=numpy.uint8)

    folder = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".checkpoint-", suffix=".npz")
    try:
        with os.fdopen(descriptor, "wb") as file:
            numpy.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def load_checkpoint(path):
    """Read a checkpoint: returns (model_state, optimizer_state, meta)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}: pass the --out folder of an earlier run "
                                f"(it holds checkpoint.npz) or the path of the .npz file")
    try:
        with numpy.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
        header = json.loads(arrays.pop("header").tobytes().decode())
    except Exception as error:
        raise ValueError(f"{path} is not a readable checkpoint ({error})") from error
    if header.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {header.get('format')}, "
                         f"this version reads format {FORMAT_VERSION}")
    model_state = {key[len("model/"):]: value for key, value in arrays.items()
                   if key.startswith("model/")}
    optimizer_state = dict(header["optimizer"])
    optimizer_state["momentum_buffers"] = {
        int(key.rsplit("/", 1)[1]): value for key, value in arrays.items()
        if key.startswith("optimizer/momentum/")}
    return model_state, optimizer_state, header["meta"]
