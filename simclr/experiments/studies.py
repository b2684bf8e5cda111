"""The four studies: which runs each grid holds, and the table and figures made of their results.

Each study re-runs one finding of the SimCLR paper (Chen et al., 2020) at a scale the user
picks; docs/experiments.md puts this machine's results beside the paper's.

  augmentations  Section 3, Figure 5 and Table 1: which augmentations matter. Every
                 transformation alone and every pair, composed in the pipeline's order and given
                 to both views (the paper gives them to one branch only, after a crop, so that
                 ImageNet's images of many sizes can be batched; CIFAR-10's are all 32x32), and
                 the colour distortion's strength s (crop, flip, jitter and grayscale, s varied).
  head           Section 4.2, Figure 8: no projection head, a linear one, a non-linear one, for
                 a few output dimensions, each evaluated on h (before the head) and z (after).
  batch-epochs   Section 5.2, Figure 9 (appendix B.9 for CIFAR-10): batch size x epochs.
  temperature    Section 5.1, Table 5: the temperature tau of NT-Xent.
"""
import math

import numpy

from simclr import plot
from simclr.augment import TRANSFORMATIONS
from simclr.experiments.grid import Point

DEFAULT_VIEW = ",".join(TRANSFORMATIONS[:-1])  # crop, flip, jitter, grayscale: the CIFAR recipe


def percent(value):
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"



class Augmentations:
    name = "augmentations"
    axes = {"strengths": (0.0, 0.25, 0.5, 0.75, 1.0)}

    def points(self, axes):
        points = []
        for i, first in enumerate(TRANSFORMATIONS):
            for second in TRANSFORMATIONS[i:]:
                steps = [first] if first == second else [first, second]
                points.append(Point("+".join(steps), {"augmentations": ",".join(steps)},
                                    {"first": first, "second": second}))
        for strength in axes["strengths"]:
            points.append(Point(f"strength-{strength:g}", {"augmentations": DEFAULT_VIEW,
                                                             "color_strength": strength},
                                {"color_strength": strength}))
        return points

    def matrix(self, results, key="linear_accuracy"):
        """The pairwise grid as a 5 x 5 array: row i, column j >= i holds the pair (i, j) (the
        diagonal one transformation alone); the other triangle is NaN (the same pairs)."""
        values = numpy.full((len(TRANSFORMATIONS),) * 2, numpy.nan)
        for result in results:
            if "first" in result:
                i, j = (TRANSFORMATIONS.index(result[k]) for k in ("first", "second"))
                values[j, i] = 100 * result[key]
        return values

    def table(self, results):
        values, knn = self.matrix(results), self.matrix(results, "knn_accuracy")
        lines = ["Linear top-1 % (k-NN top-1 %) of each pair; the diagonal is one alone.", "",
                 "| first \\ second | " + " | ".join(TRANSFORMATIONS) + " |",
                 "| --- |" + " --- |" * len(TRANSFORMATIONS)]
        for j, row in enumerate(TRANSFORMATIONS):
            cells = [f"{values[j, i]:.1f} ({knn[j, i]:.1f})" if not numpy.isnan(values[j, i])
                     else "" for i in range(len(TRANSFORMATIONS))]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines += ["", "Colour distortion strength s (crop, flip, jitter with s, grayscale):", "",
                  "| s | linear top-1 % | k-NN top-1 % |", "| --- | --- | --- |"]
        lines += [f"| {r['color_strength']:g} | {percent(r['linear_accuracy'])} | "
                  f"{percent(r['knn_accuracy'])} |" for r in results if "color_strength" in r]
        return "\n".join(lines)

    def figures(self, results, title):
        strengths = [r for r in results if "color_strength" in r]
        return {
            "augmentations.png": plot.heat_map(
                self.matrix(results), list(TRANSFORMATIONS), list(TRANSFORMATIONS),
                title=f"Linear top-1 % by augmentation pair\n{title}",
                x_label="first transformation", y_label="second transformation"),
            "color-strength.png": plot.line_chart(
                [(label, [r["color_strength"] for r in strengths],
                  [100 * r[key] for r in strengths])
                 for label, key in (("linear probe", "linear_accuracy"),
                                    ("k-NN", "knn_accuracy"))],
                title=f"Colour distortion strength\n{title}",
                x_label="colour strength s", y_label="top-1 accuracy (%)")}


