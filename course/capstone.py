"""The capstone: the student's own ops train SimCLR.

`python -m course check DIR capstone` trains a small SimCLR (ResNet-18 at 1/8 width with the
CIFAR stem, a projection head, float64) for STEPS steps of LARS on views of the synthetic shapes,
twice: once with the library's references, once with the student's Functions in their place
(their conv2d, batch norm, linear, ReLU and max pooling through nn.functional.use_implementation,
the same switch use_reference() throws; their NT-Xent as the loss; their LARS as the optimiser).
Both runs see the same weights at the start and the same views, so they must agree to float64
rounding: every loss, and every weight at the end, within a relative TOLERANCE.

Why 1e-10: the two runs do the same arithmetic except where the student wrote an op in another
order (a sum taken another way round, NT-Xent as one op instead of the library's chain of
ops), and such reorderings change a float64 result by about 1e-16 of its size per operation;
a few thousand operations deep and three steps on, that stays below 1e-12. A wrong gradient
anywhere changes the first update by its own relative error, times the learning rate, which
moves the next loss by far more than 1e-10.

When they disagree, each of the student's parts is run alone in the library's run; the parts
that make it differ are named, with their exercise and file.
"""
import os

import numpy

import nn
from autograd import Tensor
from nn.functional import use_implementation
from nn.optim import LARS
from simclr.augment import SimCLRAugment
from simclr.data.synthetic import synthetic
from simclr.loss import nt_xent
from simclr.model import SimCLR

from .exercises import BY_NAME, numbered
from .grading import StudentFileError, Verdict, load_student_module, where

STEPS, IMAGES, IMAGE_SIZE, WIDTH, TEMPERATURE = 3, 8, 16, 0.125, 0.5
TOLERANCE = 1e-10
LARS_SETTINGS = dict(lr=1.0, momentum=0.9, weight_decay=1e-6, eta=0.001)

# (part, its exercise, the student's name for it); the first five are use_implementation's
PARTS = (("conv2d", "conv2d", "Conv2dReference"),
         ("batch_norm", "batch-norm", "BatchNormReference"),
         ("linear", "linear", "LinearReference"), ("relu", "relu", "ReLU"),
         ("max_pool2d", "max-pool", "MaxPool2dReference"), ("nt_xent", "nt-xent", "NTXent"),
         ("lars", "lars", "LARS"))


def views():
    """STEPS batches of 2 * IMAGES views (float64, (2N, 3, H, W)), the same for every run."""
    images = synthetic(IMAGES, image_size=IMAGE_SIZE, seed=0).images
    augment = SimCLRAugment.preset("cifar", size=IMAGE_SIZE)
    rng = numpy.random.default_rng(0)
    return [numpy.concatenate(augment.pair(images, rng)).astype(numpy.float64)
            for _ in range(STEPS)]


def train(parts, batches):
    """The run with the student's `parts` ({part: Function or class}) in the library's place:
    (the loss of each step, {parameter name: its array at the end})."""
    encoder = nn.resnet18(cifar_stem=True, width=WIDTH, rng=0)
    model = SimCLR(encoder, proj_dim=16, rng=1)
    model.to(dtype="float64")
    optimizer = parts.get("lars", LARS)(model.named_parameters(), **LARS_SETTINGS)
    if "nt_xent" in parts:
        def loss_of(z):
            return parts["nt_xent"].apply(z, temperature=TEMPERATURE)
    else:
        def loss_of(z):
            return nt_xent(z, TEMPERATURE)
    swapped = {part: function for part, function in parts.items()
               if part not in ("nt_xent", "lars")}
    losses = []
    with use_implementation(**swapped):
        for batch in batches:
            optimizer.zero_grad()
            loss = loss_of(model(Tensor(batch)))
            loss.backward()
            optimizer.step()
            losses.append(float(loss.data))
    return losses, {name: param.data.copy() for name, param in model.named_parameters()}


def differences(run, library):
    """'' when two runs agree within TOLERANCE, else what differs first, in words."""
    (losses, weights), (library_losses, library_weights) = run, library
    for step, (mine, theirs) in enumerate(zip(losses, library_losses), start=1):
        if not abs(mine - theirs) <= TOLERANCE * abs(theirs):
            return (f"the loss of step {step} is {mine:.15g}, the library's {theirs:.15g} "
                    f"(relative difference {abs(mine - theirs) / abs(theirs):.2g}, tolerance "
                    f"{TOLERANCE:g})")
    for name, theirs in library_weights.items():
        # relative to the parameter's size, absolute below 1: a bias in front of a batch norm
        # has a gradient of exactly 0 in exact arithmetic, so its weights are rounding noise
        error = numpy.abs(weights[name] - theirs).max() / max(numpy.abs(theirs).max(), 1.0)
        if not error <= TOLERANCE:
            return (f"after {STEPS} steps the weight {name} differs from the library's by "
                    f"{error:.2g} of its size (tolerance {TOLERANCE:g})")
    return ""


def student_parts(folder):
    """{part: the student's Function or class}, {part: its file}; StudentFileError otherwise."""
    numbers = {exercise.name: number for number, exercise in numbered()}
    parts, files = {}, {}
    for part, exercise_name, attribute in PARTS:
        exercise = BY_NAME[exercise_name]
        path = os.path.join(folder, exercise.file_name(numbers[exercise_name]))
        module = load_student_module(path, exercise)
        if not hasattr(module, attribute):
            raise StudentFileError(f"{path}: defines no {attribute}, which the capstone runs")
        parts[part], files[part] = getattr(module, attribute), path
    return parts, files


def capstone_verdict(folder):
    """Train with the student's parts and with the library's; a Verdict for `capstone`."""
    import time
    start = time.perf_counter()
    verdict = Verdict("capstone", passed=False, case=f"{STEPS} SimCLR steps of a ResNet-18 at "
                      f"width {WIDTH} on {IMAGES} synthetic images, yours against the library's")
    try:
        parts, files = student_parts(folder)
        batches = views()
        library = train({}, batches)
        verdict.message = _compare(parts, files, batches, library)
    except StudentFileError as error:
        verdict.message = f"the capstone runs your ops: {error}"
    verdict.passed = not verdict.message
    verdict.cases = int(verdict.passed)
    verdict.seconds = time.perf_counter() - start
    return verdict


def _compare(parts, files, batches, library):
    """'' when the student's run reproduces the library's, else the message naming the op."""
    try:
        differ = differences(train(parts, batches), library)
    except Exception as error:    # the student's op raised inside the run: name it and its line
        return _raised(error, files)
    if not differ:
        return ""
    culprits = []
    for part, exercise, _ in PARTS:
        try:
            alone = differences(train({part: parts[part]}, batches), library)
        except Exception as error:
            return _raised(error, files)
        if alone:
            culprits.append(f"{part} (exercise {exercise}, {files[part]}): {alone}")
    named = ("; ".join(culprits) if culprits else
             "no op alone: they differ only together (check each with `check DIR EXERCISE`)")
    return (f"your run differs from the library's: {differ}.\nthe op that makes the "
            f"difference when it alone is yours: {named}")


def _raised(error, files):
    for part, path in files.items():
        place = where(error, path)
        if place != path:
            return f"your {part} raised {type(error).__name__} at {place}: {error}"
    return f"the run raised {type(error).__name__}: {error}"
