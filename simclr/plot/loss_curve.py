"""A training run's loss against step: the loss.png of every run's folder, and the first panel
of `python -m simclr.figures training`."""
import math

from simclr.plot.charts import line_chart, save_png
from simclr.plot.drawing import PALETTE


def loss_series(records):
    """line_chart's series of a run's loss against step: a light line per step and a bold
    running mean over a fiftieth of the steps (the loss per step alone, bold, when they are
    fewer than 100)."""
    points = [(r["step"], r["loss"]) for r in records if "loss" in r and math.isfinite(r["loss"])]
    steps, losses = [s for s, _ in points], [v for _, v in points]
    window = max(1, len(points) // 50)
    bold = {"colour": PALETTE[0], "width": 2}
    if window == 1:
        return [("loss per step", steps, losses, bold)]
    mean = [sum(losses[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1))
            for i in range(len(losses))]
    return [("loss per step", steps, losses, {"colour": (160, 195, 230), "width": 1}),
            (f"running mean of {window} steps", steps, mean, bold)]


def plot_loss_curve(records, path, size=(640, 400)):
    """Draw loss against step (loss_series) into a PNG."""
    image = line_chart(loss_series(records), title="NT-Xent loss", x_label="step",
                       y_label="loss", size=size, markers=False)
    save_png(image, path)
