"""The course kit's command line: `python -m course VERB ...`.

    python -m course graph --out graph.png [--dot graph.dot] [--demo conv|mlp|expression]
    python -m course nt-xent --out nt_xent.png [--images 4] [--temperature 0.5] [--row 0]
    python -m course handout DIR [--solutions]
    python -m course check DIR [EXERCISE ...] [--json FILE]     (EXERCISE may be `capstone`)

A mistake on the command line ends in one
line naming the flag and what is expected, exit status 2; a traceback is a bug in the kit.
"""
import argparse
import math
import os
import sys

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake the user can fix: printed as one line, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with its errors as one line (a UsageError), flags spelled out whole."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(message)


def positive_int(text):
    value = int(text)
    if value < 1:
        raise ValueError
    return value


def positive_float(text):
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError
    return value


positive_int.__name__, positive_float.__name__ = "positive integer", "positive number"


def parser():
    top = ArgumentParser(prog="python -m course",
                         description="The course kit: exercises, a grader, pictures of the "
                                     "graph and of NT-Xent.")
    verbs = top.add_subparsers(dest="verb", metavar="VERB", parser_class=ArgumentParser)
    verbs.required = True
    graph = verbs.add_parser("graph", help="draw the computation graph of a small demo",
                             description="Trace a small computation, run backward, and draw its "
                                         "graph: each tensor's op, shape and gradient norm.")
    graph.add_argument("--out", required=True, help="the PNG to write")
    graph.add_argument("--dot", help="also write the graph as Graphviz DOT text to this file")
    graph.add_argument("--demo", default="conv", choices=("conv", "mlp", "expression"),
                       help="which computation: conv (conv, batch norm, ReLU, pool, linear, "
                            "loss; the default), mlp, or expression (three numbers)")
    graph.add_argument("--reference", action="store_true",
                       help="run each op by its reference (batch norm as its Tensor ops)")
    picture = verbs.add_parser("nt-xent", help="draw NT-Xent for a small batch",
                               description="The 2N x 2N similarity matrix (positives, masked "
                                           "diagonal), one row's softmax, and the gradient.")
    picture.add_argument("--out", required=True, help="the PNG to write")
    picture.add_argument("--images", type=positive_int, default=4,
                         help="N, the number of images (2N views; at least 2; default 4)")
    picture.add_argument("--dim", type=positive_int, default=8,
                         help="the projections' dimension d (default 8)")
    picture.add_argument("--temperature", type=positive_float, default=0.5,
                         help="T (default 0.5)")
    picture.add_argument("--row", type=int, default=0, help="the row whose softmax is drawn "
                         "(0 .. 2N-1; default 0)")
    picture.add_argument("--seed", type=int, default=0, help="the made-up projections' seed")
    handout = verbs.add_parser("handout", help="write a student's workspace: one file per "
                               "exercise", description="One file per exercise, cut from the "
                               "library's references, the blanks raising NotImplementedError.")
    handout.add_argument("folder", metavar="DIR", help="the folder to write (made if missing)")
    handout.add_argument("--solutions", action="store_true",
                         help="write the filled-in files (for instructors and the kit's tests)")
    check = verbs.add_parser("check", help="grade a student's folder",
                             description="Grade each exercise (all, or those named; `capstone` "
                                         "runs SimCLR steps with the student's ops): PASS or "
                                         "FAIL with a hint, a score; exit 0 only if all pass.")
    check.add_argument("folder", metavar="DIR", help="the student's folder")
    check.add_argument("exercises", metavar="EXERCISE", nargs="*",
                       help="exercises to grade (default: all but the capstone)")
    check.add_argument("--json", metavar="FILE", help="also write the verdicts as JSON")
    return top


def write_handout(args):
    from .handout import write_handout as write

    try:
        paths = write(args.folder, solutions=args.solutions)
    except (FileExistsError, OSError) as error:
        raise UsageError(f"DIR {args.folder!r}: {error.strerror or error}"
                         if not isinstance(error, FileExistsError) else str(error))
    kind = "solutions" if args.solutions else "exercises"
    print(f"wrote {len(paths)} {kind} in {args.folder}: {os.path.basename(paths[0])} .. "
          f"{os.path.basename(paths[-1])}; grade them with python -m course check "
          f"{args.folder}")


def check_folder(args):
    from .check import check_folder as grade, report, selected, write_json

    if not os.path.isdir(args.folder):
        raise UsageError(f"DIR {args.folder!r} is not a folder (write one with python -m course "
                         f"handout DIR)")
    try:
        selected(args.exercises)
    except ValueError as error:
        raise UsageError(str(error))
    verdicts = grade(args.folder, args.exercises)
    print(report(verdicts))
    if args.json:
        try:
            write_json(verdicts, args.json)
        except OSError as error:
            raise UsageError(f"--json {args.json!r}: cannot write it ({error.strerror or error})")
    return 0 if all(verdict.passed for verdict in verdicts) else 1


def draw_graph(args):
    from .graph import demo_graph

    check_png(args.out)
    graph = demo_graph(args.demo, reference=args.reference)
    image = graph.image()
    save(image, args.out)
    if args.dot:
        write_text(graph.dot(), args.dot)
    print(f"wrote {args.out} ({len(graph.tensors)} tensors, {image.width}x{image.height})"
          + (f" and {args.dot}" if args.dot else ""))


def draw_nt_xent(args):
    from .pictures import demo_projections, nt_xent_picture

    if args.images < 2:
        raise UsageError(f"--images must be at least 2 (NT-Xent needs negatives), "
                         f"got {args.images}")
    if not 0 <= args.row < 2 * args.images:
        raise UsageError(f"--row must be in 0..{2 * args.images - 1} (2N views), got {args.row}")
    check_png(args.out)
    z = demo_projections(args.images, args.dim, seed=args.seed)
    image = nt_xent_picture(z, args.temperature, args.row)
    save(image, args.out)
    print(f"wrote {args.out} ({image.width}x{image.height})")


def check_png(path):
    if not path.lower().endswith(".png"):
        raise UsageError(f"--out must name a .png file, got {path!r}")


def save(image, path):
    try:
        image.save(path, format="PNG")
    except OSError as error:
        raise UsageError(f"--out {path!r}: cannot write it ({error.strerror or error})")


def write_text(text, path):
    try:
        with open(path, "w") as file:
            file.write(text)
    except OSError as error:
        raise UsageError(f"--dot {path!r}: cannot write it ({error.strerror or error})")


def main(argv=None):
    try:
        args = parser().parse_args(argv)
        verbs = {"graph": draw_graph, "nt-xent": draw_nt_xent, "handout": write_handout,
                 "check": check_folder}
        return verbs[args.verb](args) or 0
    except UsageError as error:
        print(f"python -m course: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
