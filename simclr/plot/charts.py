"""The charts of this project's figures, each drawn on a Pillow image.

Each function returns a PIL.Image on a white background, legible at a glance: axes whose ticks
fall on "nice" numbers (1, 2 or 5 times a power of ten), tick labels, axis labels, a title (its
lines split on "\\n": the first says what is shown, the next what was run), a legend where there
are several series, and colours from a fixed colour-blind-safe palette. The text, ticks, legends
and axes they share are drawn by drawing.py.

    line_chart       y against x, one line per series (x may be on a log scale)
    bar_chart        grouped bars, each with its value above it
    heat_map         a 2-D array as coloured cells with their numbers, and a colour bar
    scatter          2-D points coloured by class
    histogram_panel  the R, G and B pixel-intensity histograms of one image, overlaid
    image_grid       images (or other charts) in rows and columns, with labels
    combine          charts side by side or stacked, under one title
    save_png         writes an image whole or not at all (simclr.atomic_files.atomic_write)
"""
import math

import numpy
from PIL import Image, ImageDraw

from simclr.atomic_files import atomic_write
from simclr.plot.drawing import (AXIS, MARKERS, NORMAL, PAD, SMALL, TEXT, chart_frame,
                                 colour_of, draw_marker, draw_text, draw_title,
                                 draw_vertical_text, line_height, log_ticks, text_height,
                                 text_width, title_width, value_ticks)

MISSING, HATCH = (238, 238, 238), (190, 190, 190)
CHANNEL_COLOURS = [(215, 40, 30), (20, 150, 50), (30, 80, 220)]  # histograms of R, G, B
VIRIDIS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def finite_points(xs, ys, x_log=False):
    """(x, y) pairs of xs and ys without None, NaN or inf (nor x <= 0 on a log scale)."""
    pairs = []
    for x, y in zip(xs, ys):
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        if not (x_log and x <= 0):
            pairs.append((float(x), float(y)))
    return pairs

def line_chart(series, *, title, x_label, y_label, size=(760, 480), x_log=False, markers=True,
               x_cover=()):
    """One line per series (label, xs, ys) or (label, xs, ys, style), style a dict that may set
    "colour" and "width" (a light raw curve under a bold smoothed one, say). Points that are None
    or NaN are skipped; markers are drawn where a series has at most 60 points. x_cover: x
    values the x axis must reach besides the data's (to line up the axes of several charts)."""
    size = (max(size[0], int(title_width(title))), size[1])  # the title fits
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    curves = []
    for index, (label, xs, ys, *style) in enumerate(series):
        style = style[0] if style else {}
        curves.append((label, finite_points(xs, ys, x_log), style.get("colour", colour_of(index)),
                       style.get("width", 2), MARKERS[index % len(MARKERS)]))
    every = [point for curve in curves for point in curve[1]]
    xs, ys = [x for x, _ in every] + list(x_cover), [y for _, y in every]
    x_ticks = log_ticks(xs) if x_log else value_ticks(xs)
    legend = [(label, colour, shape if markers else None)
              for label, _, colour, _, shape in curves] if len(curves) > 1 else []
    axes = chart_frame(image, draw, title=title, x_label=x_label, y_label=y_label,
                       x_ticks=x_ticks, y_ticks=value_ticks(ys), legend=legend,
                       x_log=x_log)
    for _, points, colour, width, shape in curves:
        pixels = [(axes.px(x), axes.py(y)) for x, y in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=width, joint="curve")
        if markers and len(pixels) <= 60 or len(pixels) == 1:
            for x, y in pixels:
                draw_marker(draw, x, y, shape, colour)
    return image


