"""A course kit: students write the backward passes of a ResNet and of SimCLR, the project's
gradient checks grade them, and their own ops train SimCLR.

What is here now:
    graph.py      the computation graph of any Tensor, as DOT text and as a PNG (Pillow), with
                  each tensor's op, shape and, after backward, its gradient's norm
    pictures.py   a picture of NT-Xent for a small batch: the similarity matrix with its
                  positives and masked diagonal, one row's softmax, the gradient of every entry
    canvas.py     the few Pillow primitives those two draw with
    __main__.py   `python -m course graph ...`, `python -m course nt-xent ...`

Built next, on the references of nn/functional (each op's textbook forward and hand-written
backward): the exercises in the order a course teaches them, `python -m course handout DIR`
(a student's workspace cut from the references by markers), `python -m course check DIR` (the
grader: forward against the reference, float64 gradient checks on fresh inputs, a hint per
failure), the capstone (the student's ops train SimCLR) and a catalogue of the mistakes
students make, each one caught by its exercise. The whole-network check that the capstone and
the grader lean on is autograd.directional_gradcheck (and module_gradcheck for a Module).

README.md beside this file is the guide for instructors and students.
"""
