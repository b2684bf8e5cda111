"""Grading a student's folder: load each exercise's file, scan it, run its cases, report.

A student's file is imported from its path under a name of its own (`course_student_<name>`),
never through sys.path, so it cannot shadow the library's modules nor they it. Before it runs,
its syntax tree is scanned for the library names it may not use (the op it is asked to write,
under any of its names; any import of torch or importlib). Then the exercise's cases run in
order (graders.py), each on inputs drawn from the grader's own seed; the first that fails is
the exercise's verdict: what was checked, gradcheck's or the comparison's message, and a hint
at the likely mistake. Whatever the student's code raises is reported as one line with its file
and line, never as a traceback of the kit's.
"""
import ast
import importlib.util
import os
import sys
import time
import traceback
from dataclasses import dataclass, field

import numpy

from autograd import GradcheckError

GRADER_SEED = 26_0626   # the grader's inputs: not the seeds of the public tests

ALWAYS_FORBIDDEN_MODULES = ("torch", "importlib")


class Mismatch(AssertionError):
    """A student's result differs from the reference's; the message says where and by how much."""


@dataclass
class Case:
    label: str        # what this case checks, e.g. "stride 2, padding 1, 7x6 images: gradients"
    run: object       # run(rng): raises Mismatch, GradcheckError or the student's own error
    hint: str         # the likely mistake when it fails


@dataclass
class Verdict:
    exercise: str
    passed: bool
    message: str = ""
    case: str = ""
    hint: str = ""
    seconds: float = 0.0
    cases: int = 0
    details: dict = field(default_factory=dict)

    def as_dict(self):
        return {"exercise": self.exercise, "passed": self.passed, "case": self.case,
                "message": self.message, "hint": self.hint, "seconds": round(self.seconds, 3),
                "cases_passed": self.cases}


class StudentFileError(Exception):
    """The file cannot be graded at all (missing, a syntax error, an import error)."""


def forbidden_uses(source, path, forbidden):
    """[(line, what)] for each use of a forbidden name in the source: an import of it (or of a
    module always forbidden), or an attribute that ends in it (F.relu, engine.backward)."""
    uses = []
    tails = [name.split(".") for name in forbidden]
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ALWAYS_FORBIDDEN_MODULES:
                    uses.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] in ALWAYS_FORBIDDEN_MODULES:
                uses.append((node.lineno, f"from {module} import ..."))
            for alias in node.names:   # t = ["relu"], or ["engine", "backward"]: a tail
                if any(t[-1] == alias.name and (len(t) == 1 or module.endswith(t[-2]))
                       for t in tails):
                    uses.append((node.lineno, f"from {module} import {alias.name}"))
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)     # F.relu, nn.functional.conv.Conv2dReference, ...
            if dotted and any(dotted[-len(t):] == t and (len(dotted) > len(t) or len(t) > 1)
                              for t in tails):
                uses.append((node.lineno, ".".join(dotted)))
        elif isinstance(node, ast.Name) and node.id == "__import__":
            uses.append((node.lineno, "__import__"))
    return sorted(set(uses))


def _dotted(node):
    """a.b.c for an Attribute chain on a Name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    head = [node.id] if isinstance(node, ast.Name) else ["(...)"]
    return head + list(reversed(parts))


def load_student_module(path, exercise):
    """The student's module, imported from `path`; StudentFileError with one line otherwise."""
    if not os.path.isfile(path):
        raise StudentFileError(f"{path}: no such file (write the handout with "
                               f"`python -m course handout DIR`, or name the right folder)")
    with open(path) as file:
        source = file.read()
    try:
        compile(source, path, "exec")
    except SyntaxError as error:
        raise StudentFileError(f"{path}, line {error.lineno}: syntax error: {error.msg}")
    uses = forbidden_uses(source, path, exercise.forbidden)
    if uses:
        line, what = uses[0]
        raise StudentFileError(f"{path}, line {line}: uses {what}, the library's own version "
                               f"of what exercise {exercise.name} asks you to write; write it "
                               f"yourself")
    name = f"course_student_{exercise.name.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # as an import would (dataclasses, pickle look it up there)
    try:
        spec.loader.exec_module(module)
    except Exception as error:   # the student's code failed while importing: say where
        sys.modules.pop(name, None)
        raise StudentFileError(f"{where(error, path)}: importing it raised "
                               f"{type(error).__name__}: {error}")
    return module


def where(error, path):
    """'path, line N' of the last frame of the error's traceback inside the student's file."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if os.path.abspath(frame.filename) == os.path.abspath(path)]
    return f"{path}, line {frames[-1].lineno}" if frames else path


def grade(exercise, number, path, cases_for):
    """Run one exercise's cases on the student's file at `path`: a Verdict."""
    start = time.perf_counter()
    verdict = Verdict(exercise.name, passed=False)
    try:
        module = load_student_module(path, exercise)
        cases = cases_for(exercise.name, module)
    except StudentFileError as error:
        verdict.message = str(error)
        verdict.seconds = time.perf_counter() - start
        return verdict
    except AttributeError as error:
        verdict.message = f"{path}: {error} (did you rename or delete something the handout gave?)"
        verdict.seconds = time.perf_counter() - start
        return verdict
    for index, case in enumerate(cases):
        rng = numpy.random.default_rng([GRADER_SEED, number, index])
        failure = run_case(case, rng, path)
        if failure:
            if ", line " not in failure:     # a wrong result, not an error: say where to look
                failure += (f"\n  look at: {', '.join(label for _, label in exercise.blanks)} "
                            f"in {os.path.basename(path)}")
            verdict.case, verdict.message, verdict.hint = case.label, failure, case.hint
            break
        verdict.cases += 1
    else:
        verdict.passed = True
    verdict.seconds = time.perf_counter() - start
    return verdict


def run_case(case, rng, path):
    """None when the case passes, else the one-paragraph message of its failure."""
    try:
        with numpy.errstate(all="ignore"):
            case.run(rng)
    except NotImplementedError as error:
        return f"not written yet: {error} ({where(error, path)})"
    except (GradcheckError, Mismatch) as error:
        return str(error).replace("\n  hint:", "\n  gradcheck's hint:")
    except RecursionError as error:
        return (f"RecursionError at {where(error, path)}: {error} (a graph thousands of ops deep "
                f"needs a loop with an explicit stack, not recursion)")
    except Exception as error:   # the student's code (or its result) broke the case: say where
        return f"{type(error).__name__} at {where(error, path)}: {error}"
    return None
