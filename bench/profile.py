"""python -m bench.profile: where our training step spends its time, op by op.

    python -m bench.profile --arch resnet50 --cifar-stem --batch-size 32 --steps 2

Takes the same model and step as bench.step (same flags) and, after the warm-up, times every
Function's forward and backward while --steps steps run, grouped by op (a convolution also by
kernel and stride, e.g. "Conv2d 3x3/2"). Times are exclusive: an op that calls another op's
forward does not count the inner one twice. What no op accounts for is the LARS update (timed
on its own) and the rest: the engine's graph walk, gradient accumulation, Python.
On the CPU it also measures how the step uses the threads (nn/runtime/threads.py): the
time in parallel sections, the part of it that the calling thread spends waiting for the
others to finish their share, and the time outside any section, when one thread works and the others
idle. Then it times the step's matrix products on their own (the same shapes, random
numbers): the floor that the BLAS sets, against which the rest of the step is overhead.
On a GPU each op waits for the device before its clock is read, which slows the step but
charges every kernel to the op that launched it.
"""
import json
import sys
import threading
import time
from collections import defaultdict

from bench.common import ChildFailed, format_table, machine, note, run_child, write_result
from bench.step import build_ours, parse_args


def _subclasses(cls):
    for subclass in cls.__subclasses__():
        yield subclass
        yield from _subclasses(subclass)


def op_label(cls, arrays, params):
    """The op's class name; for a convolution (a class named *Conv*, whose second input is the
    weight (F, C, kh, kw)) also its kernel and, when not 1, its stride."""
    label = cls.__name__
    if "conv" in label.lower() and len(arrays) >= 2 and getattr(arrays[1], "ndim", 0) == 4:
        kh, kw = arrays[1].shape[2:]
        stride = params.get("stride", 1)
        stride = stride[0] if isinstance(stride, (tuple, list)) else stride
        label += f" {kh}x{kw}" + (f"/{stride}" if stride != 1 else "")
    return label


def product_shape(cls, arrays, params):
    """(M, K, F) of the matrix product out (M, F) = columns (M, K) @ weights (K, F) that a
    convolution or linear layer computes, or None for another op."""
    name = cls.__name__
    if "conv" in name.lower() and len(arrays) >= 2 and getattr(arrays[1], "ndim", 0) == 4:
        from nn.functional.windows import output_size
        (N, C, H, W), (F, _, kh, kw) = arrays[0].shape, arrays[1].shape
        Ho, Wo = output_size("conv2d", (H, W), (kh, kw), params.get("stride", (1, 1)),
                             params.get("padding", (0, 0)))
        return N * Ho * Wo, C * kh * kw, F
    if name == "Linear":
        x, weight = arrays[:2]
        return x.size // x.shape[-1], weight.shape[1], weight.shape[0]
    return None


def time_products(shapes, repeats=2):
    """Seconds that the forward, input-gradient and weight-gradient products of `shapes` take
    on their own, as whole float32 matrices split over our threads (the best of `repeats`):
    what the step would cost if nothing but its matrix products took time."""
    import numpy

    from nn.runtime import parallel

    rng = numpy.random.default_rng(0)
    arrays = {}
    for M, K, F in set(shapes):
        arrays[M, K, F] = [rng.standard_normal(shape, dtype=numpy.float32)
                           for shape in ((M, K), (K, F), (M, F))]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for shape in shapes:
            columns, weights, grad = arrays[shape]
            parallel.matmul(columns, weights)             # forward
            parallel.matmul(grad, weights.T)              # input gradient
            parallel.matmul_transposed(grad, columns)     # weight gradient
        best = min(best, time.perf_counter() - start)
    return best