class Head:
    name = "head"
    axes = {"dims": (32, 128)}

    def points(self, axes):
        points = [Point("none", {"head": "none"}, {"head": "none", "proj_dim": None}, on_z=True)]
        for kind in ("linear", "nonlinear"):
            for dim in axes["dims"]:
                points.append(Point(f"{kind}-{dim}", {"head": kind, "proj_dim": dim},
                                    {"head": kind, "proj_dim": dim}, on_z=True))
        return points

    def table(self, results):
        lines = ["| head | output dim | linear on h | linear on z | k-NN on h | k-NN on z |",
                 "| --- | --- | --- | --- | --- | --- |"]
        for r in results:
            dim = "= h" if r["proj_dim"] is None else str(r["proj_dim"])
            lines.append(f"| {r['head']} | {dim} | {percent(r['linear_accuracy'])} | "
                         f"{percent(r['z_linear_accuracy'])} | {percent(r['knn_accuracy'])} | "
                         f"{percent(r['z_knn_accuracy'])} |")
        return "\n".join(lines) + "\n\nTop-1 %; h: the encoder's output, z = g(h): the head's."

    def figures(self, results, title):
        return {"head.png": plot.bar_chart(
            [r["name"] for r in results],
            [("h, before the head", [100 * r["linear_accuracy"] for r in results]),
             ("z, after the head", [100 * r["z_linear_accuracy"] for r in results])],
            title=f"Linear top-1 % on h and on z = g(h)\n{title}", y_label="top-1 accuracy (%)")}


class BatchEpochs:
    name = "batch-epochs"
    axes = {"batches": (64, 128, 256, 512, 1024, 2048), "epochs": (3, 6, 12)}

    def points(self, axes):
        return [Point(f"batch{batch}-epochs{epochs}", {"batch_size": batch, "epochs": epochs},
                      {"batch_size": batch, "epochs": epochs})
                for batch in axes["batches"] for epochs in axes["epochs"]]

    def table(self, results):
        batches = sorted({r["batch_size"] for r in results})
        epochs = sorted({r["epochs"] for r in results})
        cell = {(r["batch_size"], r["epochs"]): r for r in results}
        lines = ["Linear top-1 % (k-NN top-1 %):", "",
                 "| batch \\ epochs | " + " | ".join(map(str, epochs)) + " |",
                 "| --- |" + " --- |" * len(epochs)]
        for batch in batches:
            cells = [f"{percent(cell[batch, e]['linear_accuracy'])} "
                     f"({percent(cell[batch, e]['knn_accuracy'])})" if (batch, e) in cell
                     else "" for e in epochs]
            lines.append(f"| {batch} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def figures(self, results, title):
        series = []
        for batch in sorted({r["batch_size"] for r in results}):
            runs = sorted((r for r in results if r["batch_size"] == batch),
                          key=lambda r: r["epochs"])
            series.append((f"batch {batch}", [r["epochs"] for r in runs],
                           [100 * r["linear_accuracy"] for r in runs]))
        by_batch = []                       # the paper's Figure 9 view: one line per budget
        for epochs in sorted({r["epochs"] for r in results}):
            runs = sorted((r for r in results if r["epochs"] == epochs),
                          key=lambda r: r["batch_size"])
            by_batch.append((f"{epochs} epochs", [r["batch_size"] for r in runs],
                             [100 * r["linear_accuracy"] for r in runs]))
        return {"batch-epochs.png": plot.line_chart(
                    series, title=f"Batch size x training epochs\n{title}",
                    x_label="training epochs (log scale)", y_label="linear top-1 accuracy (%)",
                    x_log=True),
                "batch-size.png": plot.line_chart(
                    by_batch, title=f"Linear top-1 against the batch size\n{title}",
                    x_label="batch size (log scale)", y_label="linear top-1 accuracy (%)",
                    x_log=True)}


class Temperature:
    name = "temperature"
    axes = {"temperatures": (0.05, 0.1, 0.2, 0.5, 1.0)}

    def points(self, axes):
        return [Point(f"tau-{tau:g}", {"temperature": tau}, {"temperature": tau})
                for tau in axes["temperatures"]]

    def table(self, results):
        lines = ["| temperature | linear top-1 % | k-NN top-1 % |", "| --- | --- | --- |"]
        lines += [f"| {r['temperature']:g} | {percent(r['linear_accuracy'])} | "
                  f"{percent(r['knn_accuracy'])} |" for r in results]
        return "\n".join(lines)

    def figures(self, results, title):
        taus = [r["temperature"] for r in results]
        return {"temperature.png": plot.line_chart(
            [("linear probe", taus, [100 * r["linear_accuracy"] for r in results]),
             ("k-NN", taus, [100 * r["knn_accuracy"] for r in results])],
            title=f"NT-Xent temperature\n{title}", x_label="temperature tau (log scale)",
            y_label="top-1 accuracy (%)", x_log=True)}


STUDIES = {study.name: study for study in (Augmentations(), Head(), BatchEpochs(), Temperature())}