def bar_chart(categories, series, *, title, y_label, size=(760, 480), value_format="{:.1f}"):
    """Grouped bars: for each category, one bar per series (label, values) in the series'
    colour, its value printed above it (a None or NaN value: no bar, and "-")."""
    size = (max(size[0], int(title_width(title))), size[1])  # the title fits
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    values = [v for _, vs in series for v in vs if v is not None and math.isfinite(v)]
    values += [max(values, default=0.0) * 1.08]  # headroom for the value above the tallest bar
    legend = [(label, colour_of(i), "box") for i, (label, _) in enumerate(series)]
    axes = chart_frame(image, draw, title=title, x_label="", y_label=y_label,
                       x_ticks=[(-0.5, ""), (len(categories) - 0.5, "")],
                       y_ticks=value_ticks(values, include_zero=True),
                       legend=legend if len(series) > 1 else [])
    group = axes.px(0.5) - axes.px(-0.5)
    bar = group * 0.8 / max(len(series), 1)
    base = axes.py(max(min(axes.y_range[0], 0.0), min(axes.y_range[1], 0.0)))
    for c, category in enumerate(categories):
        draw_text(draw, (axes.px(c), axes.box[3] + 6), category, NORMAL, "centre")
        for s, (_, vs) in enumerate(series):
            left = axes.px(c) - group * 0.4 + s * bar
            value = vs[c]
            if value is None or not math.isfinite(value):
                draw_text(draw, (left + bar / 2, base - line_height(SMALL) - 2), "-", SMALL,
                          "centre")
                continue
            top = axes.py(value)
            draw.rectangle([left + 1, min(top, base), left + bar - 1, max(top, base)],
                           fill=colour_of(s))
            label_y = min(top, base) - line_height(SMALL) - 2
            draw_text(draw, (left + bar / 2, label_y), value_format.format(value), SMALL, "centre")
    return image


def colour_map(fraction):
    """Viridis (dark blue to yellow, colour-blind-safe) at a fraction in [0, 1]."""
    position = min(max(fraction, 0.0), 1.0) * (len(VIRIDIS) - 1)
    low = min(int(position), len(VIRIDIS) - 2)
    t = position - low
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(VIRIDIS[low], VIRIDIS[low + 1]))


def hatched(size):
    """A cell of a missing value: light grey with diagonal hatching."""
    cell = Image.new("RGB", size, MISSING)
    draw = ImageDraw.Draw(cell)
    for offset in range(-size[1], size[0], 8):
        draw.line([offset, size[1], offset + size[1], 0], fill=HATCH)
    return cell


def heat_map(values, row_labels, col_labels, *, title, x_label, y_label, value_format="{:.1f}",
             size=None):
    """A 2-D array as cells coloured by value (viridis), each with its number, and a colour bar
    with its scale on the right; a NaN is a missing value (a hatched grey cell, "-"). size: the
    image's (width, height); None sizes the cells to fit their labels."""
    values = numpy.asarray(values, dtype=float)
    rows, cols = values.shape
    known = values[numpy.isfinite(values)]
    low, high = (float(known.min()), float(known.max())) if known.size else (0.0, 1.0)
    colour_ticks = [(v, label) for v, label in value_ticks([low, high]) if low <= v <= high]
    left = PAD + text_height(y_label) + 8 + max(text_width(r) for r in row_labels) + 8
    bar_width = 18 + 6 + max((text_width(label, SMALL) for _, label in colour_ticks), default=0)
    extra_w, extra_h = left + 24 + bar_width + PAD, text_height(x_label) + line_height() + 2 * PAD
    title_h = draw_title(ImageDraw.Draw(Image.new("RGB", (1, 1))), title, 1)
    if size is None:
        cell_w = max(56, max(text_width(c) for c in col_labels) + 12,
                     text_width(value_format.format(high)) + 12)
        cell_h = max(36, line_height() * 2)
        size = (int(max(extra_w + cols * cell_w, title_width(title))),
                int(title_h + rows * cell_h + extra_h))
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    top = draw_title(draw, title, size[0])
    cell_w = (size[0] - extra_w) / cols
    cell_h = (size[1] - top - extra_h) / rows
    for r in range(rows):
        y = top + r * cell_h
        draw_text(draw, (left - 8, y + (cell_h - line_height()) / 2), row_labels[r], NORMAL,
                  "right")
        for c in range(cols):
            x = left + c * cell_w
            box = [int(x), int(y), int(x + cell_w), int(y + cell_h)]
            if math.isfinite(values[r, c]):
                fraction = (values[r, c] - low) / (high - low) if high > low else 0.5
                colour, text = colour_map(fraction), value_format.format(values[r, c])
                draw.rectangle(box, fill=colour)
            else:
                image.paste(hatched((box[2] - box[0], box[3] - box[1])), box[:2])
                colour, text = MISSING, "-"
            light = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 140
            draw_text(draw, (x + cell_w / 2, y + (cell_h - line_height()) / 2), text, NORMAL,
                      "centre", TEXT if light else "white")
            draw.rectangle(box, outline="white")
    bottom, right = top + rows * cell_h, left + cols * cell_w
    for c, label in enumerate(col_labels):
        draw_text(draw, (left + (c + 0.5) * cell_w, bottom + 6), label, NORMAL, "centre")
    draw_text(draw, ((left + right) / 2, bottom + 8 + line_height()), x_label, NORMAL, "centre")
    draw_vertical_text(image, (PAD + text_height(y_label) / 2, (top + bottom) / 2), y_label)
    bar_left = right + 24
    for y in range(int(top), int(bottom)):
        fraction = (bottom - y) / (bottom - top)
        draw.line([bar_left, y, bar_left + 18, y], fill=colour_map(fraction))
    for value, label in colour_ticks:
        y = bottom - (bottom - top) * ((value - low) / (high - low) if high > low else 0.5)
        draw.line([bar_left + 18, y, bar_left + 22, y], fill=AXIS)
        draw_text(draw, (bar_left + 24, y - line_height(SMALL) / 2), label, SMALL)
    return image