class OpProfiler:
    """While active (a `with` block), every Function subclass's forward and backward is timed.

    seconds[(label, "forward" or "backward")] and calls[...] accumulate exclusive times and
    call counts; `timed(key, function)` times anything else under the same clock."""

    def __init__(self, sync):
        self.sync = sync
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self._inner_seconds = [0.0]  # time spent in nested timed calls, one entry per level
        self.active = []  # the keys of the timed calls under way, innermost last
        self.products = []  # (M, K, F) of every convolution's and linear layer's product
        self._saved = {}

    def timed(self, key, function, *args, **kwargs):
        self._inner_seconds.append(0.0)
        self.active.append(key)
        self.sync()
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            self.sync()
            elapsed = time.perf_counter() - start
            self.seconds[key] += elapsed - self._inner_seconds.pop()
            self.calls[key] += 1
            self._inner_seconds[-1] += elapsed
            self.active.pop()

    def _wrap(self, cls, forward, backward):
        def timed_forward(ctx, *arrays, **params):
            ctx.profile_label = op_label(cls, arrays, params)
            shape = product_shape(cls, arrays, params)
            if shape is not None:
                self.products.append(shape)
            return self.timed((ctx.profile_label, "forward"), forward, ctx, *arrays, **params)

        def timed_backward(ctx, grad):
            label = getattr(ctx, "profile_label", cls.__name__)
            return self.timed((label, "backward"), backward, ctx, grad)
        return staticmethod(timed_forward), staticmethod(timed_backward)

    def __enter__(self):
        from autograd import Function

        classes = set(_subclasses(Function))
        # the originals first: a subclass that inherits forward must get the parent's own
        # function, not the parent's timing wrapper
        originals = {cls: (cls.forward, cls.backward) for cls in classes}
        for cls in classes:
            self._saved[cls] = {name: cls.__dict__.get(name) for name in ("forward", "backward")}
            cls.forward, cls.backward = self._wrap(cls, *originals[cls])
        return self

    def __exit__(self, *exc_info):
        for cls, saved in self._saved.items():
            for name, value in saved.items():
                if value is None:
                    delattr(cls, name)
                else:
                    setattr(cls, name, value)
        self._saved.clear()


def _current_key(profiler):
    """The (label, phase) of the innermost op `profiler` is timing, or ("none", "-")."""
    return profiler.active[-1] if profiler.active else ("none", "-")


class ThreadUse:
    """While active (a `with` block), how the calling thread spends its time with respect to
    the CPU threads' sections (each `threads.run` over more than one range, nn/runtime):

        sections  seconds inside them, every thread given work
        waiting   the part of that after the calling thread finished its own share, waiting
                  for the other threads (imbalance, and a thread starting late)
        count     how many sections ran
    Time outside the sections is the step's time minus `sections`: one thread at work.
    `waiting_by` and `sections_by` split waiting and sections by the op running (current())."""

    def __init__(self, current=lambda: ("none", "-")):
        self.current = current  # () -> the (label, phase) to charge a section to
        self.waiting_by = defaultdict(float)
        self.sections_by = defaultdict(float)

    def __enter__(self):
        from nn.runtime import threads

        self.threads, self.original = threads, threads.run
        self.sections = self.waiting = 0.0
        self.count = 0

        def run(fn, ranges):
            if len(ranges) == 1:
                return self.original(fn, ranges)
            caller, finished = threading.get_ident(), [0.0]

            def fn_timed(start, stop):
                try:
                    return fn(start, stop)
                finally:
                    if threading.get_ident() == caller:
                        finished[0] = time.perf_counter()
            start = time.perf_counter()
            try:
                return self.original(fn_timed, ranges)
            finally:
                end = time.perf_counter()
                self.sections += end - start
                self.waiting += end - max(finished[0], start)
                self.waiting_by[self.current()] += end - max(finished[0], start)
                self.sections_by[self.current()] += end - start
                self.count += 1
        threads.run = run
        return self

    def __exit__(self, *exc_info):
        self.threads.run = self.original


