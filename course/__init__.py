"""A course kit: students write the backward passes of a ResNet and of SimCLR, the project's
gradient checks grade them, and their own ops train SimCLR.

Read in this order:
    exercises.py  the 15 exercises in teaching order: the math to derive, the library code each
                  one is cut from, the marked regions a student writes, the names it may not use
    handout.py    `python -m course handout DIR [--solutions]`: the files, cut by the markers
    references.py NT-Xent as one Function with a hand-written backward (the library's is a
                  chain of Tensor ops), marked like the library's references
    grading.py    loading a student's file from its path, the scan for forbidden names, running
                  an exercise's cases, one line for whatever goes wrong
    graders_ops.py, graders_nn.py, graders_engine.py   each exercise's cases and hints
    check.py      `python -m course check DIR [EXERCISE ...] [--json FILE]`: report and score
    capstone.py   the student's ops train SimCLR (nn.functional.use_implementation), compared
                  with the library's run
    catalogue.py  the mistakes students make, each an edit of a solution the grader must catch
    graph.py      the computation graph of any Tensor, as DOT text and as a PNG (Pillow), with
                  each tensor's op, shape and, after backward, its gradient's norm
    pictures.py   a picture of NT-Xent for a small batch: the similarity matrix with its
                  positives and masked diagonal, one row's softmax, the gradient of every entry
    canvas.py     the few Pillow primitives those two draw with
    __main__.py   the command line: graph, nt-xent, handout, check

The whole-network check behind the kit's fast tests is autograd.directional_gradcheck (and
module_gradcheck for a Module).

README.md beside this file is the guide for instructors and students.
"""
