"""python -m bench.rehearse MODULE [ARGS...]: run a program on the CPU's rehearsal of a GPU.

    python -m bench.rehearse simclr.train --backend cupy --dataset synthetic ...
    python -m bench.rehearse pytest -m gpu tests/test_cuda_kernels.py
    python -m bench.rehearse -c "import cupy; cupy.show_config()"
    python -m bench.rehearse --program nvidia-smi

For this one process, `import cupy` gives the rehearsal's module (bench/rehearsal_cupy.py:
NumPy arrays that say they live on a GPU, bench/rehearsal.py), and MODULE runs as `python -m
MODULE` would run it (as __main__, through runpy), with the same arguments. The program takes
the device path as it would on a GPU: every CuPy call, host synchronisation and kernel launch
happens, on NumPy. The numbers it prints are NumPy's on this CPU, not a GPU's: they mean
nothing as measurements. The children a benchmark starts (bench.common.run_child) rehearse
too: REHEARSAL_VARIABLE tells them to start through this wrapper.

Some things the rehearsal cannot stand in for: NCCL, CuPy's kernel classes and memory pool, a
device's properties, PyTorch on CUDA, and any program that is not Python (--program names one).
A program that asks for one of them stops with exit status NOT_REHEARSED (97) and a last line
"not rehearsed: WHAT", also added to the notes of its bench.gpu_check stage (bench.common.note):
the stage then says exactly that, instead of passing on NumPy's namesake or failing as if the
code were wrong. Under pytest, a test that asks for one is skipped with that reason.

The last line of a run that ends otherwise counts what the rehearsal saw: launches, host
synchronisations and host-to-device transfers. Exit status: the program's own.
"""
import contextlib
import importlib.abc
import os
import runpy
import sys

from bench.common import NOT_REHEARSED, REHEARSAL_VARIABLE, note
from bench.rehearsal import NotRehearsed, rehearsal

PROG = "bench.rehearse"
_FOR_THE_PROCESS = contextlib.ExitStack()   # entered once, never left (held here, or the
                                            # rehearsal's generator would be collected and end)


class CupyOwnModules(importlib.abc.MetaPathFinder):
    """Refuses every submodule of cupy and cupyx (cupy.cuda.nccl, cupyx.scipy, ...): the
    rehearsal's cupy is one module, and those are CuPy's own."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("cupy", "cupyx") and "." in name:
            raise NotRehearsed(f"{name} (CuPy's own module)")
        return None


def stand_in_for_cupy():
    """The rehearsal for the rest of this process: `import cupy` (and cupyx) gives its module,
    and the children of bench programs rehearse too. Returns its Counts."""
    counts = _FOR_THE_PROCESS.enter_context(rehearsal())
    module, cupyx = counts.xp, sys.modules["cupyx"]
    # packages, so that `import cupy.cuda.nccl` and the like ask CupyOwnModules
    module.__path__ = cupyx.__path__ = module.cuda.__path__ = []
    module.cuda.__name__, module.cuda.__spec__ = "cupy.cuda", None
    sys.modules["cupy"], sys.modules["cupy.cuda"] = module, module.cuda
    sys.meta_path.insert(0, CupyOwnModules())
    os.environ[REHEARSAL_VARIABLE] = "1"
    return counts


class SkipNotRehearsed:
    """A pytest plugin: a test (or its fixtures) that asks for what the rehearsal cannot
    stand in for is skipped, with the reason, rather than failed."""

    def __init__(self, pytest):
        self.skipped = []

        def skip_on_not_rehearsed(item):
            try:
                return (yield)
            except NotRehearsed as reason:
                self.skipped.append(str(reason))
                pytest.skip(f"not rehearsed: {reason}")

        wrapper = pytest.hookimpl(wrapper=True)
        self.pytest_runtest_setup = wrapper(skip_on_not_rehearsed)
        self.pytest_runtest_call = wrapper(skip_on_not_rehearsed)


def run_pytest(args):
    """pytest with SkipNotRehearsed; its exit status. xdist's workers would be new processes
    without the rehearsal: it is switched off."""
    import pytest
    plugin = SkipNotRehearsed(pytest)
    status = pytest.main(args + ["-p", "no:xdist"], plugins=[plugin])
    if plugin.skipped:
        reasons = sorted(set(plugin.skipped))
        note(f"not rehearsed: {len(plugin.skipped)} test(s): " + "; ".join(reasons[:3])
             + ("; ..." if len(reasons) > 3 else ""))
    return int(status)


def run(argv):
    """Run what argv names (see the module's docstring); its exit status."""
    if argv[0] == "--program":
        raise NotRehearsed(f"{' '.join(argv[1:2])} (a program, not Python)")
    if argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        return 0
    if argv[0] == "pytest":
        sys.argv = ["pytest", *argv[1:]]
        return run_pytest(argv[1:])
    sys.argv = [argv[0], *argv[1:]]   # runpy puts the module's path first
    try:
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        raise
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[1] if argv else __doc__, file=sys.stderr)
        return 0 if argv else 2
    counts = stand_in_for_cupy()
    try:
        status = run(argv)
    except NotRehearsed as reason:
        note(f"not rehearsed: {reason}")
        return NOT_REHEARSED
    print(f"{PROG}: {counts.launches} launches, {counts.syncs} host synchronisations, "
          f"{counts.transfers} transfers to the device, on NumPy (not a GPU)", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