def profile_ours(args):
    """Run the warm-up, then profile --steps steps; a result dict of per-step milliseconds."""
    ours = build_ours(args)
    for _ in range(args.warmup):
        ours.step()
    profiler = OpProfiler(ours.sync)
    with profiler, ThreadUse(lambda: _current_key(profiler)) as threads:
        optimizer_step = ours.optimizer.step
        ours.optimizer.step = lambda: profiler.timed(("LARS update", "-"), optimizer_step)
        try:
            ours.sync()  # the warm-up's kernels may still be queued: not this clock's work
            start = time.perf_counter()
            for _ in range(args.steps):
                ours.step()
            ours.sync()
            total = time.perf_counter() - start
        finally:
            del ours.optimizer.step
    per_step = 1e3 / args.steps
    products_ms = None
    if ours.device == "cpu":
        one_step = profiler.products[:len(profiler.products) // args.steps]
        products_ms = time_products(one_step) * 1e3
    ops = defaultdict(lambda: {"forward": 0.0, "backward": 0.0, "-": 0.0, "calls": 0})
    for (label, phase), seconds in profiler.seconds.items():
        ops[label][phase] += seconds * per_step
        if phase != "backward":  # one call is one forward (and its backward)
            ops[label]["calls"] += profiler.calls[(label, phase)] / args.steps
    # per op and phase: its own time outside parallel sections (one thread at work)
    alone_by = {key: seconds - threads.sections_by.get(key, 0.0)
                for key, seconds in profiler.seconds.items()}
    alone_by[("rest", "-")] = total - sum(profiler.seconds.values()) - threads.sections_by.get(
        ("none", "-"), 0.0)
    thread_use = {"sections_ms": threads.sections * per_step,
                  "waiting_ms": threads.waiting * per_step, "sections": threads.count / args.steps,
                  "waiting_by_op_ms": {f"{label} {phase}".replace(" -", ""): seconds * per_step
                                       for (label, phase), seconds in threads.waiting_by.items()},
                  "alone_by_op_ms": {f"{label} {phase}".replace(" -", ""): seconds * per_step
                                     for (label, phase), seconds in alone_by.items()}}
    return {"step_ms": total * per_step, "ops": dict(ops), "products_ms": products_ms,
            "threads": thread_use}


def report(args, result):
    step_ms = result["step_ms"]
    rows, accounted = [], 0.0
    ordered = sorted(result["ops"].items(), key=lambda item: -sum(
        item[1][phase] for phase in ("forward", "backward", "-")))
    for label, op in ordered:
        total = op["forward"] + op["backward"] + op["-"]
        accounted += total
        rows.append([label, f"{op['calls']:.0f}", f"{op['forward']:.0f}", f"{op['backward']:.0f}",
                     f"{total:.0f}", f"{100 * total / step_ms:.1f}%"])
    rest = step_ms - accounted
    rows.append(["rest: engine, accumulation, Python", "", "", "", f"{rest:.0f}",
                 f"{100 * rest / step_ms:.1f}%"])
    title = (f"Profile of our step: {args.arch} width {args.width:g}, N={args.batch_size} "
             f"({2 * args.batch_size} views) at {args.image_size}x{args.image_size}, "
             f"{'GPU (CuPy)' if args.backend == 'cupy' else f'{args.threads} threads'}; "
             f"{step_ms / 1e3:.2f} s per step (mean of {args.steps}, "
             f"profiled), ms per step:")
    table = title + "\n" + format_table(
        ["op", "calls", "forward ms", "backward ms", "total ms", "share"], rows)
    use = result.get("threads")
    if use and use["sections"]:
        alone = step_ms - use["sections_ms"]
        table += (f"\nThreads: {use['sections']:.0f} parallel sections per step take "
                  f"{use['sections_ms']:.0f} ms, of which the calling thread waits "
                  f"{use['waiting_ms']:.0f} ms for the others to finish their share; outside "
                  f"them one thread works alone for {alone:.0f} ms ({100 * alone / step_ms:.1f}% "
                  f"of the step).")
        most = sorted(use.get("waiting_by_op_ms", {}).items(), key=lambda item: -item[1])[:5]
        if most:
            table += " Its waits, by op: " + ", ".join(
                f"{name} {ms:.0f} ms" for name, ms in most) + "."
        most = sorted(use.get("alone_by_op_ms", {}).items(), key=lambda item: -item[1])[:6]
        if most:
            table += " Alone, by op: " + ", ".join(
                f"{name} {ms:.0f} ms" for name, ms in most) + "."
    if result.get("products_ms"):
        products = result["products_ms"]
        table += (f"\nThe step's matrix products alone (forward, input and weight gradient of "
                  f"every convolution and linear layer, whole matrices on our threads): "
                  f"{products:.0f} ms, {100 * products / step_ms:.0f}% of the step; everything "
                  f"else (im2col, batch norm, the engine, ...): {step_ms - products:.0f} ms.")
    return table


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        write_result(args.result, profile_ours(args))
        return 0
    try:
        result = run_child("bench.profile", argv + ["--child", "ours"], args.threads,
                           args.tf32 == "on")
    except ChildFailed as failure:   # its stderr has passed through; one line to end on
        note(f"bench.profile: ours: {failure}")
        return 1
    print(report(args, result))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"config": vars(args), "machine": machine("bench.profile", argv),
                       "profile": result}, file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
