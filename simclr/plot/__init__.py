"""Charts drawn with Pillow alone, for the figures of this project (no plotting library).

    charts.py      line_chart, bar_chart, heat_map, scatter, histogram_panel, image_grid,
                   combine, save_png: each returns (or writes) one picture
    drawing.py     what they are drawn with: text, "nice" ticks, legends, axes, the palette
    loss_curve.py  a training run's loss against step (its loss.png)
"""
from simclr.plot.charts import (bar_chart, channel_histograms, combine, heat_map, histogram_panel,
                                image_grid, line_chart, save_png, scatter)
from simclr.plot.loss_curve import loss_series, plot_loss_curve

__all__ = ["line_chart", "bar_chart", "heat_map", "scatter", "channel_histograms",
           "histogram_panel", "image_grid", "combine", "save_png", "loss_series",
           "plot_loss_curve"]