def scatter(points, classes, class_names, *, title, x_label, y_label, size=(760, 560)):
    """2-D points (N, 2) as dots coloured by their class (classes: ints indexing class_names),
    drawn in a shuffled order so that no class hides the others, with a legend of the names."""
    points = numpy.asarray(points, dtype=float)
    classes = numpy.asarray(classes)
    size = (max(size[0], int(title_width(title))), size[1])  # the title fits
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    legend = [(name, colour_of(k), "dot") for k, name in enumerate(class_names)]
    axes = chart_frame(image, draw, title=title, x_label=x_label, y_label=y_label,
                       x_ticks=value_ticks(points[:, 0] if len(points) else []),
                       y_ticks=value_ticks(points[:, 1] if len(points) else []),
                       legend=legend)
    for i in numpy.random.default_rng(0).permutation(len(points)):
        draw_marker(draw, axes.px(points[i, 0]), axes.py(points[i, 1]), "circle",
                    colour_of(int(classes[i])), radius=3)
    return image


def channel_histograms(pixels, bins=32):
    """float (3, bins): for R, G and B, the fraction of an image's pixels in each of `bins`
    equal bins of intensities 0..255. pixels: uint8 (H, W, 3)."""
    pixels = numpy.asarray(pixels).reshape(-1, 3)
    return numpy.stack([numpy.histogram(pixels[:, c], bins=bins, range=(0, 256))[0]
                        for c in range(3)]) / max(len(pixels), 1)


def histogram_panel(pixels, *, bins=32, size=(200, 110), y_max=None, label=None):
    """The R, G and B intensity histograms of one image (uint8 H x W x 3) overlaid
    (channel_histograms). y_max: the top of the y axis (share it across panels to compare
    them); default the largest bin."""
    counts = channel_histograms(pixels, bins)
    y_max = y_max or float(counts.max()) or 1.0
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    left, right = 6, size[0] - 6
    top = 4 + (text_height(label, SMALL) if label else 0)
    bottom = size[1] - line_height(SMALL) - 6
    translucent = ImageDraw.Draw(image, "RGBA")  # its fills blend with what lies below
    outlines = []
    for count, colour in zip(counts, CHANNEL_COLOURS):
        step = (right - left) / bins
        outline = [(left, bottom)]
        for b, fraction in enumerate(count):
            y = bottom - (bottom - top) * min(fraction / y_max, 1.0)
            outline += [(left + b * step, y), (left + (b + 1) * step, y)]
        outline.append((right, bottom))
        translucent.polygon(outline, fill=colour + (50,))
        outlines.append((outline, colour))
    for outline, colour in outlines:
        draw.line(outline, fill=colour, width=2)
    draw.line([left, bottom, right, bottom], fill=AXIS)
    for value, align in ((0, "left"), (128, "centre"), (255, "right")):
        x = left + (right - left) * value / 255
        draw_text(draw, (x, bottom + 3), str(value), SMALL, align, AXIS)
    if label:
        draw_text(draw, (size[0] / 2, 2), label, SMALL, "centre")
    return image


