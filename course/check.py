"""`python -m course check DIR [EXERCISE ...] [--json FILE]`: grade a student's folder.

One line per exercise, PASS or FAIL, and for a failure what was checked, the message (gradcheck's
or the comparison's) and a hint at the likely mistake; then a score line. The exit status is 0
only when every selected exercise passed. `--json FILE` writes the same verdicts for a course's
autograder: {"score": passed, "total": selected, "exercises": [verdict, ...]}.
"""
import json
import os

from . import graders_engine, graders_nn, graders_ops
from .exercises import BY_NAME, numbered
from .grading import grade

GRADERS = {
    "broadcast": graders_ops.broadcast, "matmul": graders_ops.matmul,
    "reductions": graders_ops.reductions, "exp-log": graders_ops.exp_log,
    "cross-entropy": graders_ops.cross_entropy, "linear": graders_ops.linear,
    "relu": graders_ops.relu, "im2col": graders_nn.im2col, "conv2d": graders_nn.conv2d,
    "max-pool": graders_nn.max_pool, "batch-norm": graders_nn.batch_norm,
    "nt-xent": graders_nn.nt_xent, "sgd": graders_nn.sgd, "lars": graders_nn.lars,
    "engine": graders_engine.engine,
}
CAPSTONE = "capstone"


def cases_for(name, module):
    return GRADERS[name](module)


def selected(names):
    """The (number, exercise) pairs named (all, in order, when none is named); ValueError
    naming an unknown one."""
    unknown = [name for name in names if name not in BY_NAME and name != CAPSTONE]
    if unknown:
        raise ValueError(f"no exercise {unknown[0]!r}: expected one of "
                         f"{', '.join(list(BY_NAME) + [CAPSTONE])}")
    return [(number, exercise) for number, exercise in numbered()
            if not names or exercise.name in names]


def check_folder(folder, names=()):
    """The Verdict of each selected exercise (the capstone's last, when it is named)."""
    verdicts = [grade(exercise, number, os.path.join(folder, exercise.file_name(number)),
                      cases_for) for number, exercise in selected(names)]
    if CAPSTONE in names:
        from .capstone import capstone_verdict
        verdicts.append(capstone_verdict(folder))
    return verdicts


def report(verdicts):
    """The text a student reads: a paragraph per exercise, then the score."""
    lines = []
    for verdict in verdicts:
        timing = f"({verdict.seconds:.1f} s)"
        if verdict.passed:
            lines.append(f"PASS  {verdict.exercise:<14} {verdict.cases} checks {timing}")
            continue
        lines.append(f"FAIL  {verdict.exercise:<14} {timing}")
        if verdict.case:
            lines.append(f"      checking: {verdict.case}")
        lines += [f"      {line}" for line in verdict.message.splitlines()]
        if verdict.hint:
            lines.append(f"      hint: {verdict.hint}")
    passed = sum(verdict.passed for verdict in verdicts)
    lines.append(f"score: {passed}/{len(verdicts)} exercises pass")
    return "\n".join(lines)


def write_json(verdicts, path):
    with open(path, "w") as file:
        json.dump({"score": sum(v.passed for v in verdicts), "total": len(verdicts),
                   "exercises": [v.as_dict() for v in verdicts]}, file, indent=2)
