"""The handout: one file per exercise, cut from the library's own references.

Each file is: a docstring (the exercise, the math to derive), the imports, then the library
code the exercise names, copied from its module's source as it is, except that every marked
region (`# course: begin NAME` ... `# course: end NAME`) is replaced by one line,

    raise NotImplementedError("exercise relu: ReLU.backward")

at the region's indentation. With solutions=True the regions are kept (the marker comments go
in both cases). Because the text comes from the library at the moment of writing, the handout
and the library cannot drift; a marker that lost its partner, or a region an exercise names
that is no longer in the library, stops the writer with a message naming both.
"""
import ast
import importlib
import inspect
import os
import re

from .exercises import numbered

MARKER = re.compile(r"^(\s*)# course: (begin|end) ([\w-]+)\s*$")


class HandoutError(Exception):
    """The library's markers do not fit the exercises (a bug in the kit or the library)."""


def top_level_source(module_name, name, drop=()):
    """The source lines of `name` (a function, class or assignment at the top of the module),
    decorators included, without the methods listed in `drop` ("Class.method")."""
    source = inspect.getsource(importlib.import_module(module_name))
    lines = source.splitlines()
    for node in ast.parse(source).body:
        names = ([t.id for t in node.targets if isinstance(t, ast.Name)]
                 if isinstance(node, ast.Assign) else [getattr(node, "name", None)])
        if name not in names:
            continue
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        skipped = set()
        for member in getattr(node, "body", []) if isinstance(node, ast.ClassDef) else []:
            if f"{name}.{getattr(member, 'name', '')}" in drop:
                start = min([member.lineno] + [d.lineno for d in member.decorator_list])
                while not lines[start - 2].strip():          # and the blank lines before it
                    start -= 1
                skipped.update(range(start, member.end_lineno + 1))
        last = node.end_lineno
        while last < len(lines) and MARKER.match(lines[last]):   # an end marker after a return
            last += 1
        return [lines[i - 1] for i in range(first, last + 1) if i not in skipped]
    raise HandoutError(f"{module_name} has no top-level {name!r}, which an exercise copies")


def cut(lines, exercise, solutions, where):
    """lines with each marked region kept (solutions) or replaced by a raise; marker lines go.

    Returns (lines, the regions found). A region of another exercise (a helper copied along)
    is kept whole."""
    blanks = dict(exercise.blanks)
    out, found, open_region = [], [], None
    for line in lines:
        match = MARKER.match(line)
        if not match:
            if open_region is None or solutions or open_region not in blanks:
                out.append(line)
            continue
        indent, kind, region = match.groups()
        if kind == "begin":
            if open_region is not None:
                raise HandoutError(f"{where}: '# course: begin {region}' inside region "
                                   f"{open_region!r}, which has no end marker before it")
            open_region = region
            if region in blanks and not solutions:
                out.append(f'{indent}raise NotImplementedError("exercise {exercise.name}: '
                           f'{blanks[region]}")')
        else:
            if open_region != region:
                raise HandoutError(f"{where}: '# course: end {region}' without its begin "
                                   f"(open region: {open_region!r})")
            found.append(region)
            open_region = None
    if open_region is not None:
        raise HandoutError(f"{where}: region {open_region!r} has no '# course: end' marker")
    return out, found


def exercise_text(exercise, number, solutions=False):
    """The whole file of one exercise, as a string."""
    parts, found = [], []
    for module_name, names in exercise.sources:
        for name in names:
            lines = top_level_source(module_name, name, exercise.drop)
            lines, regions = cut(lines, exercise, solutions, f"{module_name}.{name}")
            found += regions
            parts.append("\n".join(lines))
    missing = [region for region, _ in exercise.blanks if region not in found]
    if missing:
        raise HandoutError(f"exercise {exercise.name}: the library has no marked region "
                           f"{', '.join(map(repr, missing))} in the code it copies "
                           f"({', '.join(module for module, _ in exercise.sources)})")
    what = ", ".join(label for _, label in exercise.blanks)
    header = (f'"""Exercise {number}: {exercise.title}.\n\n{exercise.math}\n'
              f"Fill in: {what}. Each blank raises NotImplementedError until you do.\n"
              f"Check it: python -m course check DIR {exercise.name}\n"
              + ("(This is the instructors' copy, with the solutions.)\n" if solutions else "")
              + '"""\n')
    return header + exercise.imports + "\n\n\n" + "\n\n\n".join(parts) + "\n"


def write_handout(folder, solutions=False):
    """Write every exercise's file into `folder` (made if missing); returns the paths.

    Refuses to overwrite a file that is there already: it may be a student's work."""
    files = [(os.path.join(folder, exercise.file_name(number)), exercise_text(
        exercise, number, solutions)) for number, exercise in numbered()]
    present = [path for path, _ in files if os.path.exists(path)]
    if present:
        raise FileExistsError(f"{present[0]} exists already (a student's work?): write the "
                              f"handout into an empty folder")
    os.makedirs(folder, exist_ok=True)
    for path, text in files:
        with open(path, "w") as file:
            file.write(text)
    return [path for path, _ in files]