def to_image(cell, scale):
    """A grid cell as a PIL image: an array (H, W, 3) uint8 enlarged `scale` times, nearest
    neighbour (pixels stay visible as squares), or a PIL image as it is."""
    if isinstance(cell, Image.Image):
        return cell.convert("RGB")
    cell = Image.fromarray(numpy.asarray(cell, dtype=numpy.uint8))
    return cell.resize((cell.width * scale, cell.height * scale), Image.NEAREST)


def image_grid(images, *, title=None, row_labels=None, col_labels=None, scale=2, gap=10,
               borders=None):
    """Images in rows and columns: `images` a nested list rows x cols of uint8 (H, W, 3)
    arrays, PIL images (a histogram_panel, say) or None (an empty cell). Row labels go on the
    left, column labels above; borders: a nested list of the same shape of colours (or None)
    for a frame around a cell."""
    cells = [[None if cell is None else to_image(cell, scale) for cell in row] for row in images]
    cols = max(len(row) for row in cells)
    widths = [max((row[c].width for row in cells if c < len(row) and row[c]), default=0)
              for c in range(cols)]
    heights = [max((cell.height for cell in row if cell), default=0) for row in cells]
    left = PAD + (max(text_width(label) for label in row_labels) + 10 if row_labels else 0)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = int(max(left + sum(widths) + gap * (cols - 1) + PAD,
                    title_width(title)))
    top = draw_title(scratch, title, width) + (
        max(text_height(label) for label in col_labels) + 4 if col_labels else 0)
    image = Image.new("RGB", (width, int(top + sum(heights) + gap * (len(cells) - 1) + PAD)),
                      "white")
    draw = ImageDraw.Draw(image)
    draw_title(draw, title, width)
    xs = [left + sum(widths[:c]) + gap * c for c in range(cols)]
    for c, label in enumerate(col_labels or []):
        draw_text(draw, (xs[c] + widths[c] / 2, top - text_height(label) - 4), label, NORMAL,
                  "centre")
    y = top
    for r, row in enumerate(cells):
        if row_labels:
            draw_text(draw, (left - 10, y + (heights[r] - text_height(row_labels[r])) / 2),
                      row_labels[r], NORMAL, "right")
        for c, cell in enumerate(row):
            if cell is None:
                continue
            x = int(xs[c] + (widths[c] - cell.width) / 2)  # centred in its column
            image.paste(cell, (x, int(y)))
            colour = borders[r][c] if borders else None
            if colour:
                draw.rectangle([x - 4, y - 4, x + cell.width + 3, y + cell.height + 3],
                               outline=colour, width=4)
        y += heights[r] + gap
    return image


def combine(images, *, title=None, columns=1, gap=16):
    """Charts laid out `columns` to a row (1: stacked), under one title."""
    rows = [images[i:i + columns] for i in range(0, len(images), columns)]
    width = max(max(sum(im.width for im in row) + gap * (len(row) - 1) for row in rows) + 2 * PAD,
                title_width(title))
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    top = draw_title(scratch, title, width)
    height = top + sum(max(im.height for im in row) for row in rows) + gap * (len(rows) - 1) + PAD
    image = Image.new("RGB", (int(width), int(height)), "white")
    draw_title(ImageDraw.Draw(image), title, width)
    y = top
    for row in rows:
        x = PAD
        for im in row:
            image.paste(im, (int(x), int(y)))
            x += im.width + gap
        y += max(im.height for im in row) + gap
    return image


def save_png(image, path):
    """Write `image` to `path` as a PNG, whole or not at all."""
    with atomic_write(path) as file:
        image.save(file, format="PNG")
