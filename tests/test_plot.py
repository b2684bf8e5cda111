"""simclr/plot/: every chart on small arrays is an image of the size asked, with something
drawn on it; missing values are skipped or marked; save_png writes a PNG that Pillow reopens."""
import math

import numpy
import pytest
from PIL import Image

from simclr import plot
from simclr.plot import charts, drawing, plot_loss_curve


def drawn(image, min_colours=4, min_ink=0.02):
    """True when the image is not blank: several colours and some share of non-white pixels."""
    pixels = numpy.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = len(numpy.unique(pixels, axis=0))
    ink = float((pixels != 255).any(axis=1).mean())
    return colours >= min_colours and ink >= min_ink


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (3.2, 7.9), (-0.013, 0.052), (0, 1000), (5, 5)])
def test_nice_ticks_cover_the_range_with_steps_of_1_2_or_5_times_a_power_of_ten(low, high):
    ticks, step = drawing.nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high and 3 <= len(ticks) <= 11
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m) for m in (1, 2, 5))


def test_tick_labels_have_the_decimals_their_step_needs():
    assert drawing.format_tick(0.25, 0.05) == "0.25"
    assert drawing.format_tick(200.0, 100) == "200"
    assert drawing.format_tick(1e-17, 0.1) == "0"


def test_line_chart_skips_missing_points_and_draws_on_a_log_axis():
    series = [("a", [32, 64, 128, 256], [1.0, float("nan"), 3.0, None]),
              ("b", [32, 64, 128, 256], [2.0, 2.5, 2.7, 2.9], {"colour": (200, 0, 0), "width": 1})]
    image = plot.line_chart(series, title="t\nsubtitle", x_label="batch", y_label="top-1",
                            x_log=True)
    assert image.size == (760, 480) and drawn(image)
    assert (numpy.asarray(image) == (200, 0, 0)).all(axis=2).any()  # the style's colour is used


def test_line_chart_of_no_points_is_an_empty_frame():
    image = plot.line_chart([("a", [], [])], title="t", x_label="x", y_label="y", size=(300, 200))
    assert image.size == (300, 200) and drawn(image, min_colours=2, min_ink=0.001)


def test_bar_chart_groups_bars_and_marks_a_missing_value():
    image = plot.bar_chart(["100", "200"], [("linear", [60.0, 70.0]), ("k-NN", [55.0, None])],
                           title="t", y_label="top-1", size=(400, 300))
    assert image.size == (400, 300) and drawn(image)
    pixels = numpy.asarray(image)
    for colour in drawing.PALETTE[:2]:
        assert (pixels == colour).all(axis=2).sum() > 100  # a bar of each series


def test_heat_map_marks_nan_cells_and_sizes_itself_to_its_labels():
    values = numpy.array([[1.0, 2.0, 3.0], [4.0, numpy.nan, 6.0]])
    image = plot.heat_map(values, ["crop", "colour"], ["crop", "colour", "blur"], title="t",
                          x_label="second", y_label="first")
    assert drawn(image) and image.width >= 3 * 56
    pixels = numpy.asarray(image)
    assert (pixels == charts.MISSING).all(axis=2).sum() > 50  # the hatched cell
    assert (pixels == charts.VIRIDIS[-1]).all(axis=2).any()  # the largest value's colour
    sized = plot.heat_map(values, ["a", "b"], ["a", "b", "c"], title="t", x_label="x",
                          y_label="y", size=(500, 300))
    assert sized.size == (500, 300)


def test_heat_map_of_only_missing_values_draws():
    image = plot.heat_map(numpy.full((2, 2), numpy.nan), ["a", "b"], ["a", "b"], title="t",
                          x_label="x", y_label="y")
    assert drawn(image, min_colours=3)


def test_scatter_colours_points_by_class():
    rng = numpy.random.default_rng(0)
    points, classes = rng.standard_normal((60, 2)), numpy.repeat([0, 1, 2], 20)
    image = plot.scatter(points, classes, ["cat", "dog", "ship"], title="t", x_label="PCA 1",
                         y_label="PCA 2", size=(400, 300))
    assert image.size == (400, 300) and drawn(image)
    pixels = numpy.asarray(image)
    for k in range(3):
        assert (pixels == drawing.colour_of(k)).all(axis=2).any()


def test_histogram_panel_overlays_the_three_channels():
    pixels = numpy.zeros((8, 8, 3), dtype=numpy.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 30, 128, 250
    image = plot.histogram_panel(pixels, size=(200, 100), label="crop")
    assert image.size == (200, 100) and drawn(image)
    for colour in charts.CHANNEL_COLOURS:
        assert (numpy.asarray(image) == colour).all(axis=2).any()


def test_image_grid_enlarges_images_and_leaves_empty_cells_blank():
    tile = numpy.full((4, 5, 3), (10, 200, 30), dtype=numpy.uint8)
    image = plot.image_grid([[tile, None], [tile, tile]], title="t", row_labels=["a", "b"],
                            col_labels=["x", "y"], scale=3, borders=[[(255, 0, 0), None],
                                                                     [None, None]])
    pixels = numpy.asarray(image)
    assert (pixels == (10, 200, 30)).all(axis=2).sum() == 3 * 4 * 5 * 3 * 3
    assert (pixels == (255, 0, 0)).all(axis=2).any()  # the border


def test_combine_lays_charts_out_under_one_title():
    a, b = Image.new("RGB", (100, 50), "red"), Image.new("RGB", (80, 70), "blue")
    image = plot.combine([a, b], title="both", columns=2)
    assert image.width >= 180 and image.height >= 70 and drawn(image, min_colours=3)


def test_save_png_writes_a_png_pillow_reopens(tmp_path):
    image = plot.line_chart([("a", [1, 2], [3, 4])], title="t", x_label="x", y_label="y")
    plot.save_png(image, tmp_path / "chart.png")
    with Image.open(tmp_path / "chart.png") as reopened:
        assert reopened.format == "PNG" and reopened.size == image.size


def test_loss_curve_has_a_running_mean_once_there_are_enough_steps(tmp_path):
    records = [{"step": s, "loss": 5 - s / 100} for s in range(1, 201)] + [{"step": 201}]
    plot_loss_curve(records, tmp_path / "loss.png")
    with Image.open(tmp_path / "loss.png") as image:
        assert image.size == (640, 400) and drawn(image)
    plot_loss_curve([], tmp_path / "empty.png")
    assert (tmp_path / "empty.png").exists()
